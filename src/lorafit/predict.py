"""Load a finished run, classify texts in length-sorted batches, restore input order, write CSV.

The label column holds the run's labels (labels.json) as the user wrote them: names, or integers
for integer labels; inputs are checked, and --output probed, before the model loads."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from . import tasks
from .config import DataConfig
from .data.encoding import Encoding
from .data.examples import join_texts, pair_texts, require_all
from .data.tables import read_table
from .errors import LorafitError
from .io import Target, atomic_write_text, output_target, probe_writable, regular_identity
from .infer import engine
from .infer.loaded import from_model, load_run
from .runs.compat import RunFolder, read_run_folder

ID_COLUMNS = ("ID", "id", "Id")


def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 128,
                   device: torch.device | None = None, *, pairs: Optional[list[str]] = None,
                   data: Optional[DataConfig] = None, log: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Logits in input order of a model in memory (tests, benchmarks), computed by the engine (infer/engine.py)
    as for a loaded run. pairs: the second texts of text pairs; data: the run's data settings (its
    truncation), with max_length as given; log: told how many texts were cut to max_length, if any."""
    enc = Encoding(max_length) if data is None else Encoding(max_length, data.truncation, data.head_tokens)
    return engine.logits(from_model(model, tokenizer, enc, device), texts, pairs, batch_size=batch_size, log=log)


def input_config(data: DataConfig, text_columns: Optional[Sequence[str]] = None, label_column: Optional[str] = None,
                 delimiter: Optional[str] = None, text_pair_column: Optional[str] = None, **update) -> DataConfig:
    """The run's data settings with the --text-column / --label-column / --delimiter flags applied.
    --text-column is repeatable or comma-separated and must give as many columns as the run joined."""
    if text_columns:
        cols = [c.strip() for flag in text_columns for c in flag.split(",") if c.strip()]
        if len(cols) != len(data.text_columns):
            n = len(data.text_columns)
            raise LorafitError(f"--text-column: {len(cols)} column{'s' * (len(cols) != 1)} given ({', '.join(cols)}), but "
                               f"the run was trained on {n} ({', '.join(data.text_columns)}); give {n}, in that order")
        update["text_columns"] = cols
    if label_column:
        update["label_column"] = label_column
    if text_pair_column:
        if data.text_pair_column is None:
            raise LorafitError("--text-pair-column: the run was trained on single texts (no data.text_pair_column); "
                               "drop --text-pair-column")
        update["text_pair_column"] = text_pair_column
    try:
        # the run's data.delimiter was for its training files; other files are sniffed unless told
        update["delimiter"] = DataConfig.delimiter_char(delimiter or "auto")
    except ValueError as e:
        raise LorafitError(f"--delimiter: {e}") from None
    return data.model_copy(update=update)


def read_inputs(path: str, text_cfg: DataConfig, allow_pickle: bool, *, text_columns: Optional[Sequence[str]] = None,
                id_column: Optional[str] = None, delimiter: Optional[str] = None, text_pair_column: Optional[str] = None,
                input_format: Optional[str] = None) -> tuple[str, list, list[str], Optional[list[str]]]:
    """(id column name, ids, texts, pair texts or None) of an unlabelled input; ids are the row index when
    there is no --id-column and no ID/id/Id column."""
    text_cfg = input_config(text_cfg, text_columns, delimiter=delimiter, text_pair_column=text_pair_column)
    df = read_table(path, allow_pickle=allow_pickle, field="--input", delimiter=text_cfg.delimiter, fmt=input_format)
    require_all(df, path, {"--text-column": text_cfg.text_columns, "--id-column": [id_column] if id_column else [],
                           "--text-pair-column": [text_cfg.text_pair_column] if text_cfg.text_pair_column else []})
    texts = join_texts(df, text_cfg, path, "--text-column")
    pairs = pair_texts(df, text_cfg, path, "--text-pair-column")
    col = id_column or next((c for c in ID_COLUMNS if c in df.columns), None)
    if col is None:
        return "ID", list(range(len(df))), texts, pairs
    ids = df[col].tolist()
    dup = df[col][df[col].duplicated()].tolist()
    if dup:
        raise LorafitError(f"{path}: column '{col}' has {len(dup)} duplicate ID(s), first {dup[0]!r}; IDs must be unique")
    return col, ids, texts, pairs


def check_output(out: str, input_path: Optional[str] = None) -> Target:
    """Refuse, before the model loads, an --output that cannot be written (output_target's rule: a regular
    file, probed by writing and removing a file beside it; a FIFO or device, checked without opening it,
    as opening a FIFO waits for its reader) or that is the --input file (its texts would be replaced)."""
    if Path(out).is_dir():
        raise LorafitError(f"--output: {out} is a folder; give a file name, e.g. {Path(out) / 'predictions.csv'}")
    try:
        target = output_target(out)
    except LorafitError as e:
        raise LorafitError(f"--output: {e}") from None
    if input_path is not None:
        same = regular_identity(0 if input_path == "-" else input_path)
        if same is not None and same == target.identity():
            raise LorafitError(f"--output: {out} is the --input file {input_path}; the predictions would replace its "
                               "texts; choose another --output")
    if target.file is None:
        if target.fd is not None:
            import fcntl

            writable = fcntl.fcntl(target.fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        else:
            writable = os.access(target.stream, os.W_OK)
        if not writable:
            raise LorafitError(f"--output: {out} cannot be written (opened for reading, or permission denied); "
                               "choose another --output")
        return target
    parent = target.file.parent if Path(out).is_symlink() else Path(out).parent
    if not parent.exists():
        raise LorafitError(f"--output: folder {parent} does not exist")
    if not parent.is_dir():
        raise LorafitError(f"--output: {parent} is a file, not a folder; choose another --output")
    try:
        probe_writable(parent)
    except OSError as e:
        raise LorafitError(f"--output: cannot write in folder {parent} ({e.strerror or e}); choose another --output") from None
    return target


def probability_columns(folder: RunFolder, logits: np.ndarray, names: list[str],
                        log: Optional[Callable[[str], None]] = None, *, task: str = tasks.SINGLE,
                        thresholds: Optional[dict] = None) -> pd.DataFrame:
    """One prob_<label> column per label, as the task writes them (tasks/: single_label's calibrated softmax,
    multi_label's per-label sigmoids, consistent with its thresholds). folder: runs/compat.read_run_folder's."""
    return pd.DataFrame(tasks.get(task).probability_columns(folder, logits, names, log, thresholds))


def empty_rows(texts: Sequence[str], source: str, log: Optional[Callable[[str], None]] = None) -> list[int]:
    """Rows (0-based) whose text is empty or whitespace only, as training drops them (data.examples.filter_texts):
    predict writes an empty label for them and computes nothing. Of a text pair, the first text decides."""
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty and log:
        shown = ", ".join(str(i + 1) for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
        log(f"note: {source}: {len(empty)} empty or whitespace-only text(s) (row{'s' * (len(empty) > 1)} {shown}): "
            "they get an empty label (and empty logit/probability cells); nothing is computed for them")
    return empty


def _spread(values: Sequence, keep: Sequence[int], n: int) -> list:
    """values of the rows in keep, placed in a column of n rows; the other rows None (an empty cell)."""
    out: list = [None] * n
    for i, v in zip(keep, values):
        out[i] = v
    return out


def predict_file(run_dir: str, input_path: str, output_path: str, *, allow_pickle: bool = False,
                 batch_size: int = 128, with_logits: bool = False, text_columns: Optional[Sequence[str]] = None,
                 id_column: Optional[str] = None, delimiter: Optional[str] = None,
                 text_pair_column: Optional[str] = None, probs: bool = False, input_format: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> int:
    target = check_output(output_path, input_path)
    folder = read_run_folder(run_dir)  # the one reader of run folders (older runs: temperature_note)
    cfg, names = folder.cfg, folder.labels
    task = tasks.task_of(cfg)
    if probs and not task.has_probabilities:
        raise LorafitError(task.probs_refused(run_dir, names))
    # bad input: refused before the model loads
    col, ids, texts, pairs = read_inputs(input_path, cfg.data, allow_pickle, text_columns=text_columns,
                                         id_column=id_column, delimiter=delimiter, text_pair_column=text_pair_column,
                                         input_format=input_format)
    empty = set(empty_rows(texts, input_path, log))
    keep = [i for i in range(len(texts)) if i not in empty]
    thresholds = task.read_thresholds(run_dir)
    if keep:
        run = load_run(run_dir)
        cfg, names = run.cfg, run.labels
        logits = engine.logits(run, [texts[i] for i in keep], None if pairs is None else [pairs[i] for i in keep],
                               batch_size=batch_size, log=log)
    else:  # every text empty: no model needed
        logits = np.zeros((0, len(names)), dtype=np.float32)
    labels = task.prediction_column(logits, names, thresholds, cfg.data.label_delimiter)
    # object, not inferred: an empty cell would make integer labels floats (12345678 -> 1.234568e+07)
    kind = task.column_dtype
    frame = pd.DataFrame({col: ids, "label": pd.Series(_spread(labels, keep, len(texts)), dtype=kind)})
    if with_logits:
        for k, name in enumerate(names):
            frame[f"logit_{name}"] = _spread(logits[:, k].tolist(), keep, len(texts))
    if probs:
        p = probability_columns(folder, logits, names, log, task=cfg.data.task, thresholds=thresholds)
        for c in p.columns:
            frame[c] = _spread(p[c].tolist(), keep, len(texts))
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.7g")
    try:
        atomic_write_text(output_path, buf.getvalue())
    except BrokenPipeError:
        raise  # the reader of a pipe left: the CLI's exit 141, as for any writer
    except OSError as e:  # a full disk, a folder that went away: atomic_write_text leaves nothing behind
        kept = "" if target.file is None else "; nothing was written"  # a stream may have taken a part
        raise LorafitError(f"--output: could not write {output_path} ({e.strerror or e}){kept}") from None
    return len(ids)
