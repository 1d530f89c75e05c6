"""Issue 25, point 2: an empty or whitespace-only text gets no label from predict (training and evaluate
drop such rows): an empty label and empty probability/logit cells, nothing computed, one note naming
the rows. serve's 422 for them is in test_serve.py; a text pair's empty first text in test_text_pairs.py."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from lorafit.errors import LorafitError


@pytest.mark.slow
def test_predict_leaves_empty_texts_unlabelled_and_says_which(trained_run, tmp_path):
    from lorafit.calibration import read_temperature, softmax
    from lorafit.predict import predict_file, predict_logits
    from lorafit.runs.weights import load_trained

    run_dir, recipe, _ = trained_run
    texts = recipe.data.val.texts[:8]
    rows = texts[:2] + [""] + texts[2:5] + ["   \t "] + texts[5:]  # data rows 3 and 7 are empty
    inp = tmp_path / "in.csv"
    pd.DataFrame({"ID": [f"r{i}" for i in range(len(rows))], "text": rows}).to_csv(inp, index=False)
    out = tmp_path / "out.csv"
    notes: list[str] = []
    assert predict_file(str(run_dir), str(inp), str(out), probs=True, with_logits=True, log=notes.append) == len(rows)
    empty = [n for n in notes if "empty" in n]
    assert len(empty) == 1 and empty[0].startswith(f"note: {inp}: 2 empty or whitespace-only text(s) (rows 3, 7)")
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
    from lorafit.predict import predict_file

    run_dir, _, _ = trained_run
    bare = tmp_path / "bare"  # the run without its weights
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns("adapter", "model", "checkpoints"))
    one_text = tmp_path / "one.csv"
    pd.DataFrame({"text": ["", "goal match"]}).to_csv(one_text, index=False)
    with pytest.raises(LorafitError, match="no trained weights"):  # a text to classify needs the weights
        predict_file(str(bare), str(one_text), str(tmp_path / "a.csv"))
    blank = tmp_path / "blank.csv"
    pd.DataFrame({"text": ["", "  ", None]}).to_csv(blank, index=False)
    notes: list[str] = []
    assert predict_file(str(bare), str(blank), str(tmp_path / "b.csv"), log=notes.append) == 3
    assert notes == [f"note: {blank}: 3 empty or whitespace-only text(s) (rows 1, 2, 3): they get an empty label (and "
                     "empty logit/probability cells); nothing is computed for them"]
    got = pd.read_csv(tmp_path / "b.csv", keep_default_na=False, dtype=str)
    assert got["label"].tolist() == ["", "", ""] and got["ID"].tolist() == ["0", "1", "2"]
