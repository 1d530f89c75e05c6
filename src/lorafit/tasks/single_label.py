"""single_label: one class per row. Targets are class ids (data/labels.py reads the cells), the loss is
cross-entropy, the answer is the argmax class, and probabilities are softmax(logits / T) with the run's
fitted temperature (calibration.py)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..data.label_checks import check_class_rows, near_duplicate_warnings
from ..data.labels import encode_labels, infer_label_names
from ..data.splits import stratified_split
from ..errors import LorafitError
from .base import Task


class SingleLabel(Task):
    name = "single_label"
    is_default = True
    class_ids = True
    calibrated = True
    samples_by_class = True

    def chosen_metric(self, labels):
        from ..metrics import IMBALANCE

        counts = np.unique(np.asarray([str(x) for x in labels]), return_counts=True)[1]
        ratio = counts.max() / counts.min()
        if ratio >= IMBALANCE:
            return "macro_f1", f"classes imbalanced (largest {ratio:.1f}x the smallest, >= {IMBALANCE}): macro-F1"
        return "accuracy", f"classes balanced (largest {ratio:.1f}x the smallest, < {IMBALANCE}): accuracy"

    def targets(self, values, cfg, label_names, source, rows, cli, hub_names=None):
        names = label_names or infer_label_names(values, cfg.label_names, hub_names)
        if len(names) < 2:
            raise LorafitError(f"{source}: found {len(names)} label(s) in '{cfg.label_column}'; classification needs at least 2")
        labels = encode_labels(values, names, source, cfg.label_column, ids=bool(cfg.label_names or hub_names), rows=rows,
                               cli=cli, configured=bool(cfg.label_names))
        return labels, names

    def split_rows(self, labels, names, cfg, seed, limited):
        k = len(np.unique(labels))
        if 2 * k > len(labels):
            # no split can hold every class in both parts then; the usual cause is the wrong column
            raise LorafitError(f"{cfg.train}: {k} distinct labels in {len(labels)} rows of column '{cfg.label_column}': most "
                               "labels occur once, so it reads as an id or a number, not classes; point "
                               "data.label_column at the class column")
        check_class_rows(names, labels, cfg.min_class_rows, cfg.train, limited)
        warnings = near_duplicate_warnings(names, np.bincount(labels, minlength=len(names)))
        tr, va = stratified_split(labels, cfg.val_size, seed)
        return tr, va, [], warnings

    def loss(self, logits, labels, label_smoothing=0.0, weight=None):
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)

    def balanced_weights(self, labels, names):
        import torch
        from sklearn.utils.class_weight import compute_class_weight

        k = len(names)
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=k)
        empty = [names[i] for i in range(k) if counts[i] == 0]
        if empty:  # possible when data.label_names names more ids than the training rows hold
            raise LorafitError(f"train.class_weights: balanced: label {empty[0]!r} has no training rows, so it has no "
                               "balanced weight; give weights by label ({label: weight}) or drop it from data.label_names")
        w = compute_class_weight("balanced", classes=np.arange(k), y=np.asarray(labels, dtype=np.int64))
        return torch.tensor(w, dtype=torch.float32)

    def batch_score(self, logits, labels):
        return (logits.argmax(-1) == labels).sum().float()

    def curve_keys(self):
        return "train_accuracy", "accuracy"

    def metrics(self, labels, logits, names, thresholds=None):
        from ..metrics import classification_metrics

        return classification_metrics(labels, logits.argmax(-1), names)

    def decode(self, logits, names, thresholds=None):
        return [names[k] for k in np.asarray(logits).argmax(-1)]

    def probabilities(self, logits, temperature=1.0):
        from ..calibration import softmax

        return softmax(logits, temperature)

    def probability_columns(self, folder, logits, names, log: Optional[Callable[[str], None]] = None, thresholds=None):
        t = folder.temperature  # runs/compat.read_run_folder's: None for a run without calibration.json
        if t is None:
            t = 1.0
            if log:
                log(f"note: {folder.temperature_note}: the probabilities are the plain softmax, not calibrated")
        p = self.probabilities(logits, t).astype(np.float32)
        return {f"prob_{name}": [str(v) for v in p[:, k]] for k, name in enumerate(names)}

    def response(self, logits, names, *, temperature=1.0, thresholds=None, probs=False):
        ids = logits.argmax(-1)
        out: dict = {"labels": [names[k] for k in ids], "label_ids": ids.tolist()}
        if probs:
            out["probs"] = self.probabilities(logits, temperature).tolist()  # calibrated, as predict --probs
        return out
