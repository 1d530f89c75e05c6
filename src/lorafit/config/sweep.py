"""The `sweep:` section (its space is checked against every key in run.py, which knows them all)."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import METRIC, _Section


class SweepConfig(_Section):
    space: dict[str, Any] = Field(
        {}, description="Dotted config key -> a list of choices, or {low, high, log} for a number, e.g. "
        "{adapter.r: [4, 8, 16], optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}}.")
    metric: METRIC = Field("accuracy", description="Validation metric optimised (loss, rmse: minimised).")
    startup_trials: int = Field(3, ge=0, description="Median pruning starts after this many finished trials.")
    warmup_evals: int = Field(0, ge=0, description="Never prune a trial before this many evaluations.")
