"""`lorafit sweep`: trials run and prune, a sweep resumes from its database, best.yaml trains as is."""
import pandas as pd
import pytest
import yaml

from lorafit.cli import main
from lorafit.config import load_config
from lorafit.errors import LorafitError


def sweep_config(path, model, data, space, **extra):
    raw = {"model": {"name": str(model)},
           "data": {"train": str(data), "val_size": 0.2, "max_length": 32, "limit": 120},
           "adapter": {"r": 4, "dropout": 0.0}, "optim": {"lr": 5e-3, "warmup": 0.1},
           "train": {"epochs": 2, "batch_size": 16, "eval_batch_size": 64, "log_every": 5},
           "budget": {"max_trainable": 6000}, "sweep": {"space": space, **extra}}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_sweep_runs_resumes_and_exports_best(tiny_roberta, synth_csv, tmp_path):
    import optuna

    space = {"adapter.r": [2, 4], "optim.lr": {"low": 1e-3, "high": 2e-2, "log": True},
             "head.type": ["model", "mean_linear"], "adapter.targets": [["query", "value"], ["query", "key", "value", "dense"]]}
    cfg = sweep_config(tmp_path / "s.yaml", tiny_roberta, synth_csv, space)
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(cfg), "--trials", "2", "--out", str(out)]) == 0
    assert main(["sweep", "--config", str(cfg), "--trials", "3", "--out", str(out)]) == 0  # resumes: one more
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'sweep.db'}")
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)

    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["trial"]) == [0, 1, 2] and {"accuracy", "trainable", "adapter.r", "optim.lr", "note"} <= set(trials)
    assert (out / "sweep.png").stat().st_size > 1000
    best = load_config(out / "best.yaml")  # a plain run config: no sweep section, resolved values
    assert best.sweep.space == {} and best.adapter.r in (2, 4) and best.head.type in ("model", "mean_linear")
    row = trials[trials["accuracy"] == trials[trials["state"] == "complete"]["accuracy"].max()].iloc[0]
    assert best.optim.lr == pytest.approx(row["optim.lr"]) and best.adapter.r == row["adapter.r"]
    assert (out / "best.yaml").read_text().startswith("# lorafit train --config ")


def test_over_budget_trial_is_pruned_not_crashed(tiny_roberta, synth_csv, tmp_path):
    cfg = sweep_config(tmp_path / "s.yaml", tiny_roberta, synth_csv, {"adapter.r": [32]})
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(cfg), "--trials", "1", "--out", str(out)]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["state"]) == ["pruned"] and "exceed the budget" in trials["note"][0]
    assert not (out / "best.yaml").exists()


def test_space_keys_and_values_are_checked(tiny_roberta, synth_csv, tmp_path):
    with pytest.raises(LorafitError, match=r"'sweep.space': unknown key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        load_config(sweep_config(tmp_path / "a.yaml", tiny_roberta, synth_csv, {"optim.lrr": [1e-3]}))
    with pytest.raises(LorafitError, match=r"unknown key 'adaptr.r' \(did you mean 'adapter.r'\?\)"):
        load_config(sweep_config(tmp_path / "b.yaml", tiny_roberta, synth_csv, {"adaptr.r": [4]}))
    from lorafit.train.sweep import check_space

    with pytest.raises(LorafitError, match=r"sweep.space.optim.schedule = 'cosin'"):
        check_space(load_config(sweep_config(tmp_path / "c.yaml", tiny_roberta, synth_csv, {"optim.schedule": ["cosin"]})))
