"""lorafit export: ONNX graphs run by plain ONNX Runtime (every head, dynamic axes, int8) and merged
transformers folders loaded with neither peft nor lorafit, checked against lorafit's own logits."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_rows, tiny_config


class Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def run_cli(capsys):
    """`lorafit ...` in this process (a new interpreter per call costs 10+ s of imports on a busy machine)."""
    from lorafit.cli import main

    def call(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        return Result(code, capsys.readouterr().err)
    return call


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_roberta, tiny_bert):
    return {"roberta": tiny_roberta, "bert": tiny_bert}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models, synth_csv):
    """One short run per (encoder, head) pair; trained lazily, once."""
    from lorafit.train.recipe import Recipe

    root, made = tmp_path_factory.mktemp("export-runs"), {}

    def get(kind: str, head: str, **over):
        key = (kind, head, tuple(sorted(over.items())))
        if key not in made:
            cfg = tiny_config(models[kind], synth_csv, head__type=head, train__max_steps=4, data__limit=120,
                              optim__lr=2e-2, **over)
            run_dir = root / f"{kind}-{head}-{len(made)}"
            recipe = Recipe(cfg, run_dir, log=lambda *a: None).setup()
            recipe.train()
            recipe.finish()
            made[key] = run_dir
        return made[key]
    return get


TEXTS = ["Stocks rally as oil prices fall and the bank reports earnings.", "goal",
         "The coach said the striker will miss the cup final today.", "nasa robot software",
         "Minister and rebels meet at the border summit for a treaty vote in the capital city.", "a", "chip data"]


def lorafit_logits(run_dir, texts):
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained

    model, tok, cfg, _ = load_trained(run_dir, merge=True)
    return predict_logits(model, tok, texts, cfg.data.max_length)


def plain_ort(folder, texts, max_length):
    """What a user writes: tokenizer + onnxruntime, one padded batch (not lorafit's length-sorted ones)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return sess.run(["logits"], {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]


@pytest.mark.parametrize("kind,head", [("roberta", "mean_linear"), ("roberta", "cls_linear"), ("roberta", "model"),
                                       ("bert", "mean_linear"), ("bert", "cls_linear"), ("bert", "lora_dense")])
def test_onnx_every_head_matches_lorafit(runs, kind, head, tmp_path):
    from lorafit.export import ExportSettings, export_run

    run_dir = runs(kind, head)
    out = tmp_path / "onnx"
    manifest = export_run(ExportSettings(run_dir, "onnx", out), log=lambda *a: None)
    assert manifest["check"]["labels_equal"] == manifest["check"]["n"] > 0
    assert json.loads((out / "labels.json").read_text()) == json.loads((run_dir / "labels.json").read_text())
    ref = lorafit_logits(run_dir, TEXTS)
    # dynamic axes: a batch of 7 padded to its longest text, one text alone, two short ones
    np.testing.assert_allclose(plain_ort(out, TEXTS, 32), ref, atol=1e-4)
    np.testing.assert_allclose(plain_ort(out, TEXTS[1:2], 32), ref[1:2], atol=1e-4)
    np.testing.assert_allclose(plain_ort(out, [TEXTS[3], TEXTS[6]], 32), ref[[3, 6]], atol=1e-4)
    cfg = json.loads((out / "config.json").read_text())
    assert [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))] == manifest["labels"]
    # what a user needs beside the graph: the task, how texts were cut, predict --probs' temperature
    assert manifest["task"] == "single_label" and manifest["truncation"] == "head"
    assert json.loads((out / "calibration.json").read_text()) == json.loads((run_dir / "calibration.json").read_text())


def test_onnx_full_finetune_and_check_file(runs, run_cli, tmp_path):
    """adapter.method full (model/ instead of adapter/) exports too; --check FILE replaces the validation set."""
    run_dir = runs("roberta", "model", adapter__method="full")
    check = tmp_path / "check.csv"
    synthetic_rows(37, seed=9)[["text"]].to_csv(check, index=False)
    r = run_cli("export", run_dir, "--format", "onnx", "--out", tmp_path / "x", "--check", check)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "x" / "export.json").read_text())
    assert manifest["check"]["n"] == 37 and manifest["check"]["texts"] == str(check)
    texts = pd.read_csv(check).text.tolist()
    np.testing.assert_allclose(plain_ort(tmp_path / "x", texts, 32), lorafit_logits(run_dir, texts), atol=1e-4)


def test_int8_reports_agreement_with_fp32(runs, run_cli, tmp_path):
    import onnxruntime as ort
    from transformers import AutoTokenizer

    run_dir = runs("roberta", "mean_linear")
    out = tmp_path / "q"
    r = run_cli("export", run_dir, "--format", "onnx", "--out", out, "--quantize", "int8")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    q = manifest["int8"]
    assert f"labels agree on {q['labels_equal']}/{q['n']}" in r.stderr
    assert q["label_agreement"] * 100 >= 99.5
    # really quantised: integer matrix products in the graph, and still close to fp32
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "MatMulInteger" not in {
        n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    sess = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    enc = AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, return_tensors="np")
    logits = sess.run(["logits"], {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    assert logits.shape == (len(TEXTS), 4) and np.abs(logits - plain_ort(out, TEXTS, 32)).max() < 0.1


def test_int8_threshold_refuses_below_it():
    from lorafit.errors import LorafitError
    from lorafit.export.check import int8_verdict

    fp32 = np.array([[1.0, 0.0]] * 199 + [[0.51, 0.49]])
    flipped = fp32.copy()
    flipped[-1] = [0.49, 0.51]  # one label of 200 flips: 99.5% agree
    assert int8_verdict(fp32, flipped, 99.5).labels_equal == 199
    with pytest.raises(LorafitError, match=r"99\.50% of 200 check texts.*below --min-agreement 99\.6%"):
        int8_verdict(fp32, flipped, 99.6)


BLOCKED = """
import sys, json
import numpy as np
sys.modules["peft"] = None      # import peft -> ImportError: the folder must load without it
sys.modules["lorafit"] = None
from transformers import AutoModelForSequenceClassification, AutoTokenizer
import torch
texts, out = json.loads(sys.argv[1]), []
for folder in sys.argv[2:]:
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        logits = model(**enc).logits.numpy()
    out.append({"logits": logits.tolist(), "labels": [model.config.id2label[i] for i in logits.argmax(-1)]})
print(json.dumps(out))
"""


@pytest.mark.slow
def test_merged_loads_without_peft_or_lorafit(runs, run_cli, tmp_path):
    """head.type model (RoBERTa) and lora_dense (BERT: LoRA on the pooler's dense layer, merged too)."""
    run_dirs = [runs("roberta", "model"), runs("bert", "lora_dense")]
    outs = [tmp_path / f"merged-{i}" for i in range(len(run_dirs))]
    for run_dir, out in zip(run_dirs, outs):
        r = run_cli("export", run_dir, "--format", "merged", "--out", out)
        assert r.returncode == 0, r.stderr
        assert (out / "model.safetensors").is_file() and not list(out.glob("adapter_*"))
    p = subprocess.run([sys.executable, "-c", BLOCKED, json.dumps(TEXTS), *map(str, outs)], capture_output=True,
                       text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    for run_dir, got in zip(run_dirs, json.loads(p.stdout.strip().splitlines()[-1])):
        ref = lorafit_logits(run_dir, TEXTS)
        np.testing.assert_allclose(np.array(got["logits"]), ref, atol=1e-4)
        names = json.loads((run_dir / "labels.json").read_text())
        assert got["labels"] == [names[k] for k in ref.argmax(-1)]


@pytest.mark.parametrize("head", ["mean_linear", "cls_linear"])
def test_merged_refuses_lorafit_heads_and_names_onnx(runs, run_cli, head, tmp_path):
    r = run_cli("export", runs("roberta", head), "--format", "merged", "--out", tmp_path / "m")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "use --format onnx" in r.stderr
    assert f"head.type {head}" in r.stderr and not (tmp_path / "m").exists()


def test_bad_export_input_one_line_nothing_written(runs, run_cli, tmp_path):
    run_dir = runs("roberta", "mean_linear")
    cases = [(["--format", "tflite", "--out", tmp_path / "a"], "--format: unknown format 'tflite'", tmp_path / "a"),
             (["--format", "merged", "--quantize", "int8", "--out", tmp_path / "b"], "--quantize: int8 quantisation is "
              "for --format onnx", tmp_path / "b"),
             (["--format", "onnx", "--quantize", "int4", "--out", tmp_path / "c"], "--quantize: unknown scheme", tmp_path / "c"),
             (["--format", "onnx", "--quantize", "int8", "--min-agreement", "150", "--out", tmp_path / "d"],
              "--min-agreement: 150", tmp_path / "d")]
    for args, message, out in cases:
        r = run_cli("export", run_dir, *args)
        assert r.returncode == 2 and r.stderr.startswith(f"error: {message}"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    r = run_cli("export", run_dir, "--format", "onnx", "--out", taken)
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr
    r = run_cli("export", run_dir, "--format", "onnx", "--out", taken, "--overwrite")
    assert r.returncode == 2 and "is not a lorafit export" in r.stderr
    assert sorted(p.name for p in taken.iterdir()) == ["mine.txt"]
    r = run_cli("export", tmp_path, "--format", "onnx", "--out", tmp_path / "e")
    assert r.returncode == 2 and "not a finished lorafit run" in r.stderr and not (tmp_path / "e").exists()


def test_overwrite_replaces_an_earlier_export(runs, run_cli, tmp_path):
    run_dir = runs("roberta", "mean_linear")
    out = tmp_path / "o"
    assert run_cli("export", run_dir, "--format", "onnx", "--out", out, "--quantize", "int8").returncode == 0
    r = run_cli("export", run_dir, "--format", "onnx", "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (out / "model.int8.onnx").exists() and (out / "model.onnx").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_readme_onnxruntime_snippet_runs(runs, tmp_path):
    """The README's plain-onnxruntime example, as written, on a BERT and a RoBERTa export."""
    import re
    from pathlib import Path

    from lorafit.export import ExportSettings, export_run

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"Run it with plain ONNX Runtime.*?```python\n(.*?)```", readme, re.S).group(1)
    for kind, head in (("bert", "mean_linear"), ("roberta", "cls_linear")):
        out = tmp_path / kind
        export_run(ExportSettings(runs(kind, head), "onnx", out), log=lambda *a: None)
        snippet = code.replace('"exports/agnews-onnx"', repr(str(out)))
        p = subprocess.run([sys.executable, "-c", snippet.replace("print(", "print('LABELS', ")], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        texts = ["Stocks rally as oil falls", "The striker scored twice"]
        names = json.loads((out / "labels.json").read_text())
        expected = [names[k] for k in lorafit_logits(runs(kind, head), texts).argmax(-1)]
        assert p.stdout.strip().splitlines()[-1] == f"LABELS {expected}"


@pytest.mark.slow
def test_export_speed_bench_writes_its_table(runs, synth_csv, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(root / "bench" / "export_speed.py"), "--run", str(runs("roberta", "mean_linear")),
                           "--data", str(synth_csv), "--limit", "40", "--batch", "16", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [x for x in out.read_text().splitlines() if x.startswith("| ") and "samples/s" not in x]
    assert [r.split(" | ")[0] for r in rows] == ["| lorafit predict (torch)", "| ONNX Runtime fp32",
                                                 "| ONNX Runtime int8 (dynamic quantisation)"]
    assert rows[1].endswith("| 100.00% |")  # fp32 gives lorafit's labels
