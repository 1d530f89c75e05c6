"""From a table to batches: texts, label map, stratified split, tokenise once, length-grouped batches.

Tokenisation happens once per run (not per epoch) and padding is per batch, to the longest item
in that batch: AG News items average ~55 tokens, so padding to 128-512 would waste most compute.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .config import DataConfig
from .errors import LorafitError
from .progress import progress
from .tables import read_table


# ---------------------------------------------------------------- texts and labels

def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str, field_name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LorafitError(f"{source}: column {', '.join(repr(c) for c in missing)} not found (set {field_name}); "
                           f"columns present: {', '.join(map(str, df.columns))}")


def join_texts(df: pd.DataFrame, cfg: DataConfig, source: str, field_name: str = "data.text_columns") -> list[str]:
    require_columns(df, cfg.text_columns, source, field_name)
    cols = [df[c].fillna("").astype(str).str.strip() for c in cfg.text_columns]
    if len(cols) == 1:
        return cols[0].tolist()
    # skip empty parts so a missing title does not leave a dangling separator
    return [cfg.text_separator.join(p for p in parts if p) for parts in zip(*cols)]


# Labels are compared by value: an integer-valued label (3, 3.0, "3", " 3 ", "3.0": a CSV cell, or a
# JSON/Parquet column widened to floats by a NaN) is that integer, anything else its stripped text.
# Integers are read as ids 0..K-1 only where names for the ids were given (data.label_names, a hub
# ClassLabel); otherwise the label set is the data's own values and predictions write them back.

def _as_int(v) -> Optional[int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"\s*-?\d+(\.0*)?\s*", v):
        return int(v.strip().split(".")[0])
    return None


def label_key(v) -> str:
    """A label value as the label set holds it: '3' for 3, 3.0, '3.0'; else the stripped text."""
    i = _as_int(v)
    return str(i) if i is not None else str(v).strip()


def is_empty_label(v) -> bool:
    if isinstance(v, str):
        return not v.strip()
    return v is None or (pd.api.types.is_scalar(v) and bool(pd.isna(v)))


def infer_label_names(values: Sequence, configured: Optional[list[str]], hub_names: Optional[list[str]]) -> list[str]:
    """The label set, in id order: configured names, else the hub's, else the distinct values of the
    data: integers in numeric order (1..4 gives four classes, {0, 5} two), other labels sorted as text."""
    if configured:
        return list(configured)
    if hub_names:
        return list(hub_names)
    ints = [_as_int(v) for v in values]
    if all(i is not None for i in ints):
        return [str(i) for i in sorted(set(ints))]
    return sorted({label_key(v) for v in values})


def encode_labels(values: Sequence, names: list[str], source: str, column: str, *, ids: bool = False,
                  rows: Optional[Sequence[int]] = None, cli: bool = False) -> np.ndarray:
    """Map label values to ids 0..K-1 by value; with ids, integers are ids (names given for them).
    Anything outside the label set is an error naming the first such row (rows: each value's row in
    the file, 0-based; default its position) and how many there are; cli: checked against a run's labels."""
    index = {label_key(n): i for i, n in enumerate(names)}
    out = np.empty(len(values), dtype=np.int64)
    bad = []
    for j, v in enumerate(values):
        i = _as_int(v) if ids else None
        if i is None:
            i = index.get(label_key(v))
        if i is None or not 0 <= i < len(names):
            bad.append(j)
        else:
            out[j] = i
    if bad:
        raise LorafitError(_not_in_set(values, bad, names, source, column, ids, rows, cli))
    return out


def _not_in_set(values, bad: list[int], names: list[str], source: str, column: str, ids: bool,
                rows: Optional[Sequence[int]], cli: bool) -> str:
    j = bad[0]
    v = values[j]
    if is_empty_label(v):
        shown = "empty"
    elif isinstance(v, (float, np.floating)) and _as_int(v) is not None:
        shown = str(_as_int(v))  # 2.0 in a column a NaN widened: the file says 2
    else:
        shown = repr(v)
    extra = [f"{len(bad)} of {len(values)} rows are not"] if len(values) > 1 else []
    fix = "fix the row: the run knows only these labels" if cli else "fix the row or set data.label_names"
    if ids:
        extra.append(f"ids 0..{len(names) - 1}")
    elif _as_int(v) is not None and any(_as_int(n) is None for n in names):
        fix = ("the run's labels are names, so integers are not read as ids: write the names" if cli
               else "the labels are names, so integers are not read as ids: write the names, or set data.label_names "
                    "to name ids 0..K-1")
    extra = f" ({'; '.join(extra)})" if extra else ""
    return (f"{source}: row {(j if rows is None else rows[j]) + 1}: label {shown} in column '{column}' "
            f"is not in the label set {names}{extra}; {fix}")


@dataclass
class Examples:
    texts: list[str]
    labels: Optional[np.ndarray]  # None for unlabelled (predict) inputs

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int]) -> "Examples":
        return Examples([self.texts[i] for i in idx], None if self.labels is None else self.labels[np.asarray(idx)])


@dataclass
class SplitData:
    train: Examples
    val: Examples
    label_names: list[str]
    notes: list[str] = field(default_factory=list)  # what was dropped and why, for the run log
    named_ids: bool = False  # the table named its integer ids (a ClassLabel) and data.label_names did not


def filter_texts(ex: Examples, cfg: DataConfig, source: str, notes: list[str],
                 rows: Optional[Sequence[int]] = None) -> Examples:
    """rows: each example's row in the file (0-based), for messages; default its position."""
    empty = [i for i, t in enumerate(ex.texts) if not t.strip()]
    if empty and cfg.empty_texts == "error":
        first = empty[0] if rows is None else rows[empty[0]]
        raise LorafitError(f"{source}: {len(empty)} empty or whitespace-only text(s), first at row {first + 1}; "
                           "remove them or set data.empty_texts: drop")
    words = [len(t.split()) for t in ex.texts]
    keep = [i for i, n in enumerate(words)
            if n > 0 and n >= cfg.min_words and (cfg.max_words is None or n <= cfg.max_words)]
    if empty:
        notes.append(f"dropped {len(empty)} empty text(s) from {source}")
    n_len = len(ex) - len(keep) - len(empty)
    if n_len:
        notes.append(f"dropped {n_len} item(s) outside the length filter [{cfg.min_words}, {cfg.max_words}] words")
    if not keep:
        raise LorafitError(f"{source}: no usable rows after dropping empty texts and the length filter")
    return ex.subset(keep) if len(keep) < len(ex) else ex


def load_labelled(name: str, cfg: DataConfig, split: str, label_names: Optional[list[str]], field_name: str,
                  *, table_names: Optional[list] = None) -> tuple[Examples, list[str], list[str]]:
    """Texts and label ids of a labelled table. label_names: a fixed label set (a run's, the training
    set's) the labels must belong to; None infers it. field_name '--data' (a CLI flag) makes messages
    name the flags (--text-column, --label-column) rather than the config keys. table_names: a list
    that receives the table's own names for integer ids (a ClassLabel), when it has them."""
    cli = field_name.startswith("--")
    df = read_table(name, split=split, allow_pickle=cfg.allow_pickle, field=field_name, delimiter=cfg.delimiter)
    require_columns(df, [cfg.label_column], name, "--label-column" if cli else "data.label_column")
    texts = join_texts(df, cfg, name, "--text-column" if cli else "data.text_columns")
    values = df[cfg.label_column].tolist()
    notes: list[str] = []
    rows = [r for r, v in enumerate(values) if not is_empty_label(v)]
    if len(rows) < len(values):
        n, first = len(values) - len(rows), next(r for r, v in enumerate(values) if is_empty_label(v))
        if cfg.empty_labels == "error":
            fix = "fill them in or remove those rows" if cli else "fill them in or set data.empty_labels: drop"
            raise LorafitError(f"{name}: {n} row(s) with no label in column '{cfg.label_column}', first at row {first + 1}; {fix}")
        notes.append(f"dropped {n} row(s) with no label from {name}")
        texts, values = [texts[r] for r in rows], [values[r] for r in rows]
    hub_names = df.attrs.get("label_names", {}).get(cfg.label_column)
    if table_names is not None and hub_names:
        table_names.extend(hub_names)
    names = label_names or infer_label_names(values, cfg.label_names, hub_names)
    if len(names) < 2:
        raise LorafitError(f"{name}: found {len(names)} label(s) in '{cfg.label_column}'; classification needs at least 2")
    labels = encode_labels(values, names, name, cfg.label_column, ids=bool(cfg.label_names or hub_names), rows=rows, cli=cli)
    return filter_texts(Examples(texts, labels), cfg, name, notes, rows), names, notes


def stratified_split(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_val = int(val_size) if val_size >= 1 else int(round(val_size * n))
    k = len(np.unique(labels))
    if not k <= n_val <= n - k:
        raise LorafitError(f"data.val_size: {val_size} gives {n_val} validation rows out of {n}; "
                           f"need between {k} (one per class) and {n - k}")
    idx = np.arange(n)
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(tr), np.sort(va)


def split_seed(cfg: DataConfig, seed: int) -> int:
    """The seed of the shuffle, limit and split: data.split_seed, else the run's seed."""
    return seed if cfg.split_seed is None else cfg.split_seed


def load_split(cfg: DataConfig, seed: int) -> SplitData:
    """Training data → shuffled, optionally limited → stratified train/validation split."""
    named: list = []
    ex, names, notes = load_labelled(cfg.train, cfg, cfg.train_split, None, "data.train", table_names=named)
    order = np.random.default_rng(seed).permutation(len(ex))
    if cfg.limit is not None:
        order = order[: cfg.limit]
    ex = ex.subset(order)
    tr, va = stratified_split(ex.labels, cfg.val_size, seed)
    return SplitData(ex.subset(tr), ex.subset(va), names, notes, named_ids=bool(named) and not cfg.label_names)


# ---------------------------------------------------------------- tokenise once, batch by length

def cache_root() -> Path:
    return Path(os.environ.get("LORAFIT_CACHE", Path.home() / ".cache" / "lorafit")) / "tokens"


def _fingerprint(tokenizer, texts: Sequence[str], max_length: int) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for runtime in ("truncation", "padding"):  # set by each call, not part of what the tokenizer is
            spec.pop(runtime, None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(f"{type(tokenizer).__name__}:{tokenizer.name_or_path}".encode())
    h.update(f"|{max_length}|{len(texts)}|".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def _load_cached(folder: Path) -> Optional[list[list[int]]]:
    try:
        flat = np.load(folder / "ids.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / "offsets.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def _store_cached(folder: Path, ids: list[list[int]]) -> None:
    """Flat int32 ids + offsets (plain .npy, no pickle), written to a temp folder then renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        np.save(tmp / "ids.npy", np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum())))
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer won, or the disk is read-only: no cache, no harm


def tokenize(tokenizer, texts: Sequence[str], max_length: int, desc: str = "tokenising", chunk: int = 2048,
             cache: bool = True) -> list[list[int]]:
    """Token ids of every text, truncated, unpadded. Cached on disk across runs (sweeps, seeds),
    keyed by the tokenizer's full definition, max_length and the texts; LORAFIT_CACHE moves it."""
    folder = cache_root() / _fingerprint(tokenizer, texts, max_length) if cache else None
    if folder is not None and folder.is_dir():
        hit = _load_cached(folder)
        if hit is not None:
            return hit
    out: list[list[int]] = []
    with progress(total=len(texts), desc=desc, unit=" items", leave=False, disable=len(texts) < chunk) as bar:
        for s in range(0, len(texts), chunk):
            part = list(texts[s:s + chunk])
            out.extend(tokenizer(part, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"])
            bar.update(len(part))
    if folder is not None:
        _store_cached(folder, out)
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\\")


def shuffle_sentences(text: str, rng: random.Random) -> str:
    parts = [p.strip() for p in _SENTENCE_END.split(text) if p.strip()]
    if len(parts) < 2:
        return text
    rng.shuffle(parts)
    return " ".join(parts)


class TokenDataset(torch.utils.data.Dataset):
    """Token ids (+ labels). With augmentation, items are re-tokenised after a seeded sentence shuffle."""

    def __init__(self, ids: list[list[int]], labels: Optional[np.ndarray] = None, *, texts=None, tokenizer=None,
                 max_length: int = 128, shuffle_p: float = 0.0, seed: int = 0):
        self.ids, self.labels = ids, labels
        self.texts, self.tokenizer, self.max_length = texts, tokenizer, max_length
        self.shuffle_p, self.seed, self.epoch = shuffle_p, seed, 0

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    def __getitem__(self, i: int):
        ids = self.ids[i]
        if self.shuffle_p > 0:
            rng = random.Random((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            if rng.random() < self.shuffle_p:
                text = shuffle_sentences(self.texts[i], rng)
                ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        return ids, (None if self.labels is None else int(self.labels[i]))


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Yields lists of indices. Shuffled: random mega-batches (50 batches) sorted by length, then
    batch order shuffled, so each batch holds similar lengths yet the order stays random.
    Not shuffled: sorted by length (evaluation/prediction; callers restore the input order)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool, group_by_length: bool = True,
                 seed: int = 0, mega: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.shuffle, self.group, self.seed, self.mega = batch_size, shuffle, group_by_length, seed, mega
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, n: int) -> None:
        """Leave out the first n batches of the next pass only: a run resumed mid-epoch sees the same
        order without the batches it already trained on. One-shot, so later epochs are whole again;
        kept apart from set_epoch because accelerate calls set_epoch itself at the start of each pass."""
        self._skip = n

    def batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable") if self.group else np.arange(n)
            return [order[s:s + bs].tolist() for s in range(0, n, bs)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n)
        if not self.group:
            return [order[s:s + bs].tolist() for s in range(0, n, bs)]
        step = bs * self.mega
        batches = []
        for s in range(0, n, step):
            mb = order[s:s + step]
            mb = mb[np.argsort(-self.lengths[mb], kind="stable")]
            batches.extend(mb[t:t + bs].tolist() for t in range(0, len(mb), bs))
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
        # The longest batch first (as transformers' LengthGroupedSampler does): the allocator reaches
        # its peak at once and shorter batches reuse that memory; a long batch late in an epoch finds a
        # heap fragmented by many shapes and grows it further (peak RSS +0.4 GB on MiniLM).
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max())
        batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return iter(self.batches()[skip:])

    def __len__(self) -> int:  # a whole epoch, also while skipping: steps per epoch are counted from it
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class Collator:
    """Pads a batch to its longest item (dynamic padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items):
        width = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if items[0][1] is not None:
            batch["labels"] = torch.tensor([lab for _, lab in items], dtype=torch.long)
        return batch


def make_loader(ds: TokenDataset, batch_size: int, pad_id: int, *, shuffle: bool, group_by_length: bool = True,
                seed: int = 0, num_workers: int = 0) -> torch.utils.data.DataLoader:
    sampler = LengthGroupedBatches(ds.lengths(), batch_size, shuffle=shuffle, group_by_length=group_by_length, seed=seed)
    # Its own generator: each pass draws a worker seed from it, and drawing from the global RNG instead
    # would shift dropout masks between a run and the same run resumed from a checkpoint.
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(pad_id), num_workers=num_workers,
                                       generator=torch.Generator().manual_seed(seed))
