"""With the hub reachable as far as lorafit can tell (no HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, no
proxy, no CI markers that make libraries skip their telemetry), commands on local files open no
connection but loopback: an audit hook in the process records every name lookup and connect.
README, Network: the hub is contacted only for hub ids the user named."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Runs each argv through lorafit's main in one process; writes one line per non-loopback lookup or
# connect (event, address, the innermost frames) to LOG. sys.addaudithook sees sockets opened by any
# library, in any thread, before the connection is tried: nothing has to succeed to be recorded.
AUDIT = r'''
import ipaddress, json, sys, traceback
LOG = sys.argv[1]

def local(host):
    if host in (None, "", "localhost") or isinstance(host, (bytes, int)):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False

def hook(event, args):
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None  # AF_UNIX: a path
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        address = host = args[0]
    elif event in ("socket.sendto", "socket.sendmsg"):
        address = args[-1]
        host = address[0] if isinstance(address, tuple) else None
    else:
        return
    if not local(host):
        plumbing = ("socket.py", "ssl.py", "http/client.py", "httpx", "httpcore", "urllib3", "requests/", "<frozen")
        callers = [f for f in traceback.extract_stack()[:-1][::-1] if not any(p in f.filename for p in plumbing)]
        where = " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in callers[:6])
        with open(LOG, "a") as f:
            f.write(f"{event} {address!r}: {where}\n")

sys.addaudithook(hook)
from lorafit.cli import main
for argv in json.loads(sys.argv[2]):
    code = main(argv)
    if code:
        sys.exit(code)
'''

# what lorafit itself writes to stderr on these commands: progress lines and its own notes
LORAFIT_LINE = re.compile(r"[\w ()+-]+: [\d,]+/[\d,]+ \w+ \(\d+%\)|wrote \d+ predictions to |check: |exported ")


def clean_env(tmp: Path) -> dict:
    """Nothing from this shell that could turn a library's network use off (offline flags, telemetry
    switches, PYTEST_CURRENT_TEST, CI) or route it elsewhere (proxies): only paths."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp / "home"), "HF_HOME": str(tmp / "hf"), "PYTHONPATH": SRC,
            "LORAFIT_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_local_commands_contact_nothing_but_loopback(tmp_path, tiny_roberta, synth_csv):
    config_only = tmp_path / "config-only"  # budget reads config.json alone
    config_only.mkdir()
    shutil.copy(tiny_roberta / "config.json", config_only)
    (tmp_path / "budget.yaml").write_text(f"model: {{name: {config_only}}}\n")
    cfg = tiny_config(tiny_roberta, synth_csv, train__max_steps=2, data__limit=60,
                      train__report_to='["tensorboard", "mlflow"]')  # the trackers' packages load too
    (tmp_path / "train.yaml").write_text(cfg.to_yaml())
    (tmp_path / "in.csv").write_text("text\ngoal match league\nstocks profit bank\n")
    run, log = tmp_path / "run", tmp_path / "network.log"
    commands = [["budget", "--config", "budget.yaml", "--num-labels", "4"],
                ["train", "--config", "train.yaml", "--out", "run"],
                ["predict", "run", "--input", "in.csv", "--output", "out.csv"],
                ["evaluate", "run", "--data", str(synth_csv)],
                ["export", "run", "--format", "merged", "--out", "merged"]]
    proc = subprocess.run([sys.executable, "-c", AUDIT, str(log), json.dumps(commands)], cwd=tmp_path,
                          env=clean_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "mlflow.db").is_file() and (tmp_path / "out.csv").is_file() and (tmp_path / "merged" / "config.json").is_file()
    assert not log.exists(), log.read_text()
    others = [line for line in proc.stderr.splitlines() if not LORAFIT_LINE.match(line)]
    assert others == [], others  # a library's notice or bar, which the run log's reader would take for lorafit's
