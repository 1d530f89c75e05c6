"""CPU memory: hand freed heap memory back to the OS (malloc_trim) when it has grown; huge pages.

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

Huge pages and a growth limit change the trade. With torch's THP_MEM_ALLOC_ENABLE=1 (tensors
page-aligned and madvised for 2 MB pages; the lorafit command sets it before torch loads), 120 steps
(MiniLM-L6, 5,000 rows, LoRA q/v, batch 32) measured: no trimming 60.2 samples/s, peak 2166 MB;
trimming every step 46.3 samples/s, 1776 MB; without huge pages, trimming 44.0 / 1954 and no
trimming 52.6 / 2408. Over a whole epoch with evaluations (10,000 rows, bench/compare.py's recipe),
untrimmed huge pages still grew to 2555 MB, above the fixed-padding notebook (2426 MB that day). So
`speed.trim_heap: auto` trims only after a step that leaves RSS more than GROWTH_SLACK above the
first step's (each epoch starts with its longest batch: the first step holds the largest set of
activations). Same epoch, huge pages on: every step 41.3 samples/s / 1880 MB; slack 0.1 44.2 / 2082;
0.2 47.5 / 1959; 0.3 46.7 / 2121 (runs differ by ~5%; ad hoc probe, one run each).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Callable, Optional

GROWTH_SLACK = 0.2  # speed.trim_heap: auto on CPU (see the measurements above)
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # torch's switch: page-aligned CPU tensors >= 2 MB, madvise(MADV_HUGEPAGE)
THP_SYSFS = Path("/sys/kernel/mm/transparent_hugepage/enabled")


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


def why_off(model, where) -> str | None:
    """Why heap trimming cannot run here (None when it can): a property of the process's C library."""
    return None if heap_trimmer() is not None else "the C library has no malloc_trim"


def install(model, where) -> str:
    """Keep on the model the function the training loop calls after each optimizer step (after_step):
    malloc_trim after every step (speed.trim_heap: true, or no config), or after steps that grew RSS
    past a limit (a fraction; auto = GROWTH_SLACK). Returns the run log's description."""
    choice = True if where.cfg is None else where.cfg.speed.trim_heap
    if choice is True:
        model._lorafit_after_step = heap_trimmer()
        return "freed memory goes back to the OS after each step: lowest peak RSS"
    slack = GROWTH_SLACK if choice == "auto" else choice
    model._lorafit_after_step = trim_when_grown(heap_trimmer(), slack)
    return f"freed memory goes back to the OS after a step that leaves RSS more than {slack:.0%} above the first step's"


def after_step(model) -> Callable[[], object]:
    """What install put on the model to call after each step; a no-op when it is not installed."""
    return model.__dict__.get("_lorafit_after_step") or (lambda: None)


def remove(model) -> None:
    model.__dict__.pop("_lorafit_after_step", None)


def rss_bytes() -> int | None:
    """Resident set size now (Linux /proc), or None where there is no /proc."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def trim_when_grown(trim: Callable[[], int], slack: float, rss: Callable[[], int | None] | None = None) -> Callable[[], None]:
    """Call `trim` after a step only when RSS is more than `slack` above what it was after the first
    step. Each epoch starts with its longest batch, so the first step's heap already holds the largest
    set of activations; growth past it is holes, not need. Without /proc: trim after every step."""
    limit = None

    def after_step() -> None:
        nonlocal limit
        now = (rss or rss_bytes)()
        if now is None:
            trim()
        elif limit is None:
            limit = now * (1 + slack)
        elif now > limit:
            trim()
    return after_step


def request_huge_pages() -> None:
    """Ask torch's CPU allocator for transparent huge pages; the lorafit command calls this before
    torch loads, as torch reads THP_MEM_ALLOC_ENABLE once, at its first allocation. A value already in
    the environment wins (THP_MEM_ALLOC_ENABLE=0 keeps them off)."""
    if "torch" not in sys.modules:
        os.environ.setdefault(THP_ENV, "1")


def kernel_allows_huge_pages() -> bool:
    """The kernel offers transparent huge pages (not set to never; Linux only)."""
    try:
        return "[never]" not in THP_SYSFS.read_text()
    except OSError:
        return False


def huge_pages_active() -> bool:
    """Whether tensors of 2 MB and more get huge pages: torch page-aligns them (and madvises them) only
    with its switch on; otherwise they sit 64 bytes into a mapping or anywhere in the heap (64-byte
    aligned: three page-aligned by chance is a 1 in 2^18 event). The kernel must not have THP off."""
    import torch

    if not kernel_allows_huge_pages():
        return False
    blocks = [torch.empty(4 << 20, dtype=torch.uint8) for _ in range(3)]
    return all(b.data_ptr() % 4096 == 0 for b in blocks)
