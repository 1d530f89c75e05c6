"""Rows in, prediction columns out: what `lorafit predict` computes for one chunk of its input, for
one run or several in one pass. The local driver (predict.py) and a Ray Data `map_batches` actor both
call a RowPredictor on pandas frames, so both write the same columns, cell for cell.

Columns. One run: `label`, then with --with-logits `logit_<label>` per class, with --probs
`prob_<label>` per label (as lorafit always wrote them). Several runs: the same per run, named after
the run's folder: `label_<run>`, `logit_<run>_<label>`, `prob_<run>_<label>`, run after run in the
order given. An empty or whitespace-only text (of a pair, the first text decides) gets empty cells
and is not computed, as training drops such rows; one note at the end names how many and the first.

The runs load on the first chunk that has a text to compute (a Ray actor builds the object on the
driver, pickles it and loads its runs where it runs); runs over one base share one copy of it
(infer/pool.BasePool)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from .. import tasks
from ..data.examples import input_config, join_texts, pair_texts
from ..errors import LorafitError

ON_BAD_ROW = ("stop", "skip")


@dataclass
class PredictOptions:
    """What `lorafit predict`'s flags say about reading and writing rows."""
    text_columns: Optional[Sequence[str]] = None  # --text-column, as given (None: each run's data.text_columns)
    text_pair_column: Optional[str] = None        # --text-pair-column (None: the run's)
    id_column: Optional[str] = None               # --id-column (None: ID, id or Id if present, else the row number)
    batch_size: int = 128                         # texts per forward
    with_logits: bool = False                     # logit_<label> columns
    probs: bool = False                           # prob_<label> columns
    on_bad_row: str = "stop"                      # a malformed row: "stop" (named, resumable) or "skip" (listed)
    delimiter: Optional[str] = None               # --delimiter of a csv/tsv input (None: sniffed)
    input_format: Optional[str] = None            # --input-format
    allow_pickle: bool = False                    # --allow-pickle


def run_names(run_dirs: Sequence[str]) -> list[str]:
    """Each run's name in column names: its folder's name. Two runs with one name would give two
    columns of one name, so they are refused."""
    names = [Path(str(r).rstrip("/")).resolve().name or str(r) for r in run_dirs]
    seen: dict[str, str] = {}
    for r, n in zip(run_dirs, names):
        if n in seen:
            same = Path(seen[n]).resolve() == Path(r).resolve()
            raise LorafitError(f"{r}: given twice" if same else
                               f"{seen[n]} and {r}: two runs named '{n}' would give one column name (label_{n}); "
                               "predict them in two passes, or give one a folder of another name (a symbolic link)")
        seen[n] = str(r)
    return names


class _Run:
    """One run's settings as the rows need them (no weights yet)."""

    def __init__(self, run_dir: str, prefix: str, opts: PredictOptions):
        from ..runs.compat import read_run_folder

        self.run_dir = run_dir
        self.folder = read_run_folder(run_dir)  # the one reader of run folders (older runs: temperature_note)
        self.cfg, self.names = self.folder.cfg, list(self.folder.labels)
        self.task = tasks.task_of(self.cfg)
        if opts.probs and not self.task.has_probabilities:
            raise LorafitError(self.task.probs_refused(run_dir, self.names))
        self.thresholds = self.task.read_thresholds(Path(run_dir))  # refuses a tuned run without its thresholds
        self.text_cfg = input_config(self.cfg.data, opts.text_columns, delimiter=opts.delimiter,
                                     text_pair_column=opts.text_pair_column)
        self.prefix = prefix  # "" for one run, "<run>_" for several
        self.loaded = None
        self.cut = self.computed = 0  # texts cut to max_length / computed, for the note at the end

    @property
    def label_column(self) -> str:
        return f"label_{self.prefix[:-1]}" if self.prefix else "label"

    def columns(self, opts: PredictOptions) -> list[str]:
        cols = [self.label_column]
        if opts.with_logits:
            cols += [f"logit_{self.prefix}{n}" for n in self.names]
        if opts.probs:
            cols += [f"prob_{self.prefix}{n}" for n in self.names]
        return cols

    def text_key(self) -> tuple:
        c = self.text_cfg
        return tuple(c.text_columns), c.text_separator, c.text_pair_column


def _spread(values: Sequence, keep: Sequence[int], n: int) -> list:
    """values of the rows in keep, placed in a column of n rows; the other rows None (an empty cell)."""
    out: list = [None] * n
    for i, v in zip(keep, values):
        out[i] = v
    return out


def probability_columns(folder, logits: np.ndarray, names: list[str], log: Optional[Callable[[str], None]] = None,
                        *, task: str = tasks.SINGLE, thresholds: Optional[dict] = None) -> pd.DataFrame:
    """One prob_<label> column per label, as the task writes them (tasks/: single_label's calibrated softmax,
    multi_label's per-label sigmoids, consistent with its thresholds). folder: runs/compat.read_run_folder's."""
    return pd.DataFrame(tasks.get(task).probability_columns(folder, logits, names, log, thresholds))


class RowPredictor:
    """frame -> the prediction columns of its rows (see the module docstring). Cheap to build and to
    pickle (run folders are read on first use, weights on the first text to compute). source: the
    input's name, for notes; log: where notes go (each said once; None: kept in .notes)."""

    def __init__(self, run_dirs: Sequence[str] | str, opts: Optional[PredictOptions] = None, device=None, *,
                 source: str = "input", log: Optional[Callable[[str], None]] = None):
        self.run_dirs = [str(run_dirs)] if isinstance(run_dirs, (str, Path)) else [str(r) for r in run_dirs]
        if not self.run_dirs:
            raise LorafitError("predict: give at least one run folder")
        self.opts = opts or PredictOptions()
        if self.opts.on_bad_row not in ON_BAD_ROW:
            raise LorafitError(f"--on-bad-row: '{self.opts.on_bad_row}'; use stop or skip")
        self.device, self.source, self.log = device, source, log
        self.notes: list[str] = []
        self._runs: Optional[list[_Run]] = None
        self._pool = None
        self._empty: dict[tuple, list] = {}  # text settings -> [count, first rows (1-based, at most 5)]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_runs=None, _pool=None, log=None)  # the loaded models and a callback do not travel
        return state

    # ------------------------------------------------------------ settings

    def runs(self) -> list[_Run]:
        """The runs' settings, read once (a bad run folder, --probs on regression: refused here, before weights)."""
        if self._runs is None:
            names = run_names(self.run_dirs)
            one = len(self.run_dirs) == 1
            self._runs = [_Run(d, "" if one else f"{n}_", self.opts) for d, n in zip(self.run_dirs, names)]
        return self._runs

    def columns(self) -> list[str]:
        """The output's column names but the ID column, in order."""
        return [c for r in self.runs() for c in r.columns(self.opts)]

    def input_columns(self) -> dict[str, list[str]]:
        """{flag: columns} an input must have (for data.examples.require_all, on the first chunk)."""
        texts = sorted({c for r in self.runs() for c in r.text_cfg.text_columns},
                       key=lambda c: min(r.text_cfg.text_columns.index(c) for r in self.runs()
                                         if c in r.text_cfg.text_columns))
        pairs = sorted({r.text_cfg.text_pair_column for r in self.runs() if r.text_cfg.text_pair_column})
        return {"--text-column": texts, "--text-pair-column": pairs}

    def _say(self, line: str) -> None:
        if line in self.notes:
            return
        self.notes.append(line)
        if self.log:
            self.log(line)

    def _load(self, run: _Run):
        if run.loaded is None:
            if self._pool is None:
                from ..infer.pool import BasePool

                self._pool = BasePool(self.device, expected=[r.cfg for r in self.runs()])
            run.loaded = self._pool.load(run.run_dir, run.cfg).loaded
        return run.loaded

    # ------------------------------------------------------------ rows

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One output row per row of frame, in its order and with its index; no ID column. The frame's
        index is taken for the rows' numbers (0-based, in the whole input) in notes."""
        from ..infer import engine

        n = len(frame)
        out: dict[str, object] = {}
        texts_of: dict[tuple, tuple] = {}  # runs that join the same columns share the joined texts
        for run in self.runs():
            key = run.text_key()
            if key not in texts_of:
                texts = join_texts(frame, run.text_cfg, self.source, "--text-column")
                pairs = pair_texts(frame, run.text_cfg, self.source, "--text-pair-column")
                keep = [i for i, t in enumerate(texts) if t.strip()]
                self._count_empty(key, frame.index, n, keep)
                texts_of[key] = ([texts[i] for i in keep], None if pairs is None else [pairs[i] for i in keep], keep)
            texts, pairs, keep = texts_of[key]
            logits = np.zeros((len(keep), len(run.names)), dtype=np.float32)
            if keep:
                loaded = self._load(run)
                for idx, part in engine.iter_logits(loaded, texts, pairs, batch_size=self.opts.batch_size,
                                                    window=len(texts), on_cut=lambda c, r=run: _add_cut(r, c)):
                    logits[idx] = part
                run.computed += len(keep)
            labels = run.task.prediction_column(logits, run.names, run.thresholds, run.cfg.data.label_delimiter)
            # object, not inferred: an empty cell would make integer labels floats (12345678 -> 1.234568e+07)
            out[run.label_column] = pd.Series(_spread(labels, keep, n), dtype=run.task.column_dtype, index=frame.index)
            if self.opts.with_logits:
                for k, name in enumerate(run.names):
                    out[f"logit_{run.prefix}{name}"] = _spread(logits[:, k].tolist(), keep, n)
            if self.opts.probs:
                p = run.task.probability_columns(run.folder, logits, run.names, self._say, run.thresholds)
                for k, name in enumerate(run.names):
                    out[f"prob_{run.prefix}{name}"] = _spread(p[f"prob_{name}"], keep, n)
        return pd.DataFrame(out, index=frame.index, columns=self.columns())

    def _count_empty(self, key: tuple, index, n: int, keep: list[int]) -> None:
        if len(keep) == n:
            return
        kept = set(keep)
        seen = self._empty.setdefault(key, [0, []])
        rows = [int(index[i]) + 1 for i in range(n) if i not in kept]
        seen[0] += len(rows)
        seen[1] = (seen[1] + rows)[:5]

    def finish(self) -> None:
        """Say the notes of the whole input: empty texts, texts cut to max_length (once, not per chunk)."""
        from ..data.encoding import truncation_note

        for count, first in self._empty.values():
            shown = ", ".join(str(i) for i in first[:5]) + (", ..." if count > 5 else "")
            self._say(f"note: {self.source}: {count} empty or whitespace-only text(s) (row{'s' * (count > 1)} {shown}): "
                      "they get an empty label (and empty logit/probability cells); nothing is computed for them")
        for run in self._runs or []:
            if run.loaded is not None:
                note = truncation_note(run.cut, run.computed, run.loaded.encoding, run.text_cfg.text_pair_column is not None)
                if note:
                    self._say(f"note: {note}" if len(self._runs) == 1 else f"note: {Path(run.run_dir).name}: {note}")


def _add_cut(run: _Run, count: int) -> None:
    run.cut += count
