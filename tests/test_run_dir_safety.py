"""The run directory and the files around it stay safe: --overwrite replaces only a lorafit run
(never the user's own folder, the working directory or home), and only once the new run's setup
has passed; Ctrl-C / SIGTERM keep a resumable checkpoint; output-side I/O errors (read-only,
full disk, closed pipe) are one line and leave no half-written finished run; files follow the
user's umask."""
from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from lorafit.train import checkpoint
from lorafit.cli import main
from lorafit.errors import LorafitError

SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMING = ("samples_per_s", "train_seconds")


def write_config(tmp: Path, model: Path, data: Path, **over) -> Path:
    p = tmp / "c.yaml"
    p.write_text(tiny_config(model, data, **over).to_yaml())
    return p


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for folders): equal trees are untouched."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def old_style_run(folder: Path, model: Path, data: Path) -> Path:
    """A run as lorafit wrote it before the marker file existed: config.yaml + labels.json (+ files)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(tiny_config(model, data).to_yaml())
    (folder / "labels.json").write_text('["0", "1", "2", "3"]')
    (folder / "eval.json").write_text('{"old": true}')
    return folder


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    name = "adapter/adapter_model.safetensors"
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert metrics(a) == metrics(b)
    ea, eb = json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text())
    assert ea["validation"]["loss"] == eb["validation"]["loss"] and ea["best_step"] == eb["best_step"]


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- defect 1: --overwrite


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_roberta, synth_csv, tmp_path, capsys):
    """The user's own folder (not a run) survives --overwrite untouched."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    (precious / "data").mkdir()
    (precious / "data" / "train.csv").write_text("text,label\n")
    before = tree(precious)
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    assert main(["train", "--config", str(cfg), "--out", str(precious), "--overwrite"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "not a lorafit run directory" in line and "--overwrite" in line, line
    assert tree(precious) == before


def test_a_folder_that_is_not_a_run_is_not_offered_overwrite(tiny_roberta, synth_csv, tmp_path, capsys):
    """Without --overwrite, the refusal of a non-run folder does not suggest the flag that would refuse it too."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    assert main(["train", "--config", str(cfg), "--out", str(mine)]) == 2
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {mine}: folder exists and is not a lorafit run directory (no .lorafit-run, no config.yaml + "
        "labels.json); choose another --out (--overwrite replaces only a run)")
    run = old_style_run(tmp_path / "run", tiny_roberta, synth_csv)
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    assert "run directory already exists; pass --overwrite to replace it" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("where", [".", "..", "home"])
def test_overwrite_refuses_the_working_directory_its_parents_and_home(where, tiny_roberta, synth_csv, tmp_path,
                                                                      monkeypatch, capsys):
    """Even when it looks like a run, `--out . --overwrite` (or .., or ~) deletes nothing."""
    work = old_style_run(tmp_path / "work", tiny_roberta, synth_csv)
    (work / "train.csv").write_text("text,label\n")  # the user's training data next to it
    (work / "sub").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(work if where == "home" else elsewhere))
    monkeypatch.chdir({".": work, "..": work / "sub", "home": elsewhere}[where])
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    out = {".": ".", "..": "..", "home": str(work)}[where]
    before = tree(tmp_path)
    assert main(["train", "--config", str(cfg), "--out", out, "--overwrite"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert {".": "the current directory", "..": "a parent of the current directory",
            "home": "the home directory"}[where] in line, line
    assert tree(tmp_path) == before


def test_overwrite_refuses_a_mount_point(tiny_roberta, synth_csv, tmp_path, monkeypatch, capsys):
    run = old_style_run(tmp_path / "mnt", tiny_roberta, synth_csv)
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == run.resolve() or real(p))
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    before = tree(run)
    assert main(["train", "--config", str(cfg), "--out", str(run), "--overwrite"]) == 2
    assert "a mount point" in one_error_line(capsys.readouterr().err)
    assert tree(run) == before


def test_overwrite_replaces_a_run_old_style_and_new(tiny_roberta, synth_csv, tmp_path, capsys):
    """A run written before the marker existed (config.yaml + labels.json) is still a run; the new
    run carries the marker, and is itself replaced by a second --overwrite."""
    run = old_style_run(tmp_path / "run", tiny_roberta, synth_csv)
    (run / "notes.txt").write_text("an earlier run")
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2, data__limit=100)
    argv = ["train", "--config", str(cfg), "--out", str(run), "--overwrite"]
    assert main(argv) == 0
    assert not (run / "notes.txt").exists() and (run / ".lorafit-run").is_file()
    assert "old" not in json.loads((run / "eval.json").read_text())
    first = (run / "eval.json").read_bytes()
    (run / "config.yaml").unlink()  # the marker alone says it is a run
    assert main(argv) == 0
    assert (run / "eval.json").read_bytes() == first  # same config, same seed: the same run again
    assert not any(p.name.startswith(".run.") for p in tmp_path.iterdir())  # the replaced run is gone


def test_overwrite_keeps_the_old_run_when_the_new_setup_fails(tiny_roberta, synth_csv, tmp_path, monkeypatch, capsys):
    """Setup fails after the new run's header was written (here: the prefix cache): the run that
    was to be replaced is back, byte for byte."""
    from lorafit.train import switches

    run = old_style_run(tmp_path / "run", tiny_roberta, synth_csv)
    (run / "resume").mkdir()  # a run stopped mid-training is a run too
    (run / "resume" / "LATEST").write_text("step-0000003-e0-b3\n")
    before = tree(run)
    calls = []

    def broken(self):
        calls.append(sorted(p.name for p in self.run_dir.iterdir()))
        raise LorafitError("speed.cache_prefix: simulated failure")

    monkeypatch.setattr(switches, "prefix_cache", broken)
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    assert main(["train", "--config", str(cfg), "--out", str(run), "--overwrite"]) == 2
    assert "simulated failure" in capsys.readouterr().err
    assert "params.txt" in calls[0] and "resume" not in calls[0]  # it had got as far as the new header
    assert tree(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]  # nothing left beside it


def test_failure_in_an_existing_empty_out_folder_leaves_it_empty(tiny_roberta, synth_csv, tmp_path, monkeypatch, capsys):
    from lorafit.train import switches

    def broken(self):
        raise LorafitError("speed.cache_prefix: simulated failure")

    monkeypatch.setattr(switches, "prefix_cache", broken)
    run = tmp_path / "run"
    run.mkdir()
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    assert run.is_dir() and list(run.iterdir()) == []


def test_seeds_overwrite_refuses_a_seed_folder_that_is_not_a_run_before_training(tiny_roberta, synth_csv, tmp_path,
                                                                               capsys):
    """--seeds: OUT is a folder of seed-N runs, not a run; --overwrite replaces each OUT/seed-N that
    is a run and refuses, before the first seed trains, one that is not."""
    out = tmp_path / "out"
    (out / "seed-1").mkdir(parents=True)
    (out / "seed-1" / "mine.txt").write_text("not a run")
    (out / "other.txt").write_text("next to the seeds")
    before = tree(out)
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    assert main(["train", "--config", str(cfg), "--seeds", "0,1", "--out", str(out), "--overwrite"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "seed-1: not a lorafit run directory" in line, line
    assert tree(out) == before  # seed-0 was not trained


# ---------------------------------------------------------------- defect 6: SIGINT / SIGTERM


class Stop(Exception):
    pass


@pytest.mark.slow
def test_sigterm_mid_epoch_keeps_a_checkpoint_that_resumes_exactly(tiny_roberta, synth_csv, tmp_path, monkeypatch,
                                                                   capsys):
    """Default checkpoint_every (null): SIGTERM at step 3 of 10 writes a mid-epoch checkpoint,
    exits 130 with the resume command, and --resume ends exactly like an uninterrupted run."""
    from lorafit.train.recipe import Recipe
    from lorafit.train.run import run_training

    over = dict(data__limit=200, adapter__dropout=0.1, train__log_every=1)
    cfg_path = write_config(tmp_path, tiny_roberta, synth_csv, **over)
    run_training(tiny_config(tiny_roberta, synth_csv, **over), tmp_path / "ref", log=lambda *a: None)

    real = Recipe._after_step

    def signalled(self, step):
        real(self, step)
        if step == 3 and not self.resume:
            os.kill(os.getpid(), signal.SIGTERM)

    def refuse(*a):  # without lorafit's own handler SIGTERM would end pytest itself
        raise Stop("SIGTERM reached the test's handler: lorafit installed none")

    monkeypatch.setattr(Recipe, "_after_step", signalled)
    previous = signal.signal(signal.SIGTERM, refuse)
    try:
        run = tmp_path / "run"
        code = main(["train", "--config", str(cfg_path), "--out", str(run)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 130, err
        assert err[-1] == f"interrupted at step 3; resume with: lorafit train --resume {run}", err
        assert signal.getsignal(signal.SIGTERM) is refuse  # put back afterwards
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert checkpoint.latest(run).name == "step-0000003-e0-b3" and not (run / "eval.json").exists()
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(tmp_path / "ref", run)


def first_logged_step(proc, run: Path, timeout: float) -> bool:
    """Wait (bounded) until the training process has logged its first step; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        m = run / "metrics.jsonl"
        if m.is_file() and '"type": "train"' in m.read_text():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
def test_sigint_in_a_real_process_then_resume_matches_uninterrupted(tiny_roberta, synth_csv, tmp_path):
    """`lorafit train` in a subprocess gets SIGINT after its first logged step: exit 130 with one
    line naming the step and the resume command; `--resume` then gives the uninterrupted run."""
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, data__limit=400, adapter__dropout=0.1, train__log_every=1,
                       train__deterministic="true", train__num_workers=0)
    ref, run = tmp_path / "ref", tmp_path / "run"
    cmd = [sys.executable, "-m", "lorafit", "train", "--config", str(cfg)]
    done = subprocess.run([*cmd, "--out", str(ref)], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = subprocess.Popen([*cmd, "--out", str(run)], env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        if first_logged_step(proc, run, 300):
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and last.endswith(f"; resume with: lorafit train --resume {run}"), last
    step = int(last.split()[3].rstrip(";"))
    assert int(checkpoint.latest(run).name.split("-")[1]) == step and not (run / "eval.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "lorafit", "train", "--resume", str(run)], env=cli_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(ref, run)


def test_interrupt_during_setup_says_nothing_can_be_resumed(tiny_roberta, synth_csv, tmp_path, monkeypatch, capsys):
    from lorafit.train import switches

    def ctrl_c(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs here
        raise AssertionError("SIGINT did not interrupt")

    monkeypatch.setattr(switches, "prefix_cache", ctrl_c)
    run = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("interrupted during setup, before training started: nothing to resume and nothing kept; "
                       "to start over, run the same command again"), err
    assert not run.exists()


# ---------------------------------------------------------------- defect 7: output-side I/O errors


def test_out_under_a_file_is_refused_before_the_model_loads(tiny_roberta, synth_csv, tmp_path, monkeypatch, capsys):
    import lorafit.train.recipe as lt

    (tmp_path / "file.txt").write_text("not a folder")
    monkeypatch.setattr(lt, "build_model", lambda *a, **k: pytest.fail("the model loaded"))
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    out = tmp_path / "file.txt" / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {out}: {tmp_path / 'file.txt'} is a file, not a folder; choose another --out", line


def test_out_not_writable_is_refused_before_the_model_loads(tiny_roberta, synth_csv, tmp_path, monkeypatch, capsys):
    """Read-only --out parent (as root chmod does not stop writes, so the OS refusal is simulated
    where the probe file is created)."""
    import tempfile

    import lorafit.train.recipe as lt

    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def refusing(*a, dir=None, **k):
        if dir is not None and Path(dir) == ro:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(Path(dir) / ".probe"))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", refusing)
    monkeypatch.setattr(lt, "build_model", lambda *a, **k: pytest.fail("the model loaded"))
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    assert main(["train", "--config", str(cfg), "--out", str(ro / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == (f"error: {ro / 'run'}: cannot write in {ro} (Read-only file system); choose another --out"), line
    assert list(ro.iterdir()) == []


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_mounts = pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -m` (mount namespaces) for a real tmpfs")


@needs_mounts
@pytest.mark.slow
def test_real_read_only_out_is_one_line_before_the_model_loads(tiny_roberta, synth_csv, tmp_path):
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, train__max_steps=2)
    mnt = tmp_path / "ro"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o ro,size=1m tmpfs {mnt} && "
              f"exec {sys.executable} -m lorafit train --config {cfg} --out {mnt / 'run'}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=cli_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr == f"error: {mnt / 'run'}: cannot write in {mnt} (Read-only file system); choose another --out\n"
    assert "optimizer steps" not in proc.stdout  # stopped before the data and the model


@needs_mounts
def test_real_full_disk_errors_of_the_writers_are_recognised(tmp_path):
    """torch and safetensors report a full disk without an errno (RuntimeError, SafetensorError):
    io_failure still names the file or folder and 'No space left on device'."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    probe = f"""
import os, torch
from pathlib import Path
from lorafit.io import save_tensors_durably
from lorafit.io import io_failure
d = Path({str(mnt)!r})
with open(d / "filler", "wb") as f:
    try:
        f.write(b"x" * (1 << 20))
    except OSError:
        pass
for name, write in (("safetensors", lambda: save_tensors_durably({{"w": torch.zeros(50000)}}, d / "w.safetensors")),
                    ("torch", lambda: torch.save({{"w": torch.zeros(50000)}}, open(d / "o.pt", "wb")))):
    try:
        write()
        print(name, "wrote")
    except Exception as e:
        print(name, io_failure(e, d))
print("left", sorted(os.listdir(d)))
"""
    script = f"mount -t tmpfs -o size=256k tmpfs {mnt} && exec {sys.executable} -c \"$PROBE\""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env={**cli_env(), "PROBE": probe},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("safetensors ") and lines[0].endswith(": No space left on device"), lines
    assert lines[1] == f"torch {mnt}: No space left on device", lines
    assert ".w.safetensors.tmp" not in lines[2], lines  # the partial temporary file is gone


@pytest.mark.slow
def test_full_disk_while_saving_weights_leaves_a_resumable_run(tiny_roberta, synth_csv, tmp_path, monkeypatch, capsys):
    """ENOSPC while the adapter is written: one line naming the file, no half-written finished run
    (no adapter/, no eval.json, no temporary folder), resume/ kept; --resume then finishes it."""
    import peft

    over = dict(data__limit=100, train__max_steps=3)
    cfg = write_config(tmp_path, tiny_roberta, synth_csv, **over)
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(ref)]) == 0
    real = peft.PeftModel.save_pretrained

    def full_disk(self, folder, *a, **k):
        real(self, folder, *a, **k)
        target = Path(folder) / "adapter_model.safetensors"
        target.write_bytes(target.read_bytes()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(peft.PeftModel, "save_pretrained", full_disk)
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    err = capsys.readouterr().err  # after the progress bars of training
    assert "Traceback" not in err and err.endswith("\n") and err.count("error: ") == 1, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {run}/.adapter.tmp/adapter_model.safetensors: No space left on device; "), line
    assert line.endswith(f"the last checkpoint (step 3) is kept in {run / 'resume'}: free space, then run: "
                         f"lorafit train --resume {run}"), line
    names = {p.name for p in run.iterdir()}
    assert not names & {"adapter", ".adapter.tmp", "eval.json", "report.md", "curves.png", "confusion.png"}, names
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(ref, run)


def test_oserror_reaching_main_is_one_line_and_debug_shows_it(monkeypatch, capsys):
    import lorafit.cli as cli

    def failing(args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/data/disk")

    monkeypatch.setitem(cli.COMMANDS, "budget", failing)
    assert main(["budget", "--config", "x.yaml"]) == 2
    assert one_error_line(capsys.readouterr().err) == "error: /data/disk: Input/output error"
    with pytest.raises(OSError):
        main(["--debug", "budget", "--config", "x.yaml"])


@pytest.mark.slow
def test_budget_into_a_closed_pipe_exits_quietly(tiny_roberta, synth_csv, tmp_path):
    """`lorafit budget ... | head -1`: the reader has gone; no BrokenPipeError traceback."""
    cfg = write_config(tmp_path, tiny_roberta, synth_csv)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written: every write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "lorafit", "budget", "--config", str(cfg)], env=cli_env(),
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(w)
    assert proc.stderr == "" and proc.returncode == 141, proc.stderr[-2000:]


# ---------------------------------------------------------------- defect 12: permissions


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_follows_the_umask(umask, tiny_roberta, synth_csv, tmp_path):
    """A finished run, a stopped run's resume/ and a predictions CSV: files 0666 & ~umask,
    folders 0777 & ~umask, as any other tool writes them."""
    from lorafit.predict import predict_file
    from lorafit.train.recipe import Recipe
    from lorafit.train.run import run_training

    old = os.umask(umask)
    try:
        run, stopped = tmp_path / "run", tmp_path / "stopped"
        run_training(tiny_config(tiny_roberta, synth_csv, data__limit=100, train__max_steps=2), run, log=lambda *a: None)
        Recipe(tiny_config(tiny_roberta, synth_csv, data__limit=100, train__max_steps=4, train__checkpoint_every=1,
                           train__eval_every=1), stopped, log=lambda *a: None).setup().train()
        (tmp_path / "in.csv").write_text("text\ngoal match\nstocks profit\n")
        predict_file(str(run), str(tmp_path / "in.csv"), str(tmp_path / "pred.csv"))
    finally:
        os.umask(old)
    paths = [p for d in (run, stopped) for p in d.rglob("*")] + [tmp_path / "pred.csv"]
    assert any(p.name == "adapter_model.safetensors" for p in paths) and (stopped / "resume" / "LATEST").is_file()
    assert any(p.name == "tensors.safetensors" for p in paths) and (stopped / "checkpoints").is_dir()
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (0o777 if p.is_dir() else 0o666) & ~umask}
    assert not wrong, wrong


def _children(pid: int) -> list[int]:
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat_file.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the worker processes in /proc")
@pytest.mark.slow
def test_sigterm_to_one_ddp_process_stops_all_at_one_step_and_resumes(tiny_roberta, synth_csv, tmp_path):
    """Two CPU processes; SIGTERM reaches only one of them. Both agree to stop at the next log step
    (a checkpoint is collective), write one checkpoint there, and --resume on two processes finishes."""
    import socket

    def port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    cfg = write_config(tmp_path, tiny_roberta, synth_csv, data__limit=400, train__log_every=2, train__epochs=3)
    run = tmp_path / "run"

    def launch(*args):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port()),
                "-m", "lorafit", "train", *map(str, args)]

    env = {**cli_env(), "ACCELERATE_USE_CPU": "1"}  # else accelerate runs each CPU process on its own
    proc = subprocess.Popen(launch("--config", cfg, "--out", run), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        if first_logged_step(proc, run, 600):
            workers = sorted(p for c in _children(proc.pid) for p in [c, *_children(c)]
                             if "lorafit" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"))
            os.kill(workers[-1], signal.SIGTERM)  # one process only
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "interrupted at step " in err, err[-3000:]
    step = int(checkpoint.latest(run).name.split("-")[1])
    assert step % 2 == 0 and f"interrupted at step {step}; resume with: lorafit train --resume {run}" in err, err[-3000:]
    assert not (run / "eval.json").exists()
    resumed = subprocess.run(launch("--resume", run), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stdout and (run / "eval.json").is_file()
    assert "x2, precision" in resumed.stdout  # two processes indeed
