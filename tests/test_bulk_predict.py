"""Issue 27, points 1, 2, 3 and 5: `lorafit predict` streams its input in chunks (every format), appends
finished rows to OUTPUT.partial with a manifest, resumes after SIGKILL or Ctrl-C byte for byte, predicts
several runs in one pass, and stops at (or skips and lists) a malformed row mid-stream."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_rows, train_briefly
from lorafit.bulk.chunks import open_input
from lorafit.cli import main
from lorafit.data.tables import read_table
from lorafit.errors import LorafitError
from lorafit.predict import predict_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMEOUT = 300


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_roberta):
    """Two runs over one base (two optimizer steps each, different seeds)."""
    tmp = tmp_path_factory.mktemp("bulk")
    data = tmp / "train.csv"
    synthetic_rows(160).to_csv(data, index=False)
    train_briefly(tiny_roberta, data, tmp / "run-a", seed=1)
    train_briefly(tiny_roberta, data, tmp / "run-b", seed=2)
    return tmp / "run-a", tmp / "run-b"


def _texts(n: int, seed: int = 3) -> pd.DataFrame:
    df = synthetic_rows(n, seed=seed)
    return pd.DataFrame({"ID": [f"r{i}" for i in range(n)], "text": df["text"]})


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "lorafit", "predict", *map(str, args)]


# ---------------------------------------------------------------- reading in chunks

def test_every_format_read_in_chunks_equals_read_table(tmp_path):
    import datasets

    df = pd.DataFrame({"ID": [f"r{i}" for i in range(23)],
                       "text": [f"text, number {i}\nsecond line" if i % 5 == 0 else f"t{i}" for i in range(23)]})
    df.to_csv(tmp_path / "a.csv", index=False)
    df.to_csv(tmp_path / "a.tsv", index=False, sep="\t")
    df.to_csv(tmp_path / "s.csv", index=False, sep=";")
    df.to_csv(tmp_path / "a.csv.gz", index=False)
    df.to_csv(tmp_path / "a.csv.xz", index=False)
    df.to_json(tmp_path / "a.jsonl", orient="records", lines=True)
    df.to_json(tmp_path / "a.jsonl.bz2", orient="records", lines=True)
    df.to_json(tmp_path / "a.json", orient="records")
    (tmp_path / "a.txt").write_text("one\n\ntwo\r\nthree\rfour\n\n\n")
    df.to_parquet(tmp_path / "a.parquet", row_group_size=5)
    datasets.disable_progress_bars()
    datasets.Dataset.from_pandas(df).save_to_disk(str(tmp_path / "ds"))
    for name in ["a.csv", "a.tsv", "s.csv", "a.csv.gz", "a.csv.xz", "a.jsonl", "a.jsonl.bz2", "a.json", "a.txt",
                 "a.parquet", "ds"]:
        whole = read_table(str(tmp_path / name)).astype(str)
        for n in (1, 7, 1000):
            parts = list(open_input(str(tmp_path / name)).chunks(n))
            assert all(0 < len(c.frame) <= n for c in parts), name
            got = pd.concat([c.frame for c in parts])
            assert got.index.tolist() == list(range(len(whole))), name
            got = got.reset_index(drop=True).astype(str)[list(whole.columns)]
            pd.testing.assert_frame_equal(got, whole, obj=f"{name} in chunks of {n}")
            assert parts[-1].end == len(whole)


# ---------------------------------------------------------------- streaming output

@pytest.mark.slow
def test_output_is_byte_identical_whatever_the_chunk_size(runs, tmp_path):
    run_a, _ = runs
    inp = tmp_path / "in.csv"
    df = _texts(60)
    df.loc[[4, 33], "text"] = ["", "  "]  # empty texts: empty cells, in any chunk
    df.to_csv(inp, index=False)
    outs = []
    for n in (1, 7, 10_000):
        out = tmp_path / f"out{n}.csv"
        assert predict_file(str(run_a), str(inp), str(out), chunk_rows=n, with_logits=True, probs=True) == 60
        outs.append(out.read_bytes())
        assert not list(tmp_path.glob("*.partial*"))  # the manifest and partial file are gone
    # Which texts share a forward (and so its padding) changes float rounding in the last digits: across
    # chunk sizes the labels are equal and the numbers agree to 1e-5; at one chunk size (a resumed run's)
    # the file is byte for byte the same
    frames = [pd.read_csv(tmp_path / f"out{n}.csv", keep_default_na=False, dtype=str) for n in (1, 7, 10_000)]
    for got in frames:
        assert got["ID"].tolist() == df["ID"].tolist() and got.loc[[4, 33], "label"].tolist() == ["", ""]
        assert got["label"].tolist() == frames[2]["label"].tolist()
        assert (got.loc[[4, 33]].drop(columns="ID") == "").all().all()
        numbers = [c for c in got.columns if c.startswith(("logit_", "prob_"))]
        full = got.drop(index=[4, 33])[numbers].to_numpy(float)
        np.testing.assert_allclose(full, frames[2].drop(index=[4, 33])[numbers].to_numpy(float), atol=1e-5)
    again = tmp_path / "again.csv"
    predict_file(str(run_a), str(inp), str(again), chunk_rows=7, with_logits=True, probs=True)
    assert again.read_bytes() == outs[1]


@pytest.mark.slow
def test_stdout_output_streams_the_same_csv(runs, tmp_path):
    run_a, _ = runs
    inp = tmp_path / "in.jsonl"
    _texts(30).to_json(inp, orient="records", lines=True)
    want = tmp_path / "want.csv"
    predict_file(str(run_a), str(inp), str(want))
    proc = subprocess.run(_cli(run_a, "--input", inp, "--output", "-", "--chunk-rows", 4), capture_output=True,
                          env=_env(), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want.read_bytes()


@pytest.mark.slow
def test_two_runs_in_one_pass_equal_each_runs_own_predict(runs, tmp_path):
    run_a, run_b = runs
    inp = tmp_path / "in.csv"
    _texts(40).to_csv(inp, index=False)
    both = tmp_path / "both.csv"
    assert main(["predict", str(run_a), str(run_b), "--input", str(inp), "--output", str(both), "--probs",
                 "--chunk-rows", "16"]) == 0
    got = pd.read_csv(both, dtype=str)
    names = json.loads((run_a / "labels.json").read_text())
    assert list(got.columns) == (["ID", "label_run-a", *[f"prob_run-a_{n}" for n in names],
                                  "label_run-b", *[f"prob_run-b_{n}" for n in names]])
    for run in (run_a, run_b):
        one = tmp_path / f"{run.name}.csv"
        predict_file(str(run), str(inp), str(one), probs=True)
        single = pd.read_csv(one, dtype=str)
        assert got[f"label_{run.name}"].tolist() == single["label"].tolist()
        # the shared base is not merged with each adapter: float rounding apart (tests/test_serve.py: 1e-4)
        np.testing.assert_allclose(got[[f"prob_{run.name}_{n}" for n in names]].to_numpy(float),
                                   single[[f"prob_{n}" for n in names]].to_numpy(float), atol=1e-4)


# ---------------------------------------------------------------- resuming

def _wait_for_rows(manifest: Path, proc: subprocess.Popen, deadline: float) -> int:
    """Rows the manifest says are committed, once more than zero (bounded by deadline)."""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rows = json.loads(manifest.read_text())["rows"]
        except (OSError, ValueError, KeyError):
            rows = 0
        if rows > 0:
            return rows
        time.sleep(0.01)
    raise AssertionError(f"no committed rows before the deadline (exit {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_stopped_predict_resumes_to_the_identical_file(runs, capsys, tmp_path, how):
    """The process stopped is a real `lorafit predict`; the refusal and the resume after it go through the CLI's
    entry point in this process (a new interpreter would only add its imports)."""
    run_a, _ = runs
    inp = tmp_path / "in.csv"
    _texts(3000).to_csv(inp, index=False)
    want = tmp_path / "want.csv"
    predict_file(str(run_a), str(inp), str(want), chunk_rows=20, with_logits=True)
    out = tmp_path / "out.csv"
    args = [run_a, "--input", inp, "--output", out, "--chunk-rows", 20, "--with-logits"]
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_rows(out.with_name("out.csv.partial.json"), proc, time.monotonic() + TIMEOUT)
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert not out.exists()
    kept = json.loads(out.with_name("out.csv.partial.json").read_text())["rows"]
    assert 0 < kept < 3000
    if how == "SIGINT":
        assert proc.returncode == 130
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"interrupted: the predictions of the first {kept:,} input rows are kept in "), line
        command = line.split("to continue: ")[1]
        assert command.endswith(" --resume") and command.startswith("lorafit predict ")
    else:
        assert proc.returncode == -signal.SIGKILL
    # without --resume the partial output is refused, naming both ways out
    argv = ["predict", *map(str, args)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err, err
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert out.read_bytes() == want.read_bytes()
    assert not out.with_name("out.csv.partial").exists() and not out.with_name("out.csv.partial.json").exists()


def _partial_run(run_dir, inp, out, rows: int):
    """A predict stopped at a bad row after `rows` rows (stop mode, chunks of 8): the chunks before its are kept."""
    lines = inp.read_text().splitlines(keepends=True)
    inp.write_text("".join(lines[:rows + 1]) + "x,y,z\n" + "".join(lines[rows + 1:]))
    with pytest.raises(LorafitError) as e:
        predict_file(str(run_dir), str(inp), str(out), chunk_rows=8, command="lorafit predict X")
    return str(e.value), lines


@pytest.mark.slow
def test_bad_row_stops_with_the_rows_before_it_kept_and_resumes_after_the_fix(runs, tmp_path):
    run_a, _ = runs
    inp, out, want = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "want.csv"
    _texts(40).to_csv(inp, index=False)
    predict_file(str(run_a), str(inp), str(want), chunk_rows=8)
    message, lines = _partial_run(run_a, inp, out, 21)
    assert message == (f"{inp}: line 23: malformed CSV: 3 fields where the header has 2; quote fields that contain ',' "
                       "or line breaks; the predictions of the first 16 rows are kept: fix it and run lorafit predict X "
                       "--resume, or skip such rows with --on-bad-row skip")
    # the chunks before the bad row's (rows 16-23) are kept
    assert json.loads(out.with_name("out.csv.partial.json").read_text())["rows"] == 16
    assert len(out.with_name("out.csv.partial").read_text().splitlines()) == 17  # header and 16 rows
    # a resume of the input still broken stops at the same row; fixed, it completes
    with pytest.raises(LorafitError, match="line 23: malformed CSV"):
        predict_file(str(run_a), str(inp), str(out), chunk_rows=8, resume=True)
    inp.write_text("".join(lines))
    notes = []
    assert predict_file(str(run_a), str(inp), str(out), chunk_rows=8, resume=True, log=notes.append) == 40
    assert any("changed after the 16 rows already predicted" in n for n in notes)
    assert out.read_bytes() == want.read_bytes()


@pytest.mark.slow
def test_resume_refuses_an_input_changed_before_the_rows_kept(runs, tmp_path):
    run_a, _ = runs
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    _texts(40).to_csv(inp, index=False)
    _, lines = _partial_run(run_a, inp, out, 21)
    inp.write_text("".join(lines[:3]) + "r2,a different text\n" + "".join(lines[4:]))
    with pytest.raises(LorafitError, match=r"^--resume: the input changed since .* start again with --overwrite$"):
        predict_file(str(run_a), str(inp), str(out), chunk_rows=8, resume=True)
    with pytest.raises(LorafitError, match=r"^--resume: the options changed"):  # another --chunk-rows
        inp.write_text("".join(lines[:22]) + "x,y,z\n" + "".join(lines[22:]))
        predict_file(str(run_a), str(inp), str(out), chunk_rows=9, resume=True)
    assert predict_file(str(run_a), str(inp), str(out), chunk_rows=8, overwrite=True, on_bad_row="skip") == 40


@pytest.mark.slow
def test_bad_rows_skipped_are_listed_in_a_side_file(runs, tmp_path):
    run_a, _ = runs
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.csv"
    rows = [json.dumps({"ID": f"r{i}", "text": t}) for i, t in enumerate(_texts(12)["text"])]
    rows[3] = '{"ID": "r3", "text": "unclosed'
    rows[5] = json.dumps({"ID": "r5", "text": ["a", "list"]})
    rows[8] = json.dumps({"ID": "r1", "text": "a duplicate ID"})
    raw = ("\n".join(rows) + "\n").encode()
    raw = raw.replace(b'"r10", "text": "', b'"r10", "text": "\xff')  # not UTF-8
    inp.write_bytes(raw)
    notes = []
    assert predict_file(str(run_a), str(inp), str(out), on_bad_row="skip", chunk_rows=4, log=notes.append) == 8
    got = pd.read_csv(out, dtype=str)
    assert got["ID"].tolist() == ["r0", "r1", "r2", "r4", "r6", "r7", "r9", "r11"]
    side = [json.loads(line) for line in out.with_name("out.csv.bad_rows.jsonl").read_text().splitlines()]
    assert [(b["row"], b["where"]) for b in side] == [(4, f"{inp}: line 4"), (6, f"{inp}: line 6"),
                                                      (9, f"{inp}: line 9"), (11, f"{inp}: line 11")]
    assert "invalid JSON" in side[0]["reason"] and side[0]["raw"].startswith('{"ID": "r3"')
    assert "holds a list" in side[1]["reason"] and "duplicate ID 'r1'" in side[2]["reason"]
    assert "not valid UTF-8 (byte 0xff" in side[3]["reason"]
    assert notes[-1] == f"note: 4 bad row(s) skipped, listed in {out.with_name('out.csv.bad_rows.jsonl')}"


def test_a_refused_input_leaves_no_partial_file(runs, tmp_path):
    run_a, _ = runs
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"sentence": ["a"]}).to_csv(inp, index=False)
    with pytest.raises(LorafitError, match="column 'text' not found"):
        predict_file(str(run_a), str(inp), str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    inp.write_text("ID,text\na,goal match\nb,war vote\na,chip data\n")  # a bad row in the first chunk
    with pytest.raises(LorafitError, match=r"^\S+in.csv: line 4: duplicate ID 'a' in column 'ID' \(an earlier row has "
                                           r"it\); IDs must be unique; nothing was written: fix it and run again"):
        predict_file(str(run_a), str(inp), str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    with pytest.raises(LorafitError, match="no stopped predict to continue"):
        predict_file(str(run_a), str(inp), str(out), resume=True)


# ---------------------------------------------------------------- memory

_RSS = """
import resource, sys
from lorafit.predict import predict_file
predict_file(sys.argv[1], sys.argv[2], sys.argv[3], chunk_rows=500)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_input(runs, tmp_path):
    """2,000 and 20,000 rows (gzip CSV): the second's peak RSS within 1.25x of the first's (chunks of 500)."""
    run_a, _ = runs
    peaks = []
    for n in (2000, 20000):
        inp = tmp_path / f"in{n}.csv.gz"
        with gzip.open(inp, "wt") as f:
            _texts(n, seed=n).to_csv(f, index=False)
        proc = subprocess.run([sys.executable, "-c", _RSS, str(run_a), str(inp), str(tmp_path / f"out{n}.csv")],
                              env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        peaks.append(int(proc.stdout.split()[-1]))
    assert peaks[1] <= 1.25 * peaks[0], peaks


def test_resume_with_overwrite_is_refused_before_the_rows_kept_are_touched(tmp_path):
    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"sentence": ["a"]}).to_csv(inp, index=False)
    partial, manifest = tmp_path / "out.csv.partial", tmp_path / "out.csv.partial.json"
    partial.write_text("ID,label\n0,x\n")
    manifest.write_text("{}")
    with pytest.raises(LorafitError, match=r"^--resume continues the rows kept, --overwrite discards them: give one$"):
        predict_file(str(tmp_path / "no-run"), str(inp), str(out), resume=True, overwrite=True)
    assert partial.read_text() == "ID,label\n0,x\n" and manifest.read_text() == "{}" and not out.exists()
