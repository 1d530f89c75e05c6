"""Issue 26: one inference engine (infer/engine.py). The same run through `lorafit predict`, `lorafit
evaluate`, serve's compute path (the batcher, in-process) and the export check (lorafit's side and
ONNX Runtime's) gives the engine's logits to 1e-4, for data.truncation head, tail and head_tail and
for text pairs; and the truncation (or the pair) changes those logits, so a path that lost it fails."""
from __future__ import annotations

import asyncio
import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from conftest import make_tiny_model, synthetic_rows, train_briefly

TRUNCATIONS = ("head", "tail", "head_tail")


def bert_with_segments(folder):
    """The tiny BERT with a tokenizer that gives token_type_ids, as BERT's own do (conftest's does not
    list them in model_input_names): the second text of a pair in segment 1."""
    import json

    make_tiny_model(folder, "bert")
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory, tiny_roberta):
    """mode -> (run folder, labelled rows it was not trained on); trained lazily, once. Single texts are
    cut at max_length 8 (texts of 5-18 words), pairs at 16 together (on a BERT with segment ids)."""
    from test_text_pairs import pair_rows

    root, made = tmp_path_factory.mktemp("engine"), {}

    def get(mode: str):
        if mode not in made:
            folder = root / mode
            folder.mkdir()
            data = folder / "train.csv"
            if mode == "pairs":
                pair_rows(160).to_csv(data, index=False)
                rows = pair_rows(12, seed=7)
                train_briefly(bert_with_segments(folder / "bert"), data, folder / "run", data__text_pair_column="hypothesis",
                              data__max_length=16, optim__lr=2e-2, train__max_steps=40)
            else:
                synthetic_rows(160).to_csv(data, index=False)
                rows = synthetic_rows(12, seed=7)
                train_briefly(tiny_roberta, data, folder / "run", data__truncation=mode, data__max_length=8,
                              optim__lr=2e-2, train__max_steps=40,
                              **({"data__head_tokens": 2} if mode == "head_tail" else {}))
            made[mode] = folder / "run", rows
        return made[mode]
    return get


def _inputs(rows: pd.DataFrame):
    return rows["text"].tolist(), rows["hypothesis"].tolist() if "hypothesis" in rows else None


def _served_logits(run_dir, texts, pairs=None):
    """What `lorafit serve` answers, computed in-process: the registry's run through the batcher."""
    import torch

    from lorafit.serve.batcher import Batcher
    from lorafit.serve.registry import Registry

    reg = Registry.load([("m", run_dir)], device=torch.device("cpu"))

    async def go():
        batcher = Batcher(max_batch=4, max_wait_ms=20).start()
        try:
            cut = lambda part: None if pairs is None else pairs[part]
            jobs = [batcher.submit(reg.runs["m"], texts[:5], cut(slice(5))),
                    batcher.submit(reg.runs["m"], texts[5:], cut(slice(5, None)))]
            return await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 120)
        finally:
            batcher.stop()
    return np.concatenate(asyncio.run(go()))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [*TRUNCATIONS, "pairs"])
def test_predict_evaluate_serve_and_export_give_the_engines_logits(engine_runs, mode, tmp_path):
    from lorafit import tasks
    from lorafit.calibration import split_summary
    from lorafit.data.encoding import Encoding
    from lorafit.export import ExportSettings, export_run, onnx as ox
    from lorafit.export.run import _lorafit_logits
    from lorafit.infer import engine
    from lorafit.infer.loaded import load_run
    from lorafit.evaluate import evaluate_file
    from lorafit.predict import predict_file

    run_dir, rows = engine_runs(mode)
    texts, pairs = _inputs(rows)
    run = load_run(run_dir, device="cpu")
    ref = engine.logits(run, texts, pairs, batch_size=4)
    # the run's encoding matters on these texts: head truncation (or the first text alone) gives other logits
    if mode == "pairs":
        other = engine.logits(run, texts, batch_size=4)
    else:
        other = engine.logits(dataclasses.replace(run, encoding=Encoding(8, "tail" if mode == "head" else "head")),
                              texts, batch_size=4)
    assert np.abs(other - ref).max() > 1e-2, mode

    labelled = tmp_path / "labelled.csv"
    rows.to_csv(labelled, index=False)
    out = tmp_path / "pred.csv"
    predict_file(str(run_dir), str(labelled), str(out), with_logits=True, batch_size=3)
    got = pd.read_csv(out)[[f"logit_{n}" for n in run.labels]].to_numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)

    metrics = evaluate_file(str(run_dir), str(labelled), batch_size=5)
    names = [str(n) for n in run.labels]  # labels.json holds the labels as read: here "0".."3"
    ids = np.array([names.index(str(y)) for y in rows["label"]])
    want = tasks.metrics(run.task, ids, ref, run.labels, run.thresholds)
    assert metrics["accuracy"] == want["accuracy"] and metrics["n"] == len(texts)
    calibration = split_summary(ref, ids, run.temperature)
    for key, value in metrics["calibration"].items():
        if isinstance(value, float):
            assert value == pytest.approx(calibration.get(key, value), abs=1e-4), key

    np.testing.assert_allclose(_served_logits(run_dir, texts, pairs), ref, atol=1e-4)

    np.testing.assert_allclose(_lorafit_logits(run_dir, texts, pairs, 4), ref, atol=1e-4)  # the check's reference
    manifest = export_run(ExportSettings(run_dir, "onnx", tmp_path / "onnx", check=str(labelled), batch_size=4),
                          log=lambda *a: None)
    assert manifest["check"]["max_abs_diff"] <= 1e-4 and manifest["check"]["n"] == len(texts)
    sess = ox.session(tmp_path / "onnx" / "model.onnx")
    np.testing.assert_allclose(engine.logits(run.with_session(sess), texts, pairs, batch_size=4), ref, atol=1e-4)
    if pairs is not None:  # a BERT pair run's graph takes the segment ids: fed as README says, without lorafit
        assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
        assert manifest["text_pair_column"] == "hypothesis"
        enc = run.tokenizer(texts, pairs, truncation="longest_first", max_length=manifest["max_length"], padding=True,
                            return_tensors="np")
        plain = sess.run(["logits"], {k: enc[k].astype(np.int64) for k in manifest["inputs"]})[0]
        np.testing.assert_allclose(plain, ref, atol=1e-4)
    else:
        assert manifest["inputs"] == ["input_ids", "attention_mask"]


def test_iter_logits_streams_a_window_at_a_time(engine_runs):
    """A generator: its first forward is of rows of the first window; every row once, forwards of at most
    batch_size, and collected they are logits()."""
    from lorafit.infer import engine
    from lorafit.infer.loaded import load_run

    run_dir, rows = engine_runs("tail")
    texts, _ = _inputs(rows)
    run = load_run(run_dir, device="cpu")
    chunks = engine.iter_logits(run, texts, batch_size=2, window=5)
    first_idx, first = next(chunks)
    assert set(first_idx) <= set(range(5)) and len(first_idx) <= 2
    rest = list(chunks)
    idx = np.concatenate([first_idx] + [i for i, _ in rest])
    assert sorted(idx.tolist()) == list(range(len(texts))) and all(len(i) <= 2 for i, _ in rest)
    got = np.zeros((len(texts), len(run.labels)), dtype=np.float32)
    for i, part in [(first_idx, first), *rest]:
        got[i] = part
    np.testing.assert_allclose(got, engine.logits(run, texts, batch_size=4), atol=1e-4)


def test_predict_leaves_the_token_cache_alone(engine_runs, tmp_path, monkeypatch):
    """The disk token cache is training's: predicting a file (any truncation) writes nothing into it."""
    from lorafit.predict import predict_file

    runs = {mode: engine_runs(mode) for mode in ("head", "tail")}  # trained first: training does fill the cache
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORAFIT_CACHE", str(cache))
    for mode, (run_dir, rows) in runs.items():
        rows.to_csv(tmp_path / "in.csv", index=False)
        predict_file(str(run_dir), str(tmp_path / "in.csv"), str(tmp_path / f"out-{mode}.csv"))
        assert (tmp_path / f"out-{mode}.csv").is_file()
    assert not (cache / "tokens").exists() or not os.listdir(cache / "tokens")
