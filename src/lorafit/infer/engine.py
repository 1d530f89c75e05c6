"""The one inference path: texts (and pair texts) -> token ids with the run's encoding -> forwards
of length-sorted rows, each padded to its longest -> float32 logits. `lorafit predict`, `lorafit
evaluate`, the export checks (torch and ONNX Runtime alike, infer/loaded.py's backends) and the
serve batcher all compute here, so they truncate, pair, pad and batch the same way.

`iter_logits` is a generator: it encodes `window` rows at a time, sorts them by length, cuts them
into forwards (plan_forwards) and yields each forward's (row indices, logits) as it is computed, so
a caller can stream results. `logits` collects them in input order.

The place where one forward over several runs that share a base would go is `forward`: today a
forward is one run's rows through that run's backend."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ..data.batches import Collator
from ..data.encoding import encode as encode_texts, truncation_note
from ..progress import progress
from .loaded import LoadedRun

# What one more forward costs beyond its padded tokens, in tokens: per-call overhead and small
# matrices running below the CPU's speed. From interleaved runs on 2 cores (MiniLM, 512 AG News texts
# in rounds of 64/256, load ~4): 256 was faster than cutting at every max_batch texts (1.2-1.5x) and than 64
# (more, smaller forwards).
FORWARD_COST_TOKENS = 256

# rows encoded and sorted together: sorting a whole file pads little more than this (0.92 real tokens
# per padded one on AG News, bench/RESULTS.md), and the first logits come after one window, not the file
WINDOW = 8192


def encode(run: LoadedRun, texts: Sequence[str], pairs: Optional[Sequence[str]] = None
           ) -> tuple[list[list[int]], Optional[list[list[int]]], int]:
    """(token ids, segment ids or None, how many texts were cut) with the run's truncation and pairs;
    never the disk cache (it is training's)."""
    return encode_texts(run.tokenizer, texts, run.encoding, pairs, cache=False)


def plan_forwards(lengths: Sequence[int], max_batch: int, overhead: int = FORWARD_COST_TOKENS) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into forwards of at most max_batch: the cut that
    minimises padded tokens plus `overhead` per forward (dynamic programming over the sorted lengths,
    O(n x max_batch))."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    sorted_len = np.asarray(lengths, dtype=np.int64)[order]
    n = len(order)
    best, cut = np.zeros(n + 1), np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        start = np.arange(max(0, j - max_batch), j)
        cost = best[start] + (j - start) * sorted_len[start] + overhead  # texts start..j-1 padded to the first
        k = int(np.argmin(cost))
        best[j], cut[j] = cost[k], start[k]
    out, j = [], n
    while j > 0:
        out.append(order[cut[j]:j].tolist())
        j = int(cut[j])
    return out[::-1]


def forward(run: LoadedRun, ids: Sequence[Sequence[int]], types: Optional[Sequence[Sequence[int]]] = None) -> np.ndarray:
    """One forward over these token ids (and segment ids), padded to the longest: float32 logits."""
    items = [(x, None) for x in ids] if types is None else [(x, None, t) for x, t in zip(ids, types)]
    return run.backend(Collator(run.tokenizer.pad_token_id)(items))


def iter_logits(run: LoadedRun, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, *,
                batch_size: int = 128, window: int = WINDOW, log: Optional[Callable[[str], None]] = None,
                on_cut: Optional[Callable[[int], None]] = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row indices into texts, their logits) per forward, as computed: `window` rows encoded and sorted
    by length at a time, cut by plan_forwards into forwards of at most batch_size. log: told at the end
    how many texts were cut to max_length, if any; on_cut: given each window's count of cut texts instead
    (a caller calling once per chunk of a stream words one note for the whole stream)."""
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pair texts")
    truncated = 0
    for s in range(0, len(texts), max(1, window)):
        ids, types, cut = encode(run, texts[s:s + window], None if pairs is None else pairs[s:s + window])
        truncated += cut
        if on_cut is not None:
            on_cut(cut)
        for idx in plan_forwards([len(x) for x in ids], batch_size):
            out = forward(run, [ids[i] for i in idx], None if types is None else [types[i] for i in idx])
            yield np.asarray(idx, dtype=np.int64) + s, out
    note = truncation_note(truncated, len(texts), run.encoding, pairs is not None)
    if note and log:
        log(f"note: {note}")


def logits(run: LoadedRun, texts: Sequence[str], pairs: Optional[Sequence[str]] = None, *, batch_size: int = 128,
           window: int = WINDOW, log: Optional[Callable[[str], None]] = None, desc: str = "predicting") -> np.ndarray:
    """Logits of every text in input order (iter_logits collected), with a progress bar."""
    out: Optional[np.ndarray] = None
    with progress(total=len(texts), desc=desc, unit=" samples", disable=len(texts) < batch_size) as bar:
        for idx, part in iter_logits(run, texts, pairs, batch_size=batch_size, window=window, log=log):
            if out is None:
                out = np.zeros((len(texts), part.shape[-1]), dtype=np.float32)
            out[idx] = part
            bar.update(len(idx))
    if out is None:  # no texts: the width is the model's label count
        width = len(run.labels) or getattr(getattr(run.model, "config", None), "num_labels", 0)
        out = np.zeros((0, width), dtype=np.float32)
    return out
