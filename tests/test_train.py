"""The loop learns, the run directory is complete, and reloading is exact by every route."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, tiny_config
from lorafit.config import load_config
from lorafit.predict import predict_logits
from lorafit.runs.weights import load_trained

RUN_FILES = ["config.yaml", "labels.json", "metrics.jsonl", "params.txt", "eval.json", "curves.png",
             "confusion.png", "report.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"]


def test_tiny_roberta_learns_separable_task(trained_run):
    run_dir, recipe, result = trained_run
    assert result["validation"]["accuracy"] > 0.95
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["type"] == "train"]
    peak = max(lrs)
    assert peak == pytest.approx(2e-2, rel=0.05) and lrs[-1] < 0.05 * peak  # warmup reached lr, cosine decayed
    assert lrs.index(peak) < len(lrs) // 3
    epochs = [r for r in rows if r["type"] == "epoch"]
    assert len(epochs) == 6 and epochs[-1]["train_loss"] < epochs[0]["train_loss"]


def test_run_dir_complete_and_reproducible(trained_run):
    run_dir, recipe, _ = trained_run
    for f in RUN_FILES:
        assert (run_dir / f).is_file(), f
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size < 1_000_000
    assert load_config(run_dir / "config.yaml") == recipe.cfg
    assert "trainable: " in (run_dir / "params.txt").read_text()
    report = (run_dir / "report.md").read_text()
    assert "curves.png" in report and "confusion.png" in report and "accuracy" in report
    ev = json.loads((run_dir / "eval.json").read_text())
    assert {"accuracy", "macro_f1", "n", "per_class", "confusion"} <= set(ev["validation"])


@pytest.mark.slow
def test_reload_is_exact_by_every_route(trained_run, tmp_path, tiny_roberta):
    """End-of-training model, `lorafit predict` in a new process, plain transformers + peft, and the
    merged model give the same logits (PEFT issues #310/#577/#876: the head lost on reload)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run_dir, recipe, _ = trained_run
    texts = recipe.data.val.texts[:40]
    trained = recipe.acc.unwrap_model(recipe.model).eval()
    ref = predict_logits(trained, recipe.tokenizer, texts, 32)

    merged, tok, _, names = load_trained(run_dir, merge=True)
    np.testing.assert_allclose(predict_logits(merged, tok, texts, 32), ref, atol=1e-4)

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_roberta), num_labels=4)
    plain = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    plain_tok = AutoTokenizer.from_pretrained(str(run_dir / "adapter"))
    with torch.inference_mode():
        enc = plain_tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        np.testing.assert_allclose(plain(**enc).logits.numpy(), ref, atol=1e-4)

    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    proc = run_cli("predict", run_dir, "--input", inp, "--output", out, "--with-logits")
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out)
    assert list(got["ID"]) == list(range(len(texts)))
    np.testing.assert_allclose(got[[f"logit_{n}" for n in names]].to_numpy(), ref, atol=1e-4)
    assert list(got["label"]) == list(ref.argmax(-1))


@pytest.mark.slow
def test_evaluate_cli_prints_metrics(trained_run, tmp_path):
    run_dir, recipe, result = trained_run
    data = tmp_path / "val.jsonl"
    pd.DataFrame({"text": recipe.data.val.texts, "label": recipe.data.val.labels}).to_json(data, orient="records", lines=True)
    proc = run_cli("evaluate", run_dir, "--data", data)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["n"] == len(recipe.data.val) and got["accuracy"] == pytest.approx(result["validation"]["accuracy"])
    assert "macro_f1" in got and len(got["confusion"]) == 4


@pytest.mark.slow
def test_predict_keeps_id_column_and_order(trained_run, tmp_path):
    run_dir, recipe, _ = trained_run
    texts = recipe.data.val.texts[:25]
    inp, out = tmp_path / "in.tsv", tmp_path / "sub.csv"
    pd.DataFrame({"ID": [f"x{i}" for i in range(25)][::-1], "text": texts}).to_csv(inp, sep="\t", index=False)
    proc = run_cli("predict", run_dir, "--input", inp, "--output", out)
    assert proc.returncode == 0, proc.stderr
    got = pd.read_csv(out)
    assert list(got.columns) == ["ID", "label"] and list(got["ID"]) == [f"x{i}" for i in range(25)][::-1]


@pytest.mark.parametrize("over", [
    dict(adapter__method="adalora", adapter__adalora__init_r=6, adapter__adalora__target_r=2, adapter__adalora__tinit=0.1, adapter__adalora__tfinal=0.1,
         adapter__adalora__delta_t=2),
    dict(adapter__method="full", optim__lr=1e-3),
    dict(head__type="model", adapter__layers="[1]", optim__layer_lrs="[{layers: [0, 0], lr: 1e-3}]",
         optim__head_lr=1e-2, optim__name="sgd"),
    dict(optim__name="rmsprop", optim__schedule="linear", train__grad_accum=2, train__eval_every=5,
         train__save_top_k=2, data__shuffle_sentences_p=0.5),
], ids=["adalora", "full", "layers-tiers-sgd", "rmsprop-accum-steps"])
def test_methods_train_and_reload_exactly(over, tiny_bert, synth_csv, tmp_path):
    from lorafit.train.recipe import Recipe

    cfg = tiny_config(tiny_bert, synth_csv, train__epochs=1, **over)
    recipe = Recipe(cfg, tmp_path / "run", log=lambda *a: None).setup()
    recipe.train()
    recipe.finish()
    texts = recipe.data.val.texts[:20]
    ref = predict_logits(recipe.acc.unwrap_model(recipe.model).eval(), recipe.tokenizer, texts, 32)
    for merge in (False, True):
        model, tok, _, _ = load_trained(tmp_path / "run", merge=merge)
        np.testing.assert_allclose(predict_logits(model, tok, texts, 32), ref, atol=1e-4)
    assert len(list((tmp_path / "run" / "checkpoints").iterdir())) <= cfg.train.save_top_k


def test_bert_head_trains_pooler_and_classifier(tiny_bert):
    from lorafit.model import build_model

    cfg = load_config(None, [f"model.name={tiny_bert}"])
    model, plan = build_model(cfg, ["a", "b"])
    assert plan.train_full == ["classifier", "bert.pooler"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("pooler" in n for n in trainable) and any("classifier" in n for n in trainable)


@pytest.mark.slow
def test_same_seed_same_result(tiny_roberta, synth_csv, tmp_path):
    from lorafit.train.run import run_training

    cfg = tiny_config(tiny_roberta, synth_csv, train__epochs=1)
    a = run_training(cfg, tmp_path / "a", log=lambda *x: None)
    b = run_training(cfg, tmp_path / "b", log=lambda *x: None)
    assert a["validation"]["loss"] == b["validation"]["loss"]
    ma = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k not in ("samples_per_s", "train_seconds")} for r in rows]
    assert strip(ma) == strip(mb)


def test_early_stopping_stops(tiny_roberta, synth_csv, tmp_path):
    from lorafit.train.run import run_training

    cfg = tiny_config(tiny_roberta, synth_csv, train__epochs=20, train__early_stopping=1, optim__lr=1e-9,
                      train__metric="loss", optim__warmup=0)
    run_training(cfg, tmp_path / "r", log=lambda *x: None)
    evals = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert 2 <= len(evals) < 20


def test_train_seconds_count_every_step_and_no_evaluation(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    # a fake clock: a training forward takes 1 s, an evaluation batch 1000 s; with 96 training items
    # in batches of 16 an epoch is 6 steps, so the evaluation at step 8 sits after an epoch's end
    import types

    from lorafit.train.recipe import Recipe

    now = [0.0]
    monkeypatch.setattr("lorafit.train.recipe.time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    cfg = tiny_config(tiny_roberta, synth_csv, data__limit=120, train__max_steps=10, train__eval_every=4)
    recipe = Recipe(cfg, tmp_path / "r", log=lambda *a: None).setup()
    assert recipe.steps_per_epoch == 6
    forward = recipe.forward

    def timed(batch):
        now[0] += 1.0 if recipe.model.training else 1000.0
        return forward(batch)

    recipe.forward = timed
    recipe.train()
    evals = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [(e["step"], e["train_seconds"]) for e in evals] == [(4, 4.0), (8, 8.0), (10, 10.0)]


@pytest.mark.parametrize("over, reused", [({}, True), ({"train__final_on_val": True}, False)],
                         ids=["best-is-last", "final-epoch-after"])
def test_final_metrics_reuse_the_last_evaluation_only_when_exact(over, reused, tiny_roberta, synth_csv, tmp_path,
                                                                 monkeypatch):
    """The final validation metrics come from the last evaluation's logits when they are of the weights the run
    ends with (one pass over the validation split saved), bit for bit those of a new pass; after a final
    epoch on train+validation the weights differ, and the final metrics are those of a new pass.
    (speed.fast_dropout off: finish takes that switch out of the model, and the new pass below runs after it.)"""
    from lorafit.train.evaluation import validation_logits
    from lorafit.train.recipe import Recipe

    from lorafit.train import evaluation

    cfg = tiny_config(tiny_roberta, synth_csv, train__epochs=1, speed__fast_dropout=False, **over)
    recipe = Recipe(cfg, tmp_path / "run", log=lambda *a: None).setup()
    recipe.train()
    last = recipe.last_eval
    assert last["step"] == recipe.state.best_step == recipe.state.step  # one evaluation, at the epoch's end
    passes, real = [], evaluation.validation_logits
    monkeypatch.setattr(evaluation, "validation_logits", lambda *a: passes.append(1) or real(*a))
    result = recipe.finish()
    monkeypatch.undo()
    # the saved pass: none when the last evaluation is of the final weights; after a final epoch one, and none
    # for the temperature before it (the same last evaluation, still of the best weights then)
    assert len(passes) == (0 if reused else 1), passes
    logits, labels, loss = validation_logits(recipe, recipe.final_val_loader)  # a new pass of the final weights
    assert result["validation"]["loss"] == loss  # exactly, either way
    assert np.array_equal(logits, last["logits"]) is reused
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["validation"]["loss"] == loss
