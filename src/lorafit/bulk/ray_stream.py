"""`lorafit predict --ray`: the same chunks, checks and output as local predict, computed on a Ray cluster.

Ray Data pipeline: a read task runs lorafit's chunked reader (chunks.open_input: the same parsing rules,
bad rows and messages as local predict) where the cluster puts it; `map_batches` hands each chunk to an
actor pool, each actor one RowPredictor (its runs loaded once); the driver takes the computed chunks back
in input order (preserve_order) and gives them to local predict's own loop (predict._stream), which checks
IDs, stops at or skips bad rows, and appends to the same resumable output. Each chunk travels whole, as
one pickled Chunk (its rows, their numbers and lines, the bad rows, the bytes read): the driver's loop then
sees exactly what it would have read itself, and each actor computes exactly the rows local predict would
compute together, so the floats, and the file, are the same.

The input must be readable where the read task runs: any file with `--ray local`; on a real cluster a path
on storage every node mounts at the same place. A stream (`-`, a pipe) is the driver's, so it is refused.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pandas as pd

from ..data.tables import locate
from ..errors import LorafitError
from .checks import non_text_cells
from .chunks import Chunk, open_input
from .cluster import cluster, unwrap
from .on_ray import resources
from .rows import PredictOptions, RowPredictor

# The chunks and their results travel between lorafit's own processes of one job, as Ray itself moves every
# object (pickled): nothing read from a user's file is unpickled.
_CHUNK, _RESULT = "chunk", "result"


def _read(name: str, opts: PredictOptions, delimiter: Optional[str], rows: int) -> Iterator[pd.DataFrame]:
    """The read task: one block per chunk, the Chunk pickled in a one-row frame."""
    source = open_input(name, fmt=opts.input_format, delimiter=delimiter, allow_pickle=opts.allow_pickle)
    try:
        for chunk in source.chunks(rows):
            yield pd.DataFrame({_CHUNK: [pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL)]})
    finally:
        source.close()


def to_compute(chunk: Chunk, predictor: RowPredictor, opts: PredictOptions, done: int) -> list:
    """The rows of a chunk that local predict computes (predict._stream's `todo`) as far as the chunk alone
    tells: not bad, not before the resumed rows; none with --on-bad-row stop and a bad row (the driver stops
    there, dropping the chunk). Duplicate IDs need the whole input, checked on the driver: their rows are
    computed and dropped there, so the driver's rows are always among these."""
    texts = predictor.input_columns()["--text-column"]
    bad = {b.row for b in chunk.bad} | set(non_text_cells(chunk.frame, [c for c in texts if c in chunk.frame]))
    if opts.on_bad_row == "stop" and any(r >= done for r in bad):
        return []
    return [r for r in chunk.frame.index if r >= done and r not in bad]


class _Compute:
    """The actor's callable: each block's Chunk -> the Chunk as it came, and RowPredictor's columns for
    the rows local predict computes."""

    def __init__(self, predictor: RowPredictor, opts: PredictOptions, done: int):
        self.predictor, self.opts, self.done = predictor, opts, done

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        results = []
        for blob in batch[_CHUNK]:
            chunk = pickle.loads(blob)  # noqa: S301 - written by _read of this job (see _CHUNK)
            frame = chunk.frame
            for c in self.predictor.input_columns()["--text-column"] + self.predictor.input_columns()["--text-pair-column"]:
                if c not in frame.columns:  # as predict._stream: a JSON record set that never named it: empty texts
                    frame[c] = None
            result = self.predictor(frame.loc[to_compute(chunk, self.predictor, self.opts, self.done)])
            results.append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        return pd.DataFrame({_CHUNK: batch[_CHUNK], _RESULT: results})


class ComputedSource:
    """predict._stream's Source for chunks computed on the cluster: the Chunks in input order; `rows` (the
    RowPredictor stand-in _stream calls once per chunk, just after it) returns the chunk's computed rows."""

    def __init__(self, name: str, batches, total_bytes: Optional[int], columns: list, input_columns: dict):
        self.name, self._batches, self.total_bytes, self.total_rows = name, batches, total_bytes, None
        self.rows = _Computed(columns, input_columns)

    def chunks(self, rows: int) -> Iterator[Chunk]:
        try:
            for batch in self._batches:
                for blob, result in zip(batch[_CHUNK], batch[_RESULT]):
                    self.rows.result = pickle.loads(result)  # noqa: S301 - computed by _Compute of this job
                    yield pickle.loads(blob)  # noqa: S301 - written by _read of this job
        except Exception as e:
            found = unwrap(e)  # a bad input or run met on the cluster: its own line, not Ray's traceback
            if found is None:
                raise
            raise found from None

    def close(self) -> None:
        pass


class _Computed:
    def __init__(self, columns: list, input_columns: dict):
        self._columns, self._inputs, self.result = columns, input_columns, None

    def columns(self) -> list:
        return self._columns

    def input_columns(self) -> dict:
        return self._inputs

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self.result.loc[frame.index]


def _absolute(path: str) -> str:
    """A path the same from every process of the job (Ray's workers do not share the driver's directory)."""
    return str(Path(path).expanduser().absolute()) if "://" not in path else path


@contextmanager
def computed_chunks(address: str, input_path: str, predictor: RowPredictor, opts: PredictOptions, chunk_rows: int,
                    done: int = 0, *, concurrency: Optional[int] = None) -> Iterator[ComputedSource]:
    """A Ray cluster (cluster.cluster) running the pipeline of the module docstring for the block; yields the
    ComputedSource to give predict._stream. done: input rows already written (--resume): not computed again."""
    loc = locate(input_path, field="--input", fmt=opts.input_format)
    if loc.kind == "stream":
        raise LorafitError(f"--ray: the input is read on the cluster, and {input_path} is a stream of this process; "
                           "write it to a file (on storage every node can read) and give that")
    delimiter = predictor.runs()[0].text_cfg.delimiter
    total = os.stat(loc.path).st_size if loc.kind == "file" else None
    name = _absolute(input_path) if loc.kind in ("file", "dir") else input_path
    remote = RowPredictor([_absolute(r) for r in predictor.run_dirs], opts, source=input_path)
    with cluster(address) as ray:
        from ray.data import Datasource, ReadTask
        from ray.data.block import BlockMetadata

        class _Input(Datasource):  # one read task: a file is read in order, chunk after chunk
            def estimate_inmemory_data_size(self):
                return None

            def get_read_tasks(self, parallelism, *args, **kwargs):
                known = {f.name for f in dataclasses.fields(BlockMetadata)}
                meta = BlockMetadata(**{k: v for k, v in dict(num_rows=None, size_bytes=None, schema=None,
                                                              input_files=[name], exec_stats=None).items() if k in known})
                return [ReadTask(lambda: _read(name, opts, delimiter, chunk_rows), meta)]

        # the read task parses text, light beside the model: it takes no CPU of the actors' (a 2-CPU machine's
        # actor takes both; a read task waiting for one would wait for ever)
        ds = ray.data.read_datasource(_Input(), ray_remote_args={"num_cpus": 0})
        # max_restarts=0: an actor that dies fails the command, whose committed rows --resume keeps (Ray would
        # restart it, and print a warning about doing so for every actor)
        ds = ds.map_batches(_Compute, fn_constructor_args=(remote, opts, done), batch_format="pandas", batch_size=None,
                            max_restarts=0, **resources(ray, concurrency, None))
        yield ComputedSource(input_path, ds.iter_batches(batch_format="pandas", batch_size=None, prefetch_batches=1),
                             total, predictor.columns(), predictor.input_columns())
