"""Hand freed heap memory back to the OS after each training step (glibc's malloc_trim).

Why: with dynamic padding every batch has its own tensor shapes. glibc serves tensors of up to
32 MB from its heap once the first large ones have been freed (its mmap threshold rises to their
size) and keeps the pages of every hole that differently shaped tensors leave behind, so the
process grows step after step: one MiniLM-L6 epoch on AG News (batch 32, <= 128 tokens) peaked at
2.9 GB RSS, where the same steps need 1.5 GB when every freed page goes back at once. Fixed-shape
training (every item padded to 128) reuses the same holes and does not grow like this.
malloc_trim(0) after each optimizer step returns the free pages (madvise), so every step starts
from a compact heap; the price is that the next step faults those pages in again (~20% of a step
on this 2-core CPU, bench/switches.py variant no_trim). Cheaper policies were measured and kept the
peak above what the fixed-shape notebook needs: trimming every 2nd or 10th step (peak 2.5 / 2.8 GB
over 150 steps, against 2.2 GB every step and 2.9 GB never), only before long batches (3.0 GB), or
only when RSS passes what the first, longest step needed (2.3 GB). Giving pages back at every free
instead (a fixed, low M_MMAP_THRESHOLD) made training 1.3-1.7x slower.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable, Optional


def heap_trimmer() -> Optional[Callable[[], int]]:
    """glibc's malloc_trim(0) as a function, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)
