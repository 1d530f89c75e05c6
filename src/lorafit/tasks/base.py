"""The interface every data.task implements (Task), and what the tasks share: the headline scores of a
metrics dict and the words a run log uses for them.

A task answers, for its own kind of label: how a label column becomes targets and how those split into
train/validation; the loss and the running training score; the metrics; how logits become answers
(decode), probabilities, a predictions file's columns and a server's response fields; and whether a
temperature (calibration.py) or decision thresholds (thresholds.json) belong to its runs. Text pairs are
an input shape (data.text_pair_column), not a task: every task takes them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

THRESHOLDS_FILE = "thresholds.json"  # multi_label: {label: threshold} tuned on the validation split
DEFAULT_THRESHOLD = 0.5

NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC", "micro_f1": "micro-F1", "subset_accuracy": "subset accuracy",
         "pearson": "Pearson", "spearman": "Spearman", "rmse": "RMSE"}


def row_number(rows: Optional[Sequence[int]], j: int) -> int:
    """The 1-based file row of the j-th value (rows: each value's 0-based row; default its position)."""
    return (j if rows is None else rows[j]) + 1


def scores(m: dict) -> dict:
    """The headline scores of a metrics dict, as a run's metrics.jsonl records them per evaluation."""
    if "pearson" in m:
        return {k: m[k] for k in ("pearson", "spearman", "rmse")}
    if "micro_f1" in m:
        return {k: m[k] for k in ("micro_f1", "macro_f1", "subset_accuracy")}
    return {k: m[k] for k in ("accuracy", "macro_f1", "mcc") if k in m}


def describe(m: dict, sep: str = "") -> str:
    """'accuracy 0.9000 macro-F1 0.8000' (sep=',': 'accuracy 0.9000, macro-F1 0.8000')."""
    return f"{sep} ".join(f"{NAMES[k]} {v:.4f}" for k, v in scores(m).items())


class Task:
    """One data.task. Subclasses override every method that raises NotImplementedError; the flags say
    which run files and options belong to the task."""

    name: str = ""
    problem_type: Optional[str] = None  # transformers' config.problem_type, so a plain reload computes the same loss
    is_default = False       # single_label: eval.json names no task and report.md is the classifier report
    class_ids = False        # integer labels may be a table's class ids (a ClassLabel names them)
    calibrated = False       # a temperature is fitted on validation logits (calibration.json)
    tuned = False            # per-label decision thresholds are chosen at the end of training (thresholds.json)
    has_probabilities = True  # `predict --probs` / the server's probs apply
    weighs_classes = True    # train.class_weights applies
    samples_by_class = False  # train.sampler: balanced applies
    column_dtype: type = object  # the predictions file's label column (object: an empty cell keeps integer labels whole)

    def chosen_metric(self, labels: Sequence) -> tuple[str, str]:
        """(train.metric, why) that `lorafit train --data` picks for this task from the training labels."""
        raise NotImplementedError

    # ------------------------------------------------------------ targets from a table

    def targets(self, values: list, cfg, label_names: Optional[list[str]], source: str, rows: Sequence[int],
                cli: bool, hub_names: Optional[list] = None) -> tuple[np.ndarray, list[str]]:
        """(targets, label names) of a label column's values; a value that does not fit is an error naming
        its row. label_names: the label set the values must belong to (a run's), None to infer it;
        hub_names: the table's own names for integer ids (a ClassLabel), if any."""
        raise NotImplementedError

    def split_rows(self, labels: np.ndarray, names: list[str], cfg, seed: int, limited: Optional[int]
                   ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
        """(train rows, validation rows, notes, warnings) of the training examples' targets."""
        raise NotImplementedError

    # ------------------------------------------------------------ training

    def loss(self, logits, labels, label_smoothing: float = 0.0, weight=None):
        raise NotImplementedError

    def balanced_weights(self, labels: np.ndarray, names: list[str]):
        """train.class_weights: balanced, as a tensor (one weight per output)."""
        raise NotImplementedError

    def batch_score(self, logits, labels):
        """The epoch's second running sum (a tensor), summed over the batch."""
        raise NotImplementedError

    def train_scores(self, score_sum, n) -> dict:
        """The epoch record's score, from batch_score's summed tensor over n items (a tensor)."""
        key = self.curve_keys()[0]
        return {key: (score_sum / n).item()}

    def curve_keys(self) -> tuple[str, str]:
        """(epoch record key, evaluation record key) of the score curves.png plots."""
        raise NotImplementedError

    # ------------------------------------------------------------ outputs

    def metrics(self, labels: np.ndarray, logits: np.ndarray, names: list[str], thresholds: Optional[dict] = None) -> dict:
        raise NotImplementedError

    def decode(self, logits: np.ndarray, names: list[str], thresholds: Optional[dict] = None) -> list:
        """One answer per row: a label, a list of labels, or a value."""
        raise NotImplementedError

    def probabilities(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """n x K probabilities (float64)."""
        raise NotImplementedError

    def prediction_column(self, logits: np.ndarray, names: list[str], thresholds: Optional[dict],
                          delimiter: Optional[str]) -> list:
        """The predictions file's `label` column."""
        return self.decode(logits, names, thresholds)

    def probability_columns(self, folder, logits: np.ndarray, names: list[str],
                            log: Optional[Callable[[str], None]] = None, thresholds: Optional[dict] = None) -> dict:
        """{prob_<label>: [cell text per row]} of `predict --probs`, as float32 in the shortest text that reads
        back to the same float32. folder: the run as runs/compat.read_run_folder reads it (its path, its
        temperature and, when that is None, temperature_note)."""
        raise NotImplementedError

    def response(self, logits: np.ndarray, names: list, *, temperature: float = 1.0,
                 thresholds: Optional[dict] = None, probs: bool = False) -> dict:
        """A server's answer fields for these texts (before `logits`, which the server adds itself): `labels`
        always (the task's answer per text, as the predictions file's label column holds it), then the
        task's own fields; probabilities as `predict --probs` computes them. A request the task refuses
        (request_refused) never gets here."""
        raise NotImplementedError

    def request_refused(self, probs: bool) -> Optional[str]:
        """Why a server request is a client mistake for this task (its 422 detail, naming the field), or None;
        asked before anything is computed."""
        return None

    def probs_refused(self, run_dir, names: list[str]) -> Optional[str]:
        """Why `predict --probs` does not apply (an error line), or None."""
        return None

    def report_lines(self, result: dict) -> list[str]:
        """report.md's task section of a run that is not single_label (single_label has report.write_report)."""
        return []

    # ------------------------------------------------------------ the run directory

    def read_thresholds(self, run_dir: Path) -> Optional[dict]:
        """The run's decision thresholds (thresholds.json) where the task has them; else None."""
        return None

    def save_thresholds(self, run_dir: Path, thresholds: Optional[dict]) -> None:
        if thresholds is not None:
            from ..io import atomic_write_text  # here: io loads torch, which a config check of the task does not need

            atomic_write_text(Path(run_dir) / THRESHOLDS_FILE, json.dumps(thresholds, indent=2))
