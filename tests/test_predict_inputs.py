"""What `predict` and `evaluate` read and write (issue 19: defects 11 and predict's part of 7):
column flags, .txt and compressed inputs, other delimiters, and --output that cannot be written."""
from __future__ import annotations

import bz2
import errno
import gzip
import json
import lzma
import os
import re
import tempfile

import pandas as pd
import pytest

from conftest import synthetic_rows, tiny_config, one_error as _one_error
from lorafit.cli import main
from lorafit.config import DataConfig, load_config
from lorafit.data.examples import load_labelled
from lorafit.errors import LorafitError
from lorafit.data.tables import read_table

FRAME = pd.DataFrame({"text": ["goal match", "war vote", "chip data"], "label": ["1", "0", "3"]})


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_roberta):
    """A finished run (two optimizer steps) and its reference logits on a few texts."""
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained
    from lorafit.train.recipe import Recipe

    tmp = tmp_path_factory.mktemp("predict-inputs")
    data = tmp / "train.csv"
    synthetic_rows(160).to_csv(data, index=False)
    recipe = Recipe(tiny_config(tiny_roberta, data, train__max_steps=2), tmp / "run", log=lambda *a: None).setup()
    recipe.train()
    recipe.finish()
    texts = synthetic_rows(12, seed=5)["text"].tolist()
    model, tok, _, _ = load_trained(tmp / "run", merge=True)
    return tmp / "run", texts, predict_logits(model, tok, texts, 32).argmax(-1)


def _predict(run_dir, inp, out, *extra) -> pd.DataFrame:
    assert main(["predict", str(run_dir), "--input", str(inp), "--output", str(out), *map(str, extra)]) == 0
    return pd.read_csv(out)


# ---------------------------------------------------------------- column flags

@pytest.mark.slow
def test_text_and_id_column_flags(run, tmp_path, capsys):
    run_dir, texts, ref = run
    inp = tmp_path / "in.csv"
    pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(texts))], "sentence": texts}).to_csv(inp, index=False)
    got = _predict(run_dir, inp, tmp_path / "out.csv", "--text-column", "sentence", "--id-column", "doc_id")
    assert list(got.columns) == ["doc_id", "label"] and got["doc_id"].tolist() == [f"d{i}" for i in range(len(texts))]
    assert got["label"].tolist() == ref.tolist()

    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", tmp_path / "x.csv"]) == (
        f"{inp}: column 'text' not found (set --text-column); columns present: doc_id, sentence")
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", tmp_path / "x.csv",
                               "--text-column", "sentence", "--id-column", "ID"]) == (
        f"{inp}: column 'ID' not found (set --id-column); columns present: doc_id, sentence")
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", tmp_path / "x.csv", "--id-column", "ID"]) == (
        f"{inp}: columns not found: 'text' (set --text-column), 'ID' (set --id-column); columns present: doc_id, sentence")
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", tmp_path / "x.csv",
                               "--text-column", "sentence,doc_id"]) == (
        "--text-column: 2 columns given (sentence, doc_id), but the run was trained on 1 (text); give 1, in that order")
    assert not (tmp_path / "x.csv").exists()


def test_text_columns_repeatable_or_comma_separated(tmp_path, tiny_roberta, synth_csv):
    from lorafit.predict import read_inputs

    inp = tmp_path / "in.csv"
    pd.DataFrame({"head": ["A", "B"], "body": ["one", "two"]}).to_csv(inp, index=False)
    cfg = DataConfig(text_columns=["title", "text"])
    for flags in (["head,body"], ["head", "body"], ["head, body"]):
        assert read_inputs(str(inp), cfg, False, text_columns=flags)[2] == ["A. one", "B. two"]


def test_evaluate_label_and_text_column_flags(run, tmp_path, capsys):
    run_dir, texts, ref = run
    data = tmp_path / "val.csv"
    pd.DataFrame({"sentence": texts, "topic": ref}).to_csv(data, index=False)
    assert main(["evaluate", str(run_dir), "--data", str(data), "--text-column", "sentence", "--label-column", "topic"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    assert _one_error(capsys, ["evaluate", run_dir, "--data", data, "--text-column", "sentence"]) == (
        f"{data}: column 'label' not found (set --label-column); columns present: sentence, topic")


def test_predict_and_evaluate_say_how_many_texts_were_cut(run, tmp_path, capsys):
    """Issue 25: 42 of 3,275 reviews were longer than max_length and nothing said so. The run reads 32
    tokens; 2 of these 5 texts are longer (one by a single token), one is exactly 32."""
    run_dir, texts, _ = run
    words = " ".join(["goal"] * 30)  # 30 words, 32 tokens with <s> and </s>
    long = [words, words + " match", words + " match " * 40, "goal match", "war vote"]
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": long, "label": ["1", "1", "1", "1", "0"]}).to_csv(inp, index=False)
    capsys.readouterr()
    _predict(run_dir, inp, tmp_path / "out.csv")
    note = ("note: 2 of 5 texts were longer than max_length 32 tokens and were truncated (data.truncation: head)")
    assert capsys.readouterr().err.splitlines() == [note, f"wrote 5 predictions to {tmp_path / 'out.csv'}"]
    assert main(["evaluate", str(run_dir), "--data", str(inp)]) == 0
    assert note in capsys.readouterr().err.splitlines()
    pd.DataFrame({"text": long[3:]}).to_csv(tmp_path / "short.csv", index=False)
    _predict(run_dir, tmp_path / "short.csv", tmp_path / "out.csv")
    assert "note:" not in capsys.readouterr().err  # nothing cut, nothing said


# ---------------------------------------------------------------- formats: .txt, compressed, delimiters

def test_txt_is_one_text_per_line_blank_lines_kept(run, tmp_path):
    run_dir, texts, ref = run
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts[:3]) + "\n\n" + "\n".join(texts[3:]) + "\n\n")
    frame = read_table(str(inp))
    # a blank line inside the file is a row (row k is line k+1); blank lines at the end are not
    assert frame["text"].tolist() == texts[:3] + [""] + texts[3:]
    got = _predict(run_dir, inp, tmp_path / "out.csv")
    assert got["ID"].tolist() == list(range(len(texts) + 1))
    assert got["label"].drop(3).tolist() == ref.tolist()


@pytest.mark.parametrize("name, opener", [("in.csv.gz", gzip.open), ("in.jsonl.bz2", bz2.open), ("in.tsv.xz", lzma.open),
                                          ("in.txt.gz", gzip.open), ("in.json.gz", gzip.open)])
def test_compressed_inputs(run, tmp_path, name, opener):
    run_dir, texts, ref = run
    frame = pd.DataFrame({"ID": [f"x{i}" for i in range(len(texts))], "text": texts})
    inner = name.rsplit(".", 1)[0].rsplit(".", 1)[1]
    content = {"csv": lambda: frame.to_csv(index=False), "tsv": lambda: frame.to_csv(index=False, sep="\t"),
               "jsonl": lambda: frame.to_json(orient="records", lines=True),
               "json": lambda: frame.to_json(orient="records"), "txt": lambda: "\n".join(texts) + "\n"}[inner]()
    with opener(tmp_path / name, "wt", encoding="utf-8") as f:
        f.write(content)
    got = _predict(run_dir, tmp_path / name, tmp_path / "out.csv")
    assert got["label"].tolist() == ref.tolist()
    assert got[got.columns[0]].tolist() == (list(range(len(texts))) if inner == "txt" else frame["ID"].tolist())


def test_compressed_file_errors_keep_lines(tmp_path):
    p = tmp_path / "bad.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("text,label\ngoal match,1\nwar, vote today,0\n")
    with pytest.raises(LorafitError, match=re.escape(f"{p}: line 3: malformed CSV: 3 fields where the header has 2")):
        read_table(str(p))
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(LorafitError, match=re.escape(f"{broken}: not a readable gzip file (")):
        read_table(str(broken))
    with pytest.raises(LorafitError, match=re.escape(f"data.train: file not found: {tmp_path / 'none.csv.gz'}")):
        read_table(str(tmp_path / "none.csv.gz"))
    zst = tmp_path / "d.csv.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(LorafitError, match=re.escape(f"{zst}: .zst needs the zstandard package, which lorafit does not "
                                                     "install; decompress it (zstd -d) or use .gz, .bz2 or .xz")):
        read_table(str(zst))


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_delimiter_sniffed_when_the_header_has_no_comma(tmp_path, sep):
    p = tmp_path / "d.csv"
    frame = FRAME.assign(text=["goal, match", "war vote", "chip; data"] if sep != ";" else FRAME["text"])
    frame.to_csv(p, sep=sep, index=False)
    got = read_table(str(p))
    assert got.columns.tolist() == ["text", "label"] and got["text"].tolist() == frame["text"].tolist()


def test_a_header_with_a_comma_stays_comma_separated(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nwar; vote; today,0\nchip|data,1\n")
    assert read_table(str(p))["text"].tolist() == ["war; vote; today", "chip|data"]
    p.write_text("text\nwar; vote; today\nchip data\n")  # one column: no delimiter to find
    assert read_table(str(p))["text"].tolist() == ["war; vote; today", "chip data"]


def test_delimiter_setting_and_flag(run, tmp_path, capsys):
    p = tmp_path / "d.csv"
    p.write_text("text:label\ngoal match:1\nwar vote:0\n")
    ex, names, _ = load_labelled(str(p), DataConfig(delimiter=":"), "train", None, "data.train")
    assert ex.texts == ["goal match", "war vote"] and names == ["0", "1"]
    assert load_config(None, ["data.delimiter=tab"]).data.delimiter == "\t"
    with pytest.raises(LorafitError, match=r"data.delimiter: .*one character"):
        load_config(None, ["data.delimiter=;;"])

    run_dir, texts, ref = run
    inp = tmp_path / "in.csv"
    inp.write_text("ID:text\n" + "".join(f"{i}:{t}\n" for i, t in enumerate(texts)))
    got = _predict(run_dir, inp, tmp_path / "out.csv", "--delimiter", ":")
    assert got["label"].tolist() == ref.tolist()
    data = tmp_path / "val.csv"
    data.write_text("text;label\n" + "".join(f"{t};{k}\n" for t, k in zip(texts, ref)))
    assert main(["evaluate", str(run_dir), "--data", str(data), "--delimiter", ";"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", tmp_path / "x.csv", "--delimiter", "::"]) == (
        "--delimiter: '::' is not one character; give one, e.g. ';', or tab")


# ---------------------------------------------------------------- --output (defect 7, predict's part)

def test_output_naming_a_folder(run, tmp_path, capsys):
    run_dir, texts, _ = run
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", tmp_path]) == (
        f"--output: {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'predictions.csv'}")


def test_output_folder_not_writable_is_refused_before_the_model_loads(run, tmp_path, capsys, monkeypatch):
    import lorafit.runs

    run_dir, texts, _ = run
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def refuse(*a, **k):
        if str(k.get("dir")) == str(ro):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*a, **k)

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(lorafit.runs, "load_trained", no_model)
    monkeypatch.setattr("lorafit.runs.weights.load_trained", no_model)  # what load_run calls
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", ro / "p.csv"]) == (
        f"--output: cannot write in folder {ro} (Permission denied); choose another --output")
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_output_folder_read_only(run, tmp_path, capsys):
    run_dir, texts, _ = run
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", ro / "p.csv"]).startswith(
            f"--output: cannot write in folder {ro} (Permission denied)")
    finally:
        ro.chmod(0o755)


def test_full_disk_leaves_no_file(run, tmp_path, capsys, monkeypatch):
    run_dir, texts, _ = run
    inp = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", out]) == (
        f"--output: could not write {out} (No space left on device); nothing was written")
    assert list(out.parent.iterdir()) == []
