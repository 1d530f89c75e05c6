"""train.final_on_val: one more epoch over train + validation after the best checkpoint."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..progress import progress


def train_on_all(recipe) -> None:
    """One more epoch over train+validation from the best weights, lr decaying linearly from
    10% of optim.lr to 0; nothing is left to select on, so its result is what is saved."""
    from ..data.examples import Examples

    tr, va = recipe.data.train, recipe.data.val
    both = Examples(tr.texts + va.texts, np.concatenate([tr.labels, va.labels]),
                    None if tr.pairs is None else tr.pairs + va.pairs)
    loader = recipe.acc.prepare(recipe._loader(recipe._dataset(both, augment=True), recipe.cfg.train.batch_size, shuffle=True))
    steps = max(1, math.ceil(len(loader) / recipe.cfg.train.grad_accum))
    for g in recipe.optimizer.param_groups:
        g["lr"] = g.get("initial_lr", g["lr"]) * 0.1
    sched = torch.optim.lr_scheduler.LambdaLR(recipe.optimizer, lambda s: max(0.0, 1 - s / steps))
    recipe.model.train()
    for batch in progress(loader, desc="final epoch (train+val)", unit=" batches", disable=not recipe.acc.is_main_process):
        with recipe.acc.accumulate(recipe.model):
            labels = batch.pop("labels")
            loss = recipe.loss_fn(recipe.model(**batch).logits, labels)
            recipe.acc.backward(loss)
            recipe._optimizer_step(sched)
    recipe.record(type="final_on_val", loss=loss.item())
