"""`lorafit evaluate`: a finished run's metrics on a labelled file, its labels checked by value
against the run's before the model loads."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from .calibration import split_summary
from . import tasks
from .data.examples import load_labelled
from .infer import engine
from .infer.loaded import load_run
from .runs.directory import read_run
from .predict import input_config


def evaluate_file(run_dir: str, data_path: str, *, allow_pickle: bool = False, batch_size: int = 128,
                  text_columns: Optional[Sequence[str]] = None, label_column: Optional[str] = None,
                  delimiter: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
                  text_pair_column: Optional[str] = None, input_format: Optional[str] = None) -> dict:
    """Metrics of a run on a labelled file, whose labels are checked against the run's by value."""
    cfg, names = read_run(run_dir)
    data_cfg = input_config(cfg.data, text_columns, label_column, delimiter, text_pair_column,
                            allow_pickle=allow_pickle or cfg.data.allow_pickle)
    ex, _, notes = load_labelled(data_path, data_cfg, cfg.data.test_split, names, "--data",  # checked before the model loads
                                 fmt=input_format)
    for note in notes if log else ():
        log(f"data: {note}")
    thresholds = tasks.task_of(cfg).read_thresholds(run_dir)
    run = load_run(run_dir)
    cfg, names = run.cfg, run.labels
    logits = engine.logits(run, ex.texts, ex.pairs, batch_size=batch_size, log=log)
    metrics = tasks.task_of(cfg).metrics(ex.labels, logits, names, thresholds)
    temperature = run.temperature if tasks.task_of(cfg).calibrated else None
    if temperature is not None:  # the ECE of what `predict --probs` gives, and of the plain softmax
        metrics["calibration"] = {"temperature": temperature, **split_summary(logits, ex.labels, temperature)}
    return metrics
