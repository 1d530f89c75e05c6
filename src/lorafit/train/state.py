"""Where training stands, shared by the loop and the checkpoint (neither imports the other for it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class Position:
    """Where in the data a checkpoint stands; `sums` (loss*n, correct, n) feed the epoch's train metrics."""
    epoch: int = 0
    batches: int = 0  # batches of this epoch already trained on
    seen: int = 0
    sums: torch.Tensor | None = None


@dataclass
class State:
    """Where training stands: enough to pick the best checkpoint and stop early."""
    epoch: int = 0
    step: int = 0                        # optimizer steps taken
    best: Optional[float] = None
    best_step: int = -1
    bad_evals: int = 0
    kept: list = field(default_factory=list)   # [(metric, step)] best first
    finished: bool = False               # training loop done (steps reached or early stop); finish() remains
