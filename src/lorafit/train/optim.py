"""Optimizer with tiered layer-wise learning rates, and the warmup + decay schedule (cosine, linear,
constant, step)."""
from __future__ import annotations

import math
from functools import partial

import torch

from ..config import OptimConfig
from ..errors import LorafitError
from ..model.adapters import layer_of


def _optimizer_cls(cfg: OptimConfig):
    return {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}[cfg.name]


def _kwargs(cfg: OptimConfig) -> dict:
    if cfg.name == "adamw":
        return {"betas": tuple(cfg.betas), "eps": cfg.eps}
    if cfg.name == "sgd":
        return {"momentum": cfg.momentum}
    return {"momentum": cfg.momentum, "eps": cfg.eps}


def lr_for(name: str, cfg: OptimConfig, head_modules: list[str]) -> float:
    """Head → head_lr; a layer inside a tier → the tier's lr; else the base lr."""
    clean = name.replace("base_model.model.", "").replace(".modules_to_save.default", "")
    if cfg.head_lr is not None and any(clean.startswith(h + ".") for h in head_modules):
        return cfg.head_lr
    layer = layer_of(clean)
    for tier in cfg.layer_lrs:
        if layer is not None and tier.layers[0] <= layer <= tier.layers[1]:
            return tier.lr
    return cfg.lr


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, head_modules: list[str]) -> torch.optim.Optimizer:
    if cfg.loraplus_ratio is not None:
        if cfg.layer_lrs or cfg.head_lr is not None:
            raise LorafitError("optim.loraplus_ratio: LoRA+ sets its own groups; drop optim.layer_lrs / optim.head_lr")
        from peft.optimizers import create_loraplus_optimizer

        # peft reads weight decay from `loraplus_weight_decay`; a plain `weight_decay` would be overridden by
        # its per-group default of 0 (every group sets its own), i.e. silently dropped
        return create_loraplus_optimizer(model=model, optimizer_cls=_optimizer_cls(cfg), lr=cfg.lr,
                                         loraplus_lr_ratio=cfg.loraplus_ratio, loraplus_weight_decay=cfg.weight_decay,
                                         **_kwargs(cfg))
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # no decay on biases, norms and DoRA magnitudes: decaying a scale towards 0 is not regularisation
        wd = 0.0 if p.ndim < 2 else cfg.weight_decay
        groups.setdefault((lr_for(name, cfg, head_modules), wd), []).append(p)
    param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return _optimizer_cls(cfg)(param_groups, lr=cfg.lr, **_kwargs(cfg))


def warmup_steps(cfg: OptimConfig, total: int) -> int:
    return int(cfg.warmup) if cfg.warmup >= 1 else int(math.ceil(cfg.warmup * total))


def _step_lambda(step: int, *, warmup: int, size: int, factor: float) -> float:
    """The lr multiplier of schedule step: StepLR's factor ** (step // size), ramped up by the warmup."""
    ramp = step / warmup if step < warmup else 1.0
    return ramp * factor ** (step // size)


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total: int, steps_per_epoch: int = 1):
    """Linear warmup, then cosine / linear decay to 0, constant (transformers' schedules), or step decay.
    Each is a LambdaLR over the optimizer step, so a checkpoint's scheduler state (the step) restores it
    exactly; the multiplier is a partial of a module function, as transformers' are, so that state_dict
    holds no code."""
    from transformers import get_scheduler

    warmup = min(warmup_steps(cfg, total), total)
    if cfg.schedule == "step":
        size = steps_per_epoch if cfg.step_size == "epoch" else cfg.step_size
        return torch.optim.lr_scheduler.LambdaLR(opt, partial(_step_lambda, warmup=warmup, size=max(1, size),
                                                              factor=cfg.step_factor))
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule]
    return get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
