"""curves.png: every logged step's loss (raw + smoothed), learning rate and gradient norm, and every
evaluation, for a run of one epoch too; report.md embeds it."""
from __future__ import annotations

import pytest

import json

import numpy as np

from conftest import tiny_config


@pytest.mark.slow
def test_one_epoch_run_plots_every_logged_step(tmp_path, tiny_roberta, synth_csv):
    import matplotlib.image as mpimg

    from lorafit.curves import step_curves
    from lorafit.report import read_metrics
    from lorafit.train.recipe import Recipe

    cfg = tiny_config(tiny_roberta, synth_csv, train__epochs=1, train__log_every=2, train__eval_every=5,
                      data__limit=120, train__batch_size=8)
    run_dir = tmp_path / "run"
    recipe = Recipe(cfg, run_dir, log=lambda *a: None).setup()
    recipe.train()
    recipe.finish()
    steps = recipe.total_steps  # 96 training items / 8 = 12 steps in the one epoch
    assert steps == 12
    rows = read_metrics(run_dir)
    s = step_curves(rows)
    assert s["train loss"][0] == list(range(2, steps + 1, 2))  # one point per logged step, not per epoch
    assert len(s["train loss (smoothed)"][1]) == len(s["train loss"][1])
    assert s["learning rate"][1] == [r["lr"] for r in rows if r["type"] == "train"]
    assert len(s["gradient norm"][1]) == steps // 2 and all(g > 0 for g in s["gradient norm"][1])
    assert s["validation accuracy"][0] == [5, 10, 12]  # every evaluation, the epoch's end included
    image = mpimg.imread(run_dir / "curves.png")
    assert image.shape[:2] == (440, 1650) and image.std() > 0.05  # three panels, drawn
    report = (run_dir / "report.md").read_text()
    assert "](curves.png)" in report and "every logged step" in report


def test_resumed_steps_count_once_and_smoothing():
    from lorafit.curves import smooth, step_curves

    rows = [{"type": "train", "step": s, "loss": 2.0 - 0.1 * s, "lr": 1e-3} for s in (1, 2, 3)]
    rows += [{"type": "train", "step": 3, "loss": 0.5, "lr": 1e-3}]  # logged again after a resume: the later wins
    rows += [{"type": "eval", "step": 3, "loss": 1.0, "accuracy": 0.5, "macro_f1": 0.4, "n": 10}]
    s = step_curves(rows)
    assert s["train loss"] == ([1, 2, 3], [1.9, 1.8, 0.5]) and "gradient norm" not in s
    np.testing.assert_allclose(smooth([3.0] * 40), 3.0)  # debiased: a constant stays constant from the first point
    sm = smooth(list(np.linspace(2, 0, 200)) + [5.0])
    assert sm[0] == 2.0 and sm[-1] < 1.0  # one spike moves the smoothed line a little, not to the spike
    assert json.dumps(s)
