"""Pure metric functions over label ids (scikit-learn)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score


def classification_metrics(labels: np.ndarray, preds: np.ndarray, names: list[str]) -> dict:
    ids = list(range(len(names)))
    report = classification_report(labels, preds, labels=ids, target_names=names, output_dict=True, zero_division=0)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, labels=ids, average="macro", zero_division=0)),
        "per_class": {n: {k: float(report[n][k]) for k in ("precision", "recall", "f1-score", "support")} for n in names},
        "confusion": confusion_matrix(labels, preds, labels=ids).tolist(),
    }


def higher_is_better(metric: str) -> bool:
    return metric != "loss"
