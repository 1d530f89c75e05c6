"""speed.trim_heap (every step or when RSS has grown) and huge pages: memory changes, the numbers do not."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from lorafit.speed.memory import heap_trimmer, kernel_allows_huge_pages, rss_bytes

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or heap_trimmer() is None,
                                 reason="malloc_trim is glibc's")


@linux_glibc
def test_trim_returns_the_holes_that_freed_tensors_leave_in_the_heap():
    # 64 KB tensors come from the heap (below any mmap threshold); keeping every 50th one pins the
    # heap's top, so glibc's own trimming at free() cannot give the 190 MB of holes back
    blocks = [torch.ones(16384) for _ in range(3000)]
    kept = blocks[49::50]
    del blocks
    before = rss_bytes() / 2**20
    heap_trimmer()()
    after = rss_bytes() / 2**20
    assert before - after > 100, (before, after)
    assert all(float(t.sum()) == 16384 for t in kept)  # live tensors untouched


def _run(tiny_roberta, synth_csv, run_dir, choice, **over):
    from lorafit.train.run import run_training

    lines = []
    cfg = tiny_config(tiny_roberta, synth_csv, speed__trim_heap=choice, adapter__dropout=0.1, **over)
    result = run_training(cfg, run_dir, log=lines.append)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["type"] == "train"]
    steps = max(r["step"] for r in records if r["type"] == "epoch")
    return result, losses, lines, steps


@linux_glibc
@pytest.mark.slow
def test_trimming_changes_nothing_but_memory(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    calls = []
    trim = heap_trimmer()
    monkeypatch.setattr("lorafit.speed.memory.heap_trimmer", lambda: lambda: calls.append(trim()))
    on, on_losses, on_log, steps = _run(tiny_roberta, synth_csv, tmp_path / "on", "true")
    off, off_losses, off_log, _ = _run(tiny_roberta, synth_csv, tmp_path / "off", "false")
    assert len(calls) == steps > 0 and set(calls) <= {0, 1}  # once per optimizer step; malloc_trim's answers
    assert on_losses and on_losses == off_losses
    assert on["validation"]["loss"] == off["validation"]["loss"]
    assert any(x.startswith("heap trimming: on (") for x in on_log)
    assert "heap trimming: off (speed.trim_heap: false)" in off_log


@linux_glibc
@pytest.mark.slow
def test_the_final_epoch_on_train_and_validation_trims_too(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("lorafit.speed.memory.heap_trimmer", lambda: lambda: calls.append(1))
    result, _, _, steps = _run(tiny_roberta, synth_csv, tmp_path / "run", "true", train__final_on_val="true")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records].count("final_on_val") == 1 and result["validation"]["seen_in_training"]
    assert len(calls) == steps + math.ceil(400 / 16)  # every item of synth.csv once more, in batches of 16


def test_trim_when_grown_trims_only_past_the_first_steps_rss_plus_slack():
    from lorafit.speed.memory import trim_when_grown

    trims, rss = [], iter([1000, 1100, 1199, 1201, 1000, 1250, None])
    after_step = trim_when_grown(lambda: trims.append(1), 0.2, rss=lambda: next(rss))
    for i in range(7):
        after_step()
        trims.append(f"step {i}")
    # the first step sets the limit (1200); 1201 and 1250 pass it; no /proc (None): trim every step
    assert trims == ["step 0", "step 1", "step 2", 1, "step 3", "step 4", 1, "step 5", 1, "step 6"]


def test_auto_trims_when_grown_and_says_so(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("lorafit.speed.memory.heap_trimmer", lambda: lambda: calls.append(1))
    steps = iter(range(1, 100))
    monkeypatch.setattr("lorafit.speed.memory.rss_bytes", lambda: 10**9 * next(steps))  # 1 GB more after every step
    _, _, log, _ = _run(tiny_roberta, synth_csv, tmp_path / "auto", "auto", train__max_steps=3)
    assert "heap trimming: when grown (freed memory goes back to the OS after a step that leaves RSS more than 20% " \
           "above the first step's)" in log
    assert len(calls) == 2  # steps 2 and 3 (step 1 sets the limit)
    _, _, log, _ = _run(tiny_roberta, synth_csv, tmp_path / "0.5", "0.5", train__max_steps=3)
    assert any("more than 50% above" in x for x in log)


@pytest.mark.skipif(not kernel_allows_huge_pages(), reason="no transparent huge pages here")
@pytest.mark.parametrize("env,expect", [({}, "True"), ({"THP_MEM_ALLOC_ENABLE": "0"}, "False")])
def test_huge_pages_are_requested_before_torch_loads(env, expect):
    """What the lorafit command does first; an explicit environment value wins."""
    import os
    import subprocess

    code = ("from lorafit.speed.memory import request_huge_pages, huge_pages_active; request_huge_pages(); "
            "print(huge_pages_active())")
    clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env, "PYTHONPATH": src})
    assert out.stdout.strip() == expect, out.stderr[-2000:]


def test_trim_heap_takes_a_growth_fraction_and_refuses_a_useless_one():
    from lorafit.config import load_config
    from lorafit.errors import LorafitError

    assert load_config(None, ["speed.trim_heap=0.35"]).speed.trim_heap == 0.35
    assert load_config(None, ["speed.trim_heap=true"]).speed.trim_heap is True
    with pytest.raises(LorafitError, match=r"speed\.trim_heap.*above 0"):
        load_config(None, ["speed.trim_heap=-0.1"])
