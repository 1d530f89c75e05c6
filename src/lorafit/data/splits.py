"""Train/validation splits by row count: stratified by class (single_label) or seeded random (regression);
multi_label's per-label stratification is multilabel_split.py."""
from __future__ import annotations

import numpy as np

from ..errors import LorafitError


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
