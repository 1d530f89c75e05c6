"""Labels by value (issue 19: defects 2, 3, 5): the label set is the user's own values, written back
as such by `predict`, shipped as id2label with the adapter, checked by value by `evaluate`; empty
labels are an error or a counted drop, never a class."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_rows, tiny_config
from lorafit.cli import main
from lorafit.config import DataConfig
from lorafit.data.examples import load_labelled
from lorafit.errors import LorafitError

NAMES = {0: "world", 1: "sports", 2: "business", 3: "scitech"}
FLOATS = {0: 0.0, 1: 2.0, 2: 9.0, 3: 11.0}  # as a float column: would sort "0.0", "11.0", "2.0", "9.0" as text


def _csv(tmp_path, name: str, labels, texts=None):
    texts = texts if texts is not None else [f"goal match {i}" for i in range(len(labels))]
    p = tmp_path / name
    pd.DataFrame({"text": texts, "label": labels}).to_csv(p, index=False)
    return p


def _load(path, **data):
    return load_labelled(str(path), DataConfig(**data), "train", None, "data.train")


# ---------------------------------------------------------------- the label set, by value

@pytest.mark.parametrize("values, names", [
    ([0.0, 1.0, 10.0, 11.0, 2.0, 9.0, 3.0], ["0", "1", "2", "3", "9", "10", "11"]),  # numeric order, not text order
    (["3", "1", "2", "4", "1"], ["1", "2", "3", "4"]),       # 1..4: four classes, none empty
    ([0, 5, 5, 0], ["0", "5"]),                              # {0, 5}: two classes
    (["3.0", " 1 ", "2"], ["1", "2", "3"]),                  # "3.0" and " 1 " are integers
    (["b", "a", "c", "a"], ["a", "b", "c"]),
])
def test_label_set_is_the_distinct_values_in_order(tmp_path, values, names):
    ex, got, _ = _load(_csv(tmp_path, "d.csv", values))
    assert got == names
    # every row's id names its own value back
    assert [got[i] for i in ex.labels] == [str(int(float(v))) if re.fullmatch(r"\s*[\d.]+\s*", str(v)) else v
                                          for v in values]


def test_float_column_widened_by_a_nan_is_read_as_integers(tmp_path):
    """JSON/Parquet give 2.0 for a column that has a NaN: still the integer 2, in numeric order."""
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": [f"t {i}" for i in range(5)], "label": [10, 2, np.nan, 2, 1]}).to_parquet(p)
    ex, names, notes = _load(p, empty_labels="drop")
    assert names == ["1", "2", "10"] and ex.labels.tolist() == [2, 1, 1, 0]
    assert notes[0] == f"dropped 1 row(s) with no label from {p}"


def test_configured_names_still_name_integer_ids(tmp_path):
    """data.label_names keeps its meaning: names for ids 0..K-1 (the demo's AG News sample)."""
    ex, names, _ = _load(_csv(tmp_path, "d.csv", [0, 1, 2, 1, "Sports"]), label_names=["World", "Sports", "Biz"])
    assert names == ["World", "Sports", "Biz"] and ex.labels.tolist() == [0, 1, 2, 1, 1]


# ---------------------------------------------------------------- empty labels (defect 3)

def test_empty_labels_are_refused_naming_the_rows(tmp_path):
    p = _csv(tmp_path, "d.csv", ["business", "", "sports", "  ", "world"])
    with pytest.raises(LorafitError, match=re.escape(
            f"{p}: 2 row(s) with no label in column 'label', first at row 2; fill them in or set data.empty_labels: drop")):
        _load(p)


def test_empty_labels_dropped_with_a_count(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": "a b", "label": "business"}, {"text": "c d", "label": None}, {"text": "e f", "label": "sports"},
            {"text": "g h", "label": ""}, {"text": "i j", "label": "business"}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    ex, names, notes = _load(p, empty_labels="drop")
    assert names == ["business", "sports"] and ex.texts == ["a b", "e f", "i j"] and ex.labels.tolist() == [0, 1, 0]
    assert notes == [f"dropped 2 row(s) with no label from {p}"]


def test_rows_are_counted_in_the_file_after_dropped_labels(tmp_path):
    """An error after a drop names the row of the file, not of what is left."""
    p = _csv(tmp_path, "d.csv", ["1", "", "0", "1", "0"], texts=["a", "b", "c", " ", "e"])
    with pytest.raises(LorafitError, match=r"1 empty or whitespace-only text\(s\), first at row 4;"):
        _load(p, empty_labels="drop", empty_texts="error")


def test_test_set_with_empty_labels_is_refused_before_training(tmp_path, tiny_roberta, synth_csv, capsys):
    test = _csv(tmp_path, "test.csv", [1, 0, None])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config(tiny_roberta, synth_csv, data__test=test).to_yaml())
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {test}: 1 row(s) with no label in column 'label', first at row 3; " \
                  "fill them in or set data.empty_labels: drop\n"
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- evaluate checks labels by value (defect 5)

def _finished_run(tmp_path, model, data, names, **over):
    """A run directory as far as evaluate's input checks read it (config.yaml, labels.json)."""
    run = tmp_path / "done"
    run.mkdir()
    (run / "config.yaml").write_text(tiny_config(model, data, **over).to_yaml())
    (run / "labels.json").write_text(json.dumps(names))
    return run


def _evaluate_error(capsys, run, data) -> str:
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_evaluate_refuses_integer_ids_on_a_run_trained_on_names(tmp_path, tiny_roberta, synth_csv, capsys):
    run = _finished_run(tmp_path, tiny_roberta, synth_csv, ["business", "scitech", "sports", "world"])
    data = _csv(tmp_path, "val.csv", [2, 0, 3])
    assert _evaluate_error(capsys, run, data) == (
        f"error: {data}: row 1: label '2' in column 'label' is not in the label set "
        "['business', 'scitech', 'sports', 'world'] (3 of 3 rows are not); the run's labels are names, "
        "so integers are not read as ids: write the names")


def test_evaluate_blames_the_value_and_the_row_of_the_file(tmp_path, tiny_roberta, synth_csv, capsys):
    """A NaN widens the column to floats (2 -> 2.0), and an empty label dropped before it must not
    shift the row: the error shows `2`, at the file's row 4."""
    run = _finished_run(tmp_path, tiny_roberta, synth_csv, ["0", "1"], data__empty_labels="drop")
    data = tmp_path / "val.parquet"
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1, np.nan, 0, 2]}).to_parquet(data)
    assert _evaluate_error(capsys, run, data) == (
        f"error: {data}: row 4: label 2 in column 'label' is not in the label set ['0', '1'] (1 of 3 rows are not); "
        "fix the row: the run knows only these labels")


def test_evaluate_refuses_empty_labels(tmp_path, tiny_roberta, synth_csv, capsys):
    run = _finished_run(tmp_path, tiny_roberta, synth_csv, ["0", "1", "2", "3"])
    data = _csv(tmp_path, "val.csv", [1, None, 0])
    assert _evaluate_error(capsys, run, data) == (
        f"error: {data}: 1 row(s) with no label in column 'label', first at row 2; fill them in or remove those rows")


# ---------------------------------------------------------------- trained runs: predict writes the values back

def _train(tmp_path, tiny_roberta, mapping: dict, **over):
    from lorafit.train.recipe import Recipe

    frame = synthetic_rows(160)
    frame["label"] = frame["label"].map(mapping)
    data = tmp_path / "train.csv"
    frame.to_csv(data, index=False)
    run = tmp_path / "run"
    cfg = tiny_config(tiny_roberta, data, train__max_steps=2, **over)
    recipe = Recipe(cfg, run, log=lambda *a: None).setup()
    recipe.train()
    recipe.finish()
    return run, frame


def _predict(run, tmp_path, texts) -> pd.DataFrame:
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    assert main(["predict", str(run), "--input", str(inp), "--output", str(out), "--with-logits"]) == 0
    return pd.read_csv(out, dtype={"label": str})


@pytest.mark.parametrize("mapping, names", [
    (NAMES, ["business", "scitech", "sports", "world"]),
    (FLOATS, ["0", "2", "9", "11"]),
])
def test_predict_writes_the_users_label_values(tmp_path, tiny_roberta, mapping, names):
    run, frame = _train(tmp_path, tiny_roberta, mapping)
    assert json.loads((run / "labels.json").read_text()) == names
    got = _predict(run, tmp_path, frame["text"].tolist()[:40])
    logits = got[[f"logit_{n}" for n in names]].to_numpy()
    assert got["label"].tolist() == [names[k] for k in logits.argmax(-1)]
    assert set(got["label"]) <= set(names)


def test_adapter_ships_id2label_for_plain_transformers(tmp_path, tiny_roberta):
    """AutoConfig from adapter/classifier_config.json + PeftModel.from_pretrained: the names, and the
    same logits; the other routes of loading the adapter folder still work."""
    import torch
    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from lorafit.runs.predict import predict_logits
    from lorafit.runs.weights import load_trained

    run, frame = _train(tmp_path, tiny_roberta, NAMES)
    names = ["business", "scitech", "sports", "world"]
    adapter = run / "adapter"
    config = AutoConfig.from_pretrained(adapter / "classifier_config.json")
    base = AutoModelForSequenceClassification.from_pretrained(tiny_roberta, config=config)
    plain = PeftModel.from_pretrained(base, adapter).eval()
    assert plain.config.id2label == dict(enumerate(names)) and plain.config.label2id == {n: i for i, n in enumerate(names)}

    texts = frame["text"].tolist()[:16]
    model, tok, _, _ = load_trained(run)
    ref = predict_logits(model, tok, texts, 32)
    with torch.inference_mode():
        enc = AutoTokenizer.from_pretrained(adapter)(texts, padding=True, return_tensors="pt")
        np.testing.assert_allclose(plain(**enc).logits.numpy(), ref, atol=1e-4)
    for auto in (AutoPeftModelForSequenceClassification.from_pretrained(adapter, num_labels=4),
                 AutoModelForSequenceClassification.from_pretrained(adapter, num_labels=4)):  # base found, adapter on it
        with torch.inference_mode():
            np.testing.assert_allclose(auto.eval()(**enc).logits.numpy(), ref, atol=1e-4)

    # a run saved before the adapter carried its label map loads and predicts the same
    shutil.copytree(run, tmp_path / "old")
    (tmp_path / "old" / "adapter" / "classifier_config.json").unlink()
    model, tok, _, _ = load_trained(tmp_path / "old")
    np.testing.assert_allclose(predict_logits(model, tok, texts, 32), ref, atol=1e-5)


def test_full_fine_tuning_model_config_has_the_names(tmp_path, tiny_roberta):
    from transformers import AutoConfig

    run, _ = _train(tmp_path, tiny_roberta, NAMES, adapter__method="full", optim__lr=1e-3)
    assert AutoConfig.from_pretrained(run / "model").id2label == dict(enumerate(["business", "scitech", "sports", "world"]))


def test_class_label_names_are_recorded_and_read_back_as_ids(tiny_roberta, tmp_path):
    """A dataset whose ClassLabel names its integer ids (as the hub's ag_news does; here a
    save_to_disk folder): config.yaml records the names, so `evaluate` on a file with those integer
    ids reads them as ids (it refused them before), and predictions are the names."""
    import datasets
    import yaml

    from lorafit.runs.evaluate import evaluate_file
    from lorafit.runs.predict import predict_file
    from lorafit.train.run import run_training

    rows = synthetic_rows(240)
    names = ["World", "Sports", "Business", "Sci/Tech"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_pandas(rows, features=features, preserve_index=False).save_to_disk(str(tmp_path / "ds"))
    run = tmp_path / "run"
    run_training(tiny_config(tiny_roberta, tmp_path / "ds", train__max_steps=4), run, log=lambda *a: None)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["label_names"] == names
    assert json.loads((run / "labels.json").read_text()) == names
    ids = tmp_path / "ids.csv"
    rows.head(40).to_csv(ids, index=False)  # integer labels 0..3
    by_name = tmp_path / "names.csv"
    rows.head(40).assign(label=[names[i] for i in rows.head(40)["label"]]).to_csv(by_name, index=False)
    assert evaluate_file(str(run), str(ids)) == evaluate_file(str(run), str(by_name))
    predict_file(str(run), str(ids), str(tmp_path / "pred.csv"))
    assert set(pd.read_csv(tmp_path / "pred.csv")["label"]) <= set(names)
