"""Crash safety: a run stopped at any point and resumed with --resume ends exactly like a run that
never stopped (same adapter weights bit for bit, same metrics), and a diverging run keeps its last
good checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from lorafit.train import checkpoint
from lorafit.cli import main
from lorafit.train.recipe import Recipe
from lorafit.train.run import run_training

TIMING = ("samples_per_s", "train_seconds")


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    name = "model/model.safetensors" if (a / "model").is_dir() else "adapter/adapter_model.safetensors"
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert metrics(a) == metrics(b)
    assert [r for r in metrics(b) if r["type"] == "eval"], "no eval lines compared"
    ea, eb = json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text())
    assert ea["validation"]["loss"] == eb["validation"]["loss"] and ea["best_step"] == eb["best_step"]


class Crash(Exception):
    pass


class CrashAt(Recipe):
    """Stops dead after optimizer step `at` (in-memory state lost, as after a kill)."""
    at = 0

    def _after_step(self, step: int) -> None:
        super()._after_step(step)
        if step == self.at:
            raise Crash


# 200 rows: 160 train (10 batches of 16 per epoch), 40 validation; 2 epochs
CASES = {
    # dropout on: the RNG state must be restored; grad accumulation (5 steps/epoch); evaluations and
    # top-k inside epochs
    "mid-epoch-accum-evals": (4, dict(train__grad_accum=2, train__eval_every=2, train__save_top_k=2)),
    # second epoch, after the epoch-end checkpoint; frozen-prefix cache on (layer 0 frozen); train.log_every:
    # auto, resolved again from the same steps (20: every step)
    "epoch-2-prefix-cache": (14, dict(adapter__layers="[1]", optim__lr=2e-2, train__log_every="auto")),
    # optim.schedule: step, decaying at steps 3, 6, ...: the scheduler state must give the same lr after resuming
    "step-schedule": (5, dict(optim__schedule="step", optim__step_size=3, optim__step_factor=0.5)),
    # AdaLoRA's rank allocator keeps state outside the optimizer
    "adalora": (10, dict(adapter__method="adalora", adapter__adalora__init_r=6, adapter__adalora__target_r=2, adapter__adalora__tinit=0.1,
                         adapter__adalora__tfinal=0.1, adapter__adalora__delta_t=2)),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c != "epoch-2-prefix-cache" else c for c in CASES],
                         ids=list(CASES))
def test_resume_in_process_is_exact(case, tiny_roberta, synth_csv, tmp_path):
    at, over = CASES[case]
    cfg = tiny_config(tiny_roberta, synth_csv, data__limit=200, adapter__dropout=0.1, train__checkpoint_every=3,
                      **{"train__log_every": 1, **over})
    run_training(cfg, tmp_path / "ref", log=lambda *a: None)
    assert not (tmp_path / "ref" / "resume").exists()  # a finished run keeps no resumable state

    crashed = CrashAt(cfg, tmp_path / "run", log=lambda *a: None)
    crashed.at = at
    with pytest.raises(Crash):
        crashed.setup().train()
    folder = checkpoint.latest(tmp_path / "run")
    meta = json.loads((folder / "state.json").read_text())
    assert meta["state"]["step"] < at and meta["position"]["batches"] > 0
    run_training(cfg, tmp_path / "run", resume=True, log=lambda *a: None)
    assert_same_run(tmp_path / "ref", tmp_path / "run")


@pytest.mark.slow
def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    """Killed half-way through writing checkpoint 2: LATEST still names checkpoint 1, which resumes exactly."""
    cfg = tiny_config(tiny_roberta, synth_csv, data__limit=200, adapter__dropout=0.1, train__checkpoint_every=3,
                      train__epochs=1)
    run_training(cfg, tmp_path / "ref", log=lambda *a: None)
    calls, real_save = [], torch.save

    def dying_save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3:  # optimizer.pt of the second checkpoint (step 6)
            raise Crash
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(Crash):
        Recipe(cfg, tmp_path / "run", log=lambda *a: None).setup().train()
    monkeypatch.undo()
    assert checkpoint.latest(tmp_path / "run").name == "step-0000003-e0-b3"
    assert any(p.name.endswith(".tmp") for p in (tmp_path / "run" / "resume").iterdir())  # the half-written one
    run_training(cfg, tmp_path / "run", resume=True, log=lambda *a: None)
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_nan_loss_names_step_and_cause_and_keeps_checkpoint(tiny_roberta, synth_csv, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config(tiny_roberta, synth_csv, optim__lr=1e6, optim__warmup=0, train__max_grad_norm="null",
                               train__checkpoint_every=2).to_yaml())
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(err) == 1, err
    msg = err[0]
    assert "loss became nan at step" in msg and "learning rate is too high (optim.lr=1000000.0)" in msg
    assert "fp16" not in msg  # not the cause on a run without fp16
    step = int(msg.split("at step ")[1].split()[0])
    kept = checkpoint.latest(run)
    assert kept is not None and f"last good checkpoint (step {int(kept.name.split('-')[1])})" in msg
    assert int(kept.name.split("-")[1]) < step and (run / "config.yaml").is_file()
    weights = load_file(str(kept / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())  # what is kept is good


def _cli(*args):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    return [sys.executable, "-m", "lorafit", *map(str, args)], env


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tiny_roberta, synth_csv, tmp_path):
    """`lorafit train` in a subprocess, SIGKILLed as soon as a mid-epoch checkpoint exists, then
    `lorafit train --resume`: adapter weights and every metrics line equal an uninterrupted run's."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config(tiny_roberta, synth_csv, data__limit=200, adapter__dropout=0.1, train__epochs=3,
                               train__log_every=1,
                               train__checkpoint_every=4, train__deterministic="true", train__num_workers=0).to_yaml())
    ref, run = tmp_path / "ref", tmp_path / "run"
    cmd, env = _cli("train", "--config", cfg, "--out", ref)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cmd, env = _cli("train", "--config", cfg, "--out", run)
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and victim.poll() is None:
            folder = checkpoint.latest(run)
            if folder is not None and not folder.name.endswith("-b0"):  # a checkpoint inside an epoch
                victim.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        victim.wait(timeout=60)
    finally:
        victim.kill()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read().decode()[-2000:]
    assert not (run / "eval.json").exists()  # killed mid-training, not after
    assert proc.wait(timeout=300) == 0

    cmd, env = _cli("train", "--resume", run)
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout
    assert_same_run(ref, run)


def test_a_checkpoint_written_before_new_config_keys_still_resumes(tiny_roberta, synth_csv, tmp_path):
    """A checkpoint whose recorded config lacks keys added to lorafit since (as one written by an older
    version) compares with those keys at their defaults; a value that really differs is still refused."""
    from lorafit.config import RunConfig
    from lorafit.errors import LorafitError

    cfg = tiny_config(tiny_roberta, synth_csv, data__limit=100, train__checkpoint_every=2, train__epochs=1)
    crashed = CrashAt(cfg, tmp_path / "run", log=lambda *a: None)
    crashed.at = 3
    with pytest.raises(Crash):
        crashed.setup().train()
    state = checkpoint.latest(tmp_path / "run") / "state.json"
    meta = json.loads(state.read_text())
    del meta["config"]["data"]["min_class_rows"], meta["config"]["optim"]["step_factor"]  # keys newer than the run
    state.write_text(json.dumps(meta))
    assert checkpoint.load(tmp_path / "run", cfg).meta["config"] == meta["config"]
    edited = RunConfig.model_validate({**cfg.model_dump(mode="json"), "optim": {**cfg.optim.model_dump(mode="json"), "lr": 0.5}})
    with pytest.raises(LorafitError, match="optim.lr"):
        checkpoint.load(tmp_path / "run", edited)
