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
from lorafit.data.examples import load_labelled, load_split
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


# ---------------------------------------------------------------- near-duplicate labels, classes too small to split (issue 25)

def _split(path, **data):
    return load_split(DataConfig(train=str(path), **{"val_size": 0.5, **data}), seed=0)


def test_labels_differing_in_case_or_spacing_are_warned_with_their_counts(tmp_path):
    """'pos' and 'Pos' trained silently as two classes; ' pos ' was already the same label as 'pos'."""
    p = _csv(tmp_path, "d.csv", ["pos"] * 10 + [" pos "] * 2 + ["Pos"] * 2 + ["neg"] * 9 + ["n-e-g"] * 3 + ["other"] * 4)
    split = _split(p)
    assert split.label_names == ["Pos", "n-e-g", "neg", "other", "pos"]
    assert split.warnings == [
        "labels 'pos' (12 rows) and 'Pos' (2 rows) differ only in case, spacing or punctuation; fix the data or they "
        "train as separate classes",
        "labels 'neg' (9 rows) and 'n-e-g' (3 rows) differ only in case, spacing or punctuation; fix the data or they "
        "train as separate classes"]


def test_distinct_labels_and_integer_ids_are_not_warned(tmp_path):
    assert _split(_csv(tmp_path, "a.csv", ["-1", "1"] * 6)).warnings == []     # -1 and 1: two classes, not a slip
    assert _split(_csv(tmp_path, "b.csv", ["pos", "neg", "neutral"] * 4)).warnings == []


def test_multi_label_near_duplicates_are_warned(tmp_path):
    p = _csv(tmp_path, "d.csv", ["sports|tech", "Tech", "sports", "tech"] * 5)
    split = _split(p, task="multi_label", label_delimiter="|")
    assert split.warnings == ["labels 'tech' (10 rows) and 'Tech' (5 rows) differ only in case, spacing or "
                              "punctuation; fix the data or they train as separate classes"]


def _near_duplicate_run(tmp_path, tiny_roberta):
    """A recipe set up on data where 3 rows say 'Sports ' for 'sports'; its log lines; the warning."""
    from lorafit.train.recipe import Recipe

    frame = synthetic_rows(80)
    frame["label"] = frame["label"].map(NAMES)
    frame.loc[:2, "label"] = "Sports "
    data = tmp_path / "train.csv"
    frame.to_csv(data, index=False)
    lines: list[str] = []
    recipe = Recipe(tiny_config(tiny_roberta, data, train__max_steps=1), tmp_path / "run", log=lines.append).setup()
    n = int((frame["label"] == "sports").sum())
    return recipe, lines, (f"labels 'sports' ({n} rows) and 'Sports' (3 rows) differ only in case, spacing or "
                           "punctuation; fix the data or they train as separate classes")


def test_the_warning_is_in_the_run_log_before_training(tmp_path, tiny_roberta):
    recipe, lines, warning = _near_duplicate_run(tmp_path, tiny_roberta)
    assert f"warning: {warning}" in lines, lines
    assert recipe.state.step == 0  # set up, nothing trained yet


@pytest.mark.slow
def test_the_warning_is_in_eval_json_and_report(tmp_path, tiny_roberta):
    """Where the run's results are read too: a good accuracy can hide it."""
    recipe, _, warning = _near_duplicate_run(tmp_path, tiny_roberta)
    recipe.train()
    recipe.finish()
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["warnings"][0] == warning
    assert f"- **warning**: {warning}" in (tmp_path / "run" / "report.md").read_text()


def test_a_class_with_one_row_is_refused_naming_it_and_the_key(tmp_path):
    p = _csv(tmp_path, "d.csv", ["pos"] * 8 + ["neg"] * 8 + ["Pos", "typo"])
    with pytest.raises(LorafitError) as e:
        _split(p)
    assert str(e.value) == (
        f"{p}: 2 class(es) with fewer than 2 rows (data.min_class_rows): too few for a stratified split to give each "
        "a training and a validation row: 'Pos' (1 row; differs from 'pos' only in case, spacing or punctuation), "
        "'typo' (1 row); fix or remove those rows, or set data.min_class_rows: 1 to train them anyway (the split is "
        "then not stratified)")


def test_min_class_rows_1_trains_a_one_row_class_and_a_higher_one_refuses_more(tmp_path):
    p = _csv(tmp_path, "d.csv", ["pos"] * 8 + ["neg"] * 8 + ["rare"] * 3 + ["typo"])
    split = _split(p, min_class_rows=1)
    assert split.label_names == ["neg", "pos", "rare", "typo"] and len(split.train) + len(split.val) == 20
    with pytest.raises(LorafitError, match=re.escape(
            f"{p}: 2 class(es) with fewer than 4 rows (data.min_class_rows): 'rare' (3 rows), 'typo' (1 row); ")):
        _split(p, min_class_rows=4)


def test_classes_thinned_by_limit_are_counted_after_it(tmp_path):
    p = _csv(tmp_path, "d.csv", ["a"] * 30 + ["b"] * 30 + ["c"] * 2)
    with pytest.raises(LorafitError, match=re.escape("with fewer than 3 rows (data.min_class_rows) of the 40 rows "
                                                     "data.limit keeps")):
        _split(p, limit=40, min_class_rows=3, split_seed=1)


def test_label_names_of_another_data_set_says_to_remove_it(tmp_path):
    """A config written for AG News (label_names: ids 0..3) on a file labelled pos/neg: setting
    label_names is not the fix; removing it is."""
    p = _csv(tmp_path, "d.csv", ["pos", "neg", "pos", "neg", "meh"])
    with pytest.raises(LorafitError) as e:
        _load(p, label_names=["World", "Sports", "Business", "Sci/Tech"])
    assert str(e.value) == (
        f"{p}: row 1: label 'pos' in column 'label' is not in the label set ['World', 'Sports', 'Business', "
        "'Sci/Tech'] (5 of 5 rows are not); data.label_names names ids 0..3, and the file's labels 'pos', 'neg', "
        "'meh' are neither those ids nor those names: remove data.label_names to take the label set from the data, "
        "or fix the rows")


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

    from lorafit.predict import predict_logits
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

    from lorafit.evaluate import evaluate_file
    from lorafit.predict import predict_file
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
