"""What predict writes to and reads from (issue 25, data loss): --output through a symbolic link to its
target, in place to a FIFO, a character device or `-` (standard output), never over a folder or a socket
nor over its own --input; --input from `-`, /dev/stdin or a FIFO; a missing path is a path error, never
a hub error. The same rule for every file lorafit writes (lorafit.io.output_target)."""
from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli, synthetic_rows, one_error as _one_error
from lorafit.cli import main

TIMEOUT = 120  # a subprocess that blocks (a FIFO opened too early) fails here instead of hanging


@pytest.fixture(scope="module")
def run(tmp_path_factory, trained_run):
    """The shared finished run, an input CSV of ids and texts, and the CSV predict writes for it."""
    tmp = tmp_path_factory.mktemp("output-targets")
    inp = tmp / "in.csv"
    pd.DataFrame({"id": [f"d{i}" for i in range(8)], "text": synthetic_rows(8, seed=5)["text"]}).to_csv(inp, index=False)
    ref = tmp / "ref.csv"
    assert main(["predict", str(trained_run[0]), "--input", str(inp), "--output", str(ref)]) == 0
    return trained_run[0], inp, ref.read_text()


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: what is refused must be refused before it loads."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("lorafit.runs.weights.load_trained", refuse)  # infer.loaded.load_run calls it


# ---------------------------------------------------------------- where the CSV goes

def test_symlink_output_writes_its_target_and_keeps_the_link(run, tmp_path):
    run_dir, inp, want = run
    target = tmp_path / "real" / "preds.csv"
    target.parent.mkdir()
    target.write_text("old contents\n")
    before = target.stat().st_ino
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert main(["predict", str(run_dir), "--input", str(inp), "--output", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == want
    assert target.stat().st_ino != before  # replaced by a rename beside the target, not rewritten in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["preds.csv"]  # no temporary file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real"]

    dangling = tmp_path / "new-link.csv"  # a link to a file not yet there: the file is created there
    dangling.symlink_to(tmp_path / "real" / "new.csv")
    assert main(["predict", str(run_dir), "--input", str(inp), "--output", str(dangling)]) == 0
    assert dangling.is_symlink() and (tmp_path / "real" / "new.csv").read_text() == want


def test_fifo_output_streams_to_its_reader(run, tmp_path):
    run_dir, inp, want = run
    fifo = tmp_path / "preds.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    assert main(["predict", str(run_dir), "--input", str(inp), "--output", str(fifo)]) == 0
    reader.join(TIMEOUT)
    assert not reader.is_alive() and got == [want]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.slow
def test_fifo_output_is_not_opened_before_the_input_is_checked(run, tmp_path):
    """Nobody reads the FIFO: a check that opened it for writing would wait for ever, and one that opened
    it for reading would consume what a reader is owed. A bad --input must fail at once."""
    run_dir, _, _ = run
    fifo = tmp_path / "preds.fifo"
    os.mkfifo(fifo)
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence\nhello\n")
    proc = run_cli("predict", run_dir, "--input", bad, "--output", fifo, timeout=TIMEOUT)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {bad}: column 'text' not found"), proc.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_character_device_output_is_written_in_place(run, tmp_path):
    """/dev/null's own device; as root a node of it in tmp_path, so that a regression replaces that
    one and not the machine's /dev/null (which a non-root user cannot replace)."""
    run_dir, inp, _ = run
    dev = Path("/dev/null")
    if os.geteuid() == 0:
        dev = tmp_path / "null"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert main(["predict", str(run_dir), "--input", str(inp), "--output", str(dev)]) == 0
    assert stat.S_ISCHR(os.stat(dev).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == (["null"] if dev.parent == tmp_path else [])  # no temporary file


@pytest.mark.slow
def test_stdin_to_stdout(run):
    """`--input - --output -`: the CSV from standard input, and on standard output nothing but the CSV."""
    run_dir, inp, want = run
    proc = run_cli("predict", run_dir, "--input", "-", "--output", "-", input=inp.read_text(), timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want
    assert proc.stderr.strip().endswith("wrote 8 predictions to standard output")


@pytest.mark.slow
def test_dev_stdin_to_dev_stdout_and_input_format(run):
    """The report's /dev/stdout (a pipe here): written in place, still a pipe; /dev/stdin read as JSON
    lines when told."""
    run_dir, inp, want = run
    lines = "".join(json.dumps(r) + "\n" for r in pd.read_csv(inp).to_dict("records"))
    proc = run_cli("predict", run_dir, "--input", "/dev/stdin", "--input-format", "jsonl", "--output", "/dev/stdout",
                   input=lines, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want  # a regular file put in the pipe's place would leave it empty


def test_fifo_input(run, tmp_path):
    run_dir, inp, want = run
    fifo = tmp_path / "texts"  # no suffix: read as CSV
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(inp.read_text()), daemon=True)
    writer.start()
    out = tmp_path / "out.csv"
    assert main(["predict", str(run_dir), "--input", str(fifo), "--output", str(out)]) == 0
    writer.join(TIMEOUT)
    assert out.read_text() == want


# ---------------------------------------------------------------- refused, before the model loads

def test_folder_and_socket_outputs_are_refused(run, tmp_path, capsys, no_model):
    run_dir, inp, _ = run
    assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", tmp_path]) == (
        f"--output: {tmp_path} is a folder; give a file name, e.g. {tmp_path / 'predictions.csv'}")
    short = Path(tempfile.mkdtemp(prefix="lf-"))  # a socket's path must fit in 108 bytes
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(short / "s"))
        assert _one_error(capsys, ["predict", run_dir, "--input", inp, "--output", short / "s"]) == (
            f"--output: {short / 's'} is a socket; lorafit writes only to a regular file (or a symbolic link to one), "
            "a FIFO, a character device, or - for standard output")
        assert stat.S_ISSOCK(os.stat(short / "s").st_mode)
    finally:
        sock.close()
        (short / "s").unlink()
        short.rmdir()


def test_output_that_is_the_input_is_refused(run, tmp_path, capsys, no_model):
    run_dir, inp, _ = run
    mine = tmp_path / "same.csv"
    mine.write_bytes(inp.read_bytes())
    link = tmp_path / "link.csv"
    link.symlink_to(mine)
    hard = tmp_path / "hard.csv"
    os.link(mine, hard)
    for given_in, given_out in ((mine, mine), (mine, link), (link, mine), (hard, mine)):
        assert _one_error(capsys, ["predict", run_dir, "--input", given_in, "--output", given_out]) == (
            f"--output: {given_out} is the --input file {given_in}; the predictions would replace its texts; "
            "choose another --output")
    assert mine.read_bytes() == inp.read_bytes() and link.is_symlink()


@pytest.mark.slow
def test_stdin_redirected_from_the_output_file_is_refused(run, tmp_path):
    run_dir, inp, _ = run
    mine = tmp_path / "same.csv"
    mine.write_bytes(inp.read_bytes())
    with open(mine) as stdin:
        proc = run_cli("predict", run_dir, "--input", "-", "--output", mine, stdin=stdin, timeout=TIMEOUT)
    assert proc.returncode == 2 and proc.stderr == (
        f"error: --output: {mine} is the --input file -; the predictions would replace its texts; choose another "
        "--output\n")
    assert mine.read_bytes() == inp.read_bytes()


@pytest.mark.parametrize("name", ["./nope.csv", "./nope", "/no/such/folder/texts", "~/no-such-lorafit-file.csv",
                                  "a/b/c"])
def test_a_missing_path_is_a_path_error_not_a_hub_error(run, tmp_path, capsys, no_model, name, monkeypatch):
    run_dir, _, _ = run
    monkeypatch.chdir(tmp_path)
    for argv in (["predict", run_dir, "--input", name, "--output", "out.csv"], ["evaluate", run_dir, "--data", name]):
        assert _one_error(capsys, argv) == f"{argv[2]}: file not found: {name}"
    assert list(tmp_path.iterdir()) == []


def test_unknown_input_format_and_suffix(run, tmp_path, capsys, no_model):
    run_dir, inp, _ = run
    odd = tmp_path / "texts.dat"
    odd.write_bytes(inp.read_bytes())
    assert _one_error(capsys, ["predict", run_dir, "--input", odd, "--output", tmp_path / "o.csv"]) == (
        f"--input: {odd}: unknown format '.dat'; give --input-format one of csv, tsv, jsonl, json, txt, parquet "
        "(or convert it)")
    assert _one_error(capsys, ["predict", run_dir, "--input", odd, "--input-format", "xlsx", "--output",
                               tmp_path / "o.csv"]) == (
        "--input-format: unknown format 'xlsx'; use one of csv, tsv, jsonl, json, txt, parquet")


# ---------------------------------------------------------------- every file lorafit writes

def test_the_write_helper_follows_the_same_rule(tmp_path):
    """Run-folder files (config.yaml, report.md...) go through atomic_write_text: a link is written
    through, a FIFO in place, a socket refused."""
    from lorafit.errors import LorafitError
    from lorafit.io import atomic_write_text

    real = tmp_path / "elsewhere.md"
    link = tmp_path / "report.md"
    link.symlink_to(real)
    atomic_write_text(link, "# report\n")
    assert link.is_symlink() and real.read_text() == "# report\n"

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    atomic_write_text(fifo, "streamed\n")
    reader.join(TIMEOUT)
    assert got == ["streamed\n"] and stat.S_ISFIFO(os.stat(fifo).st_mode)

    with pytest.raises(LorafitError, match="is a folder"):
        atomic_write_text(tmp_path, "x")


def test_export_out_through_a_link_and_never_over_what_it_reads(run, tmp_path, capsys):
    from lorafit.export.folder import MANIFEST, publish

    built = tmp_path / "built"
    built.mkdir()
    (built / MANIFEST).write_text("{}")
    real = tmp_path / "exports" / "v1"
    real.mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to(real)
    publish(built, link)
    assert link.is_symlink() and (real / MANIFEST).read_text() == "{}"

    run_dir, inp, _ = run
    check = real / "check.csv"
    check.write_bytes(inp.read_bytes())
    assert _one_error(capsys, ["export", run_dir, "--format", "merged", "--out", link, "--overwrite",
                               "--check", check]) == (
        f"--out: {link} holds --check {check}, which replacing the export would delete; choose another --out")
    assert check.read_bytes() == inp.read_bytes()
