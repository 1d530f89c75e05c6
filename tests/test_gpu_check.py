"""bench/gpu_check.py runs end to end (its --smoke mode on CPU, a tiny model) and reports both sides."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_smoke(tiny_roberta, tmp_path):
    from transformers import AutoConfig

    from lorafit.model.dtype import resolve

    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--config-dir",
                           str(tiny_roberta), "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["device"] == "cpu"
    # the numbers hang together: what the script measured is what it reports (smoke: batch 4, 3 steps after 1)
    mcfg = AutoConfig.from_pretrained(tiny_roberta)
    linear = mcfg.num_hidden_layers * (4 * mcfg.hidden_size ** 2 + 2 * mcfg.hidden_size * mcfg.intermediate_size)
    for side in ("lorafit", "notebook"):
        s = r[side]
        assert s["step_s"] == pytest.approx(4 / s["samples_per_s"])
        assert s["tflops"] == pytest.approx(4 * linear * s["tokens_per_item"] * 4 / s["step_s"] / 1e12)
        assert f"| {side} | {s['samples_per_s']:.1f} | {s['tokens_per_item']:.0f} | - | {s['tflops']:.2f} | - |" in proc.stdout
    assert r["ratio"] == pytest.approx(r["lorafit"]["samples_per_s"] / r["notebook"]["samples_per_s"])
    # lorafit pads each batch to its longest item (the timed batches 1-3 of the script's seeded set); the notebook pads to 32
    batches = gpu_check_module().make_batches(16, 4, mcfg.vocab_size, 16, 32)
    dynamic = sum(int(b["attention_mask"].sum(1).max()) for b in batches[1:4]) / 3
    assert r["lorafit"]["tokens_per_item"] == pytest.approx(dynamic) and dynamic < 32
    assert r["notebook"]["tokens_per_item"] == 32
    # lorafit's side ran its own model path: model.dtype auto picked the base dtype this CPU calls for
    dtype, why = resolve("auto", "cpu")
    assert r["lorafit"]["note"].startswith(f"base dtype: {str(dtype).removeprefix('torch.')} ({why})"), r["lorafit"]["note"]
    assert f"samples/s; {r['lorafit']['note']}" in proc.stdout
    no_gpu = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--config-dir", str(tiny_roberta)],
                            capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert no_gpu.returncode == 2 and no_gpu.stderr.startswith("error: no CUDA device")
