"""Files that are never seen half-written: atomic text writes, durable safetensors, fsync.

The bottom of the package: it imports nothing of lorafit but errors, so every layer can use it.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from .errors import LorafitError


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask alone must set
    it to read it, a race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """What open()/mkdir() would give under the user's umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


def follow_umask(folder: Path) -> None:
    """Give every file under `folder` the umask's mode: safetensors, like mkstemp, writes its
    temporary file 0600 and renames it, so a teammate or a serving account could not read it."""
    mode = default_mode()
    for p in [Path(folder), *Path(folder).rglob("*")]:
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, default_mode())  # mkstemp's 0600 would otherwise become the final file's mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fs_trouble(folder: Path) -> int | None:
    """EROFS or ENOSPC when the file system holding `folder` is read-only or (nearly) full."""
    import errno

    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < 1 << 20:
        return errno.ENOSPC
    return None


def io_failure(e: BaseException, where: Path) -> str | None:
    """'PATH: what the OS said' when `e` is a failed file operation, else None. torch and
    safetensors raise RuntimeError / SafetensorError for a full or read-only disk, with the OS
    error in their text or (torch's zip writer: 'unexpected pos') not at all: then the file system
    of `where` (the folder being written) is asked whether it is read-only or full."""
    if isinstance(e, OSError) and e.errno:
        return f"{e.filename or where}: {e.strerror or os.strerror(e.errno)}"
    if type(e).__name__ not in ("RuntimeError", "SafetensorError"):
        return None
    text = str(e)
    path = re.search(r'at path "([^"]+)"', text)
    path = path.group(1) if path else where
    code = re.search(r"os error (\d+)", text)
    if code:
        return f"{path}: {os.strerror(int(code.group(1)))}"
    said = re.search(r"strerror: ([^\n]+)", text)
    if said:
        return f"{path}: {said.group(1).strip()}"
    if re.search(r"inline_container|I/O error|write failed|unexpected pos", text):
        code = _fs_trouble(Path(where))
        if code is not None:
            return f"{path}: {os.strerror(code)}"
    return None


def probe_writable(folder: Path) -> None:
    """Create and delete a file in `folder` (OSError when it takes none): permission bits alone miss
    read-only file systems, and root."""
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".lorafit-probe-")
    os.close(fd)
    os.unlink(probe)


def check_writable(run_dir: Path, fix: str = "choose another --out") -> None:
    """The run directory, or the nearest folder above it that exists, takes a new file (probe_writable)."""
    run_dir = Path(run_dir)
    p = Path(os.path.abspath(run_dir))
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise LorafitError(f"{run_dir}: {p} is a file, not a folder; {fix}")
    try:
        probe_writable(p)
    except OSError as e:
        raise LorafitError(f"{run_dir}: cannot write in {p} ({os.strerror(e.errno) if e.errno else e}); {fix}") from None


def fsync_path(path: Path) -> None:
    """Flush a file or a folder entry to disk (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensors_durably(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors via a temporary file in the same folder: fsync, rename, fsync the folder."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.chmod(tmp, default_mode())  # safetensors writes its file 0600
        fsync_path(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: the partial file goes, and frees its space
        raise
    os.replace(tmp, path)
    fsync_path(path.parent)
