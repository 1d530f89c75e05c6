"""The run folder's format version (issue 26): every new run records it in its marker, runs written
before it (each older layout) still load through runs/compat.read_run_folder, and a run of a newer
format is refused with one error line naming both versions."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from lorafit import __version__
from lorafit.cli import main
from lorafit.errors import LorafitError
from lorafit.runs.compat import RUN_FORMAT, RUN_MARKER, UNVERSIONED, is_run_dir, read_run_folder
from lorafit.runs.directory import prepare_run_dir, read_run

from conftest import tiny_config

LABELS = ["business", "sci_tech", "sports", "world"]


def _run_folder(tmp_path, tiny_roberta, synth_csv):
    """A finished run's files as this lorafit writes them (no weights: read_run_folder never loads them)."""
    run = tmp_path / "run"
    prepare_run_dir(run, overwrite=False, resume=False).commit()
    (run / "config.yaml").write_text(tiny_config(tiny_roberta, synth_csv).to_yaml(), encoding="utf-8")
    (run / "labels.json").write_text(json.dumps(LABELS), encoding="utf-8")
    (run / "calibration.json").write_text(json.dumps({"temperature": 1.5}), encoding="utf-8")
    (run / "eval.json").write_text(json.dumps({"trainable": 1234}), encoding="utf-8")
    return run


def test_a_new_run_records_its_format_and_lorafit_version(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, overwrite=False, resume=False).commit()
    meta = json.loads((run / RUN_MARKER).read_text(encoding="utf-8"))
    assert meta["format"] == RUN_FORMAT and meta["lorafit"] == __version__ and is_run_dir(run)


def test_the_current_layout_reads_whole(tmp_path, tiny_roberta, synth_csv):
    view = read_run_folder(_run_folder(tmp_path, tiny_roberta, synth_csv))
    assert (view.format, view.lorafit, view.labels) == (RUN_FORMAT, __version__, LABELS)
    assert (view.temperature, view.temperature_note, view.trainable) == (1.5, None, 1234)
    assert view.cfg.model.name == str(tiny_roberta)


def _as_older(run, layout, tiny_roberta, synth_csv):
    """Rewrite a run folder as lorafit wrote it before one change."""
    if layout == "no marker":  # before .lorafit-run: config.yaml + labels.json made a run
        (run / RUN_MARKER).unlink()
    elif layout == "plain-text marker":  # before the format version
        (run / RUN_MARKER).write_text("lorafit run directory: `lorafit train --overwrite` may replace it\n")
    elif layout == "no calibration.json":  # before temperatures were fitted
        (run / "calibration.json").unlink()
    elif layout == "relative paths":  # before paths were recorded absolute: relative to the run folder
        text = (run / "config.yaml").read_text(encoding="utf-8")
        text = text.replace(str(tiny_roberta), os.path.relpath(tiny_roberta, run))
        text = text.replace(str(synth_csv), os.path.relpath(synth_csv, run))
        assert str(tiny_roberta) not in text
        (run / "config.yaml").write_text(text, encoding="utf-8")
    elif layout == "no trainable count":  # eval.json before it counted the trained parameters
        (run / "eval.json").write_text("{}", encoding="utf-8")


OLDER = ["no marker", "plain-text marker", "no calibration.json", "relative paths", "no trainable count"]


@pytest.mark.parametrize("layout", OLDER)
def test_each_older_layout_loads_through_the_one_place(layout, tmp_path, tiny_roberta, synth_csv, monkeypatch):
    run = _run_folder(tmp_path, tiny_roberta, synth_csv)
    _as_older(run, layout, tiny_roberta, synth_csv)
    monkeypatch.chdir(tmp_path.parent)  # relative paths are the run folder's, not the working directory's
    view = read_run_folder(run)
    assert is_run_dir(run) and view.labels == LABELS
    assert view.cfg.model.name == str(tiny_roberta) and view.cfg.data.train == str(synth_csv)
    assert view.format == (UNVERSIONED if "marker" in layout else RUN_FORMAT)
    if layout == "no calibration.json":
        assert view.temperature is None and "calibration.json is missing" in view.temperature_note
    else:
        assert view.temperature == 1.5
    assert view.trainable == (None if layout == "no trainable count" else 1234)
    assert read_run(run) == (view.cfg, view.labels)  # the older entry point reads through it too


def test_a_newer_format_is_refused_with_one_line_naming_both(tmp_path, tiny_roberta, synth_csv, capsys):
    run = _run_folder(tmp_path, tiny_roberta, synth_csv)
    (run / RUN_MARKER).write_text(json.dumps({"format": RUN_FORMAT + 1, "lorafit": "9.0"}), encoding="utf-8")
    with pytest.raises(LorafitError, match=rf"run folder format {RUN_FORMAT + 1} \(written by lorafit 9\.0\) is newer "
                                           rf"than this lorafit {__version__} reads \(format {RUN_FORMAT}\)"):
        read_run_folder(run)
    inp = tmp_path / "in.csv"
    inp.write_text("text\nhello\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(run), "--input", str(inp), "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"format {RUN_FORMAT + 1}" in err[0], err
    assert not (tmp_path / "out.csv").exists()


def test_a_damaged_marker_is_named(tmp_path, tiny_roberta, synth_csv):
    run = _run_folder(tmp_path, tiny_roberta, synth_csv)
    (run / RUN_MARKER).write_text(json.dumps({"format": "one"}), encoding="utf-8")
    with pytest.raises(LorafitError, match=r"\.lorafit-run: format 'one' is not a run-folder format number"):
        read_run_folder(run)


@pytest.mark.slow
def test_a_trained_run_rewritten_as_every_older_layout_predicts_the_same(trained_run, tmp_path, tiny_roberta,
                                                                        synth1k_csv):
    """Weights too: a run with every older trait at once loads (load_trained) and gives the same logits."""
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained

    src, recipe, _ = trained_run
    run = tmp_path / "old"
    shutil.copytree(src, run)
    for layout in ("no marker", "no calibration.json", "relative paths"):
        if layout == "relative paths":
            text = (run / "config.yaml").read_text(encoding="utf-8").replace(str(tiny_roberta),
                                                                            os.path.relpath(tiny_roberta, run))
            (run / "config.yaml").write_text(text, encoding="utf-8")
        else:
            _as_older(run, layout, tiny_roberta, synth1k_csv)
    texts = recipe.data.val.texts[:8]
    new_model, new_tok, _, _ = load_trained(src)
    old_model, old_tok, cfg, names = load_trained(run)
    assert cfg.model.name == str(tiny_roberta) and read_run_folder(run).format == UNVERSIONED
    np.testing.assert_allclose(predict_logits(old_model, old_tok, texts, 32), predict_logits(new_model, new_tok, texts, 32),
                               atol=1e-6)
