"""An input read in chunks of at most N rows, for every format read_table reads, so that predicting a
file of any size holds one chunk at a time: csv/tsv (data/tables.delimited_records, the parser of
read_table: same sniffing, header checks and messages), jsonl, txt (one text per line), any of these
compressed (.gz, .bz2, .xz, decompressed as read), Parquet by record batches, a save_to_disk folder by
batches of its Arrow tables, and streams (`-`, pipes). What cannot be read in parts is read whole and
then cut: a .json array, pickle (opt-in), a hub dataset.

Each chunk carries its rows' numbers in the input (the frame's index, 0-based, as the ID column when
the input has none), the input bytes read so far (the progress bar's ETA: bytes, not rows, as rows
differ in length) and the rows that could not be read (BadRow: where, why, the raw text), which the
caller stops at or skips (--on-bad-row). A row's number counts bad rows too, so that the rows after a
skipped one keep their numbers. A file that cannot be read at all (a corrupt gzip, a bad header) is a
LorafitError, not a bad row."""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import pandas as pd

from ..data import tables
from ..errors import LorafitError

SNIFF_CHARS = 65536  # what tables.sniff looks at
RAW_CHARS = 2000  # of a bad row's raw text kept in the side file
_OPENERS = {".gz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), ".bz2": bz2.BZ2File, ".xz": lzma.LZMAFile}


@dataclass
class BadRow:
    row: int      # its number in the input (0-based)
    where: str    # "line 17" (text formats) or "row 5" (1-based)
    reason: str
    raw: Optional[str] = None  # the row's text as read, where the format has one (at most RAW_CHARS)
    offset: Optional[int] = None  # where its text starts in an uncompressed file (bytes)


@dataclass
class Chunk:
    frame: pd.DataFrame     # the rows read, index = their numbers in the input
    start: int              # number of the chunk's first row, bad ones included
    end: int                # one past its last row
    position: int           # input bytes read when the chunk was complete (of the file, when compressed)
    bad: list = field(default_factory=list)  # BadRow, in order
    lines: Optional[np.ndarray] = None       # each frame row's first line in the file (text formats)
    offset: Optional[int] = None             # where the rows after it start in an uncompressed text file
    offsets: Optional[np.ndarray] = None     # where each frame row starts there

    def offset_of(self, row: int) -> Optional[int]:
        return None if self.offsets is None else int(self.offsets[self.frame.index.get_loc(row)])

    def where(self, row: int) -> str:
        """'line N' or 'row N' of a frame row (by its number)."""
        if self.lines is None:
            return f"row {row + 1}"
        return f"line {int(self.lines[self.frame.index.get_loc(row)])}"


class Source:
    """An opened input: its name for messages, what is known of its size, and its chunks."""

    def __init__(self, name: str, chunks: Callable[[int], Iterator[Chunk]], total_bytes: Optional[int] = None,
                 total_rows: Optional[int] = None, close: Callable[[], None] = lambda: None):
        self.name, self._chunks, self.total_bytes, self.total_rows, self.close = name, chunks, total_bytes, total_rows, close

    def chunks(self, rows: int) -> Iterator[Chunk]:
        return self._chunks(max(1, rows))


def open_input(name: str, *, fmt: Optional[str] = None, delimiter: Optional[str] = None, allow_pickle: bool = False,
               field: str = "--input") -> Source:
    """The chunked reader of `name` (as read_table reads it; see the module docstring). delimiter: 'auto'
    or None for sniffing, else one character."""
    loc = tables.locate(name, field=field, fmt=fmt)
    delimiter = delimiter or "auto"
    if loc.kind == "hub" or loc.suffix in tables.PICKLE_SUFFIXES:
        return _whole(name, lambda: tables.read_table(name, allow_pickle=allow_pickle, field=field,
                                                      delimiter=delimiter, fmt=fmt))
    if loc.kind == "dir":
        return _arrow_dir(loc.path)
    try:
        raw = open(loc.fd, "rb", closefd=False) if loc.fd is not None else open(loc.path, "rb")
    except OSError as e:
        raise LorafitError(f"{field}: cannot read {name} ({e.strerror or e})") from None
    size = os.fstat(raw.fileno()).st_size if loc.kind == "file" else None
    if loc.suffix == ".parquet":
        return _parquet(loc.path, raw, size)
    f = raw
    if loc.compression is not None:
        opener = _OPENERS.get(loc.compression)
        if opener is None:  # .zst: the same refusal as read_table's
            raw.close()
            tables._read_bytes(loc.path, loc.compression, b"")
        f = opener(raw)
    lines = _Lines(f, loc.path, raw.tell if loc.kind == "file" else None, loc.compression)
    if loc.suffix == ".json" and lines.peek_char() == "[":  # one JSON array: read whole
        return _whole(name, lambda: tables._read_json(loc.path, lines.rest(), ".json"), raw.close)
    read = {".jsonl": _jsonl, ".json": _jsonl, ".txt": _txt}.get(loc.suffix)
    if read is None:
        sep = delimiter if delimiter != "auto" else None
        kind = "TSV" if loc.suffix == ".tsv" else "CSV"
        return Source(name, lambda n: _delimited(lines, n, sep, loc.suffix == ".tsv", kind), size, close=raw.close)
    return Source(name, lambda n: read(lines, n), size, close=raw.close)


class _Lines:
    """Decoded lines (with their ends) of a binary file: a lone '\\r' ends a line too, as for a file
    opened with newline=''. Counts lines and bytes; a line that is not UTF-8 is decoded with U+FFFD
    and its problem kept for the record it belongs to (a bad row, not the end of the file)."""

    def __init__(self, f, path: Path, position: Optional[Callable[[], int]], compression: Optional[str]):
        self.f, self.path, self._position, self.compression = f, path, position, compression
        self.offset = 0  # bytes read (decompressed)
        self.line = 0    # number of the last line given
        self.raw: list[tuple] = []  # (line, text, problem, start, end offset) given since the last take()
        self._pending: list[tuple] = []  # (text, problem, start, end) pieces of a line read, not yet given
        self.start = self.end = 0  # offsets of the lines of the last take()
        self._first = True

    def position(self) -> int:
        return self._position() if self._position is not None else self.offset

    def _readline(self) -> bytes:
        try:
            return self.f.readline()
        except (OSError, EOFError, lzma.LZMAError) as e:  # a corrupt or cut compressed file
            name, _ = tables.COMPRESSION.get(self.compression, ("compressed", None))
            first = (str(e).splitlines() or [""])[0]
            raise LorafitError(f"{self.path}: not a readable {name} file ({type(e).__name__}: {first}); check that "
                               "it was fully written, or decompress it yourself") from None

    def peek_char(self) -> str:
        """The first character that is not white space ('' at the end); the lines read stay to be given."""
        taken: list = []
        while True:
            if not self._pending and not self._fill():
                break
            piece = self._pending.pop(0)
            taken.append(piece)
            if piece[0].strip():
                break
        self._pending = taken + self._pending
        return next((t.strip()[0] for t, *_ in taken if t.strip()), "")

    def _fill(self) -> bool:
        b = self._readline()
        if not b:
            return False
        start = self.offset
        self.offset += len(b)
        if self._first:
            self._first = False
            if b.startswith(b"\xef\xbb\xbf"):  # utf-8-sig, as read_table decodes
                b, start = b[3:], start + 3
        problem = None
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError as e:
            problem = (f"bytes are not valid UTF-8 (byte {b[e.start]:#04x} at offset {start + e.start}); re-save the "
                       "file as UTF-8, e.g. `iconv -f latin1 -t utf-8`")
            text = b.decode("utf-8", "replace")
        if "\r" not in text[:-2]:
            self._pending.append((text, problem, start, self.offset))
            return True
        for t in re.split(r"(?<=\r)(?!\n)", text):  # lone carriage returns end lines too
            if t:
                n = len(t.encode("utf-8", "replace"))
                self._pending.append((t, problem, start, min(start + n, self.offset)))
                start += n
        return True

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if not self._pending and not self._fill():
            raise StopIteration
        text, problem, start, end = self._pending.pop(0)
        self.line += 1
        self.raw.append((self.line, text, problem, start, end))
        return text

    def rest(self) -> str:
        """Everything not given yet, as one text."""
        out = [t for t, *_ in self._pending]
        self._pending = []
        while self._fill():
            out.extend(t for t, *_ in self._pending)
            if any(p for _, p, *_ in self._pending):
                raise LorafitError(f"{self.path}: {next(p for _, p, *_ in self._pending if p)}")
            self._pending = []
        return "".join(out)

    def take(self) -> tuple[Optional[str], str]:
        """(the first decoding problem, the raw text) of the lines given since the last take()."""
        problem = next((p for _, _, p, _, _ in self.raw if p), None)
        raw = "".join(t for _, t, _, _, _ in self.raw)[:RAW_CHARS]
        if self.raw:
            self.start, self.end = self.raw[0][3], self.raw[-1][4]
        self.raw = []
        return problem, raw


class _Builder:
    """Rows gathered into chunks of at most n rows (bad rows counted)."""

    def __init__(self, n: int, lines: "_Lines", frame: Callable[[list, list], pd.DataFrame]):
        self.n, self.src, self.make = n, lines, frame
        self.rows, self.index, self.lines, self.bad, self.offsets = [], [], [], [], []
        self.next = self.start = 0

    def add(self, row, line: int) -> Optional[Chunk]:
        self.rows.append(row)
        self.index.append(self.next)
        self.lines.append(line)
        self.offsets.append(self.src.start)
        return self._advance()

    def add_bad(self, where: str, reason: str, raw: Optional[str]) -> Optional[Chunk]:
        offset = self.src.start if self.src.compression is None else None
        self.bad.append(BadRow(self.next, where, reason, raw, offset))
        return self._advance()

    def _advance(self) -> Optional[Chunk]:
        self.next += 1
        return self.flush() if self.next - self.start >= self.n else None

    def flush(self) -> Optional[Chunk]:
        if self.next == self.start:
            return None
        frame = self.make(self.rows, self.index)
        plain = self.src.compression is None
        chunk = Chunk(frame, self.start, self.next, self.src.position(), self.bad, np.asarray(self.lines, dtype=np.int64),
                      self.src.end if plain else None, np.asarray(self.offsets, dtype=np.int64) if plain else None)
        self.rows, self.index, self.lines, self.bad, self.offsets = [], [], [], [], []
        self.start = self.next
        return chunk

    def last(self, empty: str) -> Iterator[Chunk]:
        """The rows not yet yielded, as a last chunk; a file that had no row at all is refused (empty: why)."""
        chunk = self.flush()
        if chunk is not None:
            yield chunk
        elif self.next == 0:
            raise LorafitError(f"{self.src.path}: {empty}")


def _delimited(lines: _Lines, n: int, sep: Optional[str], tsv: bool, kind: str) -> Iterator[Chunk]:
    size = 0
    for line in lines:  # the first SNIFF_CHARS, for tables.sniff (which looks at no more)
        size += len(line)
        if size > SNIFF_CHARS:
            break
    head = lines.raw
    text = "".join(t for _, t, *_ in head)
    if not text.strip():
        raise LorafitError(f"{lines.path}: file is empty; expected a header line and rows")
    if sep is None:
        sep = "\t" if tsv else tables.sniff(text)
    header: Optional[list] = None
    build = _Builder(n, lines, lambda rows, index: pd.DataFrame(rows, columns=header, index=index))
    feed = _chain(head, lines)
    for line, record, problem in tables.delimited_records(feed, lines.path, sep, kind):
        undecodable, raw = lines.take()
        if header is None and record is not None:
            if undecodable:
                raise LorafitError(f"{lines.path}: line {line}: {undecodable}")
            header = record
            continue
        if header is None:
            raise LorafitError(f"{lines.path}: line {line}: {problem}")
        chunk = (build.add_bad(f"line {line}", problem or undecodable, raw) if problem or undecodable
                 else build.add(record, line))
        if chunk is not None:
            yield chunk
    yield from build.last("no rows after the header line")


def _chain(head: list, lines: _Lines) -> Iterator[str]:
    """The head lines again (as given: line, text, problem; recorded again for take()), then the rest."""
    lines.raw = []
    for item in head:
        lines.raw.append(item)
        yield item[1]
    yield from lines


def _jsonl(lines: _Lines, n: int) -> Iterator[Chunk]:
    # object columns: a chunk's types do not depend on its other rows (an ID column with one row
    # missing its value would turn a chunk's integer IDs into floats)
    build = _Builder(n, lines, lambda rows, index: pd.DataFrame(rows, index=index, dtype=object))
    for text in lines:
        undecodable, raw = lines.take()
        if not text.strip():
            continue
        line = lines.line
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            chunk = build.add_bad(f"line {line}", undecodable or f"invalid JSON ({e.msg}); expected one object per line", raw)
        else:
            if undecodable or not isinstance(record, dict):
                what = undecodable or (f"record is {type(record).__name__}, expected an object like "
                                       "{\"text\": ..., \"label\": ...}")
                chunk = build.add_bad(f"line {line}", what, raw)
            else:
                chunk = build.add(record, line)
        if chunk is not None:
            yield chunk
    yield from build.last("no records")


def _txt(lines: _Lines, n: int) -> Iterator[Chunk]:
    """One text per line; blank lines inside the file are rows (empty texts), blank lines at its end are not."""
    build = _Builder(n, lines, lambda rows, index: pd.DataFrame({"text": rows}, index=index))
    blanks: list[tuple[int, str]] = []  # blank lines not yet known to be inside the file
    for text in lines:
        undecodable, raw = lines.take()
        text = text.rstrip("\r\n")
        if not text.strip() and not undecodable:
            blanks.append((lines.line, text))
            continue
        out = [build.add(t, k) for k, t in blanks]
        blanks.clear()
        out.append(build.add_bad(f"line {lines.line}", undecodable, raw) if undecodable else build.add(text, lines.line))
        yield from (c for c in out if c is not None)
    yield from build.last("file is empty; expected one text per line")


def _whole(name: str, read: Callable[[], pd.DataFrame], close: Callable[[], None] = lambda: None) -> Source:
    """A table read whole, then cut (formats that cannot be read in parts); position: rows."""
    def chunks(n: int) -> Iterator[Chunk]:
        df = read().reset_index(drop=True)
        close()
        source.total_rows = len(df)
        for s in range(0, len(df), n):
            yield Chunk(df.iloc[s:s + n], s, min(s + n, len(df)), min(s + n, len(df)))

    source = Source(name, chunks)
    return source


def _arrow_batches(batches, total: int, size: Optional[int]) -> Iterator[Chunk]:
    """Chunks of Arrow record batches / tables; integer columns with nulls stay integers (objects),
    as in a batch without nulls. position: the share of rows read, in bytes of the input."""
    start = 0
    for batch in batches:
        frame = batch.to_pandas(integer_object_nulls=True)
        frame.index = pd.RangeIndex(start, start + len(frame))
        end = start + len(frame)
        yield Chunk(frame, start, end, end if size is None or not total else int(size * end / total))
        start = end


def _parquet(path: Path, raw, size: Optional[int]) -> Source:
    import pyarrow.parquet as pq

    try:  # a stream cannot seek, which Parquet needs (its footer is at the end): read whole
        pf = pq.ParquetFile(raw if size is not None else io.BytesIO(raw.read()))
    except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
        raw.close()
        raise LorafitError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    total = pf.metadata.num_rows
    return Source(str(path), lambda n: _arrow_batches(pf.iter_batches(batch_size=n), total, size), size, total,
                  close=raw.close)


def _arrow_dir(path: Path) -> Source:
    """A save_to_disk folder: its Arrow files are memory-mapped, so a batch costs what it holds."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise LorafitError(f"{path}: not a dataset folder saved with Dataset.save_to_disk ({type(e).__name__})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train" if "train" in ds else next(iter(ds))]
    size = sum(f.stat().st_size for f in path.rglob("*.arrow"))
    return Source(str(path), lambda n: _arrow_batches(ds.with_format("arrow").iter(batch_size=n), len(ds), size),
                  size, len(ds))
