"""adapter.method → a PEFT config over exact module names, and the wrapped model.

Targets are resolved here to full module names (e.g. `roberta.encoder.layer.8.attention.self.query`)
so that a misspelt target or an out-of-range layer is an error naming what exists, never a
silently empty adapter, and so that `adapter_config.json` says exactly what was adapted.
"""
from __future__ import annotations

import re

from torch import nn

from ..config import AdapterConfig, RunConfig, suggest
from ..errors import LorafitError
from .heads import HeadPlan

LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def num_layers(model: nn.Module) -> int:
    return int(getattr(model.config, "num_hidden_layers", 0) or 0)


def layer_of(name: str) -> int | None:
    m = LAYER_INDEX.search(name + ".")
    return int(m.group(1)) if m else None


def linear_layer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Linear modules inside the encoder's numbered layers: the places LoRA can go."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and layer_of(n) is not None}


def default_targets(model: nn.Module) -> list[str]:
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table

    found = table.get(getattr(model.config, "model_type", ""))
    if not found:
        names = sorted({n.rsplit(".", 1)[-1] for n in linear_layer_modules(model)})
        raise LorafitError(f"adapter.targets: no default for model type '{model.config.model_type}'; "
                           f"choose from {', '.join(names)}")
    return list(found)


def resolve_targets(model: nn.Module, cfg: AdapterConfig) -> list[str]:
    """Full names of the encoder modules to adapt, checked against what exists."""
    candidates = linear_layer_modules(model)
    n_layers = num_layers(model)
    targets = cfg.targets or default_targets(model)
    layers = cfg.layers
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < n_layers]
        if bad:
            raise LorafitError(f"adapter.layers: {bad} out of range; this model has layers 0..{n_layers - 1}")
    chosen = []
    short = sorted({n.split(".")[-1] for n in candidates} | {".".join(n.split(".")[-2:]) for n in candidates})
    for t in targets:
        hits = [n for n in candidates if n == t or n.endswith("." + t)]
        if not hits:
            guess = suggest(t, short)
            hint = f"did you mean '{guess}'? " if guess else ""
            raise LorafitError(f"adapter.targets: '{t}' matches no linear module in the encoder layers; {hint}"
                               f"names that exist: {', '.join(n for n in short if '.' not in n)}")
        chosen.extend(h for h in hits if layers is None or layer_of(h) in layers)
    return sorted(set(chosen), key=lambda n: list(candidates).index(n))


def peft_config(model: nn.Module, cfg: RunConfig, plan: HeadPlan, total_steps: int | None = None, *, counting: bool = False):
    """The PEFT config for cfg.adapter (None for full fine-tuning)."""
    a = cfg.adapter
    if a.method == "full":
        return None
    from peft import AdaLoraConfig, LoraConfig, TaskType

    targets = resolve_targets(model, a) + plan.lora
    # Own-head plans keep PEFT's sequence-classification wrapper (familiar reload code); other heads
    # use the plain wrapper, because SEQ_CLS would add the whole `classifier` to modules_to_save.
    task = TaskType.SEQ_CLS if not plan.lora and plan.train_full and "classifier" in plan.train_full else None
    common = dict(target_modules=targets, lora_alpha=a.alpha, lora_dropout=a.dropout, bias=a.bias,
                  modules_to_save=plan.saved_in_full or None, task_type=task, use_rslora=a.rslora)
    if a.method == "adalora":
        if a.dora or a.init not in ("default", "gaussian"):
            raise LorafitError("adapter: AdaLoRA does not combine with dora or pissa/olora init")
        steps = total_steps or 1000
        return AdaLoraConfig(init_r=a.adalora.init_r, target_r=a.adalora.target_r, tinit=int(a.adalora.tinit * steps),
                             tfinal=int(a.adalora.tfinal * steps), deltaT=a.adalora.delta_t, total_step=steps, **common)
    if a.r == "auto":
        raise LorafitError("adapter.r: 'auto' must be resolved against budget.max_trainable before building")
    init = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}[a.init]
    if counting:
        init = True  # PiSSA/OLoRA need real weights (SVD/QR); shapes are the same
    return LoraConfig(r=a.r, use_dora=a.dora, init_lora_weights=init, **common)


def wrap(model: nn.Module, cfg: RunConfig, plan: HeadPlan, total_steps: int | None = None, *, counting: bool = False):
    """Apply the adapter; for `full`, everything trains."""
    pc = peft_config(model, cfg, plan, total_steps, counting=counting)
    if pc is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model

    return get_peft_model(model, pc)
