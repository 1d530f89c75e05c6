"""Zero-config training (lorafit.autoconfig): every choice from the data, its reason, and a config.yaml
that reproduces the run. Tiny data and the tiny random models of conftest."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import one_error, synthetic_rows
from lorafit.autoconfig import auto_config, rules
from lorafit.autoconfig.columns import detect
from lorafit.config import load_config
from lorafit.errors import LorafitError


def _texts(n: int) -> list[str]:
    return synthetic_rows(n)["text"].tolist()


# ---------------------------------------------------------------- columns and task

def test_columns_by_name_skip_ids_and_say_so():
    df = pd.DataFrame({"id": range(40), "review": _texts(40), "sentiment": ["pos", "neg"] * 20})
    c = detect(df, "f.csv", {})
    assert (c.text_columns, c.label_column, c.text_pair_column, c.task) == (["review"], "sentiment", None, "single_label")
    assert c.reasons["data.label_column"] == "a column named 'sentiment'"
    assert c.reasons["data.text_columns"] == "column named 'review'"


def test_columns_by_content_when_no_name_is_known():
    df = pd.DataFrame({"a": _texts(60), "b": ["x", "y", "z"] * 20, "n": range(100, 160)})
    c = detect(df, "f.csv", {})
    assert c.text_columns == ["a"] and c.label_column == "b"
    assert c.reasons["data.label_column"].startswith("by content: 'b' holds 3 distinct values")
    assert c.reasons["data.text_columns"].startswith("by content: 'a' holds the longest strings")


def test_two_named_text_columns_are_joined_and_a_named_pair_is_a_pair():
    df = pd.DataFrame({"title": _texts(30), "description": _texts(30), "label": [0, 1, 2] * 10})
    assert detect(df, "f", {}).text_columns == ["title", "description"]
    df = pd.DataFrame({"premise": _texts(30), "hypothesis": _texts(30), "label": ["e", "c", "n"] * 10})
    c = detect(df, "f", {})
    assert (c.text_columns, c.text_pair_column) == (["premise"], "hypothesis") and "text pairs" in c.reasons["data.task"]


@pytest.mark.parametrize("labels, task, delimiter", [
    ([["a", "b"], ["b"], ["c"]] * 10, "multi_label", None),
    (['["a", "b"]', '["b"]', "[]"] * 10, "multi_label", None),
    (["a|b", "b", "c|a"] * 10, "multi_label", "|"),
    ([0.5 + i / 7 for i in range(30)], "regression", None),
    ([1.5, 2.5] * 15, "single_label", None),          # few distinct numbers: classes, not a regression
    ([0, 1, 2] * 10, "single_label", None),
    (["pos", "neg"] * 15, "single_label", None),
])
def test_task_detection(labels, task, delimiter):
    c = detect(pd.DataFrame({"text": _texts(30), "label": labels}), "f", {})
    assert (c.task, c.label_delimiter) == (task, delimiter), c.reasons


def test_what_the_user_sets_is_kept_and_named():
    df = pd.DataFrame({"text": _texts(30), "other": _texts(30), "label": [0, 1] * 15})
    c = detect(df, "f", {"text_columns": "other", "label_column": "label"})
    assert c.text_columns == ["other"] and c.reasons["data.text_columns"] == "set by --set"


def test_no_text_column_or_no_label_column_is_one_clear_error():
    with pytest.raises(LorafitError, match=r"no text-like column among x, label .*--set data.text_columns=\[NAME\]"):
        detect(pd.DataFrame({"x": [1.0, 2.0] * 20, "label": [0, 1] * 20}), "f.csv", {})
    with pytest.raises(LorafitError, match="no label column found .*--set data.label_column=NAME"):
        detect(pd.DataFrame({"body": _texts(40), "notes": _texts(40)}), "f.csv", {})


# ---------------------------------------------------------------- the size rules at their edges

def test_validation_split_fraction_below_1000_rows_then_a_capped_count():
    assert rules.val_size(999)[0] == 0.2 and rules.val_size(1000)[0] == 100
    assert rules.val_size(19_990)[0] == 1999 and rules.val_size(1_000_000)[0] == 2000


def test_epochs_learning_rate_batch_and_warmup_follow_the_data_size():
    assert rules.epochs(50)[0] == rules.MAX_EPOCHS and rules.epochs(10_000_000)[0] == 1
    assert rules.epochs(rules.SAMPLES_SEEN // 2)[0] == 2
    assert rules.learning_rate(rules.BIG - 1)[0] == rules.LR_SMALL and rules.learning_rate(rules.BIG)[0] == rules.LR_BIG
    assert rules.batch_size(1999)[0] == 16 and rules.batch_size(2000)[0] == 32
    assert rules.warmup(299)[0] == 0.1 and rules.warmup(300)[0] == 0.06
    assert rules.evaluation(100, 3)[0] == "epoch" and rules.evaluation(101, 2)[0] == 51
    assert rules.final_on_val(rules.BIG - 1, 2000)[0] is True and rules.final_on_val(rules.BIG, 2000)[0] is False
    assert "the 200 validation rows are trained on too" in rules.final_on_val(1800, 200)[1]


def test_max_length_is_a_high_percentile_rounded_up_and_capped_by_the_model():
    lengths = list(range(1, 101))             # p98 = 98.02 -> 99 -> 104
    assert rules.max_length(lengths, None)[0] == 104
    value, why = rules.max_length(lengths, 64)
    assert value == 64 and why.endswith("capped at the model's limit 64")
    assert rules.max_length([3, 4, 5], 512)[0] == 16  # never below 16
    assert rules.max_length([9] * 99 + [500], 512)[0] == 16  # one outlier does not set it


def test_metric_macro_f1_when_imbalanced():
    assert rules.metric("single_label", [0] * 40 + [1] * 10)[0] == "macro_f1"   # 4x
    assert rules.metric("single_label", [0] * 30 + [1] * 10)[0] == "accuracy"   # 3x
    assert rules.metric("multi_label", [])[0] == "micro_f1" and rules.metric("regression", [])[0] == "pearson"


# ---------------------------------------------------------------- the whole config

def _auto(tiny_roberta, data, *sets, **kw):
    lines = []
    cfg, notes = auto_config(str(data), model=str(tiny_roberta), sets=list(sets), log=lines.append, **kw)
    return cfg, notes, lines


def test_every_choice_is_printed_once_with_its_reason(tiny_roberta, synth_csv):
    cfg, notes, lines = _auto(tiny_roberta, synth_csv, "train.epochs=1")
    assert len(lines) == len(notes) and all(line.startswith("auto: ") for line in lines)
    by_key = {line.split(" = ")[0].removeprefix("auto: "): line for line in lines}
    for key in ("data.text_columns", "data.label_column", "data.task", "data.val_size", "data.max_length", "optim.lr",
                "train.epochs", "optim.warmup", "train.early_stopping", "train.metric", "train.final_on_val", "adapter.targets",
                "adapter.r"):
        assert key in by_key, key
    assert by_key["train.epochs"] == "auto: train.epochs = 1 (set by --set)"
    assert "(400 rows (< 1,000): a 20% fraction, stratified)" in by_key["data.val_size"]
    assert cfg.data.max_length <= 78  # the tiny RoBERTa reads 78 tokens (80 positions less the padding offset)
    assert cfg.train.early_stopping == rules.PATIENCE and cfg.budget.max_trainable == 1_000_000


def test_written_config_reads_back_to_the_same_settings(tiny_roberta, synth_csv, tmp_path):
    cfg, notes, _ = _auto(tiny_roberta, synth_csv)
    text = cfg.to_yaml(notes, ["lorafit train --data ..."])
    assert "  max_length: " in text and "# p98 of the token lengths" in text and text.startswith("# lorafit train")
    (tmp_path / "config.yaml").write_text(text)
    assert load_config(tmp_path / "config.yaml").model_dump() == cfg.model_dump()


def test_file_per_class_and_folder_per_class_layouts(tiny_roberta, tmp_path):
    rows = synthetic_rows(120, n_labels=2)
    files = tmp_path / "files"
    files.mkdir()
    for y, name in ((0, "pos"), (1, "neg")):
        (files / f"{name}.txt").write_text("\n".join(rows.text[rows.label == y]) + "\n\n")
    cfg, _, lines = _auto(tiny_roberta, files)
    assert (cfg.data.text_columns, cfg.data.label_column, cfg.data.task) == (["text"], "label", "single_label")
    assert cfg.data.train == str(files)
    folders = tmp_path / "folders"
    for y, name in ((0, "sports"), (1, "politics")):
        (folders / name).mkdir(parents=True)
        for i, text in enumerate(rows.text[rows.label == y]):
            (folders / name / f"{i}.txt").write_text(text)
    from lorafit.data.tables import read_table

    df = read_table(str(folders))
    assert sorted(set(df.label)) == ["politics", "sports"] and len(df) == 120
    cfg, _, _ = _auto(tiny_roberta, folders)
    assert cfg.data.task == "single_label"


def test_one_class_only_is_one_clear_error(tiny_roberta, tmp_path, capsys):
    one = tmp_path / "one.csv"
    pd.DataFrame({"text": _texts(40), "label": ["pos"] * 40}).to_csv(one, index=False)
    msg = one_error(capsys, ["train", "--data", one, "--model", tiny_roberta, "--out", tmp_path / "run"])
    assert msg.endswith("one.csv: found 1 label(s) in 'label'; classification needs at least 2")
    only = tmp_path / "only"
    only.mkdir()
    (only / "a.txt").write_text("x\n")
    (only / "b.txt").write_text("")
    msg = one_error(capsys, ["train", "--data", only, "--model", tiny_roberta, "--out", tmp_path / "run"])
    assert "texts of 1 class found" in msg and not (tmp_path / "run").exists()


def test_data_and_config_together_are_refused(tmp_path, capsys, synth_csv):
    assert "not both" in one_error(capsys, ["train", "--data", synth_csv, "--config", "x.yaml"])
    assert "--model go with --data" in one_error(capsys, ["train", "--config", "x.yaml", "--model", "m"])


def test_help_starts_with_the_zero_config_command(capsys):
    from lorafit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert out.index("[--data FILE]") < out.index("[--config CONFIG]")
    assert out.index("Start here, with no config:\n  lorafit train --data") < out.index("options:")


@pytest.mark.slow
def test_zero_config_run_and_its_config_reproduce_the_same_settings(tiny_roberta, synth_csv, tmp_path, capsys):
    from lorafit.cli import main

    run, again = tmp_path / "run", tmp_path / "again"
    assert main(["train", "--data", str(synth_csv), "--model", str(tiny_roberta), "--out", str(run),
                 "--set", "train.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "auto: data.task = single_label (4 distinct whole numbers: classes)" in out
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(again)]) == 0
    first, second = load_config(run / "config.yaml"), load_config(again / "config.yaml")
    assert first.model_dump() == second.model_dump()
    assert json.loads((run / "eval.json").read_text())["validation"] == json.loads((again / "eval.json").read_text())["validation"]
