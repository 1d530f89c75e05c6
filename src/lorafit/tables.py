"""Read a table of examples from a local file or the Hugging Face hub into a pandas frame.

Every failure becomes one LorafitError line naming the file, the line where known, and the fix.
Pickle runs code when loaded, so it is refused unless the caller opted in.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from .errors import LorafitError

LOCAL_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".pkl", ".pickle"}
PICKLE_SUFFIXES = {".pkl", ".pickle"}


def read_table(name: str, *, split: str = "train", allow_pickle: bool = False, field: str = "data.train") -> pd.DataFrame:
    """A local file (csv, tsv, jsonl, json, parquet, a `save_to_disk` folder; pickle with opt-in) or a hub dataset."""
    path = Path(name)
    if path.is_dir():
        return _read_arrow_dir(path)
    if path.suffix.lower() in LOCAL_SUFFIXES:
        if not path.is_file():
            raise LorafitError(f"{field}: file not found: {path}")
        return _read_local(path, allow_pickle)
    return _read_hub(name, split, field)


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LorafitError(
            f"{path}: line {line}: bytes are not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
            "re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None


def _read_local(path: Path, allow_pickle: bool) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path, allow_pickle)
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
            raise LorafitError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    text = _decode(path)
    if suffix in (".jsonl", ".json"):
        return _read_json(path, text)
    return _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")


def _read_delimited(path: Path, text: str, sep: str) -> pd.DataFrame:
    if not text.strip():
        raise LorafitError(f"{path}: file is empty; expected a header line and rows")
    try:
        # keep_default_na=False: an empty text stays "" (reported as empty), not a float NaN
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, engine="c")
    except pd.errors.ParserError as e:
        msg = str(e).strip()
        # pandas counts lines from 1 including the header, which is what an editor shows
        kind = "TSV" if sep == "\t" else "CSV"
        raise LorafitError(f"{path}: malformed {kind}: {msg}; quote fields that contain the separator or newlines") from None
    except (pd.errors.EmptyDataError, csv.Error) as e:
        raise LorafitError(f"{path}: malformed file: {e}") from None
    if any(str(c).startswith("Unnamed: ") for c in df.columns):
        raise LorafitError(f"{path}: header has an empty column name; name every column in the first line")
    return df


def _read_json(path: Path, text: str) -> pd.DataFrame:
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise LorafitError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    else:
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LorafitError(f"{path}: line {lineno}: invalid JSON ({e.msg}); expected one object per line") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise LorafitError(f"{path}: record {i} is {type(row).__name__}, expected an object like {{\"text\": ..., \"label\": ...}}")
    if not rows:
        raise LorafitError(f"{path}: no records")
    return pd.DataFrame(rows)


def _read_pickle(path: Path, allow_pickle: bool) -> pd.DataFrame:
    if not allow_pickle:
        raise LorafitError(f"{path}: pickle files can run arbitrary code when loaded; pass --allow-pickle "
                           "(or data.allow_pickle: true) if you trust this file, or convert it to Parquet/CSV")
    import pickle

    with path.open("rb") as f:
        try:
            obj = pickle.load(f)  # noqa: S301 - explicit user opt-in above
        except Exception as e:
            raise LorafitError(f"{path}: could not unpickle ({type(e).__name__}: {e})") from None
    if isinstance(obj, pd.DataFrame):
        return obj
    to_pandas = getattr(obj, "to_pandas", None)  # a pickled datasets.Dataset
    if callable(to_pandas):
        return to_pandas()
    raise LorafitError(f"{path}: pickle holds {type(obj).__name__}; expected a pandas DataFrame or a datasets.Dataset")


def _read_arrow_dir(path: Path) -> pd.DataFrame:
    """A folder written by `Dataset.save_to_disk` (Arrow: no code runs on load)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise LorafitError(f"{path}: not a dataset folder saved with Dataset.save_to_disk ({type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        key = "train" if "train" in ds else next(iter(ds))
        ds = ds[key]
    return ds.to_pandas()


def _read_hub(name: str, split: str, field: str) -> pd.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise LorafitError(f"{field}: '{name}' is not a local file and could not be loaded from the Hugging Face hub "
                           f"({first}); give a path to a .csv/.tsv/.jsonl/.parquet file") from None
    df = ds.to_pandas()
    # keep the hub's class names (ag_news: World, Sports, ...) for id2label
    names = {c: f.names for c, f in ds.features.items() if hasattr(f, "names")}
    df.attrs["label_names"] = names
    return df
