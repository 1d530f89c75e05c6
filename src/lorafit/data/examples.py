"""From a table to examples: texts (joined columns), labels by value (or ids the data names) as the
task encodes them (tasks/), empty labels and texts, the length filter, and the seeded train/validation
split the task chooses (stratified by class, data/splits.py; per label for multi_label,
data/multilabel_split.py; random for regression)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import LorafitError
from ..tasks import task_of
from .labels import encode_labels, is_empty_label  # noqa: F401 (encode_labels: tests import it from here)
from .tables import read_table


def require_columns(df: pd.DataFrame, columns: Sequence[str], source: str, field_name: str) -> None:
    require_all(df, source, {field_name: columns})


def require_all(df: pd.DataFrame, source: str, wanted: dict[str, Sequence[str]]) -> None:
    """Every column a read needs ({setting or flag: its columns}), all missing ones in one message: a
    run that names two wrong columns is not refused twice, one column per try."""
    missing = {f: [c for c in cols if c not in df.columns] for f, cols in wanted.items()}
    missing = {f: cols for f, cols in missing.items() if cols}
    if not missing:
        return
    present = f"columns present: {', '.join(map(str, df.columns))}"
    if len(missing) == 1:
        (f, cols), = missing.items()
        raise LorafitError(f"{source}: column {', '.join(repr(c) for c in cols)} not found (set {f}); {present}")
    listed = ", ".join(f"{', '.join(repr(c) for c in cols)} (set {f})" for f, cols in missing.items())
    raise LorafitError(f"{source}: columns not found: {listed}; {present}")


def input_config(data: DataConfig, text_columns: Optional[Sequence[str]] = None, label_column: Optional[str] = None,
                 delimiter: Optional[str] = None, text_pair_column: Optional[str] = None, **update) -> DataConfig:
    """The run's data settings with the --text-column / --label-column / --delimiter flags applied.
    --text-column is repeatable or comma-separated and must give as many columns as the run joined."""
    if text_columns:
        cols = [c.strip() for flag in text_columns for c in flag.split(",") if c.strip()]
        if len(cols) != len(data.text_columns):
            n = len(data.text_columns)
            raise LorafitError(f"--text-column: {len(cols)} column{'s' * (len(cols) != 1)} given ({', '.join(cols)}), but "
                               f"the run was trained on {n} ({', '.join(data.text_columns)}); give {n}, in that order")
        update["text_columns"] = cols
    if label_column:
        update["label_column"] = label_column
    if text_pair_column:
        if data.text_pair_column is None:
            raise LorafitError("--text-pair-column: the run was trained on single texts (no data.text_pair_column); "
                               "drop --text-pair-column")
        update["text_pair_column"] = text_pair_column
    try:
        # the run's data.delimiter was for its training files; other files are sniffed unless told
        update["delimiter"] = DataConfig.delimiter_char(delimiter or "auto")
    except ValueError as e:
        raise LorafitError(f"--delimiter: {e}") from None
    return data.model_copy(update=update)


def join_texts(df: pd.DataFrame, cfg: DataConfig, source: str, field_name: str = "data.text_columns") -> list[str]:
    require_columns(df, cfg.text_columns, source, field_name)
    cols = [df[c].fillna("").astype(str).str.strip() for c in cfg.text_columns]
    if len(cols) == 1:
        return cols[0].tolist()
    # skip empty parts so a missing title does not leave a dangling separator
    return [cfg.text_separator.join(p for p in parts if p) for parts in zip(*cols)]


def pair_texts(df: pd.DataFrame, cfg: DataConfig, source: str, field_name: str = "data.text_pair_column"
               ) -> Optional[list[str]]:
    """The second text of each pair (data.text_pair_column), or None when the data has no pairs."""
    if cfg.text_pair_column is None:
        return None
    require_columns(df, [cfg.text_pair_column], source, field_name)
    return df[cfg.text_pair_column].fillna("").astype(str).str.strip().tolist()


@dataclass
class Examples:
    texts: list[str]
    labels: Optional[np.ndarray]  # None for unlabelled (predict) inputs; ids, float targets or multi-hot rows (data.task)
    pairs: Optional[list[str]] = None  # the second text of each pair (data.text_pair_column)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, idx: Sequence[int]) -> "Examples":
        return Examples([self.texts[i] for i in idx], None if self.labels is None else self.labels[np.asarray(idx, dtype=np.int64)],
                        None if self.pairs is None else [self.pairs[i] for i in idx])


@dataclass
class SplitData:
    train: Examples
    val: Examples
    label_names: list[str]
    notes: list[str] = field(default_factory=list)  # what was dropped and why, for the run log
    warnings: list[str] = field(default_factory=list)  # what may be a mistake in the data (label_checks.py)
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
                  *, table_names: Optional[list] = None, fmt: Optional[str] = None) -> tuple[Examples, list[str], list[str]]:
    """Texts and label ids of a labelled table. label_names: a fixed label set (a run's, the training
    set's) the labels must belong to; None infers it. field_name '--data' (a CLI flag) makes messages
    name the flags (--text-column, --label-column) rather than the config keys. table_names: a list
    that receives the table's own names for integer ids (a ClassLabel), when it has them. fmt: read_table's."""
    cli = field_name.startswith("--")
    df = read_table(name, split=split, allow_pickle=cfg.allow_pickle, field=field_name, delimiter=cfg.delimiter, fmt=fmt)
    require_all(df, name, {"--label-column" if cli else "data.label_column": [cfg.label_column],
                           "--text-column" if cli else "data.text_columns": cfg.text_columns,
                           "--text-pair-column" if cli else "data.text_pair_column":
                               [cfg.text_pair_column] if cfg.text_pair_column else []})
    texts = join_texts(df, cfg, name, "--text-column" if cli else "data.text_columns")
    pairs = pair_texts(df, cfg, name, "--text-pair-column" if cli else "data.text_pair_column")
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
        pairs = None if pairs is None else [pairs[r] for r in rows]
    task = task_of(cfg)
    hub_names = df.attrs.get("label_names", {}).get(cfg.label_column) if task.class_ids else None
    if table_names is not None and hub_names:
        table_names.extend(hub_names)
    labels, names = task.targets(values, cfg, label_names, name, rows, cli, hub_names)
    return filter_texts(Examples(texts, labels, pairs), cfg, name, notes, rows), names, notes


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
    limited = cfg.limit if cfg.limit is not None and cfg.limit < len(ex) else None
    ex = ex.subset(order)
    tr, va, more, warnings = task_of(cfg).split_rows(ex.labels, names, cfg, seed, limited)
    return SplitData(ex.subset(tr), ex.subset(va), names, notes + more, warnings, named_ids=bool(named) and not cfg.label_names)
