"""Issue 16, points 3-4 (single-label): class weights in the loss, the class-balanced sampler (seeded,
resumed exactly), and checkpoint selection by macro-F1 / MCC."""
from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import matthews_corrcoef

from conftest import FILLER, TOPICS, tiny_config
from lorafit.errors import LorafitError
from lorafit.metrics import classification_metrics
from lorafit.train import checkpoint
from lorafit.train.imbalance import BalancedBatches, class_weights
from lorafit.train.recipe import Recipe
from lorafit.train.run import run_training
from test_resume import Crash, CrashAt, assert_same_run


def imbalanced_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """Three topics in 70/20/10 proportions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = 0 if i % 10 < 7 else (1 if i % 10 < 9 else 2)
        words = [rng.choice(TOPICS[y]) for _ in range(rng.randint(1, 4))] + [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["world", "sports", "business"][y]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def imbalanced_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "imbalanced.csv"
    imbalanced_rows(300).to_csv(path, index=False)
    return path


def test_balanced_weights_are_sklearns_and_a_mapping_names_labels_by_value():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights("balanced", labels, ["a", "b", "c"])
    np.testing.assert_allclose(w.numpy(), [10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)], rtol=1e-6)
    assert class_weights("none", labels, ["a", "b", "c"]) is None
    # integer labels: '3', 3 and 3.0 are one label; labels not named weigh 1
    w = class_weights({"3.0": 2.5, "10": 0.5}, labels, ["1", "3", "10"])
    assert w.tolist() == [1.0, 2.5, 0.5]


def test_class_weights_naming_an_unknown_label_is_one_line_with_a_guess():
    with pytest.raises(LorafitError) as e:
        class_weights({"sprots": 2.0}, np.array([0, 1]), ["sports", "world"])
    msg = str(e.value)
    assert msg.startswith("train.class_weights: unknown label 'sprots' (did you mean 'sports'?)") and "\n" not in msg
    with pytest.raises(LorafitError, match="balanced: label 'c' has no training rows"):
        class_weights("balanced", np.array([0, 1, 1]), ["a", "b", "c"])


@pytest.mark.parametrize("value, problem", [("{world: -1}", "must be a positive finite number"),
                                            ("{}", "an empty mapping"), ("sometimes", "balanced")])
def test_bad_class_weight_settings_are_refused_by_the_config(value, problem, tiny_roberta, imbalanced_csv):
    with pytest.raises(LorafitError, match=problem) as e:
        tiny_config(tiny_roberta, imbalanced_csv, train__class_weights=value)
    assert str(e.value).startswith("--set train.class_weights: ")


def test_weighted_loss_equals_hand_computed_weighted_cross_entropy(tiny_roberta, imbalanced_csv, tmp_path):
    cfg = tiny_config(tiny_roberta, imbalanced_csv, train__class_weights="{world: 0.5, business: 4}",
                      train__sampler="balanced")
    recipe = Recipe(cfg, tmp_path / "run", log=lambda *a: None).setup()
    try:
        names = recipe.data.label_names
        assert names == ["business", "sports", "world"]
        assert recipe.class_weights.tolist() == [4.0, 1.0, 0.5]
        # the training loader draws class-balanced batches (accelerate wraps our sampler in a shard)
        inner = recipe.train_loader.batch_sampler
        assert isinstance(getattr(inner, "batch_sampler", inner), BalancedBatches)
        batch = next(iter(recipe.train_loader))
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = recipe.forward(batch).float()
            loss = recipe.loss_fn(logits, labels)
        logp = torch.log_softmax(logits.double(), -1)
        w = torch.tensor([4.0, 1.0, 0.5], dtype=torch.double)[labels]
        hand = -(w * logp[torch.arange(len(labels)), labels]).sum() / w.sum()
        assert loss.item() == pytest.approx(hand.item(), rel=1e-5)
        assert abs(loss.item() - torch.nn.functional.cross_entropy(logits, labels).item()) > 1e-4  # the weights count
    finally:
        recipe.cleanup()


def test_balanced_sampler_draws_every_class_alike_seeded_per_epoch():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 800 + [1] * 150 + [2] * 50)
    lengths = rng.integers(5, 60, size=len(labels))
    s = BalancedBatches(lengths, labels, 32, seed=7)
    epochs = []
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) == 32 and sum(map(len, batches)) == 1000
        drawn = labels[np.concatenate(batches)]
        share = np.bincount(drawn, minlength=3) / len(drawn)
        np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.05)  # plain shuffling: 0.80 / 0.15 / 0.05
        epochs.append(batches)
        # still length-grouped: items of a batch are close in length, far closer than at random
        spread = np.mean([np.ptp(lengths[b]) for b in batches[1:-1]])
        assert spread < 0.5 * np.ptp(lengths)
    assert epochs[0] != epochs[1]
    again = BalancedBatches(lengths, labels, 32, seed=7)
    again.set_epoch(1)
    assert list(again) == epochs[1]  # a function of (seed, epoch): what resume relies on
    again.set_epoch(1)
    again.skip_next(5)
    assert list(again) == epochs[1][5:]


@pytest.mark.slow
def test_balanced_sampler_and_class_weights_resume_exactly(tiny_roberta, imbalanced_csv, tmp_path):
    cfg = tiny_config(tiny_roberta, imbalanced_csv, data__limit=200, adapter__dropout=0.1, train__checkpoint_every=3,
                      train__log_every=1, train__sampler="balanced", train__class_weights="balanced")
    run_training(cfg, tmp_path / "ref", log=lambda *a: None)
    crashed = CrashAt(cfg, tmp_path / "run", log=lambda *a: None)
    crashed.at = 4
    with pytest.raises(Crash):
        crashed.setup().train()
    meta = json.loads((checkpoint.latest(tmp_path / "run") / "state.json").read_text())
    assert meta["state"]["step"] == 3 and meta["position"]["batches"] == 3  # stopped inside epoch 1
    run_training(cfg, tmp_path / "run", resume=True, log=lambda *a: None)
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_mcc_is_sklearns_and_zero_for_a_model_that_predicts_one_class():
    labels = np.array([0] * 9 + [1])
    m = classification_metrics(labels, np.zeros(10, dtype=int), ["a", "b"])
    assert m["accuracy"] == 0.9 and m["mcc"] == 0.0 and m["macro_f1"] < 0.5
    preds = np.array([0, 1, 1, 0, 0, 0, 0, 2, 0, 1])
    labels = np.array([0, 1, 0, 0, 2, 0, 0, 2, 1, 1])
    m = classification_metrics(labels, preds, ["a", "b", "c"])
    assert m["mcc"] == pytest.approx(matthews_corrcoef(labels, preds))


@pytest.mark.parametrize("metric", ["macro_f1", "mcc"])
def test_best_checkpoints_are_picked_by_macro_f1_or_mcc(metric, tiny_roberta, imbalanced_csv, tmp_path):
    test = tmp_path / "test.csv"
    imbalanced_rows(60, seed=5).to_csv(test, index=False)
    cfg = tiny_config(tiny_roberta, imbalanced_csv, data__test=test, train__metric=metric, train__max_steps=10,
                      train__eval_every=1, train__save_top_k=3, optim__lr=1e-2)
    result = run_training(cfg, tmp_path / "run", log=lambda *a: None)
    run = tmp_path / "run"
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 10 and all(metric in r for r in evals)
    ranked = sorted(evals, key=lambda r: (-r[metric], r["step"]))
    assert result["best_step"] == ranked[0]["step"] and result["metric"] == metric
    kept = sorted(int(d.name.removeprefix("step-")) for d in (run / "checkpoints").iterdir())
    assert kept == sorted(r["step"] for r in ranked[:3])
    report = (run / "report.md").read_text()
    assert f"by {metric}" in report and f"MCC {result['validation']['mcc']:.4f}" in report
    assert f"MCC {result['test']['mcc']:.4f}" in report
    # the test split is the out-of-sample check of the temperature fitted on validation
    cal = json.loads((run / "eval.json").read_text())["calibration"]
    assert cal["test"]["n"] == 60 and "test (n=60): ECE" in report
