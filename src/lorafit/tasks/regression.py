"""regression: a number per row. Targets are floats, the model has one output, the loss is MSE, and the
answer is that output: there are no classes, so no probabilities, class weights or thresholds."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..data.splits import random_split
from ..errors import LorafitError
from .base import Task, row_number


def encode_regression(values: Sequence, source: str, column: str, rows: Optional[Sequence[int]] = None) -> np.ndarray:
    """Float targets; one that is not a finite number is an error naming the first such row."""
    out = np.empty(len(values), dtype=np.float32)
    bad = []
    for j, v in enumerate(values):
        try:
            x = float(v.strip() if isinstance(v, str) else v)
        except (TypeError, ValueError):
            x = math.nan
        if isinstance(v, bool) or not math.isfinite(x):
            bad.append(j)
        else:
            out[j] = x
    if bad:
        j = bad[0]
        more = f" ({len(bad)} of {len(values)} rows are not)" if len(values) > 1 else ""
        raise LorafitError(f"{source}: row {row_number(rows, j)}: target {values[j]!r} in column '{column}' is not a number"
                           f"{more}; data.task: regression needs a finite number in every row")
    return out


def regression_metrics(labels: np.ndarray, values: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    y, v = np.asarray(labels, dtype=np.float64), np.asarray(values, dtype=np.float64)
    constant = len(y) < 2 or np.ptp(y) == 0 or np.ptp(v) == 0  # correlation undefined: 0, not NaN (JSON, selection)
    return {
        "n": int(len(y)),
        "pearson": 0.0 if constant else float(pearsonr(y, v)[0]),
        "spearman": 0.0 if constant else float(spearmanr(y, v)[0]),
        "rmse": float(np.sqrt(np.mean((v - y) ** 2))),
        "mae": float(np.mean(np.abs(v - y))),
    }


class Regression(Task):
    name = "regression"
    problem_type = "regression"
    has_probabilities = False
    weighs_classes = False
    column_dtype = float

    def chosen_metric(self, labels):
        return "pearson", "regression: Pearson correlation"

    def targets(self, values, cfg, label_names, source, rows, cli, hub_names=None):
        """The label column's name is the one output's name."""
        return encode_regression(values, source, cfg.label_column, rows), label_names or [cfg.label_column]

    def split_rows(self, labels, names, cfg, seed, limited):
        # numbers, no classes to stratify on: a seeded random split
        tr, va = random_split(len(labels), cfg.val_size, seed)
        return tr, va, [], []

    def loss(self, logits, labels, label_smoothing=0.0, weight=None):
        import torch.nn.functional as F

        return F.mse_loss(logits.float().squeeze(-1), labels.float())

    def balanced_weights(self, labels, names):
        raise LorafitError("train.class_weights: a regression has no classes to weigh; remove it")

    def batch_score(self, logits, labels):
        """Squared error."""
        return ((logits.float().squeeze(-1) - labels.float()) ** 2).sum()

    def train_scores(self, score_sum, n):
        return {"train_rmse": math.sqrt((score_sum / n).item())}

    def curve_keys(self):
        return "train_rmse", "rmse"

    def metrics(self, labels, logits, names, thresholds=None):
        return regression_metrics(labels, logits[:, 0])

    def decode(self, logits, names, thresholds=None):
        return [float(x) for x in np.asarray(logits)[:, 0]]

    def probabilities(self, logits, temperature=1.0):
        raise LorafitError("a regression predicts a value, not probabilities")

    def probability_columns(self, folder, logits, names, log=None, thresholds=None):
        return self.probabilities(logits)

    def probs_refused(self, run_dir, names):
        return (f"--probs: {run_dir} is a regression run, which predicts a value, not probabilities; drop "
                f"--probs: the label column holds the predicted value (--with-logits adds it as "
                f"logit_{names[0]} too)")

    def request_refused(self, probs):
        return "probs: a regression run predicts a value, not probabilities; drop probs" if probs else None

    def response(self, logits, names, *, temperature=1.0, thresholds=None, probs=False):
        refused = self.request_refused(probs)
        if refused:
            raise LorafitError(refused)
        return {"labels": self.decode(logits, names)}  # the value, as the predictions file's label column

    def report_lines(self, result):
        main = result.get("test") or result["validation"]
        return [f"- {'test' if 'test' in result else 'validation'} RMSE {main['rmse']:.4f}, MAE {main['mae']:.4f}"]
