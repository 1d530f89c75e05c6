"""ServeSettings and ExportSettings: the library's entry points to `serve` and `export`, checked when
built with the command's one-line messages; the CLI's defaults are theirs; a server started from Python."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import httpx
import pytest

from conftest import synthetic_rows, train_briefly
from lorafit.errors import LorafitError


def _subparser(name):
    from lorafit.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices[name]


@pytest.mark.parametrize("kw,message", [
    (dict(port=70000), "--port: 70000 is above 65535"),
    (dict(port=-1), "--port: -1 is below 0"),
    (dict(max_batch=0), "--max-batch: 0 is below 1"),
    (dict(streams=-1), "--streams: -1 is below 0"),
    (dict(queue="8"), "--queue: '8' is not a whole number"),
    (dict(grace=-1.0), "--max-wait-ms / --grace: give a number >= 0"),
    (dict(log_level="loud"), "--log-level: unknown level 'loud'"),
    (dict(host="0.0.0.0"), "--host: 0.0.0.0 is reachable from other machines; give --api-key-file FILE"),
    (dict(runs=[]), "serve: give at least one RUN_DIR"),
])
def test_serve_settings_refuse_bad_values_in_one_line(kw, message):
    from lorafit.serve import ServeSettings

    with pytest.raises(LorafitError) as e:
        ServeSettings(**{"runs": ["r"], **kw})
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_serve_settings_accept_what_the_command_accepts():
    from lorafit.serve import ServeSettings

    s = ServeSettings(runs="a=runs/x", host="0.0.0.0", insecure=True, port=0)
    assert s.runs == ("a=runs/x",) and s.host == "0.0.0.0"
    assert ServeSettings(runs=["r"], host="::1").host == "::1"  # loopback: no key needed
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1


@pytest.mark.parametrize("command,settings", [("serve", "lorafit.serve.settings"), ("export", "lorafit.export.settings")])
def test_the_commands_defaults_are_the_settings_defaults(command, settings):
    """Every option of the command that is a settings field has that field's default: the two cannot drift."""
    import importlib

    defaults = importlib.import_module(settings).defaults()
    options = {a.dest: a.default for a in _subparser(command)._actions if a.option_strings}
    shared = {k: v for k, v in options.items() if k in defaults}
    assert len(shared) >= (12 if command == "serve" else 6), shared
    assert shared == {k: defaults[k] for k in shared}
    if command == "serve":  # every serve option is a field, so serve() gets all of them
        assert set(options) - {"help"} <= set(defaults)


@pytest.mark.parametrize("kw,message", [
    (dict(format="tflite"), "--format: unknown format 'tflite'; use onnx"),
    (dict(quantize="int4"), "--quantize: unknown scheme 'int4'; use int8"),
    (dict(format="merged", quantize="int8"), "--quantize: int8 quantisation is for --format onnx"),
    (dict(quantize="int8", min_agreement=150), "--min-agreement: 150 is a percentage of labels"),
    (dict(batch_size=0), "batch_size: 0 is not a whole number >= 1"),
])
def test_export_settings_refuse_bad_values_in_one_line(kw, message, tmp_path):
    from lorafit.export import ExportSettings

    with pytest.raises(LorafitError) as e:
        ExportSettings(**{"run_dir": tmp_path, "format": "onnx", "out": tmp_path / "out", **kw})
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


def test_export_run_takes_settings(tmp_path):
    from lorafit.export import ExportSettings, export_run

    s = ExportSettings(str(tmp_path), "onnx", str(tmp_path / "out"), text_columns="body")
    assert s.run_dir == tmp_path and s.out == tmp_path / "out" and s.text_columns == ("body",)
    with pytest.raises(TypeError, match="ExportSettings"):
        export_run(str(tmp_path))
    with pytest.raises(LorafitError, match="not a finished lorafit run"):  # the run is read after the settings
        export_run(s, log=lambda *a: None)


@pytest.mark.slow
def test_a_server_started_from_python_answers_and_stops_on_sigterm(tiny_roberta, tmp_path):
    from test_serve import SRC, Server

    data = tmp_path / "four.csv"
    synthetic_rows(60, seed=3).to_csv(data, index=False)
    train_briefly(tiny_roberta, data, tmp_path / "topics", train__max_steps=1, budget__max_trainable=200000)
    code = ("from lorafit.serve import serve, ServeSettings; "
            f"raise SystemExit(serve(ServeSettings(runs=['t={tmp_path / 'topics'}'], port=0, max_wait_ms=1.0)))")

    class FromPython(Server):
        def __init__(self):  # Server's start-line reader and stop, on `python -c` instead of the command
            env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
            self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, env=env)
            self.log, self.timeout, self.url = [], 120, None

    s = FromPython()
    try:
        s.ready()
        r = httpx.post(f"{s.url}/v1/models/t/predict", json={"texts": ["Stocks rallied."]}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["labels"]) == 1
    finally:
        rc = s.stop()
    assert rc == 0, "".join(s.log) + s.proc.stderr.read()
