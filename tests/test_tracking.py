"""train.report_to: TensorBoard event files and the MLflow store, read back with tensorboard's
EventAccumulator and mlflow's client; --seeds as one experiment; a resumed run continues its run."""
from __future__ import annotations

import json
import signal
import sys

import pytest

from conftest import tiny_config


@pytest.fixture(scope="module")
def migrated_store(tmp_path_factory):
    """An empty MLflow SQLite store with its tables made: copied into place, it spares each test MLflow's
    database migrations (seconds each on a busy machine)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def store_at(template, path):
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def metrics_rows(run_dir, kind):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["type"] == kind]


def interrupted_then_resumed(cfg, run_dir):
    """Stop after the first evaluation (as SIGINT does: at the next step, with a checkpoint), then --resume."""
    from lorafit.errors import Interrupted
    from lorafit.train.recipe import Recipe
    from lorafit.train.run import run_training

    recipe = Recipe(cfg, run_dir, log=lambda *a: None)
    recipe.on_eval = lambda n, m: setattr(recipe, "stop_signal", signal.SIGINT)
    with pytest.raises(Interrupted):
        recipe.setup().train()
    recipe.cleanup()
    stopped_at = recipe.state.step
    run_training(cfg, run_dir, resume=True, log=lambda *a: None)
    return stopped_at


def test_tensorboard_events_per_step_and_resume(tmp_path, tiny_roberta, synth_csv):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tiny_roberta, synth_csv, train__epochs=1, train__log_every=1, train__eval_every=4,
                      data__limit=120, train__batch_size=8, train__report_to='["tensorboard"]')
    run_dir = tmp_path / "run"
    stopped_at = interrupted_then_resumed(cfg, run_dir)
    assert 4 <= stopped_at < 12
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    scalars = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "val/accuracy", "val/macro_f1", "val/loss",
            "final/validation_accuracy"} <= set(scalars)
    train = {r["step"]: r for r in metrics_rows(run_dir, "train")}
    events = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(events) == sorted(train) == list(range(1, 13))  # every step, across the stop and the resume
    for step, r in train.items():
        assert events[step] == pytest.approx(r["loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/accuracy")] == [4, 8, 12]
    final = json.loads((run_dir / "eval.json").read_text())["validation"]["accuracy"]
    assert acc.Scalars("final/validation_accuracy")[-1].value == pytest.approx(final)
    hparams = list((run_dir / "tensorboard").glob("*/hparams.yml"))  # the resolved config, once
    assert len(hparams) == 1 and "optim.lr: 0.005" in hparams[0].read_text()


@pytest.mark.slow
def test_mlflow_seeds_one_experiment_params_metrics_artefacts(tmp_path, tiny_roberta, synth_csv, migrated_store):
    from mlflow import MlflowClient

    from lorafit.train.seeds import run_seeds

    cfg = tiny_config(tiny_roberta, synth_csv, train__max_steps=4, train__log_every=1, data__limit=100,
                      train__report_to='["mlflow"]')
    out = tmp_path / "seeds"
    uri = store_at(migrated_store, out / "mlflow.db")  # where the default store is: OUT/mlflow.db
    run_seeds(cfg, [0, 1], out, log=lambda *a: None)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("seeds")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["seed-0", "seed-1"]
    for r in runs:
        seed = int(r.info.run_name.split("-")[1])
        run_dir = out / f"seed-{seed}"
        assert r.info.status == "FINISHED" and r.data.params["seed"] == str(seed)
        assert r.data.params["optim.lr"] == "0.005" and r.data.params["adapter.r"] == "4"
        history = client.get_metric_history(r.info.run_id, "train/loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [x["loss"] for x in metrics_rows(run_dir, "train")])
        assert {"train/lr", "train/grad_norm", "val/accuracy", "final/validation_macro_f1"} <= set(r.data.metrics)
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"eval.json", "report.md", "curves.png", "confusion.png", "config.yaml", "adapter"} <= files
        assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(r.info.run_id, "adapter")}
        assert json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"] == r.info.run_id


def test_mlflow_resumed_run_continues_the_same_run(tmp_path, tiny_roberta, synth_csv, monkeypatch, migrated_store):
    from mlflow import MlflowClient

    uri = store_at(migrated_store, tmp_path / "store.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the environment's store, not the default
    cfg = tiny_config(tiny_roberta, synth_csv, train__epochs=1, train__log_every=1, train__eval_every=4,
                      data__limit=120, train__batch_size=8, train__report_to='["mlflow"]')
    interrupted_then_resumed(cfg, tmp_path / "run")
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")})
    assert steps == list(range(1, 13))
    assert not (tmp_path / "run" / "mlflow.db").exists()


def test_missing_tracker_package_one_line_nothing_written(tmp_path, tiny_roberta, synth_csv, monkeypatch, capsys):
    from lorafit.cli import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if mlflow-skinny were not installed
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: {tiny_roberta}}}\ndata: {{train: {synth_csv}}}\n"
                      "train: {report_to: [tensorboard, mlflow]}\n")
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err]
    assert err.startswith("error: train.report_to: mlflow needs the mlflow-skinny package") and "pip install" in err
    assert not (tmp_path / "run").exists()


def test_unknown_tracker_is_a_config_error(tiny_roberta, synth_csv):
    from lorafit.errors import LorafitError

    with pytest.raises(LorafitError, match="train.report_to"):
        tiny_config(tiny_roberta, synth_csv, train__report_to='["wandb"]')


@pytest.mark.slow
def test_sweep_one_mlflow_run_per_trial_under_its_study(tmp_path, tiny_roberta, synth_csv, migrated_store):
    import yaml
    from mlflow import MlflowClient

    from lorafit.cli import main

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": str(tiny_roberta)}, "data": {"train": str(synth_csv), "val_size": 0.2, "limit": 80, "max_length": 32},
        "train": {"max_steps": 2, "batch_size": 16, "log_every": 1, "report_to": ["mlflow"]}, "adapter": {"r": 2},
        "sweep": {"space": {"optim.lr": [1e-3, 5e-3]}}}))
    out = tmp_path / "sweep"
    uri = store_at(migrated_store, out / "mlflow.db")
    assert main(["sweep", "--config", str(config), "--trials", "2", "--out", str(out)]) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-000", "trial-001"]
    for r in runs:
        trial = int(r.info.run_name.split("-")[1])
        assert r.data.tags["optuna.study"] == "study" and r.data.tags["optuna.trial"] == str(trial)
        assert r.data.params["optim.lr"] in ("0.001", "0.005") and "train/loss" in r.data.metrics


@pytest.mark.slow
def test_mlflow_plain_file_uri_logs_to_sqlite_in_that_folder(tmp_path, tiny_roberta, synth_csv, monkeypatch, migrated_store):
    """MLflow 3.18 refuses `file:` stores: a file: URI naming a folder without file-store runs becomes a
    SQLite store in that folder, said once in the run log; mlflow's own client reads the run there."""
    from mlflow import MlflowClient

    from lorafit.train.run import run_training

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "mlruns"
    uri = store_at(migrated_store, folder / "mlflow.db")  # where the file: URI's store goes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{folder}")
    cfg = tiny_config(tiny_roberta, synth_csv, train__max_steps=2, train__log_every=1, data__limit=60,
                      train__report_to='["mlflow"]')
    lines = []
    run_training(cfg, tmp_path / "run", log=lines.append)
    notes = [x for x in lines if x.startswith("mlflow: MLFLOW_TRACKING_URI file:")]
    assert len(notes) == 1 and uri in notes[0] and "refuses plain-file stores" in notes[0], lines
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [1, 2]
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["mlflow"]["tracking_uri"] == uri


def test_mlflow_file_store_with_runs_is_refused_before_training(tmp_path, tiny_roberta, synth_csv, monkeypatch, capsys):
    """A folder that already holds file-store runs (experiment folder 0/): lorafit does not split them over two
    stores; one error line naming the migration, and no run directory."""
    from lorafit.cli import main

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "mlruns" / "0").mkdir(parents=True)
    (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: {tiny_roberta}}}\ndata: {{train: {synth_csv}}}\n"
                      f"train: {{report_to: [mlflow], tracking_uri: 'file://{tmp_path / 'mlruns'}'}}\n")
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.splitlines() == [err], err
    assert err.startswith("error: train.tracking_uri: file://") and "holds MLflow file-store runs" in err
    assert "mlflow migrate-filestore" in err and "MLFLOW_ALLOW_FILE_STORE=true" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns" / "mlflow.db").exists()
