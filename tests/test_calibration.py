"""Issue 16, point 5 (single-label): a temperature fitted on the validation split at the end of
training, saved in the run, the ECE before/after in eval.json and report.md with a reliability
diagram, and `lorafit predict --probs`."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from lorafit import calibration
from lorafit.errors import LorafitError


def _calibrated_logits(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution: labels drawn from it are calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, k))
    p = calibration.softmax(logits)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return logits, labels


@pytest.mark.parametrize("scale", [4.0, 0.4])
def test_temperature_undoes_over_and_under_confidence(scale):
    logits, labels = _calibrated_logits(4000, 4, seed=0)
    sharp = logits * scale  # x4: deliberately over-confident; x0.4: under-confident
    t = calibration.fit_temperature(sharp, labels)
    assert t == pytest.approx(scale, rel=0.1)
    after = calibration.split_summary(sharp, labels, t)
    assert after["nll_after"] < after["nll_before"] - 0.05
    assert after["ece_after"] < 0.5 * after["ece_before"] and after["ece_after"] < 0.03
    # the predicted label never changes
    assert (calibration.softmax(sharp, t).argmax(1) == sharp.argmax(1)).all()


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 1])
    # bins of 1/15: 0.9 in (0.867, 0.933] all right (gap 0.1); 0.6 in (0.533, 0.6] wrong (0.6); 0.7 right (0.3)
    assert calibration.ece(probs, labels) == pytest.approx((0.1 + 0.6 + 0.3) / 3)
    rows = calibration.reliability(probs, labels)
    assert sum(r["n"] for r in rows) == 3 and rows[8]["n"] == 1 and rows[8]["accuracy"] == 0.0


def test_the_reliability_diagram_shows_each_bins_count():
    """Issue 25: a bin of 2 items at 100% dominated the 'after' panel with nothing saying how few."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    logits, labels = _calibrated_logits(600, 4, seed=2)
    logits, labels = logits * 0.4, labels.copy()
    logits[:2], labels[:2] = [30.0, 0.0, 0.0, 0.0], 0  # the top bin: 2 items, both right
    t = 1.3
    fig = calibration.reliability_figure(logits, labels, t, "validation")
    try:
        (before, after), (strip_before, strip_after) = fig.axes[:2], fig.axes[2:4]
        for ax, strip, temp in ((before, strip_before, 1.0), (after, strip_after, t)):
            rows = [r for r in calibration.reliability(calibration.softmax(logits, temp), labels) if r["n"]]
            assert sum(r["n"] for r in rows) == 600
            assert [x.get_text() for x in ax.texts] == [f"n={r['n']:,}" for r in rows]  # every bin's count, over it
            assert [p.get_height() for p in strip.patches] == [r["n"] for r in rows]  # and in the strip below
            top = rows[-1]
            assert top["lo"] == pytest.approx(14 / 15) and top["n"] == 2 and top["accuracy"] == 1.0
            drawn = [p for p in ax.patches if p.get_x() == pytest.approx(top["lo"])]
            # one grey bar, no red gap: too few items to read as calibration
            assert len(drawn) == 1 and drawn[0].get_facecolor() == to_rgba("lightgray")
            big = max(rows, key=lambda r: r["n"])
            assert big["n"] >= calibration.FEW and sum(p.get_x() == pytest.approx(big["lo"]) for p in ax.patches) == 2
    finally:
        plt.close(fig)


def test_no_temperature_is_fitted_on_items_that_were_trained_on():
    logits, labels = _calibrated_logits(200, 3, seed=1)
    c = calibration.fit((logits * 3, labels), seen_in_training=True)
    assert c.temperature == 1.0 and c.summary["fitted_on"] is None and "final_on_val" in c.summary["note"]
    # a validation set the model gets all right only ever sharpens (T < 1), and that is said
    easy = np.eye(3)[labels] * 5
    c = calibration.fit((easy, labels))
    assert c.temperature < 1 and "every validation item is predicted right" in c.summary["note"]
    assert "note" not in calibration.fit((logits * 3, labels)).summary


def test_with_final_on_val_the_temperature_comes_from_the_rows_before_they_were_trained_on(tiny_roberta, synth_csv,
                                                                                           tmp_path, monkeypatch):
    """train.final_on_val trains on the validation rows at the end: T is fitted on the best checkpoint's
    logits of those rows, taken before the final epoch, not left at 1 and not fitted on the sharper logits after."""
    from conftest import tiny_config
    from lorafit.train import final_epoch
    from lorafit.train.evaluation import validation_logits
    from lorafit.train.run import run_training

    before, real = [], final_epoch.train_on_all

    def spy(recipe):
        before.append(validation_logits(recipe, recipe.final_val_loader)[:2])
        real(recipe)

    monkeypatch.setattr(final_epoch, "train_on_all", spy)
    run_training(tiny_config(tiny_roberta, synth_csv, train__final_on_val="true", train__epochs=1), tmp_path / "run",
                 log=lambda *a: None)
    cal = json.loads((tmp_path / "run" / "eval.json").read_text())["calibration"]
    assert len(before) == 1 and cal["fitted_on"] == "validation, before the final epoch on train+validation"
    assert cal["temperature"] == pytest.approx(calibration.fit_temperature(*before[0]), rel=1e-6)
    assert cal["temperature"] != 1.0  # fitted (an untrained tiny model may reach the bound, with its note)
    # the summary's validation numbers are of the logits the saved model gives, after the final epoch
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["validation"]["seen_in_training"]


@pytest.mark.parametrize("content, problem", [('{"t": 2}', "not a lorafit calibration file"),
                                              ('{"temperature": -1}', "is not a positive number"),
                                              ("{", "not a lorafit calibration file")])
def test_a_damaged_calibration_file_is_one_line(content, problem, tmp_path):
    (tmp_path / calibration.FILE).write_text(content)
    with pytest.raises(LorafitError, match=problem) as e:
        calibration.read_temperature(tmp_path)
    assert "\n" not in str(e.value)
    assert calibration.read_temperature(tmp_path / "elsewhere") is None


def test_training_fits_saves_and_reports_the_temperature(trained_run):
    run_dir, recipe, result = trained_run
    saved = json.loads((run_dir / calibration.FILE).read_text())
    t = saved["temperature"]
    assert saved["fitted_on"] == "validation" and calibration.T_RANGE[0] <= t <= calibration.T_RANGE[1]
    cal = json.loads((run_dir / "eval.json").read_text())["calibration"]
    val = cal["validation"]
    assert cal["temperature"] == t and val["n"] == result["validation"]["n"]
    # T minimises the validation NLL, so it can only lower it (T = 1 is one of the candidates)
    assert val["nll_after"] <= val["nll_before"] + 1e-9
    # eval.json's numbers are the validation logits' own
    from lorafit.train.evaluation import validation_logits

    logits, labels, _ = validation_logits(recipe, recipe.final_val_loader)
    assert calibration.nll(logits, labels, t) == pytest.approx(val["nll_after"], rel=1e-6)
    assert calibration.ece(calibration.softmax(logits), labels) == pytest.approx(val["ece_before"], abs=1e-9)
    assert abs(calibration.fit_temperature(logits, labels) - t) < 1e-6 * t
    report = (run_dir / "report.md").read_text()
    assert "## Calibration" in report and f"temperature **{t:.4g}**" in report
    assert f"ECE {val['ece_before']:.4f} → **{val['ece_after']:.4f}**" in report and "](calibration.png)" in report
    assert (run_dir / calibration.PLOT).stat().st_size > 10_000


@pytest.mark.slow
def test_predict_probs_rows_sum_to_one_and_reload_exactly(trained_run, tmp_path):
    from lorafit.predict import predict_file, predict_logits
    from lorafit.runs.weights import load_trained

    run_dir, recipe, _ = trained_run
    texts = recipe.data.val.texts[:40]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    predict_file(str(run_dir), str(tmp_path / "in.csv"), str(out), probs=True, with_logits=True)
    frame = pd.read_csv(out)
    names = recipe.data.label_names
    cols = [f"prob_{n}" for n in names]
    p = frame[cols].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    assert [names[i] for i in p.argmax(1)] == frame["label"].astype(str).tolist()
    # what was written reads back as the very float32 probabilities of the run's model and temperature
    model, tok, cfg, _ = load_trained(run_dir, merge=True)
    logits = predict_logits(model, tok, texts, cfg.data.max_length)
    t = calibration.read_temperature(run_dir)
    expected = calibration.softmax(logits, t).astype(np.float32)
    np.testing.assert_array_equal(frame[cols].to_numpy(dtype=np.float32), expected)
    np.testing.assert_allclose(calibration.softmax(frame[[f"logit_{n}" for n in names]].to_numpy(), t), p, atol=1e-5)

    # the command line, in a new process
    proc = run_cli("predict", run_dir, "--input", tmp_path / "in.csv", "--output", tmp_path / "cli.csv", "--probs")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(pd.read_csv(tmp_path / "cli.csv")[cols].to_numpy(), p, atol=1e-6)
    assert "note:" not in proc.stderr

    # a run without calibration.json (trained before it existed): the plain softmax, with a note
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    (old / calibration.FILE).unlink()
    notes = []
    predict_file(str(old), str(tmp_path / "in.csv"), str(out), probs=True, log=notes.append)
    assert len(notes) == 1 and "plain softmax, not calibrated" in notes[0]
    np.testing.assert_array_equal(pd.read_csv(out)[cols].to_numpy(dtype=np.float32),
                                  calibration.softmax(logits).astype(np.float32))


def test_evaluate_gives_mcc_and_the_ece_before_and_after(trained_run, tmp_path):
    from lorafit.evaluate import evaluate_file

    run_dir, recipe, result = trained_run
    data = tmp_path / "val.csv"
    pd.DataFrame({"text": recipe.data.val.texts, "label": recipe.data.val.labels}).to_csv(data, index=False)
    got = evaluate_file(str(run_dir), str(data))
    assert got["mcc"] == pytest.approx(result["validation"]["mcc"])
    cal, val = got["calibration"], result["calibration"]["validation"]
    assert cal["temperature"] == calibration.read_temperature(run_dir) and cal["n"] == val["n"]
    # the reloaded, merged model's logits agree with the trainer's to ~1e-5
    assert cal["nll_before"] == pytest.approx(val["nll_before"], rel=1e-3)
    assert cal["nll_after"] == pytest.approx(val["nll_after"], rel=1e-3)
