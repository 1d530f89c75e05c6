"""Files that are never seen half-written: atomic text writes, durable safetensors, fsync; and the
one rule for what a path to write may be (output_target).

The bottom of the package: it imports nothing of lorafit but errors, so every layer can use it.
"""
from __future__ import annotations

import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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


STDOUT = "-"  # as an output path: lorafit's standard output


@dataclass(frozen=True)
class Target:
    """Where writing `path` ends up. A regular file (or a new name) is replaced atomically at `file`,
    symbolic links resolved: the link stays and its target gets the new contents. A stream (standard
    output, a FIFO, a character device such as /dev/null or a terminal) is written in place, with no
    temporary file: renaming one onto it would replace the device node or the pipe by a plain file."""
    file: Optional[Path] = None  # the regular file to replace (resolved), when not a stream
    fd: Optional[int] = None  # an open descriptor of this process to write to: '-', /dev/stdout, /dev/fd/N
    stream: Optional[str] = None  # a FIFO or character device to open and write to

    def identity(self) -> Optional[tuple[int, int]]:
        """(st_dev, st_ino) of the regular file this writes over, or None (a new file, a pipe, a device)."""
        return regular_identity(self.fd if self.fd is not None else (self.stream or self.file))


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device"))


def output_target(path: str | Path) -> Target:
    """How lorafit writes `path` (see Target), or LorafitError naming the path when it is something
    that must not be written over: a folder, a socket, a block device. The one place that decides, for
    every file lorafit writes and for the checks made before a long job starts."""
    name = str(path)
    if name == STDOUT:
        return Target(fd=1)
    fd = own_fd(name)
    if fd is not None:  # /dev/stdout, /dev/fd/N: the shell's redirection, whatever it points at
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            raise LorafitError(f"{name}: file descriptor {fd} is not open") from None
        if stat.S_ISDIR(mode):
            raise LorafitError(f"{name}: file descriptor {fd} is a folder; give a file name")
        return Target(fd=fd)
    try:
        mode = os.stat(name).st_mode  # follows symbolic links
    except (FileNotFoundError, NotADirectoryError):  # a new file (or a link to one): made at the link's target;
        return Target(file=Path(os.path.realpath(name)))  # a missing or non-folder parent is the caller's to name
    except OSError as e:  # a symbolic link loop, a folder we may not enter
        raise LorafitError(f"{name}: {e.strerror}") from None
    if stat.S_ISREG(mode):
        return Target(file=Path(os.path.realpath(name)))
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return Target(stream=name)
    what = next((w for test, w in _KINDS if test(mode)), "not a regular file")
    raise LorafitError(f"{name} is {what}; lorafit writes only to a regular file (or a symbolic link to one), "
                       f"a FIFO, a character device, or - for standard output")


def own_fd(path: str) -> Optional[int]:
    """N when `path` leads through /proc/self/fd/N (/dev/stdout, /dev/stdin, /dev/fd/N, a shell's process
    substitution): this process's own open file N. It is used as it is, never reopened or replaced:
    replacing it would cut it from the shell's redirection, and reopening a socket fails."""
    p = os.path.abspath(path)
    for _ in range(40):  # a symbolic link loop ends here, and os.stat reports it
        head, name = os.path.split(p)
        m = re.fullmatch(r"/proc/(\d+)(?:/task/\d+)?/fd", os.path.realpath(head))
        if m and int(m.group(1)) == os.getpid() and name.isdigit():
            return int(name)
        if not os.path.islink(p):
            return None
        p = os.path.normpath(os.path.join(head, os.readlink(p)))
    return None


def regular_identity(what: str | Path | int | None) -> Optional[tuple[int, int]]:
    """(st_dev, st_ino) of a regular file given by path (links followed) or open descriptor, else None."""
    if what is None:
        return None
    try:
        st = os.fstat(what) if isinstance(what, int) else os.stat(what)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def write_stream(target: Target, data: bytes) -> None:
    """Write `data` to a stream target in place: standard output, a descriptor, a FIFO (opening it waits
    for a reader, as `cat > fifo` does) or a character device."""
    if target.fd == 1:
        sys.stdout.flush()  # anything printed before comes first
    fd = target.fd if target.fd is not None else os.open(target.stream, os.O_WRONLY | os.O_NOCTTY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        if target.fd is None:
            os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` as output_target decides: a regular file through a temporary file beside it
    (fsync, rename: readers never see half a file), symbolic links resolved first; a stream in place."""
    target = output_target(path)
    if target.file is None:
        write_stream(target, text.encode("utf-8"))
        return
    path = target.file
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
    """safetensors via a temporary file beside the target (output_target: links resolved): fsync, rename,
    fsync the folder. A stream target gets the bytes in place."""
    from safetensors.torch import save, save_file

    target = output_target(path)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if target.file is None:
        write_stream(target, save(tensors))
        return
    path = target.file
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp))
        os.chmod(tmp, default_mode())  # safetensors writes its file 0600
        fsync_path(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: the partial file goes, and frees its space
        raise
    os.replace(tmp, path)
    fsync_path(path.parent)
