"""From a table to examples: texts (joined columns), labels by value (or ids the data names),
empty labels and texts, the length filter, and the seeded train/validation split (stratified by class;
per label for multi_label, data/multilabel_split.py; random for regression)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .. import tasks
from ..config import DataConfig
from ..errors import LorafitError
from .label_checks import check_class_rows, near_duplicate_warnings
from .multilabel_split import iterative_split, unvalidated_note
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
                  rows: Optional[Sequence[int]] = None, cli: bool = False, configured: bool = False) -> np.ndarray:
    """Map label values to ids 0..K-1 by value; with ids, integers are ids (names given for them).
    Anything outside the label set is an error naming the first such row (rows: each value's row in
    the file, 0-based; default its position) and how many there are; cli: checked against a run's labels;
    configured: the label set is data.label_names (so the fix may be to remove it)."""
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
        raise LorafitError(_not_in_set(values, bad, names, source, column, ids, rows, cli, configured))
    return out


def _not_in_set(values, bad: list[int], names: list[str], source: str, column: str, ids: bool,
                rows: Optional[Sequence[int]], cli: bool, configured: bool = False) -> str:
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
    if configured and not cli:
        # the usual cause: a config written for another data set; setting label_names is not the fix
        seen = list(dict.fromkeys(label_key(values[j]) if _as_int(values[j]) is not None else repr(label_key(values[j]))
                                  for j in bad if not is_empty_label(values[j])))
        listed = ", ".join(seen[:5]) + (f" and {len(seen) - 5} more" if len(seen) > 5 else "")
        fix = (f"data.label_names names ids 0..{len(names) - 1}, and the file's labels {listed} are neither those ids "
               "nor those names: remove data.label_names to take the label set from the data, or fix the rows")
    elif ids:
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
    if cfg.task != tasks.SINGLE:
        labels, names = _task_targets(values, cfg, label_names, name, rows, cli)
        return filter_texts(Examples(texts, labels, pairs), cfg, name, notes, rows), names, notes
    hub_names = df.attrs.get("label_names", {}).get(cfg.label_column)
    if table_names is not None and hub_names:
        table_names.extend(hub_names)
    names = label_names or infer_label_names(values, cfg.label_names, hub_names)
    if len(names) < 2:
        raise LorafitError(f"{name}: found {len(names)} label(s) in '{cfg.label_column}'; classification needs at least 2")
    labels = encode_labels(values, names, name, cfg.label_column, ids=bool(cfg.label_names or hub_names), rows=rows,
                           cli=cli, configured=bool(cfg.label_names))
    return filter_texts(Examples(texts, labels, pairs), cfg, name, notes, rows), names, notes


def _task_targets(values: list, cfg: DataConfig, label_names: Optional[list[str]], source: str, rows: list[int],
                  cli: bool) -> tuple[np.ndarray, list[str]]:
    """multi_label: multi-hot rows over the label set (the run's, else data.label_names, else every label
    the rows name); regression: float targets, and the label column's name as the one output."""
    if cfg.task == tasks.REGRESSION:
        return tasks.encode_regression(values, source, cfg.label_column, rows), label_names or [cfg.label_column]
    lists = tasks.label_lists(values, cfg.label_delimiter, source, cfg.label_column, rows)
    names = label_names or infer_label_names([x for labels in lists for x in labels], cfg.label_names, None)
    if len(names) < 2:
        raise LorafitError(f"{source}: found {len(names)} label(s) in '{cfg.label_column}'; multi_label needs at least 2")
    return tasks.encode_multi_label(lists, names, label_key, source, cfg.label_column, rows, cli), names


def val_rows(val_size: float, n: int) -> int:
    """data.val_size as a number of rows: a count (>= 1), or a fraction of n rounded."""
    return int(val_size) if val_size >= 1 else int(round(val_size * n))


def stratified_split(labels: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(labels)
    n_val = val_rows(val_size, n)
    k = len(np.unique(labels))
    if not k <= n_val <= n - k:
        raise LorafitError(f"data.val_size: {val_size} gives {n_val} validation rows out of {n}; "
                           f"need between {k} (one per class) and {n - k}")
    idx = np.arange(n)
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, shuffle=True, stratify=stratify)
    return np.sort(tr), np.sort(va)


def random_split(n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    tr, va = train_test_split(np.arange(n), test_size=checked_val_rows(val_size, n), random_state=seed, shuffle=True)
    return np.sort(tr), np.sort(va)


def checked_val_rows(val_size: float, n: int) -> int:
    """val_rows, refused unless both parts keep at least 2 rows (regression, multi_label)."""
    n_val = val_rows(val_size, n)
    if not 2 <= n_val <= n - 2:
        raise LorafitError(f"data.val_size: {val_size} gives {n_val} validation rows out of {n}; need between 2 and {n - 2}")
    return n_val


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
    if cfg.task == tasks.MULTI:  # label sets: stratified per label, so rare labels get validation positives
        tr, va = iterative_split(ex.labels, checked_val_rows(cfg.val_size, len(ex)), seed)
        note = unvalidated_note(ex.labels[tr], ex.labels[va], names, tasks.DEFAULT_THRESHOLD)
        warnings = near_duplicate_warnings(names, (ex.labels > 0.5).sum(axis=0))
        return SplitData(ex.subset(tr), ex.subset(va), names, notes + ([note] if note else []), warnings)
    if cfg.task == tasks.REGRESSION:  # numbers, no classes to stratify on: a seeded random split
        tr, va = random_split(len(ex), cfg.val_size, seed)
        return SplitData(ex.subset(tr), ex.subset(va), names, notes)
    k = len(np.unique(ex.labels))
    if 2 * k > len(ex):
        # no split can hold every class in both parts then; the usual cause is the wrong column
        raise LorafitError(f"{cfg.train}: {k} distinct labels in {len(ex)} rows of column '{cfg.label_column}': most "
                           "labels occur once, so it reads as an id or a number, not classes; point "
                           "data.label_column at the class column")
    check_class_rows(names, ex.labels, cfg.min_class_rows, cfg.train, limited)
    warnings = near_duplicate_warnings(names, np.bincount(ex.labels, minlength=len(names)))
    tr, va = stratified_split(ex.labels, cfg.val_size, seed)
    return SplitData(ex.subset(tr), ex.subset(va), names, notes, warnings, named_ids=bool(named) and not cfg.label_names)
