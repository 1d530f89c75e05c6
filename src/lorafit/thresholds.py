"""multi_label decision thresholds at the end of training: 0.5 per label unless tuning is shown to help.

Tuning a threshold per label on the validation rows and scoring it on the same rows always looks
better, but on a small split it fits the split's noise: a 400-row run's test micro-F1 went from 0.581
at 0.5 to 0.545 tuned, and its subset accuracy from 0.45 to 0.00. So the tuning is cross-fitted: the
validation rows are split in two folds (seeded, stratified per label like the validation split
itself), each fold's thresholds are tuned on the other fold (tasks.tune_thresholds), and every row
gets the decision of thresholds that never saw it. A label keeps 0.5 unless its cross-fitted
decisions raise the run's own metric (train.metric) on those held-out rows; labels are tried best
gain first and kept only while the metric keeps rising (or all of them, when that scores higher).
The labels kept are then tuned on all the validation rows. The record (eval.json's
`threshold_tuning`) says what was compared.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from . import tasks
from .data.multilabel_split import iterative_split

FOLDS = 2
SCORED = ("micro_f1", "macro_f1", "subset_accuracy")  # what thresholds change (the loss does not)


def _score(labels: np.ndarray, preds: np.ndarray, names: list[str], metric: str) -> float:
    return tasks.multi_label_metrics(labels, preds, names, None)[metric]


def choose_thresholds(logits: np.ndarray, labels: np.ndarray, names: list[str], metric: str, seed: int
                      ) -> tuple[dict, dict]:
    """(thresholds {label: t}, record) for validation (logits, labels); deterministic for a seed."""
    metric = metric if metric in SCORED else "micro_f1"  # train.metric: loss does not depend on thresholds
    logits, labels = np.asarray(logits), np.asarray(labels)
    probs = tasks.sigmoid(logits)
    untuned = probs >= tasks.DEFAULT_THRESHOLD
    base = _score(labels, untuned, names, metric)
    record = {"metric": metric, "folds": FOLDS, "seed": seed, "labels": len(names), "untuned": base, "cross_fitted": base,
              "tuned_labels": []}
    keep = {n: tasks.DEFAULT_THRESHOLD for n in names}
    n = len(labels)
    if n < 2 * FOLDS:
        record["note"] = f"{n} validation rows: too few to check a tuning on held-out rows"
        return keep, record
    _, fold = iterative_split(labels, n // FOLDS, seed)
    held = np.zeros(n, dtype=bool)
    held[fold] = True
    crossed = untuned.copy()
    for rows in (held, ~held):  # tuned on the other fold, decided on this one
        thr = tasks.tune_thresholds(logits[~rows], labels[~rows], names)
        crossed[rows] = probs[rows] >= tasks.threshold_vector(thr, names)
    record["cross_fitted_all"] = _score(labels, crossed, names, metric)  # every label tuned, for the record

    def swapped(pred: np.ndarray, k: int) -> np.ndarray:
        out = pred.copy()
        out[:, k] = crossed[:, k]
        return out

    gains = [_score(labels, swapped(untuned, k), names, metric) - base for k in range(len(names))]
    chosen, best, accepted = untuned, base, []
    for k in sorted(range(len(names)), key=lambda k: (-gains[k], k)):
        if gains[k] <= 0:
            break
        trial = swapped(chosen, k)
        s = _score(labels, trial, names, metric)
        if s > best:
            chosen, best = trial, s
            accepted.append(k)
    if record["cross_fitted_all"] > best:  # labels that help only together (subset accuracy): all of them
        best, accepted = record["cross_fitted_all"], list(range(len(names)))
    if accepted:
        full = tasks.tune_thresholds(logits, labels, names)
        keep.update({names[k]: full[names[k]] for k in accepted})
    record.update(cross_fitted=best, tuned_labels=[names[k] for k in sorted(accepted)])
    return keep, record


def describe(record: dict) -> str:
    """One line for the run log and report.md."""
    name = tasks.NAMES[record["metric"]]
    tuned = record["tuned_labels"]
    if record.get("note"):
        return f"decision thresholds: 0.5 for every label ({record['note']})"
    if not tuned:
        return (f"decision thresholds: 0.5 for every label: tuning did not beat 0.5 on held-out validation rows "
                f"(cross-fitted {name} {record['cross_fitted_all']:.4f} with every label tuned, {record['untuned']:.4f} "
                "at 0.5)")
    which = ("every label" if len(tuned) == record["labels"] else
             f"{len(tuned)} of {record['labels']} labels ({', '.join(map(str, tuned))}), 0.5 for the others")
    return (f"decision thresholds: tuned for {which}: cross-fitted {name} {record['cross_fitted']:.4f} on held-out "
            f"validation rows, {record['untuned']:.4f} at 0.5 (thresholds.json)")


def below_untuned(split: str, tuned: dict, labels: np.ndarray, logits: np.ndarray, names: list[str]
                  ) -> tuple[dict, Optional[str]]:
    """The split's scores at 0.5, and a warning when a score with the tuned thresholds is below its untuned one."""
    untuned = tasks.scores(tasks.multi_label_metrics(labels, tasks.label_sets(logits, names, None), names, None))
    worse = [f"{tasks.NAMES[k]} {tuned[k]:.4f} (at 0.5: {v:.4f})" for k, v in untuned.items() if tuned[k] < v]
    if not worse:
        return untuned, None
    return untuned, (f"{split}: the tuned decision thresholds score below 0.5 thresholds: {', '.join(worse)}; "
                     "set the labels in thresholds.json to 0.5 to predict with the untuned decisions")
