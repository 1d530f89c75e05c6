"""What every config section shares: strict keys, one-value-as-list, and the metrics per task."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# metrics each data.task can select on; the first is the default where `accuracy` does not apply
TASK_METRICS = {"single_label": ("accuracy", "macro_f1", "mcc", "loss"),
                "multi_label": ("micro_f1", "macro_f1", "subset_accuracy", "loss"),
                "regression": ("pearson", "spearman", "rmse", "loss")}
METRIC = Literal["accuracy", "macro_f1", "mcc", "loss", "micro_f1", "subset_accuracy", "pearson", "spearman", "rmse"]


class _Section(BaseModel):
    # forbid: a misspelt key must never be silently ignored (e.g. `lr_rate` would train at default lr)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_as_list(v: Any) -> Any:
    """A single value where a list of names belongs is a list of one (`--set data.text_columns=review`,
    `targets: query`); used only for lists where one item is a complete setting."""
    return [v] if isinstance(v, (str, int, float, dict)) and not isinstance(v, bool) else v
