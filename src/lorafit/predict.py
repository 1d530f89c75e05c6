"""`lorafit predict`: every row of an input through one or several finished runs into a CSV, in input
order, in bounded memory. The driver of bulk/: the input is read in chunks (bulk/chunks.py), each
chunk's rows checked (bad rows stopped at or skipped, IDs unique: bulk/checks.py), computed by one
RowPredictor (bulk/rows.py: the engine, the tasks' columns) and committed to a resumable output
(bulk/parts.py). Also the in-memory entry point of tests and benchmarks (predict_logits).

The label column holds the run's labels (labels.json) as the user wrote them: names, or integers
for integer labels; the runs, the input's columns and --output are checked before a model loads."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from .bulk.checks import UniqueIds, non_text_cells
from .bulk.chunks import BadRow, open_input
from .bulk.parts import Output, input_identity, run_identity
from .bulk.rows import PredictOptions, RowPredictor, probability_columns  # noqa: F401 (tests import it from here)
from .config import DataConfig
from .data.encoding import Encoding
from .data.examples import input_config, join_texts, pair_texts, require_all  # noqa: F401 (evaluate imports input_config here)
from .data.tables import locate, read_table
from .errors import Interrupted, LorafitError
from .infer import engine
from .infer.loaded import from_model
from .io import Target, output_target, probe_writable, regular_identity
from .progress import progress

ID_COLUMNS = ("ID", "id", "Id")
# input rows read, computed and committed at a time: length sorting happens within a chunk (engine.WINDOW's
# size: it pads about as little as sorting the whole file), and a kill loses at most one chunk
CHUNK_ROWS = engine.WINDOW


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
                 resume: bool = False, overwrite: bool = False, on_bad_row: str = "stop",
                 chunk_rows: int = CHUNK_ROWS, command: Optional[str] = None, ray: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None) -> int:
    """Predict every row of input_path with each run of run_dirs into output_path, a chunk of chunk_rows
    rows at a time (bulk/: read in chunks, computed, appended, committed; see the README's "Predict").
    command: the command line that started it, for the line saying how to resume. ray: a Ray cluster's
    address (bulk/ray_stream.py: the same chunks computed there). Returns the rows written."""
    if chunk_rows < 1:
        raise LorafitError("--chunk-rows: give a positive number of rows")
    if resume and overwrite:  # before Output opens (and, on resume, truncates) the partial file
        raise LorafitError("--resume continues the rows kept, --overwrite discards them: give one")
    if ray is not None:  # before anything is written: Ray installed, the address well formed
        from .bulk.cluster import check_address, import_ray

        check_address(ray)
        import_ray()
    target = check_output(output_path, input_path)
    opts = PredictOptions(text_columns=text_columns, text_pair_column=text_pair_column, id_column=id_column,
                          batch_size=batch_size, with_logits=with_logits, probs=probs, on_bad_row=on_bad_row,
                          delimiter=delimiter, input_format=input_format, allow_pickle=allow_pickle)
    rows = RowPredictor(run_dirs, opts, source=input_path, log=log)
    runs = rows.runs()  # a bad run folder, --probs on regression: refused before the input is read
    loc = locate(input_path, field="--input", fmt=input_format)
    source = open_input(input_path, fmt=input_format, delimiter=runs[0].text_cfg.delimiter, allow_pickle=allow_pickle)
    identity = {"input": input_identity(input_path, loc.kind), "runs": [run_identity(r) for r in rows.run_dirs],
                "options": {**dataclasses.asdict(opts), "chunk_rows": chunk_rows, "columns": rows.columns()}}
    bad_path = None
    if on_bad_row == "skip":
        if target.file is None:
            raise LorafitError("--on-bad-row skip: the skipped rows are listed in OUTPUT.bad_rows.jsonl, beside a file "
                               "--output; write to a file, or use --on-bad-row stop")
        bad_path = target.file.with_name(target.file.name + ".bad_rows.jsonl")
    try:
        out = Output(target, output_path, identity, resume=resume, overwrite=overwrite, bad_rows=bad_path)
    except OSError as e:
        raise LorafitError(f"--output: cannot write beside {output_path} ({e.strerror or e})") from None
    resume_line = f"{command} --resume" if command else "the same command with --resume"
    try:
        if out.note and log:
            log(out.note)
        if ray is None:
            written = _stream(source, rows, out, input_path, opts, chunk_rows, resume_line)
        else:
            from .bulk.ray_stream import computed_chunks

            with computed_chunks(ray, input_path, rows, opts, chunk_rows, done=out.rows) as remote:
                written = _stream(remote, remote.rows, out, input_path, opts, chunk_rows, resume_line)
    except KeyboardInterrupt:
        kept = out.abandon()
        if target.file is None:
            raise Interrupted(f"interrupted: {out.rows:,} input rows were written to {out.kept_in}; a stream cannot be "
                              "resumed") from None
        if not kept:
            raise Interrupted("interrupted before any row was predicted; nothing was kept") from None
        raise Interrupted(f"interrupted: the predictions of the first {out.rows:,} input rows are kept in {out.kept_in}; "
                          f"to continue: {resume_line}") from None
    except BrokenPipeError:
        out.abandon()
        raise  # the reader of a pipe left: the CLI's exit 141, as for any writer
    except OSError as e:  # a full disk, a folder that went away: the committed rows stay, resumable
        kept = out.abandon()
        what = f"; the first {out.rows:,} input rows are kept: to continue, {resume_line}" if kept else (
            "" if target.file is None else "; nothing was written")
        raise LorafitError(f"--output: could not write {output_path} ({e.strerror or e}){what}") from None
    except BaseException:
        out.abandon()
        raise
    finally:
        source.close()
    rows.finish()
    out.finish()
    if out.bad_count and log:
        log(f"note: {out.bad_count:,} bad row(s) skipped, listed in {bad_path}")
    return written


def _stream(source, rows: RowPredictor, out: Output, input_path: str, opts: PredictOptions, chunk_rows: int,
            resume_line: str) -> int:
    """The chunks of source through rows into out; rows written (resumed ones included)."""
    ids, col, bar, position = UniqueIds(), None, None, 0
    done = out.rows
    for chunk in source.chunks(chunk_rows):
        frame = chunk.frame
        if col is None:  # the first chunk: columns checked once, all missing ones in one message
            require_all(frame, input_path, {**rows.input_columns(),
                                            "--id-column": [opts.id_column] if opts.id_column else []})
            col = opts.id_column or next((c for c in ID_COLUMNS if c in frame.columns), None)
            if out.fresh:
                out.commit(pd.DataFrame(columns=[col or "ID", *rows.columns()]).to_csv(index=False), 0, offset=0)
        for c in rows.input_columns()["--text-column"] + rows.input_columns()["--text-pair-column"]:
            if c not in frame.columns:  # a JSON record set whose earlier chunks never named it: empty texts
                frame[c] = None
        bad = {b.row: b for b in chunk.bad}
        for row, why in non_text_cells(frame, rows.input_columns()["--text-column"]).items():
            bad[row] = BadRow(row, chunk.where(row), why, None, chunk.offset_of(row))
        id_values = frame[col] if col is not None else pd.Series(frame.index, index=frame.index)
        ok = [r for r in frame.index if r not in bad]
        for k in ids.add(id_values.loc[ok].tolist()):
            r = ok[k]
            bad[r] = BadRow(r, chunk.where(r), f"duplicate ID {id_values.loc[r]!r} in column '{col}' (an earlier row "
                            "has it); IDs must be unique", None, chunk.offset_of(r))
        todo = [r for r in frame.index if r >= done and r not in bad]
        late_bad = sorted((b for b in bad.values() if b.row >= done), key=lambda b: b.row)
        if late_bad and opts.on_bad_row == "stop":
            # the chunks before this one stay committed; this one is dropped (at most --chunk-rows rows to
            # compute again), so that a resume after the fix cuts the input into the same chunks: the same file
            stop = late_bad[0]
            kept = (f"the predictions of the first {out.rows:,} rows are kept: fix it and run {resume_line}"
                    if out.rows and out.target.file is not None else
                    f"{out.rows:,} rows went to {out.kept_in} (a stream: nothing to resume): fix it and run again"
                    if out.rows else "nothing was written: fix it and run again")
            if bar is not None:
                bar.close()
            raise LorafitError(f"{input_path}: {stop.where}: {stop.reason}; {kept}, or skip such rows with "
                               "--on-bad-row skip")
        if chunk.end > done:  # else rows committed before a resume: read again for their IDs only
            if bar is None:  # the estimate of time left: from the input's bytes (rows differ in length), else rows
                bar = progress(total=source.total_bytes or source.total_rows, desc="predicting",
                               unit=" B" if source.total_bytes else " rows", initial=position, leave=False)
                started, first = time.monotonic(), out.written
            result = rows(frame.loc[todo])
            result.insert(0, col or "ID", id_values.loc[todo].to_numpy(dtype=object) if len(todo) else [])
            text = result.to_csv(index=False, header=False, float_format="%.7g")
            out.commit(text, chunk.end, [_bad_line(b, input_path) for b in late_bad], written=len(todo),
                       offset=chunk.offset)
            bar.set_postfix_str(f"{out.written:,} rows written, "
                                f"{(out.written - first) / max(time.monotonic() - started, 1e-9):,.1f} rows/s")
            bar.update(chunk.position - bar.n)
        position = chunk.position
    if bar is not None:
        bar.close()
    return out.written


def _bad_line(b: BadRow, source: str) -> str:
    return json.dumps({"row": b.row + 1, "where": f"{source}: {b.where}", "reason": b.reason, "raw": b.raw},
                      ensure_ascii=False) + "\n"
