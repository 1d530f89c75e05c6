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
from .bulk.rows import PredictOptions, RowPredictor, probability_columns  # noqa: F401 (tests import it from here)
from .data.examples import input_config, join_texts, pair_texts, require_all  # noqa: F401 (evaluate imports input_config here)
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


def predict_file(run_dirs: Sequence[str] | str, input_path: str, output_path: str, *, allow_pickle: bool = False,
                 batch_size: int = 128, with_logits: bool = False, text_columns: Optional[Sequence[str]] = None,
                 id_column: Optional[str] = None, delimiter: Optional[str] = None,
                 text_pair_column: Optional[str] = None, probs: bool = False, input_format: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> int:
    target = check_output(output_path, input_path)
    opts = PredictOptions(text_columns=text_columns, text_pair_column=text_pair_column, id_column=id_column,
                          batch_size=batch_size, with_logits=with_logits, probs=probs, delimiter=delimiter,
                          input_format=input_format, allow_pickle=allow_pickle)
    rows = RowPredictor(run_dirs, opts, source=input_path, log=log)
    rows.runs()  # a bad run folder, --probs on regression: refused before the input is read
    first = rows.runs()[0]
    col, ids, _, _ = read_inputs(input_path, first.cfg.data, allow_pickle, text_columns=text_columns,
                                 id_column=id_column, delimiter=delimiter, text_pair_column=text_pair_column,
                                 input_format=input_format)
    df = read_table(input_path, allow_pickle=allow_pickle, field="--input", delimiter=first.text_cfg.delimiter,
                    fmt=input_format)
    frame = rows(df)
    rows.finish()
    frame.insert(0, col, ids)
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
