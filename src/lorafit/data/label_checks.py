"""Checks of a training set's classes before it is split: labels that differ only in case, spacing or
punctuation ('pos' and 'Pos': a warning, as they may be meant apart), and classes with fewer rows than
data.min_class_rows (an error: with one row, the stratified split cannot give a class both a training
and a validation row, and the row lands in one of them by chance)."""
from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np

from ..errors import LorafitError


def _fold(name: str) -> str:
    """What is left of a label without case, spacing and punctuation ('' for integers: -1 and 1 are
    different classes, not a slip)."""
    if re.fullmatch(r"-?\d+", name):
        return ""
    return re.sub(r"[\W_]+", "", name.casefold()) or re.sub(r"\s+", "", name.casefold())


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def near_duplicate_groups(names: Sequence[str], counts: Sequence[int]) -> list[list[int]]:
    """Ids of the labels that fold to the same text, one list per group (most rows first); labels with
    no rows are left out (data.label_names may name ids the data lacks)."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        key = _fold(str(name))
        if key and counts[i] > 0:
            groups.setdefault(key, []).append(i)
    return [sorted(g, key=lambda i: -counts[i]) for g in groups.values() if len(g) > 1]


def _listed(names: Sequence[str], counts: Sequence[int], ids: Sequence[int]) -> str:
    parts = [f"{str(names[i])!r} ({_rows(int(counts[i]))})" for i in ids]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def near_duplicate_warnings(names: Sequence[str], counts: Sequence[int]) -> list[str]:
    """One warning per group of labels that differ only in case, spacing or punctuation."""
    return [f"labels {_listed(names, counts, g)} differ only in case, spacing or punctuation; fix the data or they "
            "train as separate classes" for g in near_duplicate_groups(names, counts)]


def check_class_rows(names: Sequence[str], labels: np.ndarray, min_rows: int, source: str,
                     limited: Optional[int] = None) -> None:
    """Refuse classes with 1..min_rows-1 rows, naming them, their counts, any label each may be a slip
    of, and data.min_class_rows."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    rare = [i for i in range(len(names)) if 0 < counts[i] < min_rows]
    if not rare:
        return
    twin = {i: g[0] for g in near_duplicate_groups(names, counts) for i in g[1:]}
    shown = [f"{str(names[i])!r} ({_rows(int(counts[i]))}"
             + (f"; differs from {str(names[twin[i]])!r} only in case, spacing or punctuation" if i in twin else "") + ")"
             for i in rare]
    listed = ", ".join(shown[:10]) + (f" and {len(shown) - 10} more" if len(shown) > 10 else "")
    where = f" of the {limited} rows data.limit keeps" if limited is not None else ""
    why = ": too few for a stratified split to give each a training and a validation row" if min_rows <= 2 else ""
    raise LorafitError(f"{source}: {len(rare)} class(es) with fewer than {min_rows} rows (data.min_class_rows){where}"
                       f"{why}: {listed}; fix or remove those rows, or set data.min_class_rows: 1 to train them anyway "
                       "(the split is then not stratified)")
