"""The run directory: what makes a folder a lorafit run, the checks before one is used (never
replace what is not a run), making it so that a failed setup puts everything back, reading a
finished run, and the resume/ pointer to its newest checkpoint.

Layout: .lorafit-run (the marker: JSON `{"format": N, "lorafit": version}`, N the run-folder format
version; runs/compat.py is the one place that reads runs of older formats, and refuses newer ones),
config.yaml, labels.json, metrics.jsonl, params.txt, eval.json, calibration.json, calibration.png, curves.png,
confusion.png, report.md, adapter/ (PEFT format) or model/ (full fine-tuning), checkpoints/
(top-k weights by the selection metric), resume/ (resumable state while training: train/checkpoint.py).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..config import RunConfig
from ..errors import LorafitError
from ..io import atomic_write_text, check_writable
from .compat import RUN_MARKER, is_run_dir, marker_text, read_run_folder, run_format

# resume/LATEST names the newest complete checkpoint (train/checkpoint.py writes them; this reads the pointer)
# (FORMAT is the checkpoint's state.json format; the run folder's is compat.RUN_FORMAT)
RESUME, LATEST, FORMAT = "resume", "LATEST", 1
__all__ = ["RUN_MARKER", "is_run_dir", "check_run_dir", "prepare_run_dir", "read_run", "latest", "read_meta"]


def _protected(folder: Path) -> str | None:
    """Why `folder` must never be replaced, even when it holds a run."""
    real, cwd = folder.resolve(), Path.cwd().resolve()
    if real == cwd:
        return "the current directory"
    if real in cwd.parents:
        return "a parent of the current directory"
    if real == Path.home().resolve():
        return "the home directory"
    if os.path.ismount(real):
        return "a mount point"
    return None


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, a run directory that cannot be used; writes nothing (but a probe)."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise LorafitError(f"{run_dir}: not a lorafit run directory (config.yaml missing); nothing to resume")
        run_format(run_dir)  # refuses a run of a newer format
        read_meta(run_dir)  # refuses when there is no checkpoint
        check_writable(run_dir, "make it writable to resume the run there")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise LorafitError(f"{run_dir}: exists and is not a folder; choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite and is_run_dir(run_dir):
            raise LorafitError(f"{run_dir}: run directory already exists; pass --overwrite to replace it, "
                               f"--resume to continue it, or --out for a new one")
        if not overwrite:
            raise LorafitError(f"{run_dir}: folder exists and is not a lorafit run directory (no {RUN_MARKER}, no "
                               "config.yaml + labels.json); choose another --out (--overwrite replaces only a run)")
        why = _protected(run_dir)
        if why is not None:
            raise LorafitError(f"{run_dir}: is {why}; --overwrite never replaces it: choose another --out")
        if run_dir.is_symlink():
            raise LorafitError(f"{run_dir}: is a symbolic link; --overwrite replaces only a run directory itself: "
                               f"give --out {run_dir.resolve()}")
        if not is_run_dir(run_dir):
            raise LorafitError(f"{run_dir}: not a lorafit run directory (no {RUN_MARKER}, no config.yaml + labels.json); "
                               "--overwrite replaces only a run: choose another --out, or empty the folder yourself")
        check_writable(run_dir.parent)  # the old run is moved aside there
    check_writable(run_dir)


class NewRunDir:
    """What prepare_run_dir changed, so that a setup failing later puts it back: undo() leaves the
    folder as it was (absent, empty, or the run it replaces); commit() drops the replaced run."""

    def __init__(self, path: Path, before: str, aside: Path | None = None):
        self.path, self.before, self.aside = path, before, aside

    def undo(self) -> None:
        if self.before == "absent":
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.before == "empty":
            for p in list(self.path.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        elif self.aside is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            try:
                os.rename(self.aside, self.path)
                self.aside = None
            except OSError:
                pass  # the replaced run stays where it was moved, whole: never deleted by a failure

    def commit(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def prepare_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> NewRunDir | None:
    """Make the run directory (None for a resumed run, which keeps its own). A run being replaced
    is renamed aside, not deleted: NewRunDir.commit() deletes it once setup has passed."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite=overwrite, resume=resume)
    if resume:
        return None
    if not run_dir.exists():
        made = NewRunDir(run_dir, "absent")
    elif not any(run_dir.iterdir()):
        made = NewRunDir(run_dir, "empty")
    else:  # check_run_dir let it through: --overwrite on a run
        n = 0
        while (aside := run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}-{n}")).exists() or aside.is_symlink():
            n += 1
        os.rename(run_dir, aside)
        made = NewRunDir(run_dir, "replaced", aside)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_MARKER, marker_text())
    except BaseException:
        made.undo()
        raise
    return made


def read_run(run_dir: str | Path) -> tuple[RunConfig, list[str]]:
    """(config, label names) of a finished run, read through compat.read_run_folder (format checked)."""
    run = read_run_folder(run_dir)
    return run.cfg, run.labels


# ---------------------------------------------------------------- resume/: the pointer to the newest checkpoint

def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    pointer = Path(run_dir) / RESUME / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    return folder if (folder / "state.json").is_file() else None


def read_meta(run_dir: Path) -> tuple[Path, dict]:
    """(checkpoint folder, state.json) of a run, or a LorafitError saying why it cannot be resumed."""
    run_dir = Path(run_dir)
    folder = latest(run_dir)
    if folder is None:
        done = " (it finished: eval.json is there)" if (run_dir / "eval.json").is_file() else ""
        raise LorafitError(f"{run_dir}: no checkpoint to resume from ({RESUME}/{LATEST} missing){done}; "
                           "checkpoints are written at each epoch end and every train.checkpoint_every steps")
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LorafitError(f"{folder}/state.json: unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise LorafitError(f"{folder}: checkpoint format {meta.get('format')} is not {FORMAT}; it cannot be resumed here")
    return folder, meta
