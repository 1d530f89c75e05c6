"""Where config values come from: relative paths in a config file are read against its folder (a run's
config.yaml records them absolute, so it reproduces the run from anywhere), `--set` paths against the
working directory; and an error in a `--set` value names that flag, not the config file."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from lorafit.cli import main
from lorafit.config import load_config
from lorafit.errors import LorafitError


def _config(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "c.yaml"
    p.write_text(text)
    return p


# ---------------------------------------------------------------- defect 10: relative paths

def test_relative_paths_in_a_config_file_are_read_against_its_folder(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    shutil.copytree(tiny_roberta, proj / "models" / "tiny")
    shutil.copy(synth_csv, proj / "train.csv")
    conf = _config(proj / "configs", "model: {name: ../models/tiny}\ndata: {train: ../train.csv, test: ../train.csv}\n")
    monkeypatch.chdir(tmp_path)  # not the config's folder, not the project's
    cfg = load_config(conf)
    assert cfg.model.name == str(proj / "models" / "tiny")
    assert cfg.data.train == cfg.data.test == str(proj / "train.csv")


def test_a_path_only_the_working_directory_has_still_works(synth_csv, tmp_path, monkeypatch):
    """The shipped configs say `../shared/data/agnews/train.csv`, meant from the repository root."""
    shutil.copy(synth_csv, tmp_path / "train.csv")
    conf = _config(tmp_path / "configs", "data: {train: train.csv}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(conf).data.train == str(tmp_path / "train.csv")
    shutil.copy(synth_csv, tmp_path / "configs" / "train.csv")  # both have it: the config's folder wins
    assert load_config(conf).data.train == str(tmp_path / "configs" / "train.csv")


def test_a_missing_relative_path_is_reported_against_the_config_folder(tmp_path, monkeypatch):
    conf = _config(tmp_path / "configs", "data: {train: nothing-here.csv}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(conf).data.train == str(tmp_path / "configs" / "nothing-here.csv")


def test_set_paths_are_read_against_the_working_directory(synth_csv, tmp_path, monkeypatch):
    shutil.copy(synth_csv, tmp_path / "mine.csv")
    conf = _config(tmp_path / "configs", "data: {train: elsewhere.csv}\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(conf, ["data.train=mine.csv"]).data.train == str(tmp_path / "mine.csv")
    assert load_config(None, ["data.test=./sub/t.csv"]).data.test == str(tmp_path / "sub" / "t.csv")
    assert load_config(None, ["data.train=~/x.csv"]).data.train == os.path.expanduser("~/x.csv")


@pytest.mark.parametrize("name", ["roberta-base", "FacebookAI/roberta-base", "ag_news", "fancyzhx/ag_news"])
def test_hub_ids_are_not_paths(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = _config(tmp_path / "configs", f"model: {{name: {name}}}\ndata: {{train: {name}, test: {name}}}\n")
    cfg = load_config(conf, [f"data.test={name}"])
    assert cfg.model.name == cfg.data.train == cfg.data.test == name


def test_run_config_records_absolute_paths_and_reproduces_from_anywhere(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    shutil.copytree(tiny_roberta, proj / "tiny")
    shutil.copy(synth_csv, proj / "train.csv")
    raw = yaml.safe_load(tiny_config(tiny_roberta, synth_csv, train__max_steps=1, data__limit=60).to_yaml())
    raw["model"]["name"], raw["data"]["train"] = "tiny", "train.csv"
    conf = proj / "c.yaml"
    conf.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(proj)
    assert main(["train", "--config", "c.yaml", "--out", str(tmp_path / "run")]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["name"] == str(proj / "tiny") and saved["data"]["train"] == str(proj / "train.csv")
    monkeypatch.chdir(tmp_path / "run")
    again = load_config("config.yaml")
    assert again.model.name == str(proj / "tiny") and again.data.train == str(proj / "train.csv")


def test_resume_of_a_run_that_recorded_relative_paths(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    """Runs written before paths were recorded absolute hold relative ones in config.yaml and in their
    checkpoint's copy of the config; --resume from the original folder still accepts them."""
    import json

    from lorafit.train import checkpoint

    proj = tmp_path / "proj"
    shutil.copytree(tiny_roberta, proj / "tiny")
    shutil.copy(synth_csv, proj / "train.csv")
    monkeypatch.chdir(proj)
    run = tmp_path / "run"
    cfg = tiny_config(Path("tiny"), Path("train.csv"), train__max_steps=4, data__limit=80, train__checkpoint_every=2)
    from lorafit.train.recipe import Recipe

    recipe = Recipe(cfg, run, log=lambda *a: None).setup()
    recipe.train()  # leaves resume/ (finish() would delete it)
    # make it look like an old run: relative paths in config.yaml and in the checkpoint's meta
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["model"]["name"], raw["data"]["train"] = "tiny", "train.csv"
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    folder, _ = checkpoint.read_meta(run)
    meta_path = folder / "state.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["model"]["name"], meta["config"]["data"]["train"] = "tiny", "train.csv"
    meta_path.write_text(json.dumps(meta))
    assert checkpoint.load(run, load_config(run / "config.yaml")) is not None


# ---------------------------------------------------------------- defect 13: --set errors

def test_set_error_names_the_flag_not_the_config_file(tmp_path):
    conf = _config(tmp_path, "optim: {lr: 0.001}\n")
    with pytest.raises(LorafitError) as e:
        load_config(conf, ["optim.lr=abc"])
    assert str(e.value) == "--set optim.lr: Input should be a valid number, unable to parse string as a number"


def test_file_and_set_errors_each_name_their_source(tmp_path):
    conf = _config(tmp_path, "train: {epochs: -1}\n")
    with pytest.raises(LorafitError) as e:
        load_config(conf, ["optim.lr=abc", "optim.lrr=1"])
    assert str(e.value) == f"{conf}: 'train.epochs': Input should be greater than 0; --set optim.lr: Input should be " \
                           "a valid number, unable to parse string as a number; --set optim.lrr: unknown key " \
                           "(did you mean 'optim.lr'?)"


def test_set_on_a_whole_section_is_named(tmp_path):
    with pytest.raises(LorafitError) as e:
        load_config(_config(tmp_path, "{}\n"), ["optim={lr: abc}"])
    assert str(e.value).startswith("--set optim: 'optim.lr': Input should be a valid number")


def test_list_field_given_a_scalar_says_how_to_write_a_list(tmp_path):
    # (a single target or text column is a list of one: tests/test_config.py; label names are never one)
    with pytest.raises(LorafitError) as e:
        load_config(None, ["data.label_names=World"])
    assert str(e.value) == "--set data.label_names: Input should be a valid list (write a list: " \
                           "--set data.label_names=[World])"
    with pytest.raises(LorafitError) as e:
        load_config(_config(tmp_path, "data: {label_names: World}\n"))
    assert str(e.value) == f"{tmp_path / 'c.yaml'}: 'data.label_names': Input should be a valid list " \
                           "(write a list: label_names: [World])"


def test_set_error_through_the_cli_is_one_line(tmp_path, capsys):
    assert main(["budget", "--config", str(_config(tmp_path, "{}\n")), "--num-labels", "4",
                 "--set", "data.label_names=World"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --set data.label_names: Input should be a valid list (write a list: " \
                  "--set data.label_names=[World])\n"
