"""speed.fast_dropout: torch's dropout distribution from fewer random draws; evaluation unchanged."""

import numpy as np
import pytest
import torch

from conftest import tiny_config
from lorafit.speed import Where, dropout as fd
from lorafit.model import build_model


def _sigma(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_the_rounded_probability_at_every_word_position(p):
    torch.manual_seed(0)
    n = 1 << 21
    keep = fd.keep_mask(torch.Size([n]), p, torch.device("cpu"))
    q = fd.keep_probability(p)
    assert abs(q - (1 - p)) <= 0.5 / 65536
    assert abs(keep.float().mean().item() - q) < 5 * _sigma(q, n)
    # four masks come from one 64-bit draw: each position and neighbouring pairs must be independent
    by_pos = keep.view(-1, 4).float()
    for i in range(4):
        assert abs(by_pos[:, i].mean().item() - q) < 5 * _sigma(q, n // 4)
        both = (by_pos[:, i] * by_pos[:, (i + 1) % 4]).mean().item()
        assert abs(both - q * q) < 5 * _sigma(q * q, n // 4)


def test_fast_dropout_scales_kept_values_and_its_gradient_is_the_same_mask():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    out = fd.fast_dropout(x, 0.1)
    q = fd.keep_probability(0.1)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / q)
    assert 0.85 < kept.float().mean().item() < 0.95
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, kept.float() / q)
    # unbiased like torch's dropout: E[out] = x
    torch.manual_seed(2)
    ones = torch.ones(1 << 20)
    assert abs(fd.fast_dropout(ones, 0.3).mean().item() - 1.0) < 5 * _sigma(0.7, 1 << 20) / 0.7
    # a 16-bit input stays 16-bit (the byte mask multiplies it), kept values scaled as in float32
    half = x.detach().bfloat16()
    out = fd.fast_dropout(half, 0.1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[out != 0], (half[out != 0].float() / q).bfloat16())
    # off in eval and at p = 0; everything dropped at p = 1
    assert fd.fast_dropout(x, 0.1, training=False) is x and fd.fast_dropout(x, 0.0) is x
    assert torch.count_nonzero(fd.fast_dropout(x, 1.0)) == 0


def test_masks_follow_torchs_seed():
    x = torch.ones(1000)
    torch.manual_seed(3)
    a, b = fd.fast_dropout(x, 0.2), fd.fast_dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(fd.fast_dropout(x, 0.2), a) and not torch.equal(a, b)


def test_attention_without_the_mask_is_sdpa(monkeypatch):
    """The training path (softmax(QK^T)V, padding mask) equals SDPA once its dropout is the identity."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(4)
    q, k, v = (torch.randn(3, 2, 7, 8) for _ in range(3))
    pad = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    pad[1, :, :, 5:] = False  # the second item has two padding positions
    module = torch.nn.Module()
    module.is_causal = False
    ref, _ = sdpa_attention_forward(module, q, k, v, pad, dropout=0.0, scaling=0.3)
    # every element kept at probability 1: the real masked path, with the identity as its dropout
    monkeypatch.setattr(fd, "keep_mask", lambda shape, p, device: torch.ones(shape, dtype=torch.bool))
    monkeypatch.setattr(fd, "keep_probability", lambda p: 1.0)
    out, _ = fd.attention(module, q, k, v, pad, dropout=0.1, scaling=0.3)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    additive = torch.zeros(3, 1, 7, 7).masked_fill(~pad, torch.finfo(torch.float32).min)
    out, _ = fd.attention(module, q, k, v, additive, dropout=0.1, scaling=0.3)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_attention_dropout_is_the_masked_scaled_probabilities_and_so_is_its_gradient(monkeypatch):
    """The 1 / (1 - p) is applied to the output instead of the probabilities: same values, same gradients."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 3, 6, 4, requires_grad=True) for _ in range(3))
    keep = torch.rand(2, 3, 6, 6) > 0.3
    monkeypatch.setattr(fd, "keep_mask", lambda shape, p, device: keep)
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = fd.attention(module, q, k, v, None, dropout=0.3, scaling=0.5)
    probs = (q @ k.transpose(2, 3) * 0.5).softmax(-1) * keep / fd.keep_probability(0.3)
    ref = (probs @ v).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(grads, torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fixture", ["tiny_roberta", "tiny_bert"])
def test_install_keeps_evaluation_identical_and_remove_restores(fixture, synth_csv, request):
    from transformers import AutoTokenizer
    from lorafit.predict import predict_logits

    path = request.getfixturevalue(fixture)
    tok = AutoTokenizer.from_pretrained(str(path))
    texts = ["a short one", "and a rather longer text with more words in it", "x"] * 4
    cfg = tiny_config(path, synth_csv, adapter__dropout=0.1)
    torch.manual_seed(0)
    model, _ = build_model(cfg, ["a", "b", "c", "d"])
    ref = predict_logits(model.eval(), tok, texts, 32, batch_size=4)
    what = fd.install(model, Where("cpu", cfg))
    n = sum(type(m) is fd.FastDropout for m in model.modules())
    assert n > 0 and what.startswith(f"{n} dropout layer(s)") and "attention" in what
    assert model.config._attn_implementation == fd.NAME
    np.testing.assert_array_equal(predict_logits(model.eval(), tok, texts, 32, batch_size=4), ref)
    model.train()
    batch = tok(texts[:4], padding=True, return_tensors="pt")
    model(**batch).logits.sum().backward()  # the training path runs and reaches the adapters
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n_, p in model.named_parameters() if "lora_" in n_)
    fd.remove(model)
    assert not any(type(m) is fd.FastDropout for m in model.modules())
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.slow
def test_train_switch_logs_and_saved_run_has_no_trace(tiny_roberta, synth_csv, tmp_path):
    from lorafit.train.run import run_training

    logs = {}
    for choice in ("auto", "false"):
        lines = []
        cfg = tiny_config(tiny_roberta, synth_csv, speed__fast_dropout=choice, train__epochs=1, adapter__dropout=0.1,
                          adapter__method="full", budget__max_trainable="null")
        run_training(cfg, tmp_path / choice, log=lines.append)
        logs[choice] = lines
    assert any(x.startswith("fast dropout: on (") for x in logs["auto"])
    assert any(x == "fast dropout: off (speed.fast_dropout: false)" for x in logs["false"])
    saved = list((tmp_path / "auto").rglob("config.json"))
    assert saved and not any(fd.NAME in p.read_text() for p in saved)


@pytest.mark.slow
def test_fast_dropout_trains_like_torchs(tiny_roberta, synth_csv, tmp_path):
    """Same data, same recipe, different masks: the runs end at validation losses within seed noise
    (the torch-dropout runs over three seeds set the scale)."""
    from lorafit.train.run import run_training

    def loss(choice, seed):
        cfg = tiny_config(tiny_roberta, synth_csv, speed__fast_dropout=choice, adapter__dropout=0.1, seed=seed)
        return run_training(cfg, tmp_path / f"{choice}{seed}", log=lambda *a: None)["validation"]["loss"]

    torch_runs = [loss("false", s) for s in (1, 2, 3)]
    fast_runs = [loss("true", s) for s in (1, 2, 3)]
    spread = max(torch_runs) - min(torch_runs) + 1e-3
    assert abs(np.mean(fast_runs) - np.mean(torch_runs)) < 2 * spread, (torch_runs, fast_runs)
    assert fast_runs != torch_runs  # the switch did change the masks
