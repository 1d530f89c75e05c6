"""Classification heads: which modules form the head, how it is trained, and head surgery.

A head choice yields a HeadPlan: modules trained in full (PEFT `modules_to_save`, saved with
the adapter) and modules that get LoRA. The same `apply_head` runs at training and at reload,
so a reloaded model has exactly the trained structure.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import LorafitError


@dataclass
class HeadPlan:
    train_full: list[str] = field(default_factory=list)   # full module names, trained and saved in full
    lora: list[str] = field(default_factory=list)         # full module names that get LoRA


def encoder_of(model: nn.Module) -> tuple[str, nn.Module]:
    prefix = getattr(model, "base_model_prefix", "")
    enc = getattr(model, prefix, None)
    if not isinstance(enc, nn.Module):
        raise LorafitError(f"model: {type(model).__name__} has no encoder attribute '{prefix}'; unsupported architecture")
    return prefix, enc


def _pooler(model: nn.Module) -> tuple[str, nn.Module] | None:
    prefix, enc = encoder_of(model)
    pooler = getattr(enc, "pooler", None)
    return (f"{prefix}.pooler", pooler) if isinstance(pooler, nn.Module) else None


def own_head_modules(model: nn.Module) -> list[str]:
    """The model's own head: every top-level child with parameters except the encoder, plus the
    encoder's pooler when there is one (BERT's head reads the pooler's output)."""
    prefix, _ = encoder_of(model)
    names = [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]
    pooler = _pooler(model)
    if pooler is not None:
        names.append(pooler[0])
    return names


class Pool(nn.Module):
    """First-token or masked-mean pooling of (batch, tokens, hidden) states. Parameter-free."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.mask: torch.Tensor | None = None  # set per forward by a pre-hook on the model

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls" or self.mask is None:
            return hidden[:, 0]
        m = self.mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class PoolLinear(nn.Module):
    """Replaces a RoBERTa-style head (which receives all token states): pool, dropout, linear."""

    def __init__(self, hidden: int, num_labels: int, mode: str, dropout: float):
        super().__init__()
        self.pool = Pool(mode)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, num_labels)

    def forward(self, features: torch.Tensor, **_) -> torch.Tensor:
        return self.out_proj(self.dropout(self.pool(features)))


def _capture_mask(model: nn.Module, pool: Pool) -> None:
    def hook(_module, args, kwargs):
        mask = kwargs.get("attention_mask")
        pool.mask = mask
    model.register_forward_pre_hook(hook, with_kwargs=True)


def apply_head(model: nn.Module, head_type: str) -> HeadPlan:
    """Reshape the head in place (if needed) and say what trains. Runs identically at reload."""
    cfg = model.config
    classifier = getattr(model, "classifier", None)
    roberta_like = isinstance(getattr(classifier, "dense", None), nn.Linear) and hasattr(classifier, "out_proj")
    pooler = _pooler(model)
    if head_type == "model":
        return HeadPlan(train_full=own_head_modules(model))
    if head_type == "lora_dense":
        if roberta_like:
            return HeadPlan(train_full=["classifier.out_proj"], lora=["classifier.dense"])
        if pooler is not None and isinstance(getattr(pooler[1], "dense", None), nn.Linear):
            return HeadPlan(train_full=[n for n in own_head_modules(model) if n != pooler[0]], lora=[f"{pooler[0]}.dense"])
        raise LorafitError(f"head.type: lora_dense needs a head with a dense layer (RoBERTa or BERT); "
                           f"{type(model).__name__} has none; use head.type: model")
    if head_type in ("cls_linear", "mean_linear"):
        mode = "cls" if head_type == "cls_linear" else "mean"
        drop = getattr(cfg, "classifier_dropout", None) or getattr(cfg, "hidden_dropout_prob", 0.1)
        if roberta_like:
            head = PoolLinear(cfg.hidden_size, cfg.num_labels, mode, drop)
            model.classifier = head.to(classifier.out_proj.weight.device)
            _capture_mask(model, head.pool)
            return HeadPlan(train_full=["classifier"])
        if pooler is not None and isinstance(classifier, nn.Linear):
            pool = Pool(mode)
            prefix, enc = encoder_of(model)
            enc.pooler = pool
            _capture_mask(model, pool)
            return HeadPlan(train_full=["classifier"])
        raise LorafitError(f"head.type: {head_type} supports RoBERTa- and BERT-style heads; {type(model).__name__} "
                           "is neither; use head.type: model")
    raise LorafitError(f"head.type: unknown head '{head_type}'")
