"""model.dtype: a 16-bit frozen base with float32 trainables (model/dtype.py)."""
import json
import platform

import pytest
import torch

from conftest import synthetic_rows, tiny_config, train_briefly
from lorafit.data.batches import Collator
from lorafit.model import build_model
from lorafit.model import dtype as base_dtype


def _batch(model_dir, n=12):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = synthetic_rows(n, seed=3)["text"].tolist()
    return Collator(tok.pad_token_id)([(x, i % 4) for i, x in enumerate(tok(texts, truncation=True, max_length=32)["input_ids"])])


def _lora_b_random(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)  # B = 0 at init would hide a wrong LoRA path


def _logits_and_grads(model, batch):
    batch = dict(batch)
    labels = batch.pop("labels")
    model.zero_grad()
    logits = model(**batch).logits
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _pair(model_dir, synth_csv, **over):
    """The same model twice (same init), the second with its frozen base in bf16."""
    cfg = tiny_config(model_dir, synth_csv, adapter__targets="[query,value]", **over)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        m, _ = build_model(cfg, ["a", "b", "c", "d"])
        _lora_b_random(m)
        models.append(m.train())  # the tiny models have dropout 0: deterministic in training mode
    hooks = base_dtype.keep_base_in(models[1], torch.bfloat16)
    return models, hooks


def test_auto_follows_the_cpu_flags(monkeypatch):
    flags = base_dtype.cpu_flags()
    dt, why = base_dtype.resolve("auto", "cpu")
    assert (dt == torch.bfloat16) == bool({"avx512_bf16", "amx_bf16"} & flags), why
    monkeypatch.setattr(base_dtype, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert base_dtype.resolve("auto", "cpu") == (torch.float32, "auto: the CPU has no native bf16 dot products "
                                                 "(avx512_bf16 / amx_bf16)")
    monkeypatch.setattr(base_dtype, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    assert base_dtype.resolve("auto", "cpu")[0] == torch.bfloat16
    assert base_dtype.resolve("float16", "cpu") == (torch.float16, "model.dtype: float16")


@pytest.mark.parametrize("kind,head,norms", [("tiny_roberta", "model", False), ("tiny_bert", "model", True),
                                             ("tiny_bert", "cls_linear", False), ("tiny_roberta", "mean_linear", True)])
def test_bf16_base_follows_the_float32_model(kind, head, norms, request, synth_csv):
    """Frozen weights bf16, every trainable float32; logits and gradients as float32's to bf16 rounding."""
    (m32, m16), hooks = _pair(request.getfixturevalue(kind), synth_csv, head__type=head,
                              adapter__train_layernorm=str(norms).lower())
    counts = base_dtype.dtype_counts(m16)
    assert set(counts) == {"bfloat16", "float32 trainable"}, counts
    assert counts["float32 trainable"] == base_dtype.dtype_counts(m32)["float32 trainable"]
    batch = _batch(request.getfixturevalue(kind))
    (l32, g32), (l16, g16) = _logits_and_grads(m32, batch), _logits_and_grads(m16, batch)
    assert l16.dtype == torch.float32
    torch.testing.assert_close(l16, l32, atol=0.05, rtol=0.05)
    assert g16.keys() == g32.keys()
    for n in g32:
        assert g16[n].dtype == torch.float32, n
        cos = torch.nn.functional.cosine_similarity(g16[n].flatten(), g32[n].flatten(), dim=0)
        assert cos > 0.97, (n, float(cos))
    hooks.remove()


def test_speed_switches_with_a_bf16_base(tiny_roberta, synth_csv):
    """first_token and the prefix cache give the bf16 model's own logits; packed weights say why off."""
    from lorafit.speed import Where, first_token, packed
    from lorafit.speed.prefix import CachedCollator, IndexedDataset, PrefixCache
    from lorafit.data.batches import TokenDataset

    (_, m16), _ = _pair(tiny_roberta, synth_csv, adapter__layers="[1]")
    batch = _batch(tiny_roberta)
    full, full_g = _logits_and_grads(m16, batch)
    first_token.install(m16, Where("cpu"))
    got, got_g = _logits_and_grads(m16, batch)
    torch.testing.assert_close(got, full, atol=2e-2, rtol=2e-2)
    for n in full_g:
        torch.testing.assert_close(got_g[n], full_g[n], atol=2e-2, rtol=5e-2, msg=n)
    first_token.remove(m16)
    m16.eval()
    ids = [row[row != 1].tolist() for row in batch["input_ids"]]  # 1: the tiny RoBERTa's pad id
    ds = TokenDataset(ids, batch["labels"].numpy())
    collate = Collator(1)
    with torch.no_grad():
        ref = m16(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    cache = PrefixCache(m16, 1, "float32")
    store = cache.compute(ds, collate, 5, "test")
    cache.install()
    cb = CachedCollator(collate, store)([IndexedDataset(ds)[i] for i in range(len(ds))])
    with torch.no_grad():
        cache.feed(cb.pop("prefix_hidden"))
        got = m16(input_ids=cb["input_ids"], attention_mask=cb["attention_mask"]).logits
    torch.testing.assert_close(got, ref, atol=1e-2, rtol=0)  # bf16 states stored in float32: only batching differs
    cache.close()

    assert "16-bit" in packed.why_off(None, Where("cpu", dtype=torch.bfloat16))
    assert "16-bit" in packed.why_off(None, Where("cpu", dtype=torch.float16))
    f32 = packed.why_off(None, Where("cpu", dtype=torch.float32))  # float32 weights: packed wherever the CPU path exists (here: x86-64, oneDNN)
    assert f32 is None if platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available() \
        else "16-bit" not in f32, f32


@pytest.mark.slow
def test_a_bf16_run_saves_the_float32_runs_adapter_format(tiny_roberta, synth_csv, tmp_path):
    """Same params.txt and adapter tensors (names, shapes, float32); the adapter loads on a float32 base with
    plain PEFT; the optimizer state is float32; the log says the dtype and why; lorafit predict's default
    path (merged into float32) gives the plain PEFT model's labels."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained

    runs = {}
    for dt in ("float32", "bfloat16"):
        rec, changed = train_briefly(tiny_roberta, synth_csv, tmp_path / dt, model__dtype=dt,
                                     adapter__train_layernorm="true", speed__fast_dropout="true", adapter__dropout=0.1)
        runs[dt] = (rec, changed)
        assert changed  # trained
    rec16 = runs["bfloat16"][0]
    for state in rec16.optimizer.state_dict()["state"].values():
        assert all(v.dtype == torch.float32 for v in state.values() if torch.is_tensor(v) and v.ndim)
    assert (tmp_path / "float32" / "params.txt").read_text() == (tmp_path / "bfloat16" / "params.txt").read_text()

    def tensors(run):
        with safe_open(str(tmp_path / run / "adapter" / "adapter_model.safetensors"), "pt") as f:
            return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}

    assert tensors("bfloat16") == tensors("float32") and {d for _, d in tensors("bfloat16").values()} == {"F32"}
    assert json.loads((tmp_path / "bfloat16" / "adapter" / "adapter_config.json").read_text())["r"] == 4

    labels = json.loads((tmp_path / "bfloat16" / "labels.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_roberta), num_labels=len(labels))
    plain = PeftModel.from_pretrained(base, str(tmp_path / "bfloat16" / "adapter")).eval()
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    texts = rec16.data.val.texts[:24]
    trained = predict_logits(rec16.acc.unwrap_model(rec16.model).eval(), rec16.tokenizer, texts, 32)
    got = predict_logits(plain, rec16.tokenizer, texts, 32)
    assert abs(got - trained).max() < 0.1
    model, tok, _, _ = load_trained(tmp_path / "bfloat16", merge=True)
    assert next(model.parameters()).dtype == torch.float32
    assert (predict_logits(model, tok, texts, 32).argmax(1) == got.argmax(1)).all()


def test_run_log_says_the_dtype(tiny_roberta, synth_csv, tmp_path):
    from lorafit.train.recipe import Recipe

    for choice, expect in (("bfloat16", "base dtype: bfloat16 (model.dtype: bfloat16); trainable parameters and "
                                        "optimizer state float32"),
                           ("float32", "base dtype: float32 (model.dtype: float32)")):
        lines = []
        cfg = tiny_config(tiny_roberta, synth_csv, model__dtype=choice, data__limit=60)
        Recipe(cfg, tmp_path / choice, log=lines.append).setup().cleanup()
        assert expect in lines, lines
    lines = []
    cfg = tiny_config(tiny_roberta, synth_csv, model__dtype="bfloat16", adapter__method="full", data__limit=60)
    Recipe(cfg, tmp_path / "full", log=lines.append).setup().cleanup()
    assert any(x.startswith("base dtype: float32 (model.dtype: bfloat16, but every parameter trains") for x in lines), lines


def test_nf4_base_trains_and_saves_a_plain_adapter(tiny_roberta, synth_csv, tmp_path):
    """QLoRA through bitsandbytes: it runs 4-bit layers on this CPU (model/nf4.py checks), so CI trains one."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lorafit.model import nf4
    from lorafit.predict import predict_logits

    from lorafit.speed import Where

    assert nf4.why_off(None, Where("cpu")) is None, nf4.why_off(None, Where("cpu"))  # bitsandbytes 0.50's CPU path; if this fails, refuse on CPU
    import bitsandbytes as bnb

    rec, changed = train_briefly(tiny_roberta, synth_csv, tmp_path / "q", model__dtype="nf4")
    assert changed and all("lora_" in n or "classifier" in n for n in changed)
    model = rec.acc.unwrap_model(rec.model)
    # the tiny model's only layers as wide as an NF4 block (64): the FFN outputs; the rest stays bf16
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 2
    labels = json.loads((tmp_path / "q" / "labels.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_roberta), num_labels=len(labels))
    plain = PeftModel.from_pretrained(base, str(tmp_path / "q" / "adapter")).eval()
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    texts = rec.data.val.texts[:16]
    got = predict_logits(plain, rec.tokenizer, texts, 32)
    trained = predict_logits(model.eval(), rec.tokenizer, texts, 32)
    assert abs(got - trained).max() < 0.5  # the float32 base vs its 4-bit copy


def test_auto_dtype_follows_the_probes_figures():
    from lorafit.model.dtype_probe import MARGIN, decide

    dt, why = decide({"float32": 0.030, "bfloat16": 0.010}, " (x)")
    assert dt == torch.bfloat16 and why == ("auto: probe of this model's matmuls (x): float32 30.00 ms, bfloat16 "
                                            "10.00 ms (3.00x): bfloat16 is faster here")
    # an AMX Xeon's 0.90x: bf16 slower, float32 kept; and a win smaller than the margin keeps float32 too
    assert decide({"float32": 0.009, "bfloat16": 0.010})[0] == torch.float32
    assert decide({"float32": 0.0105, "bfloat16": 0.010})[0] == torch.float32
    assert decide({"float32": 0.010 / (1 - MARGIN) + 1e-6, "bfloat16": 0.010})[0] == torch.bfloat16


def test_a_real_probe_is_short_and_states_its_figures():
    import time

    from lorafit.model.dtype_probe import BUDGET_S, MAX_FLOPS, measure, probe_tokens

    assert probe_tokens(768, 3072, 4096) == int(MAX_FLOPS // (2 * 768 * (768 + 2 * 3072)))
    assert probe_tokens(32, 64, 512) == 512 and probe_tokens(32, 64, 1) == 16
    t = time.perf_counter()
    figures = measure(384, 1536, probe_tokens(384, 1536, 1024))
    took = time.perf_counter() - t
    assert set(figures) == {"float32", "bfloat16"} and all(0 < v < BUDGET_S for v in figures.values())
    assert took < 2.5 * BUDGET_S, took  # the budget, with room for a loaded machine's last round


def test_run_log_states_the_probe_when_auto_reaches_it(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    from lorafit.train.recipe import Recipe

    monkeypatch.setattr(base_dtype, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    lines = []
    cfg = tiny_config(tiny_roberta, synth_csv, model__dtype="auto", data__limit=60)
    Recipe(cfg, tmp_path / "auto", log=lines.append).setup().cleanup()
    said = [x for x in lines if x.startswith("base dtype: ")]
    assert len(said) == 1 and "auto: probe of this model's matmuls (256 tokens x 32 @ 32 x 32 / 64, on this CPU): " \
        "float32 " in said[0], said


def test_a_resumed_auto_run_keeps_the_dtype_its_checkpoint_recorded(tiny_roberta, synth_csv, tmp_path, monkeypatch):
    """model.dtype: auto is decided once per run: the checkpoint records the probe's decision and --resume
    trains on it, even where a probe now would decide otherwise (a loaded machine, another CPU)."""
    from lorafit.model import dtype_probe
    from lorafit.train import checkpoint
    from lorafit.train.recipe import Recipe

    class Stop(Exception):
        pass

    class StopAt3(Recipe):
        def _after_step(self, step):
            super()._after_step(step)
            if step == 3:
                raise Stop

    monkeypatch.setattr(base_dtype, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(dtype_probe, "_probe_shapes", lambda *a: (torch.bfloat16, "auto: probe said bfloat16"))
    cfg = tiny_config(tiny_roberta, synth_csv, model__dtype="auto", data__limit=100, train__checkpoint_every=2,
                      train__epochs=1)
    first = []
    with pytest.raises(Stop):
        StopAt3(cfg, tmp_path / "run", log=first.append).setup().train()
    assert "base dtype: bfloat16 (auto: probe said bfloat16)" in "\n".join(first)
    assert json.loads((checkpoint.latest(tmp_path / "run") / "state.json").read_text())["base_dtype"] == "bfloat16"

    monkeypatch.setattr(dtype_probe, "_probe_shapes", lambda *a: (torch.float32, "auto: probe said float32"))
    lines = []
    rec = Recipe(cfg, tmp_path / "run", resume=True, log=lines.append).setup()
    said = [x for x in lines if x.startswith("base dtype: ")]
    assert said == ["base dtype: bfloat16 (auto: bfloat16, as decided when this run started (recorded in its "
                    "checkpoint)); trainable parameters and optimizer state float32"], said
    assert base_dtype.dtype_counts(rec.model).get("bfloat16", 0) > 0
    rec.cleanup()
    fresh = []
    Recipe(cfg, tmp_path / "other", log=fresh.append).setup().cleanup()  # a new run probes again
    assert "base dtype: float32 (auto: probe said float32)" in fresh


def test_auto_is_the_default_and_one_process_probes_a_shape_once(monkeypatch):
    from lorafit.config import ModelConfig
    from lorafit.model import dtype_probe

    assert ModelConfig(name="x").dtype == "auto"
    calls = []
    monkeypatch.setattr(dtype_probe, "measure", lambda *a: calls.append(a) or {"float32": 0.02, "bfloat16": 0.01})
    dtype_probe._probe_shapes.cache_clear()
    first = dtype_probe._probe_shapes(48, 96, 300)
    monkeypatch.setattr(dtype_probe, "measure", lambda *a: calls.append(a) or {"float32": 0.01, "bfloat16": 0.02})
    assert dtype_probe._probe_shapes(48, 96, 300) == first and first[0] == torch.bfloat16 and len(calls) == 1
    assert dtype_probe._probe_shapes(48, 96, 301)[0] == torch.float32 and len(calls) == 2  # another shape: probed
    dtype_probe._probe_shapes.cache_clear()
