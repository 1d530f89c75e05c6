"""What each data.task means, one object per task behind one interface (base.Task): single_label (one
class per row), multi_label (a set of labels per row) and regression (a number per row). `get(name)` /
`task_of(cfg)` give the object; code outside this package asks it rather than testing the task's name.

The module-level functions below are the objects' methods by task name, kept for callers that hold a
name rather than a config (tests, scripts)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .base import DEFAULT_THRESHOLD, NAMES, THRESHOLDS_FILE, Task, describe, scores
from .multi_label import (GRID, MultiLabel, encode_multi_label, label_list, label_lists, label_sets, multi_label_metrics,
                          sigmoid, threshold_vector, tune_thresholds)
from .regression import Regression, encode_regression, regression_metrics
from .single_label import SingleLabel

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"
TASKS: dict[str, Task] = {t.name: t for t in (SingleLabel(), MultiLabel(), Regression())}

__all__ = ["DEFAULT_THRESHOLD", "GRID", "MULTI", "NAMES", "REGRESSION", "SINGLE", "TASKS", "THRESHOLDS_FILE", "Task",
           "describe", "encode_multi_label", "encode_regression", "get", "label_list", "label_lists", "label_sets",
           "multi_label_metrics", "regression_metrics", "scores", "sigmoid", "task_of", "threshold_vector",
           "tune_thresholds"]


def get(name: str) -> Task:
    """The task object of a data.task name (config validation allows only these names)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"data.task: unknown task {name!r}; use one of {', '.join(TASKS)}") from None


def task_of(cfg) -> Task:
    """The task of a RunConfig (cfg.data.task) or a DataConfig (cfg.task)."""
    return get(cfg.data.task if hasattr(cfg, "data") else cfg.task)


def metrics(task: str, labels: np.ndarray, logits: np.ndarray, names: list[str], thresholds: Optional[dict] = None) -> dict:
    return get(task).metrics(labels, logits, names, thresholds)


def curve_keys(task: str) -> tuple[str, str]:
    return get(task).curve_keys()


def problem_type(task: str) -> Optional[str]:
    return get(task).problem_type
