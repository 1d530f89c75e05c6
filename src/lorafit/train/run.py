"""One training run as the command runs it: the recipe under SIGINT/SIGTERM handling, and a disk
error or an interrupt turned into one line that says what was kept and the command that goes on."""
from __future__ import annotations

import shlex
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from ..errors import Interrupted, LorafitError
from ..io import io_failure
from . import checkpoint
from .recipe import Recipe


def run_training(cfg: RunConfig, run_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
                 log: Callable = print, notes: dict | None = None, header: list[str] | None = None) -> dict:
    """notes, header: a zero-config run's reasons, written as comments in config.yaml (autoconfig)."""
    recipe = Recipe(cfg, run_dir, overwrite=overwrite, resume=resume, log=log)
    recipe.config_notes, recipe.config_header = notes, header or []
    with _stop_on_signals(recipe):
        try:
            recipe.setup()
            recipe.train()
            return recipe.finish()
        except KeyboardInterrupt:
            raise Interrupted(_interrupted_outside_the_loop(recipe)) from None
        except LorafitError:
            raise
        except Exception as e:
            reason = io_failure(e, recipe.run_dir)
            if reason is None:
                raise
            raise LorafitError(f"{reason}; {_what_is_kept(recipe, 'free space')}") from e
        finally:
            recipe.cleanup()


@contextmanager
def _stop_on_signals(recipe: Recipe):
    """SIGINT/SIGTERM while training: the current optimizer step ends, a checkpoint is written,
    training stops (Recipe.stop_signal). A second signal, or one during setup or finish, stops at
    once (KeyboardInterrupt); run_training then says what is left."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals
        return

    def handler(signum, frame):
        if recipe.training and recipe.stop_signal is None:
            recipe.stop_signal = signum  # no printing here: a handler may interrupt a print
            return
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _what_is_kept(recipe: Recipe, fix: str | None = None) -> str:
    """What is left of the run after a failure or an interrupt, and the command that goes on from there."""
    run = shlex.quote(str(recipe.run_dir))
    then = f": {fix}, then run: " if fix else "; resume with: "
    if not recipe.set_up:
        return f"the run is as it was{then}lorafit train --resume {run}" if recipe.resume else "nothing was kept"
    folder = checkpoint.latest(recipe.run_dir)
    if folder is not None:
        step = int(folder.name.split("-")[1])
        return f"the last checkpoint (step {step}) is kept in {recipe.run_dir / checkpoint.RESUME}{then}lorafit train --resume {run}"
    again = f": {fix}, then start over with: " if fix else "; start over with: "
    return (f"no checkpoint had been written yet{again}lorafit train --config "
            f"{shlex.quote(str(recipe.run_dir / 'config.yaml'))} --out {run} --overwrite")


def _interrupted_outside_the_loop(recipe: Recipe) -> str:
    if not recipe.set_up and not recipe.resume:
        return ("interrupted during setup, before training started: nothing to resume and nothing kept; "
                "to start over, run the same command again")
    return f"interrupted; {_what_is_kept(recipe)}"
