"""The output of a batch predict, written as it goes and resumable after a kill.

A regular-file OUTPUT is built in OUTPUT.partial beside it: each finished chunk's CSV text is appended
and fsynced, then OUTPUT.partial.json (the manifest) is replaced atomically with what is now committed:
the input rows done, the bytes of the partial file and of the bad-rows side file that hold them, and
the identity of the input, of each run and of the options. The manifest is the truth: bytes written
past it (a kill during an append) are cut on --resume. At the end the partial file is renamed onto
OUTPUT (readers never see half a file) and the manifest removed.

--resume checks that the input, the runs and the options are those the manifest names (a changed one
is refused with one line: mixed outputs are worse than a rerun), cuts the partial file back to its
committed bytes and continues after the rows done. Without --resume a partial file or manifest left
by a stopped predict is an error naming --resume and --overwrite. A stream (standard output, a FIFO,
a device) is written as it goes, with nothing to resume.

Why one growing file rather than numbered parts: the final rename is then one rename, the disk holds
no second copy of the output at the end, and a resumed file is byte for byte the uninterrupted one."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import LorafitError
from ..io import Target, atomic_write_text, fsync_path

FORMAT = 1
EDGE = 64 * 1024  # bytes hashed at each end of an input file: a rewritten file seldom keeps both


def _edges(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(EDGE))
        if size > EDGE:
            f.seek(max(EDGE, size - EDGE))
            h.update(f.read(EDGE))
    return h.hexdigest()


def prefix_identity(path: Path, offset: int) -> dict:
    """The bytes of an input before `offset` (the rows committed), by the hashes of their first and last
    64 KiB: what --resume checks when the file changed after them (a bad row fixed, rows appended)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(min(EDGE, offset)))
        if offset > EDGE:
            f.seek(max(EDGE, offset - EDGE))
            h.update(f.read(offset - max(EDGE, offset - EDGE)))
    return {"bytes": offset, "sha256_edges": h.hexdigest()}


def file_identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256_edges": _edges(path, st.st_size)}


def input_identity(name: str, kind: str) -> Optional[dict]:
    """What must not change between a run and its --resume: a file's path, size, mtime and a hash of
    its first and last 64 KiB; a save_to_disk folder's files likewise; a hub dataset's name. None for
    a stream (read once: it cannot be checked, so it cannot be resumed)."""
    if kind == "stream":
        return None
    if kind == "hub":
        return {"hub": name}
    path = Path(name).expanduser()
    if kind == "dir":
        return {"folder": str(path.resolve()),
                "files": [file_identity(f) for f in sorted(path.rglob("*")) if f.is_file()]}
    return file_identity(path)


def run_identity(run_dir: str) -> dict:
    """A run's folder, the contents of its small files (config, labels, temperature, thresholds) and
    the stat of its weights (size, mtime: hashing ~500 MB of a full fine-tune on every start is not needed
    to notice a retrained run)."""
    root = Path(run_dir).resolve()
    small = {}
    for name in ("config.yaml", "labels.json", "calibration.json", "thresholds.json"):
        f = root / name
        if f.is_file():
            small[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    weights = []
    for sub in ("adapter", "model"):
        for f in sorted((root / sub).rglob("*")) if (root / sub).is_dir() else []:
            if f.is_file():
                st = f.stat()
                weights.append([str(f.relative_to(root)), st.st_size, st.st_mtime_ns])
    return {"path": str(root), "files": small, "weights": weights}


class Output:
    """Where a predict's finished rows go (see the module docstring). identity: {'input', 'runs',
    'options'} as the manifest keeps them; bad_rows: the side file of skipped rows (None: none)."""

    def __init__(self, target: Target, name: str, identity: dict, *, resume: bool = False, overwrite: bool = False,
                 bad_rows: Optional[Path] = None):
        self.target, self.name, self.identity = target, name, identity
        self.rows = self.bad_count = self.written = 0
        self.note: Optional[str] = None  # what --resume accepted that changed
        self.bad_path = bad_rows
        self._fd: Optional[int] = None
        self._bad = None
        if target.file is None:
            if resume:
                raise LorafitError(f"--resume: --output {name} is a stream (standard output, a pipe or a device); "
                                   "what it took cannot be checked or continued; write to a file to resume")
            return  # opened at the first write: opening a FIFO waits for its reader, and a bad input must not
        self.partial = target.file.with_name(target.file.name + ".partial")
        self.manifest = target.file.with_name(target.file.name + ".partial.json")
        left = [p for p in (self.partial, self.manifest) if p.exists()]
        if resume:
            self._resume()
        elif left and not overwrite:
            raise LorafitError(f"--output: {left[0]} is left by a predict that stopped; add --resume to continue it, "
                               "or --overwrite to start again")
        else:
            self._fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            self.size = 0
            self._open_bad(0)

    @property
    def fresh(self) -> bool:
        return self.rows == 0 and (self.target.file is None or self.size == 0)

    @property
    def kept_in(self) -> str:
        return "standard output" if self.target.fd == 1 else (self.name if self.target.file is None else str(self.partial))

    def _open_bad(self, size: int) -> None:
        if self.bad_path is not None:
            self._bad = open(self.bad_path, "r+b" if size else "wb")
            self._bad.truncate(size)
            self._bad.seek(size)

    def _resume(self) -> None:
        if not self.manifest.exists() or not self.partial.exists():
            raise LorafitError(f"--resume: no stopped predict to continue for --output {self.name} "
                               f"({self.manifest.name} not found); run without --resume")
        try:
            m = json.loads(self.manifest.read_text())
            assert m["format"] == FORMAT
        except (ValueError, KeyError, AssertionError):
            raise LorafitError(f"--resume: {self.manifest} is not a manifest this lorafit wrote; run with --overwrite "
                               "to start again") from None
        if self.identity["input"] is None:
            raise LorafitError("--resume: the input is a stream, read once: lorafit cannot check that it is the same "
                               "input; start again with --overwrite")
        if m.get("input") != self.identity["input"] and self._same_prefix(m):
            self.note = (f"note: --resume: {self.identity['input']['path']} changed after the {m['rows']:,} rows "
                         "already predicted, which are unchanged: continuing with the rest as it is now")
            m["input"] = self.identity["input"]
        for key, what in (("input", "the input"), ("runs", "the runs"), ("options", "the options")):
            if m.get(key) != self.identity[key]:
                raise LorafitError(f"--resume: {what} changed since {self.name} was started "
                                   f"({_first_difference(m.get(key), self.identity[key])}); its rows would be mixed with "
                                   "others; start again with --overwrite")
        self.rows, self.size, self.bad_count, self.written = m["rows"], m["bytes"], m["bad_count"], m["written"]
        self.prefix = m.get("input_prefix")
        if self.partial.stat().st_size < self.size:
            raise LorafitError(f"--resume: {self.partial} is shorter than its manifest says; start again with --overwrite")
        self._fd = os.open(self.partial, os.O_WRONLY)
        os.ftruncate(self._fd, self.size)  # bytes past the last commit (a kill during an append) go
        os.lseek(self._fd, self.size, os.SEEK_SET)
        self._open_bad(m.get("bad_bytes", 0) if self.bad_path is not None and self.bad_path.exists() else 0)

    def _same_prefix(self, m: dict) -> bool:
        old, new = m.get("input_prefix"), self.identity["input"]
        if not old or not isinstance(m.get("input"), dict) or "path" not in (new or {}):
            return False
        if m["input"].get("path") != new["path"] or new["size"] < old["bytes"]:
            return False
        return prefix_identity(Path(new["path"]), old["bytes"]) == old

    def commit(self, text: str, rows: int, bad_lines: Sequence[str] = (), *, written: int = 0,
               offset: Optional[int] = None) -> None:
        """Append the CSV text of `written` rows, up to input row `rows` (and their bad rows' lines), durably.
        offset: where the rows after them start in an uncompressed input file (prefix_identity), if known."""
        data = text.encode("utf-8")
        if self._fd is None:
            if self.target.fd == 1:
                sys.stdout.flush()  # anything printed before comes first
            self._fd = self.target.fd if self.target.fd is not None else os.open(self.target.stream,
                                                                                  os.O_WRONLY | os.O_NOCTTY)
        _write_all(self._fd, data)
        if self._bad is not None and bad_lines:
            self._bad.write("".join(bad_lines).encode("utf-8"))
            self._bad.flush()
        self.rows, self.bad_count, self.written = rows, self.bad_count + len(bad_lines), self.written + written
        if self.target.file is None:
            return
        os.fsync(self._fd)
        if self._bad is not None:
            os.fsync(self._bad.fileno())
        self.size += len(data)
        inp = self.identity["input"]
        prefix = (prefix_identity(Path(inp["path"]), offset) if offset is not None and inp and "sha256_edges" in inp
                  else None)
        m = {"format": FORMAT, "rows": rows, "written": self.written, "bytes": self.size, "bad_count": self.bad_count,
             "bad_bytes": self._bad.tell() if self._bad is not None else 0, **self.identity, "input_prefix": prefix}
        atomic_write_text(self.manifest, json.dumps(m, indent=1))

    def finish(self) -> None:
        """The partial file becomes OUTPUT; the manifest goes."""
        self.close()
        if self.target.file is None:
            return
        os.replace(self.partial, self.target.file)
        fsync_path(self.target.file.parent)
        self.manifest.unlink(missing_ok=True)

    def abandon(self) -> bool:
        """After a failure: close; when no input row was committed, remove what was started (nothing to
        resume: a refused input leaves no files behind). Whether the partial output is kept."""
        self.close()
        if self.target.file is None or self.rows > 0:
            return self.target.file is not None
        for p in (self.partial, self.manifest, self.bad_path):
            if p is not None:
                p.unlink(missing_ok=True)
        return False

    def close(self) -> None:
        if self._bad is not None:
            self._bad.close()
            self._bad = None
        if self._fd is not None and (self.target.file is not None or self.target.fd is None):
            os.close(self._fd)
        self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _first_difference(old, new) -> str:
    """A short description of where two identities differ (for the refusal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return f"{k}: {_short(old.get(k))} then, {_short(new.get(k))} now"
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for a, b in zip(old, new):
            if a != b:
                return _first_difference(a, b)
    return f"{_short(old)} then, {_short(new)} now"


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."
