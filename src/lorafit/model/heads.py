"""Classification heads: which modules form the head, how it is trained, and head surgery.

A head choice yields a HeadPlan: modules trained in full (PEFT `modules_to_save`, saved with
the adapter) and modules that get LoRA. The same `apply_head` runs at training and at reload,
so a reloaded model has exactly the trained structure.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import LorafitError

NEW_WEIGHTS_ATTR = "lorafit_new_weights"  # set by load_base: parameter names the checkpoint did not have


@dataclass
class HeadPlan:
    train_full: list[str] = field(default_factory=list)   # head modules (full names), trained and saved in full
    lora: list[str] = field(default_factory=list)         # head modules (full names) that get LoRA
    norms: list[str] = field(default_factory=list)        # encoder LayerNorms trained in full (adapter.train_layernorm)

    @property
    def saved_in_full(self) -> list[str]:
        """PEFT modules_to_save: head and norms, saved whole with the adapter."""
        return self.train_full + self.norms


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
        # the attention mask of the forward running in each thread, set by a pre-hook on the model: per
        # thread, since lorafit serve's streams run one model's forwards side by side (one shared mask
        # let a forward pool over another's mask: wrong logits for some rows)
        self._masks: dict[int, torch.Tensor | None] = {}

    @property
    def mask(self) -> torch.Tensor | None:
        return self._masks.get(threading.get_ident())

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        self._masks[threading.get_ident()] = value

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return hidden[:, 0]
        if self.mask is None or self.mask.shape != hidden.shape[:2]:
            return hidden.mean(1)  # called without a mask: every token is real
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


def _capture_mask(model: nn.Module) -> None:
    """Hand each forward's attention mask to every Pool in the model. Looked up per call, not
    captured once: PEFT's modules_to_save trains a deep copy of the head, whose Pool is a
    different object (capturing the original left the trained copy without a mask)."""
    def hook(module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        for m in module.modules():
            if isinstance(m, Pool):
                m.mask = mask
    model.register_forward_pre_hook(hook, with_kwargs=True)


def _require_pretrained(model: nn.Module, module: str) -> None:
    """lora_dense freezes the dense layer: it must come from the checkpoint. A freshly initialised one
    would stay random, and since frozen weights are not saved with the adapter, a reload would draw
    different random weights (wrong logits). `load_base` records what the checkpoint lacked."""
    new = getattr(model, NEW_WEIGHTS_ATTR, None)
    if new is not None and f"{module}.weight" in new:
        raise LorafitError(f"head.type: lora_dense keeps {module} frozen, but {model.name_or_path} has no pretrained "
                           f"weights for it (it would stay random); use head.type: model (trains it), mean_linear "
                           f"or cls_linear")


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
            _require_pretrained(model, "classifier.dense")
            return HeadPlan(train_full=["classifier.out_proj"], lora=["classifier.dense"])
        if pooler is not None and isinstance(getattr(pooler[1], "dense", None), nn.Linear):
            _require_pretrained(model, f"{pooler[0]}.dense")
            return HeadPlan(train_full=[n for n in own_head_modules(model) if n != pooler[0]], lora=[f"{pooler[0]}.dense"])
        raise LorafitError(f"head.type: lora_dense needs a head with a dense layer (RoBERTa or BERT); "
                           f"{type(model).__name__} has none; use head.type: model")
    if head_type in ("cls_linear", "mean_linear"):
        mode = "cls" if head_type == "cls_linear" else "mean"
        drop = getattr(cfg, "classifier_dropout", None) or getattr(cfg, "hidden_dropout_prob", 0.1)
        if roberta_like:
            head = PoolLinear(cfg.hidden_size, cfg.num_labels, mode, drop)
            model.classifier = head.to(classifier.out_proj.weight.device)
            _capture_mask(model)
            return HeadPlan(train_full=["classifier"])
        if pooler is not None and isinstance(classifier, nn.Linear):
            pool = Pool(mode)
            prefix, enc = encoder_of(model)
            enc.pooler = pool
            _capture_mask(model)
            return HeadPlan(train_full=["classifier"])
        raise LorafitError(f"head.type: {head_type} supports RoBERTa- and BERT-style heads; {type(model).__name__} "
                           "is neither; use head.type: model")
    raise LorafitError(f"head.type: unknown head '{head_type}'")
