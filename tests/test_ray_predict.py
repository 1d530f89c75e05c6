"""lorafit predict on Ray (README, Predict on a Ray cluster): a real local Ray cluster on loopback with 2 CPUs,
started by `lorafit predict --ray local` in a real subprocess, writes the file local predict writes, byte for
byte; the Python entry point adds the same labels to a Ray Dataset; without Ray, --ray is one line and plain
predict never imports Ray. Every Ray process a test started is gone when it ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, synthetic_rows

SRC = str(Path(__file__).resolve().parents[1] / "src")
RAY_PROCESSES = ("raylet", "gcs_server")
TIMEOUT = 300  # a Ray cluster starts in ~10 s on an idle 2-core machine; the whole command well under this
ENV = {"RAY_USAGE_STATS_ENABLED": "0"}


def _ray_pids() -> set[int]:
    """Ray's daemons started by this test's processes: they inherit the PYTEST_CURRENT_TEST that pytest sets
    for the test (another Ray cluster on the machine, e.g. a benchmark's, is not the test's)."""
    mine = f"PYTEST_CURRENT_TEST={os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]}".encode()
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() in RAY_PROCESSES and mine in (p / "environ").read_bytes():
                    pids.add(int(p.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def no_ray_left():
    """Fails the test if a Ray daemon it started is still running 20 s after it ended."""
    yield
    deadline = time.monotonic() + 20
    while _ray_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_pids(), "Ray processes left running"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A CSV with an ID column (IDs not in row order), one without, and a Parquet file; more rows than a chunk."""
    d = tmp_path_factory.mktemp("ray_inputs")
    df = synthetic_rows(700, seed=5)[["text"]]
    df.loc[3, "text"] = "   "  # an empty text: an empty label, as local predict writes it
    with_id = df.assign(ID=[f"doc-{(i * 37) % 1000:04d}" for i in range(len(df))])[["ID", "text"]]
    with_id.to_csv(d / "with_id.csv", index=False)
    df.to_csv(d / "no_id.csv", index=False)
    with_id.to_parquet(d / "with_id.parquet", index=False)
    lines = (d / "with_id.csv").read_text().splitlines(keepends=True)
    lines[300] = "doc-extra,one field,too many\n"  # a malformed row
    lines[500] = lines[10]  # a duplicate ID
    (d / "bad_rows.csv").write_text("".join(lines))
    return d


def _local(run_dir, src: Path, out: Path, *flags) -> None:
    """Local predict through the CLI's entry point in this process (a new interpreter would only add its imports):
    the file the Ray runs are compared with."""
    from lorafit.cli import main

    assert main(["predict", str(run_dir), "--input", str(src), "--output", str(out), *map(str, flags)]) == 0


def _local_and_ray(run_dir, src: Path, out: Path, *flags, rows: int = 700) -> tuple[bytes, bytes]:
    local, on_ray = out / f"{src.name}.local.csv", out / f"{src.name}.ray.csv"
    _local(run_dir, src, local, "--chunk-rows", 256, *flags)
    r = run_cli("predict", run_dir, "--input", src, "--output", on_ray, "--chunk-rows", 256, "--ray", "local", *flags,
                env=ENV, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    # quiet: lorafit's own lines only (progress, notes, the count), nothing Ray logged
    assert r.stderr.splitlines()[-1].startswith(f"wrote {rows} predictions"), r.stderr
    assert all(line.startswith(("predicting: ", "note: ", "wrote ")) for line in r.stderr.splitlines()), r.stderr
    return local.read_bytes(), on_ray.read_bytes()


@pytest.mark.slow
def test_ray_local_cluster_writes_the_local_file(trained_run, inputs, tmp_path, no_ray_left):
    """Two formats through the cluster's read task (Parquet, CSV), an ID column, logits and probabilities, bad
    rows skipped with their side file; a CSV without an ID column: test_local_cluster_contacts_nothing_but_loopback.
    (Each `--ray local` starts a cluster: the cases share the two runs rather than one run each.)"""
    run_dir = trained_run[0]
    local, on_ray = _local_and_ray(run_dir, inputs / "with_id.parquet", tmp_path, "--with-logits", "--probs")
    assert local == on_ray
    assert local.splitlines()[1].startswith(b"doc-0000,")  # the ID column, in input order
    local, on_ray = _local_and_ray(run_dir, inputs / "bad_rows.csv", tmp_path, "--on-bad-row", "skip", rows=698)
    assert local == on_ray
    skipped = [(tmp_path / f"bad_rows.csv.{how}.csv.bad_rows.jsonl").read_bytes() for how in ("local", "ray")]
    assert skipped[0] == skipped[1] and skipped[0].count(b"\n") == 2


@pytest.mark.slow
def test_python_entry_point_on_a_ray_dataset(trained_run, inputs, tmp_path, no_ray_left):
    run_dir = trained_run[0]
    local = tmp_path / "local.csv"
    _local(run_dir, inputs / "with_id.csv", local, "--probs")
    script = textwrap.dedent(f"""
        import pandas as pd
        from lorafit.bulk import PredictOptions
        from lorafit.bulk.cluster import cluster
        from lorafit.bulk.on_ray import predict_dataset

        with cluster("local", num_cpus=2) as ray:
            ds = ray.data.from_pandas(pd.read_csv({str(inputs / 'with_id.csv')!r}, keep_default_na=False))
            out = predict_dataset(ds, [{str(run_dir)!r}], PredictOptions(probs=True), batch_size=200)
            out.to_pandas().to_csv({str(tmp_path / 'ray.csv')!r}, index=False, float_format="%.7g")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                       env={**os.environ, **ENV, "PYTHONPATH": SRC})
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(tmp_path / "ray.csv", keep_default_na=False)
    want = pd.read_csv(local, keep_default_na=False)
    assert list(got.columns) == ["ID", "text", *want.columns[1:]]  # the dataset's columns, then lorafit's
    assert got["ID"].tolist() == want["ID"].tolist()
    assert got["label"].tolist() == want["label"].tolist()
    # other batches than local predict's chunk (200 rows): the same probabilities to float rounding
    probs = [c for c in want.columns if c.startswith("prob_")]
    assert probs and np.allclose(got[probs].apply(pd.to_numeric, errors="coerce"),
                                 want[probs].apply(pd.to_numeric, errors="coerce"), atol=1e-5, equal_nan=True)


@pytest.mark.slow
def test_ctrl_c_stops_the_local_cluster(trained_run, inputs, tmp_path, no_ray_left):
    """SIGINT while the local cluster is up: lorafit stops it itself (no_ray_left) and says how to resume."""
    big = tmp_path / "big.csv"
    pd.concat([pd.read_csv(inputs / "no_id.csv")] * 40).to_csv(big, index=False)
    env = {**os.environ, **ENV, "PYTHONPATH": SRC}
    p = subprocess.Popen([sys.executable, "-m", "lorafit", "predict", str(trained_run[0]), "--input", str(big), "--output",
                          str(tmp_path / "out.csv"), "--chunk-rows", "256", "--ray", "local"],
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + TIMEOUT
        partial = tmp_path / "out.csv.partial"
        while time.monotonic() < deadline and p.poll() is None:  # until a chunk computed on the cluster is kept
            if partial.exists() and partial.read_bytes().count(b"\n") > 1:
                break
            time.sleep(0.2)
        assert p.poll() is None, "finished before it could be interrupted"
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=120)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    assert "--resume" in err.splitlines()[-1], err


def test_ray_missing_is_one_line(trained_run, inputs, tmp_path):
    """Ray not installed (an import of it fails, as Python's own `sys.modules[name] = None` makes it)."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ray"] = None
        from lorafit.cli import main
        sys.exit(main(["predict", {str(trained_run[0])!r}, "--input", {str(inputs / 'no_id.csv')!r},
                       "--output", {str(tmp_path / 'out.csv')!r}, "--ray", "local"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 2
    assert r.stderr.splitlines() == ["error: --ray needs Ray Data: pip install 'lorafit[ray]'"]
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_predict_without_ray_never_imports_it(trained_run, inputs, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from lorafit.cli import main
        code = main(["predict", {str(trained_run[0])!r}, "--input", {str(inputs / 'no_id.csv')!r},
                     "--output", {str(tmp_path / 'out.csv')!r}])
        sys.exit(code or ("ray" in sys.modules and 3))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": SRC})
    assert r.returncode == 0, r.stderr


def test_ray_address_checked(capsys, trained_run, inputs, tmp_path):
    from conftest import one_error

    err = one_error(capsys, ["predict", trained_run[0], "--input", inputs / "no_id.csv", "--output", tmp_path / "o.csv",
                             "--ray", "http://head"])
    assert "--ray" in err and "ray://" in err


@pytest.mark.slow
def test_local_cluster_contacts_nothing_but_loopback(trained_run, inputs, tmp_path, no_ray_left):
    """test_network's audit hook in the driver of `--ray local`, in an environment without Ray's usage-stats
    switch or any offline flag: every lookup and connect is loopback (the cluster listens there only)."""
    from test_network import AUDIT, clean_env

    log = tmp_path / "network.log"
    commands = [["predict", str(trained_run[0]), "--input", str(inputs / "no_id.csv"), "--output",
                 str(tmp_path / "out.csv"), "--ray", "local"]]
    proc = subprocess.run([sys.executable, "-c", AUDIT, str(log), json.dumps(commands)], cwd=tmp_path,
                          env=clean_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not log.exists(), log.read_text()
    # and it wrote local predict's file: a CSV without an ID column, the row index as ID, the empty text unlabelled
    _local(trained_run[0], inputs / "no_id.csv", tmp_path / "local.csv")
    written = (tmp_path / "out.csv").read_bytes()
    assert written == (tmp_path / "local.csv").read_bytes() and written.splitlines()[4] == b"3,"


def test_unreachable_head_is_one_line(capsys, trained_run, inputs, tmp_path):
    """Nothing listens at the address: one line at once (Ray would retry for minutes, logging as it goes),
    nothing written."""
    from conftest import one_error

    import socket

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = one_error(capsys, ["predict", trained_run[0], "--input", inputs / "no_id.csv", "--output", tmp_path / "o.csv",
                             "--ray", f"ray://127.0.0.1:{port}"])
    assert "cannot reach the cluster's head" in err
    assert not list(tmp_path.iterdir())
