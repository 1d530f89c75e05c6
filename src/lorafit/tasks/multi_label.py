"""multi_label: a set of labels per row. Targets are multi-hot rows, the loss is BCE with logits over
every label, and a label is in a row's set when its sigmoid is at or above the label's decision
threshold (0.5 unless tuned at the end of training: thresholds.py, saved as thresholds.json)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..data.label_checks import near_duplicate_warnings
from ..data.labels import infer_label_names, label_key
from ..data.multilabel_split import iterative_split, unvalidated_note
from ..data.splits import checked_val_rows
from ..errors import LorafitError
from .base import DEFAULT_THRESHOLD, THRESHOLDS_FILE, Task, row_number

GRID = np.round(np.arange(0.02, 0.99, 0.02), 2)  # threshold candidates (coarse: a fine grid fits the split's noise)


# ---------------------------------------------------------------- label cells

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
            raise LorafitError(f"{source}: row {row_number(rows, j)}: labels {v!r} in column '{column}' are not a JSON "
                               "list; write [\"a\", \"b\"], or set data.label_delimiter (e.g. '|') to split strings like a|b")
        out.append(labels)
    return out


def encode_multi_label(lists: Sequence[list], names: list[str], key, source: str, column: str,
                       rows: Optional[Sequence[int]] = None, cli: bool = False) -> np.ndarray:
    """Multi-hot rows (float32, n x K) of label lists; key: a label as the label set holds it
    (data.labels.label_key). A label outside the set is an error naming the first such row."""
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
        raise LorafitError(f"{source}: row {row_number(rows, j)}: label {key(x)!r} in column '{column}' is not in the "
                           f"label set {names}{more}; {fix}")
    return out


# ---------------------------------------------------------------- decisions and metrics

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


class MultiLabel(Task):
    name = "multi_label"
    problem_type = "multi_label_classification"
    tuned = True

    def chosen_metric(self, labels):
        return "micro_f1", "multi_label: micro-F1 over every (row, label) decision"

    def targets(self, values, cfg, label_names, source, rows, cli, hub_names=None):
        lists = label_lists(values, cfg.label_delimiter, source, cfg.label_column, rows)
        names = label_names or infer_label_names([x for labels in lists for x in labels], cfg.label_names, None)
        if len(names) < 2:
            raise LorafitError(f"{source}: found {len(names)} label(s) in '{cfg.label_column}'; multi_label needs at least 2")
        return encode_multi_label(lists, names, label_key, source, cfg.label_column, rows, cli), names

    def split_rows(self, labels, names, cfg, seed, limited):
        # label sets: stratified per label, so rare labels get validation positives
        tr, va = iterative_split(labels, checked_val_rows(cfg.val_size, len(labels)), seed)
        note = unvalidated_note(labels[tr], labels[va], names, DEFAULT_THRESHOLD)
        warnings = near_duplicate_warnings(names, (labels > 0.5).sum(axis=0))
        return tr, va, [note] if note else [], warnings

    def loss(self, logits, labels, label_smoothing=0.0, weight=None):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)

    def balanced_weights(self, labels, names):
        """BCE's pos_weight per label: negatives over positives."""
        import torch

        y = np.asarray(labels, dtype=np.float64) > 0.5
        pos = y.sum(axis=0)
        if (pos == 0).any():
            raise LorafitError(f"train.class_weights: balanced: label {names[int(np.argmin(pos))]!r} is in no training "
                               "row, so it has no pos_weight; give weights by label ({label: weight}) or drop it")
        return torch.tensor((len(y) - pos) / pos, dtype=torch.float32)

    def batch_score(self, logits, labels):
        """Rows whose label set is exactly right at threshold 0.5."""
        return ((logits > 0).float() == labels).all(-1).sum().float()

    def curve_keys(self):
        return "train_subset_accuracy", "subset_accuracy"

    def metrics(self, labels, logits, names, thresholds=None):
        return multi_label_metrics(labels, label_sets(logits, names, thresholds), names, thresholds)

    def decode(self, logits, names, thresholds=None):
        return [[names[k] for k in np.flatnonzero(row)] for row in label_sets(logits, names, thresholds)]

    def probabilities(self, logits, temperature=1.0):
        """Each label's own sigmoid: no temperature is fitted for multi_label."""
        return sigmoid(logits)

    def prediction_column(self, logits, names, thresholds, delimiter):
        """Label sets joined by data.label_delimiter, else as JSON lists, so the file reads back as the
        training data did."""
        return [delimiter.join(c) if delimiter else json.dumps(c, ensure_ascii=False)
                for c in self.decode(logits, names, thresholds)]

    def probability_columns(self, folder, logits, names, log: Optional[Callable[[str], None]] = None, thresholds=None):
        """A label is in a row's set exactly when its probability as written is at or above its threshold."""
        if log:
            log(f"note: multi_label probabilities are each label's sigmoid of its logit, not calibrated (temperatures are "
                f"fitted for single_label runs only); a label is in the set when its probability is at or above its "
                f"threshold in {Path(folder.path) / THRESHOLDS_FILE}")
        exact = self.probabilities(logits)
        cells = np.array([[str(v) for v in row] for row in exact.astype(np.float32)], dtype=object).reshape(exact.shape)
        thr = threshold_vector(thresholds, names)
        # a float32 text can round across a threshold (0.41999999 -> "0.42"): there, the exact float64 text
        off = (cells.astype(np.float64) >= thr) != label_sets(logits, names, thresholds)
        cells[off] = [repr(float(v)) for v in exact[off]]
        return {f"prob_{name}": cells[:, k].tolist() for k, name in enumerate(names)}

    def response(self, logits, names, *, temperature=1.0, thresholds=None, probs=False):
        """Each text's label set under the run's tuned thresholds (thresholds.json), as predict decides it;
        probs: each label's sigmoid (no temperature), with the thresholds they were compared to."""
        out: dict = {"labels": self.decode(logits, names, thresholds)}
        if probs:
            out["probs"] = self.probabilities(logits).tolist()
            out["thresholds"] = threshold_vector(thresholds, names).tolist()
        return out

    def report_lines(self, result):
        main = result.get("test") or result["validation"]
        lines = [f"## {'Test' if 'test' in result else 'Validation'} per label", "",
                 "| label | threshold | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
        return lines + [f"| {n} | {c['threshold']:.2f} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1-score']:.4f} | "
                        f"{int(c['support'])} |" for n, c in main["per_label"].items()]

    def read_thresholds(self, run_dir):
        path = Path(run_dir) / THRESHOLDS_FILE
        if not path.is_file():
            raise LorafitError(f"{run_dir}: {THRESHOLDS_FILE} missing; a multi_label run writes it when training finishes")
        return json.loads(path.read_text(encoding="utf-8"))
