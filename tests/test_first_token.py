"""The last layer on the first token only (first_token.py) changes nothing but speed."""
import json

import numpy as np
import pytest
import torch

from conftest import synthetic_rows, tiny_config
from lorafit.speed import Where, first_token
from lorafit.data.batches import Collator
from lorafit.model import build_model


def _batch(model_dir, n=12):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = synthetic_rows(n, seed=3)["text"].tolist()
    batch = Collator(tok.pad_token_id)([(x, i % 4) for i, x in enumerate(tok(texts, truncation=True, max_length=32)["input_ids"])])
    assert (batch["attention_mask"] == 0).any()  # padded items: the key mask must still hold
    return batch


def _lora_b_random(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)  # B = 0 at init would hide a wrong LoRA path


@pytest.mark.parametrize("kind,head", [("tiny_roberta", "model"), ("tiny_bert", "model"), ("tiny_bert", "cls_linear"),
                                       ("tiny_roberta", "cls_linear")])
def test_same_logits_and_gradients(kind, head, request, synth_csv):
    model_dir = request.getfixturevalue(kind)
    cfg = tiny_config(model_dir, synth_csv, adapter__targets="[query,key,value,dense]", head__type=head)
    torch.manual_seed(0)
    model, _ = build_model(cfg, ["a", "b", "c", "d"])
    _lora_b_random(model)
    batch = _batch(model_dir)
    labels = batch.pop("labels")
    assert first_token.why_off(model, Where("cpu", cfg)) is None

    def run():
        model.zero_grad()
        logits = model(**batch).logits
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.train()  # the tiny models have dropout 0: training mode, deterministic
    full_logits, full_grads = run()
    first_token.install(model, Where("cpu", cfg))
    logits, grads = run()
    torch.testing.assert_close(logits, full_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == full_grads.keys() and any("layer.1." in n for n in grads)
    for n in grads:
        torch.testing.assert_close(grads[n], full_grads[n], atol=1e-5, rtol=1e-4, msg=n)
    first_token.remove(model)
    torch.testing.assert_close(model(**batch).logits, full_logits, atol=1e-6, rtol=0)  # own forward back


def test_says_why_it_is_off(tiny_bert, tiny_roberta, synth_csv):
    cfg = tiny_config(tiny_bert, synth_csv, head__type="mean_linear")
    model, _ = build_model(cfg, ["a", "b"])
    assert "mean_linear" in first_token.why_off(model, Where("cpu", cfg))
    cfg = tiny_config(tiny_roberta, synth_csv)
    model, _ = build_model(cfg, ["a", "b"])
    assert first_token.why_off(model, Where("cpu", cfg)) is None
    model.config._attn_implementation = "flash_attention_2"  # takes 2-D padding masks; only the check runs here
    assert "flash_attention_2" in first_token.why_off(model, Where("cpu", cfg))


@pytest.mark.slow
def test_training_and_prediction_match_the_full_last_layer(tiny_bert, synth_csv, tmp_path):
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained
    from lorafit.train.run import run_training

    out, logs = {}, {}
    for on in (True, False):
        lines = []
        cfg = tiny_config(tiny_bert, synth_csv, speed__last_layer_first_token=on, train__epochs=1,
                          adapter__targets="[query,value,dense]")
        out[on] = run_training(cfg, tmp_path / str(on), log=lines.append)
        logs[on] = lines
    assert "last layer on the first token only: on (the head reads nothing else)" in logs[True]
    assert "last layer on the first token only: off (speed.last_layer_first_token: false)" in logs[False]
    assert out[True]["validation"]["loss"] == pytest.approx(out[False]["validation"]["loss"], abs=1e-5)
    rows = [[json.loads(x) for x in (tmp_path / str(on) / "metrics.jsonl").read_text().splitlines()] for on in (True, False)]
    for x, y in zip(*rows):
        for key in ("loss", "train_loss"):
            if key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-4), (x, y)
    texts = synthetic_rows(40, seed=9)["text"].tolist()
    model, tok, _, _ = load_trained(tmp_path / "True", merge=True)
    assert "forward" in vars(first_token.last_layer(model))  # prediction uses it too
    plain, _, _, _ = load_trained(tmp_path / "True", merge=False, first_token=False)
    assert "forward" not in vars(first_token.last_layer(plain))
    np.testing.assert_allclose(predict_logits(model, tok, texts, 32, batch_size=8),
                               predict_logits(plain, tok, texts, 32, batch_size=8), atol=1e-5)
