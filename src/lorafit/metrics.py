"""Pure metric functions over label ids (scikit-learn)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, matthews_corrcoef


def classification_metrics(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> dict:
    ids = list(range(len(names)))
    report = classification_report(labels, preds, labels=ids, target_names=names, output_dict=True, zero_division=0)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=ids, average="macro", zero_division=0)),
        # Matthews correlation (CoLA's metric; the multiclass R_K form): 0 for constant predictions
        "mcc": float(matthews_corrcoef(labels, preds)) if len(labels) else 0.0,
        "per_class": {n: {k: float(report[n][k]) for k in ("precision", "recall", "f1-score", "support")} for n in names},
        "confusion": confusion_matrix(labels, preds, labels=ids).tolist(),
    }


def higher_is_better(metric: str) -> bool:
    return metric not in ("loss", "rmse")


IMBALANCE = 4  # largest class >= 4x the smallest: accuracy starts to reward ignoring the small ones


def imbalance_note(labels: np.ndarray, names: list[str], metric: str) -> str | None:
    """A run-log note when classes are imbalanced and the best checkpoint is picked by accuracy."""
    if np.asarray(labels).ndim != 1 or np.asarray(labels).dtype.kind not in "iu":
        return None  # no classes to count: regression targets, multi-label rows
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    big, small = int(counts.argmax()), int(counts.argmin())
    if metric != "accuracy" or counts[big] < IMBALANCE * counts[small]:
        return None
    n = counts.sum()
    return (f"classes are imbalanced (largest '{names[big]}' {counts[big] / n:.0%}, smallest '{names[small]}' "
            f"{counts[small] / n:.0%} of the training rows); train.metric: accuracy can keep a model that ignores "
            "the small classes: consider train.metric: macro_f1 or mcc, and train.class_weights: balanced")


def never_predicted(m: dict, names: list[str], split: str = "validation") -> str | None:
    """A warning when classes that have items in `split` are never predicted (the model collapsed onto the others)."""
    if "confusion" not in m:
        return None  # multi_label, regression: no one class per item
    cm = np.asarray(m["confusion"])
    missing = [names[i] for i in range(len(names)) if cm[i].sum() > 0 and cm[:, i].sum() == 0]
    if not missing:
        return None
    shown = ", ".join(f"'{x}'" for x in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return (f"the model never predicts {shown} on {split} ({len(missing)} of {len(names)} classes): accuracy "
            f"{m['accuracy']:.4f} but macro-F1 {m['macro_f1']:.4f}; try train.metric: macro_f1, train.class_weights: "
            "balanced, more epochs or a higher optim.lr, or more rows of those classes")
