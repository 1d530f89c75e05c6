"""Experiment tracking through accelerate's trackers (train.report_to: [tensorboard, mlflow]).

What is logged: the resolved config as parameters (dotted keys), every row the run writes to
metrics.jsonl (per logged step: loss, learning rate, gradient norm; per epoch; per evaluation),
the final metrics, and for MLflow the run's files as artefacts at the end (eval.json, report.md,
curves.png, confusion.png, config.yaml, metrics.jsonl and the adapter/ or model/ folder).

Where: TensorBoard event files in RUN_DIR/tensorboard/. MLflow in train.tracking_uri, else
$MLFLOW_TRACKING_URI, else a local SQLite store (MLflow 3 keeps its file store in maintenance mode
and refuses it by default; SQLite needs only sqlalchemy + alembic, which mlflow-skinny brings) in
the group folder: the run directory for one run, OUT for `--seeds` (one MLflow run per seed in the
experiment named after OUT) and for `lorafit sweep` (one run per trial in the experiment named
after the study). RUN_DIR/tracking.json records the MLflow run, so `--resume` continues it.
A plain-file URI (file:DIR or a bare path) that the installed MLflow refuses becomes a SQLite store
in DIR, with a line in the run log, unless DIR already holds file-store runs: then one error line
before any work (store_uri)."""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import LorafitError

RECORD = "tracking.json"
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny")}  # module, pip name


@dataclass
class Group:
    """Runs that belong together: one MLflow experiment, one store, a name per run."""
    experiment: str
    folder: Path
    run_name: str
    tags: dict[str, Any] = field(default_factory=dict)


_group: contextvars.ContextVar[Optional[Group]] = contextvars.ContextVar("lorafit_tracking_group", default=None)
_open: list["Tracking"] = []  # at most one: a run that failed without closing is closed by the next start


@contextlib.contextmanager
def group(experiment: str, folder: Path, run_name: str, **tags):
    """Runs started inside log into one MLflow experiment (seeds, sweep trials)."""
    token = _group.set(Group(experiment, Path(folder), run_name, tags))
    try:
        yield
    finally:
        _group.reset(token)


def check_installed(cfg) -> None:
    """A tracker whose package is missing, or an MLflow store it refuses: one line before any work."""
    for name in cfg.train.report_to:
        module, pip = PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise LorafitError(f"train.report_to: {name} needs the {pip} package, which is not installed; "
                               f"pip install {pip}, or remove {name} from train.report_to") from None
    if "mlflow" in cfg.train.report_to:
        store_uri(cfg, Path("."))


def flat_params(cfg) -> dict[str, Any]:
    """The resolved config as dotted keys with scalar values (lists and None as text)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        elif isinstance(v, (bool, int, float, str)):
            out[prefix] = v
        else:
            out[prefix] = json.dumps(v)
    walk("", cfg.model_dump(mode="json"))
    return out


def metrics_of(row: dict) -> tuple[Optional[int], dict[str, float]]:
    """A metrics.jsonl row as (step, tracker metrics): train/loss, train/lr, val/accuracy, ..."""
    kind = row.get("type")
    prefix = {"train": "train", "eval": "val", "epoch": "epoch"}.get(kind)
    if prefix is None:
        return None, {}
    skip = {"type", "step", "n"}
    vals = {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return row.get("step"), vals


class Tracking:
    def __init__(self, recipe):
        from accelerate.tracking import MLflowTracker, TensorBoardTracker

        cfg, run_dir = recipe.cfg, recipe.run_dir
        g = getattr(recipe, "tracking_group", None) or _group.get() or Group(experiment=run_dir.name, folder=run_dir, run_name=run_dir.name)
        self.run_dir, self.trackers, self.mlflow = run_dir, [], None
        record = _read_record(run_dir) if recipe.resume else {}
        if "tensorboard" in cfg.train.report_to:
            self.trackers.append(TensorBoardTracker("tensorboard", str(run_dir)))
        if "mlflow" in cfg.train.report_to:
            import mlflow

            for noisy in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
                logging.getLogger(noisy).setLevel(logging.WARNING)  # database migrations, experiment creation
            saved = record.get("mlflow", {})
            uri, note = (saved["tracking_uri"], None) if saved.get("tracking_uri") else store_uri(cfg, g.folder)
            if note:
                recipe.log(note)
            if uri.startswith("sqlite:///"):  # SQLite makes the file, not its folder
                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            _use_uri(mlflow, uri)
            tags = {"lorafit.run_dir": str(run_dir.resolve()), **{k: str(v) for k, v in g.tags.items()}}
            self.mlflow = MLflowTracker(experiment_name=saved.get("experiment", g.experiment),
                                        logging_dir=str((g.folder / "mlartifacts").resolve()),
                                        run_id=saved.get("run_id"), run_name=g.run_name, tags=tags)
            self.mlflow_uri = uri
            self.trackers.append(self.mlflow)
        for t in self.trackers:
            t.start()
        if self.mlflow is not None:
            run = self.mlflow.active_run
            _write_record(run_dir, {"mlflow": {"run_id": run.info.run_id, "tracking_uri": self.mlflow_uri,
                                               "experiment": self.mlflow.experiment_name}})
        if not recipe.resume:  # a resumed run has its parameters already
            params = flat_params(cfg)
            for t in self.trackers:
                t.store_init_configuration(params)

    def log_row(self, row: dict) -> None:
        step, vals = metrics_of(row)
        if vals:
            for t in self.trackers:
                t.log(vals, step=step)

    def finish(self, result: dict, weights: str) -> None:
        final = {f"final/{split}_{k}": float(result[split][k]) for split in ("validation", "test") if split in result
                 for k in ("accuracy", "macro_f1", "loss") if k in result[split]}
        step = result.get("best_step")
        for t in self.trackers:
            t.log(final, step=step)
        if self.mlflow is not None:
            for name in ("eval.json", "report.md", "curves.png", "confusion.png", "config.yaml", "metrics.jsonl"):
                if (self.run_dir / name).is_file():
                    self.mlflow.log_artifact(str(self.run_dir / name))
            if (self.run_dir / weights).is_dir():
                self.mlflow.log_artifacts(str(self.run_dir / weights), artifact_path=weights)
        self.close("FINISHED")

    def close(self, status: str = "FINISHED") -> None:
        if self not in _open:
            return
        _open.remove(self)
        for t in self.trackers:
            if t is self.mlflow:
                import mlflow

                mlflow.end_run(status=status)
            else:
                t.finish()


def _use_uri(mlflow, uri: str) -> None:
    """mlflow.set_tracking_uri, without its side effect of exporting MLFLOW_TRACKING_URI: the next run
    in this process (a seed, a trial, a test) would take that for the user's choice and log there."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def store_uri(cfg, folder: Path) -> tuple[str, Optional[str]]:
    """(MLflow tracking URI, note for the run log): train.tracking_uri, else $MLFLOW_TRACKING_URI, else
    SQLite in `folder`. A plain-file store the installed MLflow refuses moves to SQLite in its folder
    (noted) while that folder holds no file-store runs; with runs in it, LorafitError: lorafit will not
    split a user's runs over two stores, and migrating them is MLflow's tool's job."""
    source = "train.tracking_uri" if cfg.train.tracking_uri else "MLFLOW_TRACKING_URI"
    uri = cfg.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{(folder / 'mlflow.db').resolve()}", None
    where = _file_store_folder(uri)
    if where is None or not _file_store_refused():
        return uri, None
    import mlflow

    refuses = f"MLflow {mlflow.__version__} refuses plain-file stores unless MLFLOW_ALLOW_FILE_STORE=true"
    db = f"sqlite:///{where / 'mlflow.db'}"
    if where.is_dir() and any(d.is_dir() and (d.name.isdigit() or d.name in (".trash", "models")) for d in where.iterdir()):
        raise LorafitError(f"{source}: {uri} holds MLflow file-store runs, and {refuses}; migrate them "
                           f"(mlflow migrate-filestore --source {where} --target {db}) and give {db}, "
                           "or set MLFLOW_ALLOW_FILE_STORE=true")
    return db, f"mlflow: {source} {uri} is a plain-file store ({refuses}): logging to {db}, in that folder"


def _file_store_folder(uri: str) -> Optional[Path]:
    """The folder of a plain-file store URI, as MLflow reads one (file:DIR, file:///DIR, or a bare path); else None."""
    from urllib.parse import unquote, urlparse

    if uri in ("databricks", "databricks-uc", "uc"):  # names MLflow takes for remote stores, not folders
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = unquote(parsed.path)
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and parsed.scheme.isalpha()):  # C:\... is a path
        path = uri
    else:
        return None
    return Path(path).expanduser().resolve()


def _file_store_refused() -> bool:
    """MLflow 3's file store raises unless MLFLOW_ALLOW_FILE_STORE is true; versions without that switch take it."""
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:
        return False
    return not MLFLOW_ALLOW_FILE_STORE.get()


def _read_record(run_dir: Path) -> dict:
    path = run_dir / RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}


def _write_record(run_dir: Path, record: dict) -> None:
    from ..io import atomic_write_text

    atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2))


# ---------------------------------------------------------------- the recipe's hooks

def start(recipe) -> Optional[Tracking]:
    """After setup (the run directory is made): the trackers, on the main process only."""
    if not recipe.cfg.train.report_to or not recipe.acc.is_main_process:
        return None
    for stale in list(_open):
        stale.close("FAILED")  # a run in this process that stopped without closing (a pruned trial)
    t = Tracking(recipe)
    _open.append(t)
    return t


def stopped(recipe) -> None:
    """The recipe stopped before finishing (interrupted, pruned, failed): end the tracker runs."""
    t = getattr(recipe, "tracking", None)
    if t is not None and not recipe.state.finished:
        t.close("KILLED" if recipe.stop_signal is not None else "FAILED")
