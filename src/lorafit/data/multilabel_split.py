"""The seeded train/validation split of multi_label rows, stratified per label by iterative
stratification (Sechidis, Tsoumakas & Vlahavas, "On the Stratification of Multi-Label Data", ECML
PKDD 2011), so that every label with two or more positive rows has positives on both sides: its
decision threshold is tuned on the validation positives, and a label without any keeps 0.5.

Why our own ~40 lines and not a dependency: iterative-stratification (iterstrat) sizes its parts
only approximately ("sizes may be slightly different from desired", its docs) and imports private
scikit-learn names (model_selection._split), which break across releases; scikit-multilearn has had
no release since 2018. data.val_size must hold exactly (the single_label split and a resumed run
rely on it), so the capacity of each part is a hard limit here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def iterative_split(labels: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), each sorted, of an n x K multi-hot matrix, exactly n_val rows in
    validation, deterministic for a seed.

    The algorithm: take the label with the fewest rows still unplaced (ties at random), place each of
    its rows in the part that still wants the most of that label (ties: the part that wants the most
    rows, then at random), and never past a part's size; rows without any label fill what is left.
    One change to the paper: a label with >= 2 rows wants at least one in each part, because a part
    of r * count < 1 would otherwise give all its rows to training and leave its threshold untuned."""
    y = np.asarray(labels) > 0.5
    n, k = y.shape
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)  # the order rows of one label are placed in: seeded, not the file's
    y = y[order]
    room = np.array([n_val, n - n_val], dtype=np.float64)  # rows each part (validation, train) still takes
    counts = y.sum(0).astype(np.float64)
    want = np.outer(room / n, counts)  # rows of each label each part still wants (2 x K)
    want[:, counts >= 2] = np.maximum(want[:, counts >= 2], 1.0)
    part = np.full(n, -1, dtype=np.int64)
    left = y.copy()  # positives not placed yet
    while left.any():
        remaining = left.sum(0)
        fewest = np.flatnonzero(remaining == remaining[remaining > 0].min())
        label = fewest[rng.integers(len(fewest))] if len(fewest) > 1 else fewest[0]
        for i in np.flatnonzero(left[:, label]):
            s = _choose(want[:, label], room, rng)
            part[i] = s
            room[s] -= 1
            want[s, y[i]] -= 1
            left[i] = False
    rest = np.flatnonzero(part < 0)  # rows with no label, in the seeded order: exactly the room left
    part[rest[: int(room[0])]] = 0
    part[rest[int(room[0]):]] = 1
    val = np.sort(order[part == 0])
    train = np.sort(order[part == 1])
    return train, val


def _choose(want: np.ndarray, room: np.ndarray, rng: np.random.Generator) -> int:
    """0 (validation) or 1 (train): a full part takes nothing; else the most wanted, then the roomier."""
    if room[0] <= 0 or room[1] <= 0:
        return 0 if room[0] > 0 else 1
    if want[0] != want[1]:
        return int(np.argmax(want))
    if room[0] != room[1]:
        return int(np.argmax(room))
    return int(rng.integers(2))


def unvalidated_note(train: np.ndarray, val: np.ndarray, names: Sequence[str], threshold: float) -> str | None:
    """The run log's line for labels with no positive validation row (too rare to stratify, or absent
    from the data): their threshold is not tuned, so the reader knows which decisions rest on a default."""
    n_val = (np.asarray(val) > 0.5).sum(0)
    n_train = (np.asarray(train) > 0.5).sum(0)
    missing = np.flatnonzero(n_val == 0)
    if not len(missing):
        return None
    shown = ", ".join(f"'{names[j]}' ({int(n_train[j])} in train)" for j in missing)
    return (f"{len(missing)} label(s) have no positive row in the validation split, too rare to stratify: {shown}; "
            f"their thresholds stay {threshold} (not tuned) and their validation F1 is 0 (no support), which lowers macro-F1")
