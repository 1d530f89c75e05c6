"""Hostile and broken inputs through the CLI: exit code 2, exactly one `error: ...` line on stderr
(no traceback unless --debug), and nothing written: a failed `train` leaves no run directory
behind, a failed `predict` no output file. notes/make_bad_inputs.py lists every message from CASES."""
from __future__ import annotations

import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

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
        r"in\.csv: column 'ID' has 1 duplicate ID\(s\), first 'a'; IDs must be unique"),
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
        "`--set adapter.targets=query` (a list field given one word)",
        lambda e: ([*e.train()[0], "--set", "adapter.targets=query"], e.tmp / "run"),
        r"^error: --set adapter\.targets: Input should be a valid list \(write a list: --set adapter\.targets=\[query\]\)$"),
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
