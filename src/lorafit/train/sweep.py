"""`lorafit sweep`: Optuna search over the config's `sweep.space`, median-pruned on validation metrics.

Each trial is an ordinary run (OUT/trials/NNN) of the base config with the sampled values set; it
reports its metric after every evaluation and stops when it falls below the median of earlier
trials at that point. The study lives in a database (default sqlite:///OUT/sweep.db; any SQLAlchemy
URL) under the config's name, so a killed sweep resumes: `--trials N` is the total wanted,
finished (complete or pruned) trials included. A trial over budget.max_trainable, or otherwise
impossible (e.g. lora_dense on a checkpoint without that layer), is pruned before it trains.
After every trial: OUT/best.yaml (the best trial's resolved config, ready for `lorafit train`),
OUT/trials.csv and OUT/sweep.png (metric against trainable parameters).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, get_args

from ..config import RunConfig, field_at, validate_config
from ..errors import LorafitError
from ..io import atomic_write_text, check_writable
from ..metrics import higher_is_better

# ---------------------------------------------------------------- the search space

def _number_kind(key: str) -> type | None:
    field, _ = field_at(key)
    ann = field.annotation
    kinds = (ann, *get_args(ann))
    return int if int in kinds and float not in kinds else float if float in kinds else None


def with_values(cfg: RunConfig, values: dict[str, Any], source: str) -> RunConfig:
    """cfg with dotted keys set, validated as a whole; the sweep section itself dropped."""
    raw = cfg.model_dump(mode="json")
    raw.pop("sweep", None)
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate_config(raw, source)


def check_space(cfg: RunConfig) -> None:
    """Every choice and every range end must give a valid config: errors before the first trial."""
    space = cfg.sweep.space
    if not space:
        raise LorafitError("sweep.space is empty; add e.g. sweep: {space: {adapter.r: [4, 8, 16], "
                           "optim.lr: {low: 1.0e-4, high: 3.0e-3, log: true}}}")
    for key, spec in space.items():
        if isinstance(spec, dict):
            kind = _number_kind(key)
            if kind is None:
                raise LorafitError(f"sweep.space.{key}: a range needs a numeric key; give a list of choices")
            if spec.get("log") and spec.get("step"):
                raise LorafitError(f"sweep.space.{key}: a range takes log or step, not both")
            values = [kind(spec["low"]), kind(spec["high"])]
        else:
            values = spec
        for v in values:
            with_values(cfg, {key: v}, f"sweep.space.{key} = {v!r}")


def suggest(trial, key: str, spec: Any) -> Any:
    if isinstance(spec, list):
        if all(v is None or isinstance(v, (bool, int, float, str)) for v in spec):
            return trial.suggest_categorical(key, spec)
        # Optuna stores scalars only: lists (e.g. targets) are chosen by their JSON text
        labels = [json.dumps(v) for v in spec]
        return spec[labels.index(trial.suggest_categorical(key, labels))]
    kind = _number_kind(key)
    log, step = bool(spec.get("log", False)), spec.get("step")
    if kind is int:
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]), step=int(step or 1), log=log)
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=log,
                               step=None if step is None else float(step))


# ---------------------------------------------------------------- one trial

def make_objective(cfg: RunConfig, out: Path, log: Callable, trials: int | None = None) -> Callable:
    import optuna

    from . import tracking
    from .recipe import Recipe
    from .sweep_workers import claim

    metric = cfg.sweep.metric

    def objective(trial) -> float:
        if trials is not None:
            claim(trial.study, trial, trials)  # another worker may hold the study's last slot (sweep_workers.py)
        values = {key: suggest(trial, key, spec) for key, spec in cfg.sweep.space.items()}
        shown = " ".join(f"{k}={v}" for k, v in values.items())

        def pruned(note: str):
            trial.set_user_attr("note", note)
            log(f"trial {trial.number}: {shown}: pruned ({note})")
            return optuna.TrialPruned(note)

        def on_eval(n: int, m: dict) -> None:
            trial.report(m[metric], n)
            if trial.should_prune():
                raise pruned(f"evaluation {n}: {metric} {m[metric]:.4f} below the median of earlier trials")

        try:
            run_cfg = with_values(cfg, values, f"trial {trial.number}")
            recipe = Recipe(run_cfg, out / "trials" / f"{trial.number:03d}", overwrite=True, log=lambda *a: None,
                            on_eval=on_eval)
        except LorafitError as e:
            raise pruned(str(e)) from None
        recipe.tracking_group = tracking.Group(trial.study.study_name, out, f"trial-{trial.number:03d}",
                                               {"optuna.study": trial.study.study_name, "optuna.trial": trial.number})
        try:
            recipe.setup()
            trial.set_user_attr("trainable", sum(r.total for r in recipe.rows))
            trial.set_user_attr("config", recipe.cfg.to_yaml())  # resolved (adapter.r: auto is a number here)
            recipe.train()
            result = recipe.finish()
        except LorafitError as e:  # over budget, diverged, impossible combination: this trial only
            raise pruned(str(e).split(";")[0]) from None
        finally:
            recipe.cleanup()
        value = result["validation"][metric]
        log(f"trial {trial.number}: {shown}: {metric} {value:.4f} ({trial.user_attrs['trainable']:,} trainable)")
        return value

    return objective


# ---------------------------------------------------------------- the study

def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'sweep.db').resolve()}"


def open_study(cfg: RunConfig, storage: str, name: str, heartbeat: int | None = None):
    import optuna

    from . import sweep_workers

    direction = "maximize" if higher_is_better(cfg.sweep.metric) else "minimize"
    try:
        # heartbeat: a trial left RUNNING by a killed sweep is marked failed once stale (not counted)
        with warnings.catch_warnings():  # heartbeat is marked experimental; it is what makes resuming safe
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # and its failed trials are retried: several workers may share the study (sweep_workers.py)
            store = sweep_workers.storage(storage, heartbeat or sweep_workers.HEARTBEAT)
    except LorafitError:
        raise
    except Exception as e:  # bad URL, missing driver, unreachable server
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise LorafitError(f"--storage {storage}: cannot open ({first})") from None
    pruner = optuna.pruners.MedianPruner(n_startup_trials=cfg.sweep.startup_trials,
                                         n_warmup_steps=cfg.sweep.warmup_evals + 1)
    study = optuna.create_study(storage=store, study_name=name, direction=direction, load_if_exists=True, pruner=pruner)
    if study.direction.name.lower() != direction:
        raise LorafitError(f"study '{name}' in {storage} was made to {study.direction.name.lower()}; "
                           f"sweep.metric {cfg.sweep.metric} needs {direction}; use another --study or --storage")
    # seeded, and differently per session: a resumed sampler must not replay the first session's draws
    # and per worker (the process id): two workers starting together must not draw the same values;
    # constant_liar: a worker's draws avoid the values other workers are running
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + len(study.get_trials(deepcopy=False)) + os.getpid(),
                                               constant_liar=True)
    return study


def finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_sweep(cfg: RunConfig, trials: int, out: str | Path, *, storage: str | None = None, name: str = "lorafit",
              log: Callable = print, heartbeat: int | None = None):
    """Run trials until the study holds `trials` finished ones; write best.yaml, trials.csv, sweep.png."""
    import optuna

    check_space(cfg)
    out = Path(out)
    check_writable(out)  # before the study and the first trial's model
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, storage, name, heartbeat)
    done = finished(study)
    remaining = max(0, trials - done)
    log(f"sweep '{name}' in {storage}: {done} finished trial(s), running {remaining} more")
    write_outputs(study, cfg, out)
    if remaining:
        from .sweep_workers import HEARTBEAT, run_trials

        run_trials(study, make_objective(cfg, out, log, trials), trials, lambda s, t: write_outputs(s, cfg, out),
                   heartbeat=heartbeat or HEARTBEAT, log=log)
        write_outputs(study, cfg, out)  # the study as every worker left it
    best = best_trial(study)
    if best is not None:
        log(f"best: trial {best.number}, {cfg.sweep.metric} {best.value:.4f}; config in {out / 'best.yaml'}")
    return study


# ---------------------------------------------------------------- outputs

def best_trial(study):
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "config" in t.user_attrs]
    if not done:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(done, key=lambda t: t.value)


def write_outputs(study, cfg: RunConfig, out: Path) -> None:
    import pandas as pd

    metric = cfg.sweep.metric
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue  # created as another worker took the last slot; it never ran
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        row = {"trial": t.number, "state": t.state.name.lower(), metric: t.value if t.value is not None else last,
               "trainable": t.user_attrs.get("trainable"),
               "seconds": round(t.duration.total_seconds(), 1) if t.duration else None}
        row.update({k: t.params.get(k) for k in cfg.sweep.space})
        row["note"] = t.user_attrs.get("note", "") or ("stopped: no heartbeat from its worker" if t.state.name == "FAIL" else "")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["trial", "state", metric, "trainable", "seconds", *cfg.sweep.space, "note"])
    frame["trainable"] = frame["trainable"].astype("Int64")  # whole numbers, blank where a trial never built
    atomic_write_text(out / "trials.csv", frame.to_csv(index=False))
    best = best_trial(study)
    if best is not None:
        values = ", ".join(f"{k}={v}" for k, v in best.params.items())
        head = [f"# lorafit train --config {out / 'best.yaml'}",
                f"# Best of {len(rows)} trials of sweep '{study.study_name}': trial {best.number}, validation {metric} "
                f"{best.value:.4f}, {best.user_attrs.get('trainable', 0):,} trainable parameters.",
                f"# Sampled: {values}", ""]
        atomic_write_text(out / "best.yaml", "\n".join(head) + best.user_attrs["config"])
    plot_sweep(frame, metric, best.number if best is not None else None, out / "sweep.png")


def plot_sweep(frame, metric: str, best: int | None, path: Path) -> None:
    """Validation metric against trainable parameters: finished trials, pruned ones at their last value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    shown = frame.dropna(subset=[metric, "trainable"])
    for state, style in (("complete", dict(marker="o", color="tab:blue")), ("pruned", dict(marker="x", color="gray"))):
        part = shown[shown["state"] == state]
        ax.scatter(part["trainable"], part[metric], label=state, **style)
        for _, r in part.iterrows():
            ax.annotate(str(int(r["trial"])), (r["trainable"], r[metric]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    if best is not None:
        b = shown[shown["trial"] == best]
        ax.scatter(b["trainable"], b[metric], marker="*", s=220, color="tab:red", label=f"best (trial {best})")
    lo, hi = (shown["trainable"].min(), shown["trainable"].max()) if len(shown) else (1, 1)
    if lo > 0 and hi / lo > 10:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("sweep: pruned trials at their last evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
