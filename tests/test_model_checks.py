"""Model folders checked before any work: tokenizer files present, data.max_length within what the
model can read, a missing folder named as such, and hub ids that fail fast when the hub is out of reach."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_config
from lorafit.cli import main
from lorafit.config import load_config
from lorafit.errors import LorafitError
from lorafit.model.load import check_local_folder

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _copy(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True)
    for n in names:
        shutil.copy(src / n, dst / n)
    return dst


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---------------------------------------------------------------- defect 4: no tokenizer files

def test_folder_without_tokenizer_is_refused_before_any_work(tiny_roberta, tmp_path, capsys):
    """config.json + model.safetensors only: refused before the data is even read (data.train is missing
    here: the tokenizer line comes first), and no run directory is left."""
    folder = _copy(tiny_roberta, tmp_path / "weights-only", ["config.json", "model.safetensors"])
    conf = tmp_path / "c.yaml"
    conf.write_text(tiny_config(folder, tmp_path / "absent.csv").to_yaml())
    assert main(["train", "--config", str(conf), "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert line == f"error: model.name: no tokenizer files in {folder} (tokenizer.json, vocab.txt, vocab.json + " \
                   "merges.txt or a sentencepiece .model); copy the tokenizer of the checkpoint into it", line
    assert not (tmp_path / "run").exists()


def test_tokenizer_config_alone_is_not_a_tokenizer(tiny_roberta, tmp_path):
    folder = _copy(tiny_roberta, tmp_path / "m", ["config.json", "model.safetensors", "tokenizer_config.json"])
    cfg = load_config(None, [f"model.name={folder}"]).model
    with pytest.raises(LorafitError, match="no tokenizer files in"):
        check_local_folder(cfg, need_weights=True, need_tokenizer=True)
    (folder / "vocab.json").write_text("{}")
    with pytest.raises(LorafitError, match="no tokenizer files in"):  # BPE needs its merges too
        check_local_folder(cfg, need_weights=True, need_tokenizer=True)
    (folder / "merges.txt").write_text("")
    check_local_folder(cfg, need_weights=True, need_tokenizer=True)
    for name in ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model"):
        other = _copy(tiny_roberta, tmp_path / name, ["config.json", "model.safetensors"])
        (other / name).write_text("x")
        check_local_folder(load_config(None, [f"model.name={other}"]).model, need_weights=True, need_tokenizer=True)


def test_budget_still_needs_only_config_json(tiny_roberta, tmp_path, capsys):
    folder = _copy(tiny_roberta, tmp_path / "config-only", ["config.json"])
    assert main(["budget", "--config", str(_write(tmp_path, f"model: {{name: {folder}}}\n")), "--num-labels", "4"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("trainable: ")


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- defect 8: max_length vs positions

def test_token_limit_of_roberta_bert_and_tokenizer(tiny_roberta, tiny_bert, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from lorafit.model.load import model_token_limit

    rob, bert = AutoConfig.from_pretrained(tiny_roberta), AutoConfig.from_pretrained(tiny_bert)
    assert (rob.max_position_embeddings, rob.pad_token_id) == (80, 1)
    assert model_token_limit(rob, AutoTokenizer.from_pretrained(tiny_roberta)) == 78  # positions start at pad + 1
    assert model_token_limit(bert, AutoTokenizer.from_pretrained(tiny_bert)) == 80
    tok = AutoTokenizer.from_pretrained(tiny_bert, model_max_length=40)
    assert model_token_limit(bert, tok) == 40
    tok = AutoTokenizer.from_pretrained(tiny_bert, model_max_length=int(1e30))  # transformers' "no limit"
    assert model_token_limit(bert, tok) == 80


def test_max_length_beyond_the_model_is_refused_at_setup(tiny_roberta, synth_csv, tmp_path, capsys):
    argv = ["train", "--config", str(_write(tmp_path, tiny_config(tiny_roberta, synth_csv).to_yaml())),
            "--out", str(tmp_path / "run"), "--set", "data.max_length=2048"]
    assert main(argv) == 2
    assert _one_error_line(capsys) == f"error: data.max_length: 2048 exceeds what {tiny_roberta} can read " \
                                      "(78 tokens); set data.max_length <= 78"
    assert not (tmp_path / "run").exists()


def test_max_length_at_the_limit_trains(tiny_roberta, synth_csv, tmp_path):
    """78 on the tiny RoBERTa (80 positions, pad 1) with an item longer than that: it trains."""
    from lorafit.train.recipe import Recipe

    data = tmp_path / "long.csv"
    df = pd.read_csv(synth_csv).head(60)
    df.loc[0, "text"] = " ".join(["goal match league"] * 60)
    df.to_csv(data, index=False)
    # 30 training items at batch 16: two steps are one epoch, so the long item is forwarded wherever the split puts it
    cfg = tiny_config(tiny_roberta, data, data__max_length=78, train__max_steps=2, data__val_size=0.5)
    recipe = Recipe(cfg, tmp_path / "run", log=lambda *a: None).setup()
    lengths = recipe.train_ds.lengths() + recipe.val_ds.lengths()
    assert max(lengths) == 78 and sorted(lengths)[-2] < 78  # the long item, cut at the limit (special tokens in)
    recipe.train()
    result = recipe.finish()
    assert recipe.state.finished and recipe.state.step == 2 and len(recipe.train_ds) == 30
    assert result["validation"]["n"] == 30 and (tmp_path / "run" / "eval.json").is_file()


def test_old_run_with_too_long_max_length_predicts_capped(trained_run, tmp_path, capsys):
    """A run written before the check (config.yaml says 2048): predict truncates at the model's 78 tokens,
    with a note, instead of crashing in the position embeddings."""
    import yaml

    from lorafit.predict import predict_file

    src, _, _ = trained_run
    run = tmp_path / "old"
    shutil.copytree(src, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["data"]["max_length"] = 2048
    (run / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": [" ".join(["goal match league"] * 60), "stocks profit"]}).to_csv(inp, index=False)
    capsys.readouterr()
    assert predict_file(str(run), str(inp), str(tmp_path / "out.csv")) == 2
    assert "data.max_length 2048 exceeds what" in capsys.readouterr().err
    assert len(pd.read_csv(tmp_path / "out.csv")) == 2


# ---------------------------------------------------------------- defect 10: missing folder, offline hub

@pytest.mark.parametrize("name", ["/nonexistent/models/roberta-base", "./models/roberta-base", "~/no-such-model-dir"])
def test_missing_model_folder_is_named(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["budget", "--config", str(_write(tmp_path, "{}\n")), "--num-labels", "4",
                 "--set", f"model.name={name}"]) == 2
    expect = Path(os.path.abspath(os.path.expanduser(name)))
    assert _one_error_line(capsys) == f"error: model.name: {expect} does not exist; point it at a Hugging Face " \
                                      "model folder, or give a hub id (e.g. roberta-base)"


_PROBE = """
import time
from lorafit.config import load_config
from lorafit.errors import LorafitError
from lorafit.model.load import load_model_config
t = time.time()
try:
    load_model_config(load_config(None, ["model.name=someorg/not-a-cached-model"]).model, 2, ["a", "b"])
    print(round(time.time() - t, 2))
except LorafitError as e:
    print(round(time.time() - t, 2)); print(e)
"""


# huggingface_hub's retries against an unreachable hub take ~28 s before anything falls back; the bounds
# below are a third of that, so they catch the retries but not a busy machine (2 cores, tests in parallel)
RETRIES_TAKE = 28


def _probe(env: dict) -> tuple[float, str]:
    full = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                          env={**full, "PYTHONPATH": SRC, **env})
    assert proc.returncode == 0, proc.stderr
    seconds, message = proc.stdout.strip().splitlines()[-2:]
    return float(seconds), message


@pytest.mark.slow
def test_hub_id_fails_fast_when_the_hub_cannot_be_reached(tmp_path):
    seconds, message = _probe({"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_CACHE": str(tmp_path)})
    assert seconds < RETRIES_TAKE / 3, seconds
    assert message == "model.name: 'someorg/not-a-cached-model' is not a local folder, is not in the Hugging Face " \
                      "cache, and the hub (http://127.0.0.1:9) cannot be reached; point model.name at a model folder", message


@pytest.mark.slow
def test_hub_id_fails_fast_with_hf_hub_offline(tmp_path):
    seconds, message = _probe({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert seconds < RETRIES_TAKE / 3, seconds
    assert message == "model.name: 'someorg/not-a-cached-model' is not a local folder, is not in the Hugging Face " \
                      "cache, and HF_HUB_OFFLINE is set; point model.name at a model folder", message


def _fake_cache(tiny_roberta: Path, root: Path, repo: str) -> Path:
    """The hub cache's layout (models--org--name/refs/main + snapshots/<commit>/) holding the tiny model."""
    commit = "0" * 40
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_roberta, folder / "snapshots" / commit)
    return root


@pytest.mark.parametrize("offline", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "unreachable"])
@pytest.mark.slow
def test_cached_hub_id_still_works_offline(offline, tiny_roberta, tmp_path):
    cache = _fake_cache(tiny_roberta, tmp_path / "hub", "someorg/tiny")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}

    proc = subprocess.run([sys.executable, "-m", "lorafit", "budget", "--num-labels", "4", "--config",
                           str(_write(tmp_path, "model: {name: someorg/tiny}\n"))], capture_output=True, text=True,
                          timeout=120, env={**env, "PYTHONPATH": SRC, "HF_HUB_CACHE": str(cache), **offline})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("trainable: ")
    # no retries before falling back to the cache: the model's config is found in a fraction of their time
    # (timed inside the process, so a busy machine's slow interpreter start does not count)
    timed = subprocess.run([sys.executable, "-c", _PROBE.replace("someorg/not-a-cached-model", "someorg/tiny")],
                           capture_output=True, text=True, timeout=120,
                           env={**env, "PYTHONPATH": SRC, "HF_HUB_CACHE": str(cache), **offline})
    assert timed.returncode == 0 and timed.stdout.strip(), timed.stderr
    assert float(timed.stdout.split()[0]) < RETRIES_TAKE / 3, timed.stdout
