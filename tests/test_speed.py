"""Every speed switch changes nothing but speed: same logits, same loss, to tolerance."""
import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from lorafit.data.batches import Collator, TokenDataset
from lorafit.model import build_model
from lorafit.speed import Where
from lorafit.speed.prefix import CachedCollator, IndexedDataset, PrefixCache, trainable_floor, why_off


def _texts_ids(tok, n=24):
    from conftest import synthetic_rows

    texts = synthetic_rows(n, seed=5)["text"].tolist()
    return texts, tok(texts, truncation=True, max_length=32)["input_ids"]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 2e-3)])
def test_prefix_cache_gives_the_full_models_logits(tiny_roberta, synth_csv, dtype, tol):
    from transformers import AutoTokenizer

    cfg = tiny_config(tiny_roberta, synth_csv, adapter__layers="[1]")
    model, _ = build_model(cfg, ["a", "b", "c", "d"])
    model.eval()
    assert trainable_floor(model) == 1 and why_off(model, Where("cpu", cfg)) is None
    tok = AutoTokenizer.from_pretrained(str(tiny_roberta))
    texts, ids = _texts_ids(tok)
    ds = TokenDataset(ids, np.zeros(len(ids), dtype=int))
    collate = Collator(tok.pad_token_id)
    batch = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        torch.nn.init.normal_(model.base_model.model.roberta.encoder.layer[1].attention.self.query.lora_B.default.weight)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    cache = PrefixCache(model, 1, dtype)
    store = cache.compute(ds, collate, 7, "test")
    cache.install()
    cached_batch = CachedCollator(collate, store)([IndexedDataset(ds)[i] for i in range(len(ds))])
    with torch.no_grad():
        cache.feed(cached_batch.pop("prefix_hidden"))
        got = model(input_ids=cached_batch["input_ids"], attention_mask=cached_batch["attention_mask"]).logits
    torch.testing.assert_close(got, full, atol=tol, rtol=0)
    cache.close()
    names = [n for n, _ in model.named_parameters()]
    assert any("layer.0.attention" in n for n in names)  # restored


@pytest.mark.slow
def test_prefix_cache_training_matches_uncached(tiny_roberta, synth_csv, tmp_path):
    from lorafit.train.run import run_training

    logs = {}
    for on in (True, False):
        cfg = tiny_config(tiny_roberta, synth_csv, adapter__layers="[1]", speed__cache_prefix=on, train__epochs=2)
        lines = []
        logs[on] = (run_training(cfg, tmp_path / str(on), log=lines.append), lines)
    (a, la), (b, lb) = logs[True], logs[False]
    assert any(x.startswith("prefix cache: on") for x in la) and any("prefix cache: off (speed.cache_prefix: false)" in x for x in lb)
    assert a["validation"]["loss"] == pytest.approx(b["validation"]["loss"], abs=1e-5)
    ra = [json.loads(x) for x in (tmp_path / "True" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "False" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(ra, rb):
        for key in ("loss", "train_loss", "accuracy"):
            if key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-4), (x, y)


def test_prefix_cache_says_why_it_is_off(tiny_roberta, synth_csv):
    cfg = tiny_config(tiny_roberta, synth_csv)
    model, _ = build_model(cfg, ["a", "b"])
    assert "layer 0" in why_off(model, Where("cpu", cfg))
    cfg = tiny_config(tiny_roberta, synth_csv, adapter__layers="[1]", data__shuffle_sentences_p=0.3)
    model, _ = build_model(cfg, ["a", "b"])
    assert "augmentation" in why_off(model, Where("cpu", cfg))


def test_length_grouping_does_not_change_logits(tiny_roberta, synth_csv):
    """Dynamic padding and length-sorted batches: each item's logits equal its unpadded logits."""
    from transformers import AutoTokenizer
    from lorafit.predict import predict_logits

    cfg = tiny_config(tiny_roberta, synth_csv)
    model, _ = build_model(cfg, ["a", "b", "c", "d"])
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_roberta))
    texts, _ = _texts_ids(tok)
    grouped = predict_logits(model, tok, texts, 32, batch_size=8)
    with torch.no_grad():
        one_by_one = np.concatenate([model(**tok([t], return_tensors="pt")).logits.numpy() for t in texts])
        fixed = model(**tok(texts, padding="max_length", max_length=32, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(grouped, one_by_one, atol=1e-5)
    np.testing.assert_allclose(grouped, fixed, atol=1e-5)


def test_group_by_length_training_same_loss_per_batch(tiny_roberta, synth_csv):
    """The loss of a batch does not depend on how much padding it carries."""
    from transformers import AutoTokenizer

    cfg = tiny_config(tiny_roberta, synth_csv)
    model, _ = build_model(cfg, ["a", "b", "c", "d"])
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_roberta))
    texts, ids = _texts_ids(tok, 8)
    labels = torch.arange(8) % 4
    with torch.no_grad():
        tight = Collator(tok.pad_token_id)([(x, 0) for x in ids])
        loose = tok(texts, padding="max_length", max_length=40, return_tensors="pt")
        l1 = torch.nn.functional.cross_entropy(model(input_ids=tight["input_ids"], attention_mask=tight["attention_mask"]).logits, labels)
        l2 = torch.nn.functional.cross_entropy(model(**loose).logits, labels)
    assert l1.item() == pytest.approx(l2.item(), abs=1e-6)


def test_token_cache_hit_skips_the_tokenizer_and_is_identical(tiny_roberta, tmp_path, monkeypatch):
    from transformers import AutoTokenizer
    from lorafit.data.encoding import Encoding, encode

    def tokenize(tok, texts, max_length):
        ids, _, truncated = encode(tok, texts, Encoding(max_length))
        return ids, truncated

    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tiny_roberta))
    texts, _ = _texts_ids(tok, 50)
    first, _ = tokenize(tok, texts, 16)
    assert first == tok(texts, truncation=True, max_length=16)["input_ids"]
    assert len(list((tmp_path / "tokens").iterdir())) == 1
    calls = []
    monkeypatch.setattr(type(tok), "__call__", lambda *a, **k: calls.append(1))
    assert tokenize(tok, texts, 16)[0] == first and not calls           # served from the cache
    monkeypatch.undo()
    monkeypatch.setenv("LORAFIT_CACHE", str(tmp_path))
    assert tokenize(tok, texts, 12)[0] != first                          # another max_length is another key
    assert len(list((tmp_path / "tokens").iterdir())) == 2


def test_sdpa_equals_eager_attention(tiny_roberta, synth_csv):
    from transformers import AutoTokenizer
    from lorafit.predict import predict_logits

    tok = AutoTokenizer.from_pretrained(str(tiny_roberta))
    texts, _ = _texts_ids(tok)
    out = {}
    for impl in ("sdpa", "eager"):
        cfg = tiny_config(tiny_roberta, synth_csv, model__attn_implementation=impl)
        torch.manual_seed(0)
        model, _ = build_model(cfg, ["a", "b", "c", "d"])
        assert model.config._attn_implementation == impl
        out[impl] = predict_logits(model.eval(), tok, texts, 32, batch_size=8)
    np.testing.assert_allclose(out["sdpa"], out["eager"], atol=1e-5)


@pytest.mark.parametrize("switch", ["train__precision=bf16", "train__compile=true"])
@pytest.mark.slow
def test_precision_and_compile_switches_keep_the_loss(tiny_roberta, synth_csv, tmp_path, switch):
    """bf16 autocast and torch.compile: the same run to the tolerance of their arithmetic."""
    from lorafit.train.run import run_training

    key, value = switch.split("=")
    base = run_training(tiny_config(tiny_roberta, synth_csv, train__epochs=1), tmp_path / "a", log=lambda *a: None)
    other = run_training(tiny_config(tiny_roberta, synth_csv, train__epochs=1, **{key: value}), tmp_path / "b",
                         log=lambda *a: None)
    tol = 2e-2 if "bf16" in switch else 1e-4
    assert other["validation"]["loss"] == pytest.approx(base["validation"]["loss"], abs=tol)
