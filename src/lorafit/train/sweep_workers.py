"""Several `lorafit sweep` processes (on one machine or many) working on one Optuna study.

Every worker runs the same command against the same `--storage` (PostgreSQL for several machines;
SQLite for local workers). What keeps them consistent:

- exactly `--trials` finished trials: a worker takes a trial only while finished + running trials
  leave a slot. Two workers can create a trial at the same instant, so a new trial also counts the
  running trials numbered below it (numbers are handed out by the database, in order): the later one
  is surplus, is closed as failed with user attribute `surplus` (left out of trials.csv), and its
  worker waits;
- a worker that dies (SIGKILL, power) stops sending heartbeats: once its trial's heartbeat is older
  than the grace period, any worker marks it failed (Optuna's fail_stale_trials) and
  RetryFailedTrialCallback queues the same parameters again, so the study still finishes;
- a worker whose slots are all taken waits (polling) while other workers' trials run, because one
  of them may still die and need the retry.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Callable

HEARTBEAT = 60  # seconds between a running trial's heartbeats (lorafit sweep --heartbeat)


@contextlib.contextmanager
def experimental_ok():
    """Optuna marks fail_stale_trials and RetryFailedTrialCallback experimental, with a warning at every
    call (every trial); they are what makes workers safe, and a user can do nothing about the warning."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class SurplusTrial(Exception):
    """This trial was created after the study's last slot was taken by another worker."""


def storage(url: str, heartbeat: int = HEARTBEAT):
    """RDBStorage with heartbeats (grace: two missed beats) and a retry of the trials they mark failed."""
    import optuna

    from ..errors import LorafitError

    if heartbeat < 1:
        raise LorafitError(f"--heartbeat: {heartbeat}; give a number of seconds >= 1 (default {HEARTBEAT})")
    kwargs = {}
    if url.startswith("sqlite"):
        # several local workers share the file: wait for its lock instead of failing at once ("database is locked")
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    import time

    from sqlalchemy.exc import DBAPIError

    for attempt in range(5):
        try:
            with experimental_ok():  # heartbeat and retries, like the calls below
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                    failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=3), **kwargs)
        except DBAPIError:
            # workers starting together on a new database race to create its tables ("table ... already
            # exists"); creating them is idempotent, so the loser opens it again once the winner is done
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


def counts(study) -> tuple[int, list]:
    """(finished trials: complete or pruned, running trials)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return len(trials) - len(running), running


def claim(study, trial, trials: int) -> None:
    """Raise SurplusTrial unless this trial has one of the study's `trials` slots (see the module doc)."""
    done, running = counts(study)
    ahead = [t for t in running if t.number < trial.number]
    if done + len(ahead) >= trials:
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"trial {trial.number}: {done} finished and {len(ahead)} running trial(s) fill the study")
    trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
    retried = retry_of(trial)
    if retried is not None:
        trial.set_user_attr("note", f"retry of trial {retried} (its worker stopped sending heartbeats)")


def retry_of(trial) -> int | None:
    """The trial this one retries (RetryFailedTrialCallback's system attribute), read from the storage:
    an objective's Trial has no system_attrs of its own."""
    from optuna.storages import RetryFailedTrialCallback

    frozen = trial.study._storage.get_trial(trial._trial_id)
    with experimental_ok():
        return RetryFailedTrialCallback.retried_trial_number(frozen)


def run_trials(study, objective: Callable, trials: int, after_trial: Callable, *, heartbeat: int = HEARTBEAT,
               log: Callable = print) -> None:
    """Run trials one at a time until the study holds `trials` finished ones, waiting while other
    workers hold the last slots."""
    from optuna.storages import fail_stale_trials

    waiting_said = False
    while True:
        with experimental_ok():
            fail_stale_trials(study)  # a dead worker's trial: failed, and queued again by the retry callback
        done, running = counts(study)
        if done >= trials:
            return
        if done + len(running) >= trials:
            if not waiting_said:
                log(f"waiting: {done} finished, {len(running)} running in other workers")
                waiting_said = True
            time.sleep(min(5.0, heartbeat / 2))
            continue
        waiting_said = False
        try:
            study.optimize(objective, n_trials=1, callbacks=[after_trial])
        except SurplusTrial as e:
            log(f"{e}; waiting")
            after_trial(study, None)
            time.sleep(min(5.0, heartbeat / 2))
