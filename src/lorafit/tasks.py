"""What each data.task means: single_label (one class per row), multi_label (a set of labels per row)
and regression (a number per row). Their targets as read from a table, the loss, outputs to
predictions, the metrics, the per-label decision thresholds of multi_label, and the words a run log
and a predictions file use for them. single_label's own code paths are elsewhere and unchanged
(data/examples.py, metrics.py); this module adds the other two.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import LorafitError

SINGLE, MULTI, REGRESSION = "single_label", "multi_label", "regression"
THRESHOLDS_FILE = "thresholds.json"  # multi_label: {label: threshold} tuned on the validation split
DEFAULT_THRESHOLD = 0.5
GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)  # threshold candidates (coarse: a fine grid fits the split's noise)


# ---------------------------------------------------------------- targets from a table

def _row(rows: Optional[Sequence[int]], j: int) -> int:
    return (j if rows is None else rows[j]) + 1


def label_list(v, delimiter: Optional[str]) -> Optional[list]:
    """A multi-label cell as a list of labels: a list/array (JSON, Parquet), a JSON list in a string, a
    string split on the delimiter, or one label. None when it cannot be read."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    if not isinstance(v, str):
        return [v]
    text = v.strip()
    if delimiter is not None:
        return [p.strip() for p in text.split(delimiter) if p.strip()]
    if text.startswith("["):
        try:
            got = json.loads(text)
        except json.JSONDecodeError:
            return None
        return got if isinstance(got, list) else None
    return [text]


def label_lists(values: Sequence, delimiter: Optional[str], source: str, column: str,
                rows: Optional[Sequence[int]] = None) -> list[list]:
    """Every multi-label cell as a list (label_list); one that cannot be read is an error naming its row."""
    out = []
    for j, v in enumerate(values):
        labels = label_list(v, delimiter)
        if labels is None:
            raise LorafitError(_unreadable(v, j, rows, source, column))
        out.append(labels)
    return out


def _unreadable(v, j, rows, source, column) -> str:
    return (f"{source}: row {_row(rows, j)}: labels {v!r} in column '{column}' are not a JSON list; write "
            "[\"a\", \"b\"], or set data.label_delimiter (e.g. '|') to split strings like a|b")


def encode_multi_label(lists: Sequence[list], names: list[str], key, source: str, column: str,
                       rows: Optional[Sequence[int]] = None, cli: bool = False) -> np.ndarray:
    """Multi-hot rows (float32, n x K) of label lists; key: a label as the label set holds it
    (data.examples.label_key). A label outside the set is an error naming the first such row."""
    index = {key(n): i for i, n in enumerate(names)}
    out = np.zeros((len(lists), len(names)), dtype=np.float32)
    bad: list[tuple[int, object]] = []
    for j, labels in enumerate(lists):
        for x in labels:
            i = index.get(key(x))
            if i is None:
                bad.append((j, x))
            else:
                out[j, i] = 1.0
    if bad:
        j, x = bad[0]
        n_rows = len({b for b, _ in bad})
        fix = "fix the row: the run knows only these labels" if cli else "fix the row or add it to data.label_names"
        more = f" ({n_rows} of {len(lists)} rows name labels outside it)" if len(lists) > 1 else ""
        raise LorafitError(f"{source}: row {_row(rows, j)}: label {key(x)!r} in column '{column}' is not in the "
                           f"label set {names}{more}; {fix}")
    return out


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
        raise LorafitError(f"{source}: row {_row(rows, j)}: target {values[j]!r} in column '{column}' is not a number"
                           f"{more}; data.task: regression needs a finite number in every row")
    return out


# ---------------------------------------------------------------- training

def loss(task: str, logits, labels, label_smoothing: float = 0.0, weight=None):
    """single_label: cross-entropy (weight: train.class_weights per class); multi_label: BCE with logits
    over every label (weight: its pos_weight per label); regression: MSE of the one output."""
    import torch.nn.functional as F

    if task == MULTI:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)
    if task == REGRESSION:
        return F.mse_loss(logits.float().squeeze(-1), labels.float())
    return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)


def batch_score(task: str, logits, labels):
    """The epoch's second running sum: correct items (single_label), rows whose label set is exactly right
    at threshold 0.5 (multi_label), squared error (regression)."""
    if task == MULTI:
        return ((logits > 0).float() == labels).all(-1).sum().float()
    if task == REGRESSION:
        return ((logits.float().squeeze(-1) - labels.float()) ** 2).sum()
    return (logits.argmax(-1) == labels).sum().float()


def train_scores(task: str, score_sum, n) -> dict:
    """The epoch record's score, from batch_score's summed tensor over n items (a tensor)."""
    if task == MULTI:
        return {"train_subset_accuracy": (score_sum / n).item()}
    if task == REGRESSION:
        return {"train_rmse": math.sqrt((score_sum / n).item())}
    return {"train_accuracy": (score_sum / n).item()}


def problem_type(task: str) -> Optional[str]:
    """transformers' name for the task (config.problem_type), so a plain reload computes the same loss."""
    return {MULTI: "multi_label_classification", REGRESSION: "regression"}.get(task)


# ---------------------------------------------------------------- outputs to predictions and metrics

def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def threshold_vector(thresholds: Optional[dict], names: list[str]) -> np.ndarray:
    return np.array([(thresholds or {}).get(n, DEFAULT_THRESHOLD) for n in names], dtype=np.float64)


def label_sets(logits: np.ndarray, names: list[str], thresholds: Optional[dict]) -> np.ndarray:
    """multi_label decisions (n x K bool): probability at or above each label's threshold."""
    return sigmoid(logits) >= threshold_vector(thresholds, names)


def tune_thresholds(logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Per label, the threshold on GRID with the best F1 on these (validation) rows; ties go to the one
    nearest 0.5, and a label without positive rows keeps 0.5."""
    probs = sigmoid(logits)
    out = {}
    for k, name in enumerate(names):
        y = labels[:, k] > 0.5
        if not y.any():
            out[name] = DEFAULT_THRESHOLD
            continue
        pred = probs[:, k][None, :] >= GRID[:, None]  # grid x n
        tp = (pred & y).sum(1)
        f1 = 2 * tp / np.maximum(pred.sum(1) + y.sum(), 1)
        best = np.flatnonzero(f1 == f1.max())
        out[name] = float(GRID[best[np.argmin(np.abs(GRID[best] - DEFAULT_THRESHOLD))]])
    return out


def metrics(task: str, labels: np.ndarray, logits: np.ndarray, names: list[str], thresholds: Optional[dict] = None) -> dict:
    if task == MULTI:
        return multi_label_metrics(labels, label_sets(logits, names, thresholds), names, thresholds)
    if task == REGRESSION:
        return regression_metrics(labels, logits[:, 0])
    from .metrics import classification_metrics

    return classification_metrics(labels, logits.argmax(-1), names)


def multi_label_metrics(labels: np.ndarray, preds: np.ndarray, names: list[str], thresholds: Optional[dict]) -> dict:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y, p = labels > 0.5, np.asarray(preds, dtype=bool)
    prec, rec, f1, support = precision_recall_fscore_support(y, p, average=None, labels=list(range(len(names))),
                                                             zero_division=0)
    thr = threshold_vector(thresholds, names)
    return {
        "n": int(len(y)),
        "micro_f1": float(f1_score(y, p, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
        "subset_accuracy": float((y == p).all(1).mean()),
        "per_label": {n: {"precision": float(prec[k]), "recall": float(rec[k]), "f1-score": float(f1[k]),
                          "support": float(support[k]), "threshold": float(thr[k])} for k, n in enumerate(names)},
    }


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


def scores(m: dict) -> dict:
    """The headline scores of a metrics dict, as a run's metrics.jsonl records them per evaluation."""
    if "pearson" in m:
        return {k: m[k] for k in ("pearson", "spearman", "rmse")}
    if "micro_f1" in m:
        return {k: m[k] for k in ("micro_f1", "macro_f1", "subset_accuracy")}
    return {k: m[k] for k in ("accuracy", "macro_f1", "mcc") if k in m}


NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC", "micro_f1": "micro-F1", "subset_accuracy": "subset accuracy",
         "pearson": "Pearson", "spearman": "Spearman", "rmse": "RMSE"}


def describe(m: dict, sep: str = "") -> str:
    """'accuracy 0.9000 macro-F1 0.8000' (sep=',': 'accuracy 0.9000, macro-F1 0.8000')."""
    return f"{sep} ".join(f"{NAMES[k]} {v:.4f}" for k, v in scores(m).items())


def curve_keys(task: str) -> tuple[str, str]:
    """(epoch record key, evaluation record key) of the score curves.png plots."""
    if task == MULTI:
        return "train_subset_accuracy", "subset_accuracy"
    if task == REGRESSION:
        return "train_rmse", "rmse"
    return "train_accuracy", "accuracy"


def prediction_columns(task: str, logits: np.ndarray, names: list[str], thresholds: Optional[dict],
                       delimiter: Optional[str]) -> list:
    """The predictions file's `label` column: a class, a label set (joined by data.label_delimiter, else a
    JSON list, so the file reads back as the training data did), or a value."""
    if task == MULTI:
        sets = label_sets(logits, names, thresholds)
        chosen = [[names[k] for k in np.flatnonzero(row)] for row in sets]
        return [delimiter.join(c) if delimiter else json.dumps(c, ensure_ascii=False) for c in chosen]
    if task == REGRESSION:
        return [float(x) for x in logits[:, 0]]
    return [names[k] for k in logits.argmax(-1)]


# ---------------------------------------------------------------- the run directory

def save_thresholds(run_dir: Path, thresholds: Optional[dict]) -> None:
    from .io import atomic_write_text

    if thresholds is not None:
        atomic_write_text(Path(run_dir) / THRESHOLDS_FILE, json.dumps(thresholds, indent=2))


def read_thresholds(run_dir: Path, task: str) -> Optional[dict]:
    """A multi_label run's tuned thresholds (thresholds.json); None for other tasks."""
    if task != MULTI:
        return None
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        raise LorafitError(f"{run_dir}: {THRESHOLDS_FILE} missing; a multi_label run writes it when training finishes")
    return json.loads(path.read_text(encoding="utf-8"))
