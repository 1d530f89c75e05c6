"""The --out folder of an export: refused before any work when it cannot be used or when replacing it
would delete what the export reads, and written whole or not at all (built in a temporary folder, then
renamed into place; a symbolic link is written through: its target is replaced, the link kept)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import LorafitError
from ..io import follow_umask, probe_writable

MANIFEST = "export.json"  # written into every export: what --overwrite is allowed to replace


def check_out(out: Path, overwrite: bool, reads: Optional[dict] = None) -> None:
    """reads: {what: path} the export reads (RUN_DIR, --check FILE), which must not lie in an --out it replaces."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LorafitError(f"--out: {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise LorafitError(f"--out: {out} already exists; pass --overwrite to replace it, or choose another --out")
        if not (out / MANIFEST).is_file():
            raise LorafitError(f"--out: {out} is not a lorafit export (no {MANIFEST}); --overwrite replaces only an "
                               "export: choose another --out")
        real = os.path.realpath(out)
        for what, path in (reads or {}).items():
            if path is not None and os.path.exists(path) and _inside(os.path.realpath(path), real):
                raise LorafitError(f"--out: {out} holds {what} {path}, which replacing the export would delete; "
                                   "choose another --out")
    parent = _existing_parent(Path(os.path.realpath(out)))
    try:
        probe_writable(parent)
    except OSError as e:
        raise LorafitError(f"--out: cannot write in {parent} ({e.strerror or e}); choose another --out") from None


def _existing_parent(out: Path) -> Path:
    p = out.absolute().parent
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise LorafitError(f"--out: {p} is a file, not a folder; choose another --out")
    return p


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def publish(built: Path, out: Path) -> None:
    """Move the finished `built` folder to `out` (replacing an earlier export there; through a symbolic link)."""
    out = Path(os.path.realpath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(built, tmp)
        follow_umask(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.rename(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
