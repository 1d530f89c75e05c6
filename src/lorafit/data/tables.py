"""Read a table of examples from a local file or the Hugging Face hub into a pandas frame.

Every failure becomes one LorafitError line naming the file, the line where known, and the fix.
Pickle runs code when loaded, so it is refused unless the caller opted in. Text formats may be
compressed (.gz, .bz2, .xz: the standard library's); lines are counted in the decompressed text.
A stream (`-` for standard input, a pipe, /dev/stdin, a shell's <(...)) is read once, as CSV unless
told its format; a name that looks like a path is never sent to the hub.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pandas as pd

from ..errors import LorafitError

TEXT_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".txt"}
LOCAL_SUFFIXES = TEXT_SUFFIXES | {".parquet", ".pkl", ".pickle"}
PICKLE_SUFFIXES = {".pkl", ".pickle"}
COMPRESSION = {".gz": ("gzip", gzip), ".bz2": ("bzip2", bz2), ".xz": ("xz", lzma), ".zst": ("zstandard", None)}
SNIFFED = ";\t|"  # tried when a .csv header line has no comma
FORMATS = ("csv", "tsv", "jsonl", "json", "txt", "parquet")  # what a stream or a file without a suffix may be told it is
STDIN = "-"


@dataclass(frozen=True)
class Located:
    """What an input name is, decided once for read_table and the chunked readers (bulk/chunks.py).
    kind: 'file' (a regular file), 'dir' (a save_to_disk folder), 'stream' (read once: standard input,
    an open descriptor, a pipe, a character device) or 'hub'. suffix: the format ('.csv', ...), after
    --input-format; compression: '.gz' etc. or None; fd: the descriptor of `-` and /dev/stdin-like names."""
    kind: str
    path: Path
    suffix: str = ""
    compression: Optional[str] = None
    fd: Optional[int] = None


def locate(name: str, *, field: str = "data.train", fmt: Optional[str] = None) -> Located:
    """How `name` is read (see Located); a LorafitError for an unknown format, a missing file, a socket."""
    if fmt is not None and fmt not in FORMATS:
        raise LorafitError(f"--input-format: unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    if name == STDIN:
        return Located("stream", Path("<stdin>"), f".{fmt or 'csv'}", None, 0)
    from ..io import own_fd

    fd = own_fd(name)
    if fd is not None:  # /dev/stdin, /dev/fd/N, <(...): read what the descriptor holds, never reopened
        return Located("stream", Path(name), f".{fmt or 'csv'}", None, fd)
    path = Path(name).expanduser()
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise LorafitError(f"{field}: cannot read {name} ({e.strerror})") from None
    if mode is not None and stat.S_ISDIR(mode):
        return Located("dir", path)
    suffix, compression = _kind(path)
    if mode is not None and stat.S_ISREG(mode):
        if fmt:
            suffix = f".{fmt}"
        elif not path.suffix:
            suffix = ".csv"
        elif suffix not in LOCAL_SUFFIXES:
            how = "--input-format" if field.startswith("--") else "a file name ending in"
            raise LorafitError(f"{field}: {name}: unknown format '{path.suffix}'; give {how} one of "
                               f"{', '.join(FORMATS)} (or convert it)")
        return Located("file", path, suffix, compression)
    if mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        # a named pipe keeps what its name says (texts.jsonl, texts.csv.gz); else CSV unless told
        known = not fmt and suffix[1:] in FORMATS
        return Located("stream", path, suffix if known else f".{fmt or 'csv'}", compression if known else None)
    if mode is not None:
        raise LorafitError(f"{field}: {name} is not a file, a folder or a pipe (a socket or a block device)")
    if suffix in LOCAL_SUFFIXES or looks_like_path(name, data=True):
        raise LorafitError(f"{field}: file not found: {name}")
    return Located("hub", path)


def read_table(name: str, *, split: str = "train", allow_pickle: bool = False, field: str = "data.train",
               delimiter: str = "auto", fmt: Optional[str] = None) -> pd.DataFrame:
    """A local file (csv, tsv, jsonl, json, txt (one text per line), any of these compressed, parquet, a
    `save_to_disk` folder; pickle with opt-in), a stream (`-`, a pipe, /dev/stdin) or a hub dataset.
    delimiter: of csv/tsv, 'auto' or one character. fmt: one of FORMATS, for a stream or a file whose
    name has no suffix (default csv); given, it overrides the suffix."""
    loc = locate(name, field=field, fmt=fmt)
    if loc.kind == "hub":
        return _read_hub(name, split, field)
    if loc.kind == "dir":
        return _read_arrow_dir(loc.path)
    if loc.kind == "file":
        return _read_local(loc.path, loc.suffix, loc.compression, allow_pickle, field, delimiter)
    try:
        raw = loc.path.read_bytes() if loc.fd is None else _read_fd(loc.fd)
    except OSError as e:
        raise LorafitError(f"{field}: cannot read {name} ({e.strerror or e})") from None
    return _read_local(loc.path, loc.suffix, loc.compression, False, field, delimiter, raw=raw)


def looks_like_path(value: str, data: bool = False) -> bool:
    """Whether a string that names nothing on disk was meant as a path rather than a hub id. Hub ids
    (roberta-base, FacebookAI/roberta-base, ag_news) have at most one '/' and never start with '/', '.'
    or '~'; a data file also has its format's suffix."""
    if value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value:
        return True
    return data and any(s.lower() in LOCAL_SUFFIXES for s in Path(value).suffixes)  # also train.csv.gz


def _read_fd(fd: int) -> bytes:
    """All of an open descriptor, from where it stands (a pipe's unread bytes), leaving it open."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kind(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression suffix or None): data.csv.gz -> ('.csv', '.gz')."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] in COMPRESSION and suffixes[-2] in TEXT_SUFFIXES:
        return suffixes[-2], suffixes[-1]
    return path.suffix.lower(), None


def _read_bytes(path: Path, compression: str | None, raw: bytes | None = None) -> bytes:
    """The file's bytes, decompressed; raw: a stream's bytes, already read."""
    raw = path.read_bytes() if raw is None else raw
    if compression is None:
        return raw
    name, module = COMPRESSION[compression]
    if module is None:
        raise LorafitError(f"{path}: {compression} needs the {name} package, which lorafit does not install; "
                           "decompress it (zstd -d) or use .gz, .bz2 or .xz")
    try:
        return module.decompress(raw)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise LorafitError(f"{path}: not a readable {name} file ({type(e).__name__}: {first}); "
                           f"check that it was fully written, or decompress it yourself") from None


def _decode(path: Path, compression: str | None = None, raw: bytes | None = None) -> str:
    raw = _read_bytes(path, compression, raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LorafitError(
            f"{path}: line {line}: bytes are not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
            "re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None


def _read_local(path: Path, suffix: str, compression: str | None, allow_pickle: bool, field: str,
                delimiter: str, raw: bytes | None = None) -> pd.DataFrame:
    """raw: the bytes of a stream, already read; else the file is read here."""
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path, allow_pickle, field)
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path if raw is None else io.BytesIO(raw))
        except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
            raise LorafitError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    text = _decode(path, compression, raw)
    if suffix in (".jsonl", ".json"):
        return _read_json(path, text, suffix)
    if suffix == ".txt":
        return _read_lines(path, text)
    if delimiter == "auto":
        delimiter = "\t" if suffix == ".tsv" else sniff(text)
    return _read_delimited(path, text, delimiter, "TSV" if suffix == ".tsv" else "CSV")


def sniff(text: str) -> str:
    """',' unless the header line has none; then the one of SNIFFED that csv.Sniffer finds in the first
    lines, provided the header holds it (a one-column file with '|' in its texts stays one column)."""
    sample = text[:65536]
    if len(sample) < len(text) and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only
    header = next((line for line in sample.splitlines() if line.strip()), "")
    if "," in header:
        return ","
    try:
        found = csv.Sniffer().sniff(sample, delimiters=SNIFFED).delimiter
    except csv.Error:
        return ","
    return found if found in header else ","


def _read_lines(path: Path, text: str) -> pd.DataFrame:
    """One text per line, column 'text'. A blank line inside the file stays a row (empty text), so row k
    is line k+1 of the file; blank lines at the end are not rows."""
    lines = re.split(r"\r\n|\r|\n", text)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LorafitError(f"{path}: file is empty; expected one text per line")
    return pd.DataFrame({"text": lines})


def _read_delimited(path: Path, text: str, sep: str, kind: str = "CSV") -> pd.DataFrame:
    """The whole of a delimited text (delimited_records, the first malformed record an error)."""
    if not text.strip():
        raise LorafitError(f"{path}: file is empty; expected a header line and rows")
    header, rows = None, []
    for line, record, problem in delimited_records(io.StringIO(text, newline=""), path, sep, kind):
        if problem is not None:
            raise LorafitError(f"{path}: line {line}: {problem}")
        if header is None:
            header = record
        else:
            rows.append(record)
    if not rows:
        raise LorafitError(f"{path}: no rows after the header line")
    return pd.DataFrame(rows, columns=header)


def delimited_records(lines: Iterable[str], path: Path, sep: str, kind: str = "CSV"
                      ) -> Iterator[tuple[int, Optional[list[str]], Optional[str]]]:
    """(line where the record starts, its fields, None) for the header (checked: check_header) and each
    record, or (line, None, what is malformed) for a record that cannot be a row; blank lines skipped.
    The one parser of csv/tsv, for whole files (read_table) and streams (bulk/chunks.py). Python's csv
    module rather than pandas: it gives the line of a bad record, and a row with an extra field is an
    error here, where pandas would silently make its first field the index. lines: text with its line
    ends (a file opened with newline='')."""
    sep_name = "a tab" if sep == "\t" else repr(sep)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # one text may be a whole document
    # strict: a stray quote or an unclosed quoted field is an error, not silently merged rows
    reader = csv.reader(lines, delimiter=sep, strict=True)
    header, start = None, 1  # start: the line where the current record begins
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            what = "a quoted field starting on this line is never closed" if "end of data" in str(e) else str(e)
            yield start, None, f"malformed {kind}: {what}"
            start = reader.line_num + 1
            continue
        if not record:  # blank line
            start = reader.line_num + 1
            continue
        if header is None:
            header = record
            check_header(path, header)
            yield start, record, None
        elif len(record) != len(header):
            yield start, None, (f"malformed {kind}: {len(record)} fields where the header has {len(header)}; "
                                f"quote fields that contain {sep_name} or line breaks")
        else:
            yield start, record, None
        start = reader.line_num + 1


def check_header(path: Path, header: list[str]) -> None:
    if any(not c.strip() for c in header):
        raise LorafitError(f"{path}: header has an empty column name; name every column in the first line")
    seen = set()
    for c in header:
        if c in seen:
            raise LorafitError(f"{path}: column '{c}' appears twice in the header line; column names must be unique")
        seen.add(c)


def _read_json(path: Path, text: str, suffix: str) -> pd.DataFrame:
    stripped = text.lstrip()
    if suffix == ".json" and stripped.startswith("["):
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


def _read_pickle(path: Path, allow_pickle: bool, field: str) -> pd.DataFrame:
    if not allow_pickle:
        how = "pass --allow-pickle" if field.startswith("--") else "set data.allow_pickle: true"
        raise LorafitError(f"{path}: pickle files can run arbitrary code when loaded; {how} if you trust this file, "
                           "or convert it to Parquet/CSV")
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
    return _with_class_names(ds)


def _with_class_names(ds) -> pd.DataFrame:
    """The frame, keeping a ClassLabel's names (ag_news: World, Sports, ...) for id2label."""
    df = ds.to_pandas()
    df.attrs["label_names"] = {c: f.names for c, f in ds.features.items() if hasattr(f, "names")}
    return df


def _read_hub(name: str, split: str, field: str) -> pd.DataFrame:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise LorafitError(f"{field}: '{name}' is not a local file and could not be loaded from the Hugging Face hub "
                           f"({first}); give a path to a .csv/.tsv/.jsonl/.json/.txt (optionally .gz/.bz2/.xz) "
                           "or .parquet file") from None
    return _with_class_names(ds)
