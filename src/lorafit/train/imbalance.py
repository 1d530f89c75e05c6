"""Class imbalance, single-label: cross-entropy class weights (`train.class_weights`) and the
class-balanced training order (`train.sampler: balanced`).

Weights are per class id, in the label set's order: `balanced` is scikit-learn's
compute_class_weight (n / (K * count_k): a class with half the average count weighs 2), a mapping
names labels by value as the data writes them ('3', 3 and 3.0 are the same label), and labels it
does not name weigh 1. torch's weighted cross-entropy divides by the summed weights of the batch's
targets, so a weighted loss stays on the scale of the plain one.

Multi-label (data.task: multi_label): the same setting gives BCE-with-logits' pos_weight, one per
label: `balanced` is negatives / positives of the label in the training rows (torch's documented
choice: a label present in 1 row of 10 weighs its positives 9), a mapping gives it by label.
Regression has no classes: config validation refuses class weights and the balanced sampler there.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from .. import tasks
from ..config import TrainConfig, suggest
from ..data.batches import LengthGroupedBatches
from ..data.labels import label_key
from ..errors import LorafitError


def class_weights(setting: Union[str, dict], labels: np.ndarray, names: list[str],
                  task: str = "single_label") -> Optional[torch.Tensor]:
    """Weights per class id for `train.class_weights` (None for none); for multi_label the pos_weight per
    label; an unknown label is an error."""
    if setting == "none":
        return None
    k = len(names)
    if setting == "balanced":  # the task's own: class weights (single_label), pos_weight (multi_label)
        return tasks.get(task).balanced_weights(labels, names)
    index = {label_key(n): i for i, n in enumerate(names)}
    w = torch.ones(k, dtype=torch.float32)
    for key, weight in setting.items():
        i = index.get(label_key(key))
        if i is None:
            guess = suggest(str(key), [str(n) for n in names])
            hint = f" (did you mean {guess!r}?)" if guess else ""
            raise LorafitError(f"train.class_weights: unknown label {key!r}{hint}; the training labels are {names}: "
                               "name labels as data.train writes them")
        w[i] = float(weight)
    return w


class BalancedBatches(LengthGroupedBatches):
    """Each epoch draws len(dataset) items with replacement, every class equally likely (torch's
    WeightedRandomSampler with weight 1 / count of the item's class), then groups them by length as
    the plain order does. The draw is a function of (seed, epoch) alone, so a resumed run (epoch and
    batches skipped restored by the checkpoint) sees exactly the batches it would have."""

    def __init__(self, lengths, labels: np.ndarray, batch_size: int, *, group_by_length: bool = True, seed: int = 0):
        super().__init__(lengths, batch_size, shuffle=True, group_by_length=group_by_length, seed=seed)
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)

    def epoch_order(self, rng: np.random.Generator) -> np.ndarray:
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        drawn = torch.utils.data.WeightedRandomSampler(self.weights, len(self.weights), replacement=True, generator=gen)
        return np.fromiter(iter(drawn), dtype=np.int64, count=len(self.weights))


def train_batches(ds, batch_size: int, train: TrainConfig, seed: int, group_by_length: bool = True) -> Optional[BalancedBatches]:
    """The batch sampler a shuffled training loader uses in place of the plain order, or None."""
    if train.sampler != "balanced" or ds.labels is None:
        return None
    return BalancedBatches(ds.lengths(), ds.labels, batch_size, group_by_length=group_by_length, seed=seed)
