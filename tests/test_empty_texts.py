"""Issue 25, point 2: an empty or whitespace-only text gets no label from predict (training and evaluate
drop such rows): an empty label and empty probability/logit cells, nothing computed, one note naming
the rows. serve's 422 for them is in test_serve.py."""
from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import run_cli


def test_predict_leaves_empty_texts_unlabelled_and_says_which(trained_run, tmp_path):
    from lorafit.calibration import read_temperature, softmax
    from lorafit.runs.predict import predict_logits
    from lorafit.runs.weights import load_trained

    run_dir, recipe, _ = trained_run
    texts = recipe.data.val.texts[:8]
    rows = texts[:2] + [""] + texts[2:5] + ["   \t "] + texts[5:]  # data rows 3 and 7 are empty
    inp = tmp_path / "in.csv"
    pd.DataFrame({"ID": [f"r{i}" for i in range(len(rows))], "text": rows}).to_csv(inp, index=False)
    out = tmp_path / "out.csv"
    r = run_cli("predict", run_dir, "--input", inp, "--output", out, "--probs", "--with-logits")
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "2 empty or whitespace-only text(s) (rows 3, 7)" in notes[0], r.stderr
    got = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert got["ID"].tolist() == [f"r{i}" for i in range(len(rows))]
    blank = got.iloc[[2, 6]]
    assert (blank.drop(columns="ID") == "").all().all(), blank  # label, logits and probabilities all empty
    # the other rows are exactly what the model gives for their texts alone
    model, tok, cfg, names = load_trained(run_dir, merge=True)
    logits = predict_logits(model, tok, texts, cfg.data.max_length)
    full = got.drop(index=[2, 6])
    assert full["label"].tolist() == [str(names[k]) for k in logits.argmax(1)]
    np.testing.assert_allclose(full[[f"logit_{n}" for n in names]].to_numpy(float), logits, atol=1e-5)
    np.testing.assert_array_equal(full[[f"prob_{n}" for n in names]].to_numpy(np.float32),
                                  softmax(logits, read_temperature(run_dir)).astype(np.float32))


def test_predict_of_only_empty_texts_loads_no_model(trained_run, tmp_path):
    import shutil

    run_dir, _, _ = trained_run
    bare = tmp_path / "bare"  # the run without its weights
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("adapter", "model", "checkpoints"))
    one_text = tmp_path / "one.txt"
    one_text.write_text("x\n\n \n")
    r = run_cli("predict", bare, "--input", one_text, "--output", tmp_path / "a.csv")
    assert r.returncode != 0  # a text to classify needs the weights
    blank = tmp_path / "blank.csv"
    pd.DataFrame({"text": ["", "  ", None]}).to_csv(blank, index=False)
    r = run_cli("predict", bare, "--input", blank, "--output", tmp_path / "b.csv")
    assert r.returncode == 0, r.stderr
    assert "3 empty or whitespace-only text(s) (rows 1, 2, 3)" in r.stderr
    got = pd.read_csv(tmp_path / "b.csv", keep_default_na=False, dtype=str)
    assert got["label"].tolist() == ["", "", ""] and got["ID"].tolist() == ["0", "1", "2"]
