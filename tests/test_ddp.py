"""`accelerate launch --num_processes 2` on CPU (gloo): every validation item is counted once and the
result matches the single-process run (train.batch_size is the global batch in both)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="accelerate CLI missing")
@pytest.mark.slow
def test_two_cpu_processes_match_single_process(tiny_roberta, synth_csv, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""model: {{name: {tiny_roberta}}}
data: {{train: {synth_csv}, val_size: 90, max_length: 32}}
adapter: {{r: 4, dropout: 0.0}}
optim: {{lr: 0.005}}
train: {{epochs: 2, batch_size: 16, eval_batch_size: 32, log_every: 5}}
""")
    single = run_cli("train", "--config", cfg, "--out", tmp_path / "single")
    assert single.returncode == 0, single.stderr[-2000:]
    from lorafit.speed.memory import THP_ENV, kernel_allows_huge_pages

    if kernel_allows_huge_pages() and THP_ENV not in os.environ:
        assert "huge pages: on" in single.stdout  # the command asked torch for them before loading it
    # accelerate 1.x runs `launch --cpu --num_processes 2` as ONE process (its simple launcher); torchrun via
    # --multi_gpu with ACCELERATE_USE_CPU starts two CPU processes on gloo
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    accel = str(Path(sys.executable).parent / "accelerate")
    ddp = subprocess.run([accel, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                          "-m", "lorafit", "train", "--config", str(cfg), "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert " x2, precision" in ddp.stdout, ddp.stdout[-2000:]  # two processes trained, not one
    a = json.loads((tmp_path / "single" / "eval.json").read_text())["validation"]
    b = json.loads((tmp_path / "ddp" / "eval.json").read_text())["validation"]
    assert a["n"] == b["n"] == 90
    assert np.asarray(b["confusion"]).sum() == 90
    assert [c["support"] for c in b["per_class"].values()] == [c["support"] for c in a["per_class"].values()]
    assert b["loss"] == pytest.approx(a["loss"], abs=2e-3)
    assert b["accuracy"] == pytest.approx(a["accuracy"], abs=0.03)
    evals = lambda d: [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["n"] for e in evals("ddp")] == [90, 90]
