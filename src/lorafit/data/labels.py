"""Label cells as a label set holds them: the key of a value (3, 3.0 and '3' are one label), empty
cells, the inferred label set, and single_label's class ids (tasks/single_label.py encodes with them)."""
from __future__ import annotations

import re
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import LorafitError


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
