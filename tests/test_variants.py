"""PEFT variants and trainable LayerNorms: each builds, trains two steps, and reloads exactly."""
import json

import numpy as np
import pandas as pd
import pytest

from conftest import assert_reload_exact, run_cli, train_briefly
from lorafit.predict import predict_logits


VARIANTS = {
    "rslora": dict(adapter__rslora=True),
    "dora": dict(adapter__dora=True),
    "gaussian": dict(adapter__init="gaussian"),
    "pissa": dict(adapter__init="pissa", adapter__targets="[query,key,value,dense]"),
    "olora-rslora": dict(adapter__init="olora", adapter__rslora=True),
    "loraplus": dict(optim__loraplus_ratio=16),
    "adalora": dict(adapter__method="adalora", adapter__adalora__init_r=4, adapter__adalora__target_r=2, adapter__adalora__delta_t=1),
    "layernorm": dict(adapter__train_layernorm=True),
    "layernorm-mean-head": dict(adapter__train_layernorm=True, head__type="mean_linear"),
}


@pytest.mark.parametrize("over", list(VARIANTS.values()), ids=list(VARIANTS))
def test_variant_trains_and_reloads_exactly(over, tiny_bert, synth_csv, tmp_path):
    recipe, changed = train_briefly(tiny_bert, synth_csv, tmp_path / "run", **over)
    assert recipe.state.step == 2
    assert any("lora_B" in n for n in changed), "the adapter did not train"
    if over.get("adapter__train_layernorm"):
        assert any("LayerNorm" in n for n in changed)
    assert_reload_exact(recipe, tmp_path / "run")


@pytest.mark.slow
def test_pissa_saves_plain_lora_that_loads_on_the_original_base(tiny_roberta, synth_csv, tmp_path):
    """PiSSA moves the principal part out of the base weights; the saved adapter is plain LoRA of
    rank 2r (alpha doubled) over the untouched checkpoint: plain peft and `lorafit predict` agree."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    run_dir = tmp_path / "run"
    recipe, _ = train_briefly(tiny_roberta, synth_csv, run_dir, adapter__init="pissa", adapter__alpha=8)
    pc = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert (pc["r"], pc["lora_alpha"], pc["init_lora_weights"]) == (8, 16, True)
    texts, ref = assert_reload_exact(recipe, run_dir)

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_roberta), num_labels=4)
    plain = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    np.testing.assert_allclose(predict_logits(plain, recipe.tokenizer, texts, 32), ref, atol=1e-4)

    inp, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": texts}).to_csv(inp, index=False)
    proc = run_cli("predict", run_dir, "--input", inp, "--output", out, "--with-logits")
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = pd.read_csv(out)
    np.testing.assert_allclose(got[[c for c in got.columns if c.startswith("logit_")]].to_numpy(), ref, atol=1e-4)


def test_loraplus_groups_keep_weight_decay(tiny_bert):
    """LoRA+: B matrices at ratio x lr, A matrices at lr, and optim.weight_decay still applied (peft
    takes it as `loraplus_weight_decay`; passing `weight_decay` alone silently dropped it)."""
    from lorafit.config import load_config
    from lorafit.model import build_model
    from lorafit.train.optim import build_optimizer

    cfg = load_config(None, [f"model.name={tiny_bert}", "optim.loraplus_ratio=16", "optim.lr=1e-3",
                             "optim.weight_decay=0.05", "head.type=cls_linear"])
    model, plan = build_model(cfg, ["a", "b"])
    opt = build_optimizer(model, cfg.optim, plan.train_full)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for g in opt.param_groups:
        for p in g["params"]:
            seen[names[id(p)]] = (g["lr"], g["weight_decay"])
    a = [v for n, v in seen.items() if "lora_A" in n]
    b = [v for n, v in seen.items() if "lora_B" in n]
    assert a and b and set(a) == {(1e-3, 0.05)} and set(b) == {(1.6e-2, 0.05)}


def test_rslora_scales_by_sqrt_rank(tiny_bert):
    from lorafit.config import load_config
    from lorafit.model import build_model

    for rslora, scale in ((False, 16 / 4), (True, 16 / 2)):
        cfg = load_config(None, [f"model.name={tiny_bert}", "adapter.r=4", "adapter.alpha=16", f"adapter.rslora={rslora}"])
        model, _ = build_model(cfg, ["a", "b"])
        layer = next(m for m in model.modules() if isinstance(getattr(m, "scaling", None), dict))
        assert layer.scaling["default"] == pytest.approx(scale)
