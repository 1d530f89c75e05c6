"""The size rules of a zero-config run: pure functions of the data's size, balance and token lengths,
each returning (value, why). Tested at their edges in tests/test_autoconfig.py; the constants were
chosen on bench/quality.py --suite (bench/QUALITY.md), not on one task."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


SMALL = 1000             # fewer rows: hold out a fraction (20%), else a count
VAL_MAX = 2000           # a validation set of this many rows measures accuracy to about +-1 point
LENGTH_PERCENTILE = 98   # max_length covers this share of the texts; padding is per batch, so room is cheap
SAMPLES_SEEN = 25_000    # epochs: about this many training items seen in all...
MAX_EPOCHS = 4           # ...within 1..MAX_EPOCHS epochs (early stopping ends a run that stops improving)
BIG = 20_000             # from this many training rows: the higher learning rate
LR_SMALL, LR_BIG = 1e-3, 2e-3
PATIENCE = 2             # evaluations without improvement before training stops


def val_size(n: int) -> tuple[float, str]:
    if n < SMALL:
        return 0.2, f"{n:,} rows (< {SMALL:,}): a 20% fraction, stratified"
    count = min(VAL_MAX, round(0.1 * n))
    return count, f"{n:,} rows: 10% capped at {VAL_MAX:,} rows, stratified"


def max_length(lengths: Sequence[int], limit: Optional[int]) -> tuple[int, str]:
    """The LENGTH_PERCENTILE-th percentile of the token lengths, rounded up to a multiple of 8, at least
    16, at most the model's limit."""
    lengths = np.asarray(lengths)
    p = int(math.ceil(np.percentile(lengths, LENGTH_PERCENTILE)))
    value = max(16, int(math.ceil(p / 8) * 8))
    why = (f"p{LENGTH_PERCENTILE} of the token lengths of {len(lengths):,} texts is {p} (longest {int(lengths.max())}), "
           "rounded up to a multiple of 8")
    if limit is not None and value > limit:
        return limit, why + f", capped at the model's limit {limit}"
    return value, why


def batch_size(n_train: int) -> tuple[int, str]:
    if n_train < 2000:
        return 16, f"{n_train:,} training rows (< 2,000): 16, for enough optimizer steps"
    return 32, f"{n_train:,} training rows: 32"


def epochs(n_train: int) -> tuple[int, str]:
    value = max(1, min(MAX_EPOCHS, round(SAMPLES_SEEN / max(n_train, 1))))
    return value, (f"about {SAMPLES_SEEN:,} items seen over {n_train:,} training rows, within 1..{MAX_EPOCHS}; "
                   "early stopping ends it sooner")


def learning_rate(n_train: int) -> tuple[float, str]:
    if n_train >= BIG:
        return LR_BIG, f"{n_train:,} training rows (>= {BIG:,}): {LR_BIG:g} (LoRA at alpha = r)"
    return LR_SMALL, f"{n_train:,} training rows (< {BIG:,}): {LR_SMALL:g} (LoRA at alpha = r)"


def warmup(total_steps: int) -> tuple[float, str]:
    if total_steps < 300:
        return 0.1, f"{total_steps:,} optimizer steps (< 300): 10% warm-up"
    return 0.06, f"{total_steps:,} optimizer steps: 6% warm-up"


def evaluation(steps_per_epoch: int, n_epochs: int) -> tuple[object, str]:
    """Once an epoch over several epochs; twice over fewer, so early stopping has something to compare."""
    if n_epochs >= 3:
        return "epoch", f"{n_epochs} epochs: once an epoch"
    every = max(1, math.ceil(steps_per_epoch / 2))
    return every, f"{n_epochs} epoch(s): twice an epoch ({every:,} steps)"


def final_on_val(n_train: int, n_val: int) -> tuple[bool, str]:
    """Below BIG training rows the validation rows are data the model should not go without: after the best
    checkpoint is chosen, one more epoch over train + validation (what it gained on the suite: bench/QUALITY.md);
    above it they are a small share of the data and an epoch costs much."""
    if n_train < BIG:
        return True, (f"{n_train:,} training rows (< {BIG:,}): the {n_val:,} validation rows are trained on too, in one "
                      "more epoch after the best checkpoint (calibration and thresholds fitted before it)")
    return False, f"{n_train:,} training rows (>= {BIG:,}): the validation rows only select"


def metric(task: str, labels: Sequence) -> tuple[str, str]:
    """(train.metric, why): the task object's choice (single_label: macro-F1 when imbalanced)."""
    from .. import tasks

    return tasks.get(task).chosen_metric(labels)
