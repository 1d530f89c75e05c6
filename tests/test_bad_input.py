"""Hostile and broken inputs through the CLI: exit code 2, exactly one `error: ...` line on stderr
(no traceback unless --debug), and nothing written: a failed `train` leaves no run directory
behind, a failed `predict` no output file. notes/make_bad_inputs.py lists every message from CASES."""
from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import run_cli, tiny_config
from lorafit.cli import main
from lorafit.errors import LorafitError


@dataclass
class Env:
    """Files for one case: a tiny model, a good CSV, and a scratch folder."""
    tmp: Path
    model: Path
    data: Path

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p

    def config(self, **over) -> Path:
        p = self.tmp / "c.yaml"
        p.write_text(tiny_config(self.model, self.data, **over).to_yaml())
        return p

    def train(self, **over) -> tuple[list, Path]:
        run = self.tmp / "run"
        return ["train", "--config", self.config(**over), "--out", run], run

    def finished_run(self) -> Path:
        """A run directory as far as input checks read it (config.yaml, labels.json)."""
        run = self.tmp / "done"
        run.mkdir()
        (run / "config.yaml").write_text(tiny_config(self.model, self.data).to_yaml())
        (run / "labels.json").write_text('["0", "1", "2", "3"]')
        return run

    def predict(self, input_path: Path, *extra) -> tuple[list, Path]:
        out = self.tmp / "pred.csv"
        return ["predict", self.finished_run(), "--input", input_path, "--output", out, *extra], out


def _pickled(env: Env) -> Path:
    p = env.tmp / "data.pkl"
    p.write_bytes(pickle.dumps(pd.read_csv(env.data)))
    return p


def _no_weights(env: Env) -> Path:
    folder = env.tmp / "no-weights"
    shutil.copytree(env.model, folder)
    (folder / "model.safetensors").unlink()
    return folder


def _stopped_run_with_edited_config(env: Env):
    """A run stopped after its first checkpoint, whose config.yaml was then edited."""
    from lorafit.train.recipe import Recipe

    run = env.tmp / "stopped"
    cfg = tiny_config(env.model, env.data, data__limit=100, train__max_steps=2)
    Recipe(cfg, run, log=lambda *a: None).setup().train()
    (run / "config.yaml").write_text(cfg.to_yaml().replace("lr: 0.005", "lr: 0.001"))
    return ["train", "--resume", run], None


def _existing_run(env: Env):
    """A finished-looking run (config.yaml + labels.json, as older runs have) with a file of its own."""
    argv, run = env.train()
    run.mkdir()
    (run / "config.yaml").write_text(tiny_config(env.model, env.data).to_yaml())
    (run / "labels.json").write_text('["0", "1", "2", "3"]')
    (run / "notes.txt").write_text("an earlier run")
    return argv, None


def _users_folder(env: Env, *extra):
    """--out names a folder of the user's own files: not a lorafit run."""
    argv, run = env.train()
    run.mkdir()
    (run / "precious.txt").write_text("mine")
    return [*argv, *extra], None


def _named_run(env: Env) -> Path:
    run = env.finished_run()
    (run / "labels.json").write_text('["business", "scitech", "sports", "world"]')
    return run


def _no_tokenizer(env: Env) -> Path:
    folder = env.tmp / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(env.model / name, folder / name)
    return folder


def _task_run(env: Env, name: str, labels: list[str], thresholds: bool = True, **over) -> Path:
    """A finished run of another data.task or with pairs (config.yaml, labels.json, thresholds.json)."""
    run = env.tmp / name
    run.mkdir()
    (run / "config.yaml").write_text(tiny_config(env.model, env.data, **over).to_yaml())
    (run / "labels.json").write_text(json.dumps(labels))
    if thresholds:
        (run / "thresholds.json").write_text(json.dumps({n: 0.5 for n in labels}))
    return run


def _config_with(env: Env, **over) -> tuple[list, Path]:
    """`train` with a config file holding settings tiny_config would refuse (section__key=value)."""
    raw = yaml.safe_load(tiny_config(env.model, env.data).to_yaml())
    for k, v in over.items():
        section, key = k.split("__")
        raw[section][key] = v
    p = env.tmp / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    run = env.tmp / "run"
    return ["train", "--config", p, "--out", run], run


def _multi_label_run(env: Env, thresholds: bool = True) -> Path:
    return _task_run(env, "tags-run", ["business", "sports", "tech"], thresholds, data__task="multi_label",
                     data__label_delimiter="'|'")


def _pair_run(env: Env) -> Path:
    return _task_run(env, "pair-run", ["0", "1", "2", "3"], False, data__text_pair_column="hypothesis")


# name -> (what is wrong, build(env) -> (argv, path that must not exist afterwards), pattern of the one error line)
CASES = {
    "malformed-csv-line": (
        "a CSV row with an unquoted comma (3 fields, header has 2)",
        lambda e: e.train(data__train=e.file("bad.csv", "text,label\ngoal match,1\nwar, vote today,0\nchip data,3\n")),
        r"bad\.csv: line 3: malformed CSV: 3 fields where the header has 2; quote fields that contain ','"),
    "csv-unclosed-quote": (
        "a CSV field whose opening quote is never closed",
        lambda e: e.train(data__train=e.file("bad.csv", 'text,label\ngoal match,1\n"war vote,0\nchip data,3\n')),
        r"bad\.csv: line 3: malformed CSV: a quoted field starting on this line is never closed"),
    "malformed-jsonl-line": (
        "a JSONL line that is not JSON (unquoted key)",
        lambda e: e.train(data__train=e.file("bad.jsonl", '{"text": "goal", "label": 1}\n{"text": "war", label: 0}\n')),
        r"bad\.jsonl: line 2: invalid JSON \(Expecting property name enclosed in double quotes\)"),
    "missing-text-column": (
        "data.text_columns names a column the file lacks",
        lambda e: e.train(data__text_columns="[body]"),
        r"column 'body' not found \(set data.text_columns\); columns present: text, label"),
    "missing-label-column": (
        "data.label_column names a column the file lacks",
        lambda e: e.train(data__label_column="topic"),
        r"column 'topic' not found \(set data.label_column\); columns present: text, label"),
    "missing-label-and-text-columns": (
        "data.label_column and data.text_columns both name columns the file lacks: both in one message",
        lambda e: e.train(data__label_column="topic", data__text_columns="[title, body]"),
        r"synth\.csv: columns not found: 'topic' \(set data\.label_column\), 'title', 'body' \(set data\.text_columns\); "
        r"columns present: text, label$"),
    "class-with-one-row": (
        "a training class with a single row ('Sports', a slip of 'sports'): no stratified split can give it a "
        "validation row",
        lambda e: e.train(data__train=e.file("d.csv", "text,label\n" + "".join(
            f"item {i},{['sports', 'world'][i % 2]}\n" for i in range(40)) + "item 40,Sports\n")),
        r"d\.csv: 1 class\(es\) with fewer than 2 rows \(data\.min_class_rows\): too few for a stratified split to "
        r"give each a training and a validation row: 'Sports' \(1 row; differs from 'sports' only in case, spacing or "
        r"punctuation\); fix or remove those rows, or set data\.min_class_rows: 1 to train them anyway"),
    "label-names-of-another-data-set": (
        "data.label_names (ids 0..3, from a config for another data set) on a file labelled pos/neg",
        lambda e: e.train(data__label_names="[World, Sports, Business, Sci/Tech]", data__train=e.file(
            "d.csv", "text,label\n" + "".join(f"item {i},{['pos', 'neg'][i % 2]}\n" for i in range(40)))),
        r"d\.csv: row 1: label 'pos' in column 'label' is not in the label set \[.*\] \(40 of 40 rows are not\); "
        r"data\.label_names names ids 0\.\.3, and the file's labels 'pos', 'neg' are neither those ids nor those "
        r"names: remove data\.label_names to take the label set from the data, or fix the rows$"),
    "unseen-label-in-test-set": (
        "data.test holds label 7; the training labels are 0..3",
        lambda e: e.train(data__test=e.file("test.csv", "text,label\ngoal match,1\nwar vote,7\n")),
        r"test\.csv: row 2: label '7' in column 'label' is not in the label set \['0', '1', '2', '3'\]"),
    "unseen-label-evaluate": (
        "`evaluate --data` holds a label name the run never saw",
        lambda e: (["evaluate", e.finished_run(), "--data", e.file("val.csv", "text,label\ngoal,Sports\n")], None),
        r"val\.csv: row 1: label 'Sports' in column 'label' is not in the label set"),
    "class-weights-unknown-label": (
        "train.class_weights names a label the training data lacks (labels 0..3)",
        lambda e: e.train(train__class_weights="{2: 1.5, 7: 3.0}"),
        r"train\.class_weights: unknown label '7'; the training labels are \['0', '1', '2', '3'\]: name labels as "
        r"data\.train writes them"),
    "label-column-looks-like-ids": (
        "a label column whose values mostly occur once (an id or a number, not classes)",
        lambda e: e.train(data__train=e.file("ids.csv", "text,label\ngoal match,0\nwar vote,1\nchip,1000000\n")),
        r"ids\.csv: 3 distinct labels in 3 rows of column 'label': most labels occur once, so it reads as an id or a "
        r"number, not classes; point data.label_column at the class column"),
    "empty-texts-refused": (
        "empty / whitespace-only texts with data.empty_texts: error (the default, drop, drops them and logs the count)",
        lambda e: e.train(data__empty_texts="error",
                          data__train=e.file("e.csv", "text,label\ngoal match,1\n   ,0\n,2\nchip data,3\n")),
        r"e\.csv: 2 empty or whitespace-only text\(s\), first at row 2; remove them or set data.empty_texts: drop"),
    "only-empty-texts": (
        "every text empty (dropped), nothing left to train on",
        lambda e: e.train(data__train=e.file("e.csv", "text,label\n  ,1\n,0\n")),
        r"e\.csv: no usable rows after dropping empty texts and the length filter"),
    "non-utf8-bytes": (
        "a Latin-1 byte (0xe9) in a CSV",
        lambda e: e.train(data__train=e.file("latin1.csv", b"text,label\ngoal match,1\ncaf\xe9 war vote,0\n")),
        r"latin1\.csv: line 3: bytes are not valid UTF-8 \(byte 0xe9 at offset 27\); re-save the file as UTF-8"),
    "duplicate-ids-predict": (
        "`predict --input` with a repeated value in its ID column",
        lambda e: e.predict(e.file("in.csv", "ID,text\na,goal match\nb,war vote\na,chip data\n")),
        r"in\.csv: line 4: duplicate ID 'a' in column 'ID' \(an earlier row has it\); IDs must be unique; nothing was "
        r"written"),
    "over-budget": (
        "budget.max_trainable below the setup's trainable parameters",
        lambda e: e.train(budget__max_trainable=100),
        r"budget.max_trainable: 2,212 trainable parameters exceed the budget of 100"),
    "unknown-target-module": (
        "adapter.targets: [qkv] on a RoBERTa",
        lambda e: e.train(adapter__targets="[qkv]"),
        r"adapter.targets: 'qkv' matches no linear module in the encoder layers; .*names that exist: .*query.*value"),
    "layer-out-of-range": (
        "adapter.layers: [0, 5] on a 2-layer model",
        lambda e: e.train(adapter__layers="[0, 5]"),
        r"adapter.layers: \[5\] out of range; this model has layers 0..1"),
    "unknown-config-key": (
        "a misspelt config key (optim.lr_rate)",
        lambda e: (["train", "--config", e.file("c.yaml", "optim:\n  lr_rate: 0.1\n"), "--out", e.tmp / "run"], e.tmp / "run"),
        r"c\.yaml: unknown key 'optim.lr_rate' \(did you mean 'optim.lr'\?\)"),
    "run-dir-exists": (
        "--out names a non-empty folder, without --overwrite / --resume",
        _existing_run,
        r"run: run directory already exists; pass --overwrite to replace it, --resume to continue it, or --out for a new one"),
    "pickle-without-opt-in-train": (
        "data.train is a .pkl, data.allow_pickle not set",
        lambda e: e.train(data__train=_pickled(e)),
        r"data\.pkl: pickle files can run arbitrary code when loaded; set data.allow_pickle: true if you trust this file"),
    "pickle-without-opt-in-predict": (
        "`predict --input` is a .pkl, no --allow-pickle",
        lambda e: e.predict(_pickled(e)),
        r"data\.pkl: pickle files can run arbitrary code when loaded; pass --allow-pickle if you trust this file"),
    "model-folder-without-weights": (
        "model.name is a folder with config.json and a tokenizer but no model.safetensors",
        lambda e: e.train(model__name=_no_weights(e)),
        r"model.name: .*no-weights has no weights \(model.safetensors\); it holds only config.json, "),
    "resume-without-checkpoint": (
        "`--resume` on a run folder with no resume/ checkpoint",
        lambda e: (["train", "--resume", e.finished_run()], None),
        r"done: no checkpoint to resume from \(resume/LATEST missing\)"),
    "resume-config-changed": (
        "`--resume` after RUN/config.yaml was edited (optim.lr)",
        _stopped_run_with_edited_config,
        r"stopped/config.yaml: differs from the config the checkpoint was written with \(optim.lr\); restore it to resume"),
    # ---- issue 19: what a new user hit
    "overwrite-not-a-run": (
        "--overwrite on a folder of the user's own files (not a lorafit run: no .lorafit-run, no config.yaml + labels.json)",
        lambda e: _users_folder(e, "--overwrite"),
        r"run: not a lorafit run directory \(no \.lorafit-run, no config\.yaml \+ labels\.json\); --overwrite replaces only "
        r"a run: choose another --out, or empty the folder yourself"),
    "out-is-not-a-run": (
        "--out names a folder of the user's own files, without --overwrite",
        _users_folder,
        r"run: folder exists and is not a lorafit run directory \(no \.lorafit-run, no config\.yaml \+ labels\.json\); "
        r"choose another --out \(--overwrite replaces only a run\)"),
    "overwrite-the-working-directory": (
        "--out . --overwrite (the working directory; it once emptied it, training data included)",
        lambda e: (["train", "--config", e.config(), "--out", ".", "--overwrite"], None),
        r"^error: \.: is the current directory; --overwrite never replaces it: choose another --out$"),
    "out-under-a-file": (
        "--out is a path below an existing file",
        lambda e: (["train", "--config", e.config(), "--out", e.file("f.txt", "x") / "run"], None),
        r"f\.txt/run: .*f\.txt is a file, not a folder; choose another --out"),
    "empty-labels": (
        "a CSV row with an empty label cell (data.empty_labels: error, the default; drop drops them and logs the count)",
        lambda e: e.train(data__train=e.file("nolabel.csv", "text,label\ngoal match,1\nwar vote,\nchip data,3\n")),
        r"nolabel\.csv: 1 row\(s\) with no label in column 'label', first at row 2; fill them in or set data.empty_labels: drop"),
    "empty-labels-evaluate": (
        "`evaluate --data` with an empty label cell",
        lambda e: (["evaluate", e.finished_run(), "--data", e.file("val.csv", "text,label\ngoal,1\nwar,\n")], None),
        r"val\.csv: 1 row\(s\) with no label in column 'label', first at row 2; fill them in or remove those rows"),
    "integer-labels-on-named-run": (
        "`evaluate --data` with integer labels on a run trained on label names",
        lambda e: (["evaluate", _named_run(e), "--data", e.file("val.csv", "text,label\ngoal,sports\nwar,2\n")], None),
        r"val\.csv: row 2: label '2' in column 'label' is not in the label set \['business', 'scitech', 'sports', 'world'\] "
        r"\(1 of 2 rows are not\); the run's labels are names, so integers are not read as ids: write the names"),
    "predict-text-column-missing": (
        "`predict --input` whose text column has another name (sentence), no --text-column",
        lambda e: e.predict(e.file("in.csv", "ID,sentence\na,goal match\n")),
        r"in\.csv: column 'text' not found \(set --text-column\); columns present: ID, sentence"),
    "predict-text-column-count": (
        "`predict --text-column a,b` for a run trained on one text column",
        lambda e: e.predict(e.file("in.csv", "a,b\ngoal,match\n"), "--text-column", "a,b"),
        r"--text-column: 2 columns given \(a, b\), but the run was trained on 1 \(text\); give 1, in that order"),
    "predict-id-column-missing": (
        "`predict --id-column doc_id` on a file without that column",
        lambda e: e.predict(e.file("in.csv", "ID,text\na,goal match\n"), "--id-column", "doc_id"),
        r"in\.csv: column 'doc_id' not found \(set --id-column\); columns present: ID, text"),
    "evaluate-label-column-missing": (
        "`evaluate --label-column topic` on a file without that column",
        lambda e: (["evaluate", e.finished_run(), "--data", e.file("val.csv", "text,label\ngoal,1\n"), "--label-column",
                    "topic"], None),
        r"val\.csv: column 'topic' not found \(set --label-column\); columns present: text, label"),
    "bad-delimiter-flag": (
        "`predict --delimiter ::` (two characters)",
        lambda e: e.predict(e.file("in.csv", "text\ngoal\n"), "--delimiter", "::"),
        r"--delimiter: '::' is not one character; give one, e.g. ';', or tab"),
    "bad-delimiter-config": (
        "data.delimiter: ';;' (two characters)",
        lambda e: (["train", "--config", e.file("c.yaml", "data:\n  delimiter: ';;'\n"), "--out", e.tmp / "run"], e.tmp / "run"),
        r"c\.yaml: 'data.delimiter': ';;' is not one character; give one, e.g. ';', or tab"),
    "corrupt-gzip": (
        "a .csv.gz that is not gzip data",
        lambda e: e.train(data__train=e.file("bad.csv.gz", b"not gzip at all")),
        r"bad\.csv\.gz: not a readable gzip file \(BadGzipFile: .*\); check that it was fully written, or decompress it yourself"),
    "zstd-input": (
        "a .csv.zst (zstandard is not a dependency)",
        lambda e: e.predict(e.file("in.csv.zst", b"\x28\xb5\x2f\xfd")),
        r"in\.csv\.zst: \.zst needs the zstandard package, which lorafit does not install; decompress it \(zstd -d\) or use "
        r"\.gz, \.bz2 or \.xz"),
    "predict-output-is-a-folder": (
        "`predict --output` naming an existing folder",
        lambda e: (["predict", e.finished_run(), "--input", e.file("in.csv", "text\ngoal\n"), "--output", e.tmp], None),
        r"--output: .* is a folder; give a file name, e\.g\. .*predictions\.csv"),
    "model-folder-without-tokenizer": (
        "model.name is a folder with config.json and model.safetensors but no tokenizer files",
        lambda e: e.train(model__name=_no_tokenizer(e)),
        r"model\.name: no tokenizer files in .*no-tokenizer \(tokenizer\.json, vocab\.txt, vocab\.json \+ merges\.txt "
        r"or a sentencepiece \.model\); copy the tokenizer of the checkpoint into it"),
    "max-length-beyond-the-model": (
        "data.max_length: 2048 on a RoBERTa with 80 positions (78 readable: positions start after the pad id)",
        lambda e: e.train(data__max_length=2048),
        r"data\.max_length: 2048 exceeds what .*tiny-roberta can read \(78 tokens\); set data\.max_length <= 78"),
    "model-folder-missing": (
        "model.name is a path that does not exist",
        lambda e: e.train(model__name=e.tmp / "no-such-model"),
        r"model\.name: .*/no-such-model does not exist; point it at a Hugging Face model folder, or give a hub id "
        r"\(e\.g\. roberta-base\)"),
    "hub-model-offline-not-cached": (
        "model.name is a hub id not in the Hugging Face cache, with HF_HUB_OFFLINE=1 (as in the tests)",
        lambda e: e.train(model__name="someorg/not-a-cached-model"),
        r"model\.name: 'someorg/not-a-cached-model' is not a local folder, is not in the Hugging Face cache, and "
        r"HF_HUB_OFFLINE is set; point model\.name at a model folder"),
    "set-value-invalid": (
        "`--set optim.lr=abc` on a good config file: the flag is named, not the file",
        lambda e: ([*e.train()[0], "--set", "optim.lr=abc"], e.tmp / "run"),
        r"^error: --set optim\.lr: Input should be a valid number, unable to parse string as a number$"),
    "set-list-as-one-word": (
        "`--set data.label_names=World` (a list field given one word, where one item is never a whole setting; "
        "a single text column or target is a list of one)",
        lambda e: ([*e.train()[0], "--set", "data.label_names=World"], e.tmp / "run"),
        r"^error: --set data\.label_names: Input should be a valid list \(write a list: --set data\.label_names=\[World\]\)$"),
    # ---- issue 16: task types, text pairs, long texts, imbalance
    "multi-label-unknown-label-evaluate": (
        "`evaluate --data` on a multi_label run: a row names a label outside the run's label set",
        lambda e: (["evaluate", _multi_label_run(e), "--data",
                    e.file("val.csv", "text,label\ngoal match,sports\noil and chips,business|weather\n")], None),
        r"val\.csv: row 2: label 'weather' in column 'label' is not in the label set \['business', 'sports', 'tech'\] "
        r"\(1 of 2 rows name labels outside it\); fix the row: the run knows only these labels"),
    "multi-label-unreadable-list": (
        "data.task: multi_label, a label cell that starts like a JSON list but is not one, no data.label_delimiter",
        lambda e: e.train(data__task="multi_label",
                          data__train=e.file("tags.csv", 'text,label\ngoal match,"[""sports""]"\nchip news,[tech\n')),
        r"tags\.csv: row 2: labels '\[tech' in column 'label' are not a JSON list; write \[\"a\", \"b\"\], or set "
        r"data\.label_delimiter \(e\.g\. '\|'\) to split strings like a\|b"),
    "multi-label-one-label": (
        "data.task: multi_label on data whose rows name only one label in all",
        lambda e: e.train(data__task="multi_label",
                          data__train=e.file("tags.csv", "text,label\ngoal match,sports\nmatch day,sports\n")),
        r"tags\.csv: found 1 label\(s\) in 'label'; multi_label needs at least 2"),
    "multi-label-run-without-thresholds": (
        "`evaluate` on a multi_label run whose thresholds.json is gone (a run that never finished)",
        lambda e: (["evaluate", _multi_label_run(e, thresholds=False), "--data",
                    e.file("val.csv", "text,label\ngoal match,sports\n")], None),
        r"tags-run: thresholds\.json missing; a multi_label run writes it when training finishes"),
    "regression-target-not-a-number": (
        "data.task: regression, a target cell that is not a number",
        lambda e: e.train(data__task="regression",
                          data__train=e.file("scores.csv", "text,label\ngoal match,0.5\nwar vote,high\nchip,2\n")),
        r"scores\.csv: row 2: target 'high' in column 'label' is not a number \(1 of 3 rows are not\); data\.task: "
        r"regression needs a finite number in every row"),
    "pair-column-missing-train": (
        "data.text_pair_column names a column the training file lacks",
        lambda e: e.train(data__text_pair_column="hypothesis"),
        r"synth\.csv: column 'hypothesis' not found \(set data\.text_pair_column\); columns present: text, label"),
    "pair-column-missing-predict": (
        "`predict --input` for a run trained on pairs, the file lacks the pair column",
        lambda e: (["predict", _pair_run(e), "--input", e.file("in.csv", "text\ngoal match\n"), "--output",
                    e.tmp / "pred.csv"], e.tmp / "pred.csv"),
        r"in\.csv: column 'hypothesis' not found \(set --text-pair-column\); columns present: text"),
    "probs-on-regression": (
        "`predict --probs` for a regression run (it predicts a value, not probabilities)",
        lambda e: (["predict", _task_run(e, "score-run", ["score"], False, data__task="regression"), "--input",
                    e.file("in.csv", "text\ngoal match\n"), "--output", e.tmp / "pred.csv", "--probs"], e.tmp / "pred.csv"),
        r"--probs: \S+score-run is a regression run, which predicts a value, not probabilities; drop --probs: the "
        r"label column holds the predicted value \(--with-logits adds it as logit_score too\)$"),
    "pair-column-on-a-single-text-run": (
        "`predict --text-pair-column` for a run trained on single texts",
        lambda e: e.predict(e.file("in.csv", "text,other\ngoal,match\n"), "--text-pair-column", "other"),
        r"--text-pair-column: the run was trained on single texts \(no data\.text_pair_column\); drop --text-pair-column$"),
    "pair-column-also-a-text-column": (
        "data.text_pair_column names a column that data.text_columns already joins",
        lambda e: _config_with(e, data__text_pair_column="text"),
        r"c\.yaml: data\.text_pair_column: 'text' is also in data\.text_columns; name the pair's second text"),
    "truncation-tail-with-pairs": (
        "data.truncation: tail together with a pair column (pairs are cut longest_first)",
        lambda e: _config_with(e, data__text_pair_column="hypothesis", data__truncation="tail"),
        r"c\.yaml: data\.truncation: tail applies to single texts; text pairs \(data\.text_pair_column\) are truncated "
        r"longest_first, as the tokenizer does"),
    "head-tokens-without-head-tail": (
        "data.head_tokens with data.truncation: head (it is read only by head_tail)",
        lambda e: _config_with(e, data__head_tokens=8),
        r"c\.yaml: data\.head_tokens: applies to data\.truncation: head_tail \(this is head\); set truncation: head_tail or "
        r"remove head_tokens"),
    "head-tokens-beyond-max-length": (
        "data.head_tokens: 40 with data.max_length: 32 (no room left for the tail)",
        lambda e: _config_with(e, data__truncation="head_tail", data__head_tokens=40),
        r"c\.yaml: data\.head_tokens: 40 leaves no room for the tail within data\.max_length 32; set it below 32"),
    "metric-of-another-task": (
        "train.metric: pearson (a regression metric) on a single_label run",
        lambda e: _config_with(e, train__metric="pearson"),
        r"train\.metric: pearson is not a single_label metric; use one of accuracy, macro_f1, mcc, loss"),
    "balanced-sampler-on-regression": (
        "train.sampler: balanced with data.task: regression (no classes to draw by)",
        lambda e: _config_with(e, data__task="regression", train__sampler="balanced"),
        r"train\.sampler: balanced draws by class and needs data\.task: single_label \(this is regression\)"),
    "class-weights-on-regression": (
        "train.class_weights with data.task: regression",
        lambda e: _config_with(e, data__task="regression", train__class_weights="balanced"),
        r"train\.class_weights: a regression has no classes to weigh; remove it"),
    "class-weights-unknown-label-multi-label": (
        "train.class_weights (pos_weight) names a label the multi_label training data lacks",
        lambda e: e.train(data__task="multi_label", data__label_delimiter="'|'", train__class_weights="{sports: 2.0, art: 3.0}",
                          data__train=e.file("tags.csv", "text,label\n" + "".join(
                              f"item {i},{['sports', 'tech', 'sports|tech'][i % 3]}\n" for i in range(30)))),
        r"train\.class_weights: unknown label 'art'; the training labels are \['sports', 'tech'\]"),
    "resume-with-config": (
        "`--resume` combined with --config (a resumed run uses its own config.yaml)",
        lambda e: (["train", "--resume", e.finished_run(), "--config", e.config()], None),
        r"--resume: continues RUN_DIR with its own config.yaml; drop --config"),
}


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def env(tmp_path, tiny_roberta, synth_csv) -> Env:
    return Env(tmp_path, tiny_roberta, synth_csv)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(case, env, capsys, monkeypatch):
    _, build, pattern = CASES[case]
    monkeypatch.chdir(env.tmp)  # a case about `--out .` must never point at the repository
    argv, absent = build(env)
    before = listing(env.tmp)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(pattern, lines[0]), lines[0]
    assert absent is None or not absent.exists()
    assert listing(env.tmp) == before  # nothing written anywhere: no run dir, no output, existing dirs untouched


@pytest.mark.slow
def test_subprocess_prints_only_the_error_line(env):
    """The real CLI (library warnings, progress bars and all): stderr is the one error line."""
    argv, run = CASES["unknown-target-module"][1](env)
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: adapter.targets: 'qkv'"), proc.stderr
    assert "Traceback" not in proc.stderr and not run.exists()


def test_debug_shows_the_traceback(env):
    argv, _ = CASES["layer-out-of-range"][1](env)
    with pytest.raises(LorafitError, match="out of range"):
        main(["--debug", *map(str, argv)])


@pytest.mark.slow
def test_overwrite_replaces_an_existing_run_dir_only_when_asked(env, capsys):
    argv, _ = _existing_run(env)
    run = env.tmp / "run"
    assert main([*map(str, argv), "--overwrite", "--set", "train.max_steps=2"]) == 0
    assert not (run / "notes.txt").exists() and (run / "eval.json").is_file() and (run / ".lorafit-run").is_file()


def test_empty_texts_dropped_with_a_count(env, capsys):
    data = env.file("e.csv", "text,label\n" + "".join(f"goal match {i},{i % 2}\n" for i in range(20)) + "  ,0\n,1\n")
    argv, run = env.train(data__train=data, train__max_steps=1)
    assert main(list(map(str, argv))) == 0
    assert "data: dropped 2 empty text(s) from" in capsys.readouterr().out


def test_failure_after_the_run_dir_was_made_removes_it(env, monkeypatch, capsys):
    """Setup fails after writing the run header (here: the prefix cache): no half-made run is left."""
    from lorafit.train import switches

    def broken(self):
        raise LorafitError("train.cache_prefix: simulated failure")

    monkeypatch.setattr(switches, "prefix_cache", broken)
    argv, run = env.train()
    assert main(list(map(str, argv))) == 2
    assert "simulated failure" in capsys.readouterr().err and not run.exists()
