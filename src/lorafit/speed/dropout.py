"""Cheaper dropout masks for CPU training: the same distribution as torch's dropout, fewer random draws.

On CPU, torch's dropout draws one Bernoulli sample per element with its own generator call; in a
LoRA step of MiniLM-L6 (32 dropout calls: embeddings, attention probabilities, two residual
branches per layer, the LoRA inputs, the head) `aten::bernoulli_` was 22% of the step's time,
more than the frozen forward's matmuls. Here each 64-bit random word gives four 16-bit uniforms; an
element is kept when its uniform is at least p * 65536 (rounded), and kept elements are scaled by
1 / (1 - p') with p' that rounded probability (for p = 0.1: 0.1000061), so the output's expectation is
the input exactly, as with torch's dropout. The words come from numpy's SFC64, which fills memory about
twice as fast as torch's CPU generator (mt19937), seeded per mask by one draw from torch's default
generator: seeding and resumed runs (which restore its state) stay reproducible. The mask is a byte
tensor and is applied by a multiplication: on CPU, torch's ops on boolean tensors (`where`,
`masked_fill`, a bool-to-float cast) run several times slower than a plain multiply.

`install(model, where)` swaps every `nn.Dropout` for `FastDropout` and, for transformers models that
dispatch attention through `ALL_ATTENTION_FUNCTIONS` (BERT, RoBERTa, ...), points them at
`attention`, which is SDPA whenever dropout is off (evaluation, prediction: unchanged results)
and softmax(QK^T)V with this mask on the probabilities when training. On GPUs torch's dropout is a
fused Philox kernel, so `speed.fast_dropout: auto` only installs this on CPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# dropout.py is imported only when a model trains, so transformers is loaded already
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "lorafit_sdpa"  # attention implementation name registered with transformers
_LEVELS = 1 << 16


def keep_probability(p: float) -> float:
    """The exact probability that an element is kept (p rounded to a multiple of 1/65536)."""
    return 1.0 - round(p * _LEVELS) / _LEVELS


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """uint8 mask, 1 with probability keep_probability(p); decided by torch's default generator."""
    n = math.prod(shape)
    seed = int(torch.randint(0, 2 ** 62, (1,)))
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # all 64 bits
    uniforms = words.view(np.int16)[:n]  # four independent 16-bit uniforms per word
    # compared in numpy: its SIMD comparison ran 5x faster than torch's on CPU
    keep = uniforms >= round(p * _LEVELS) - _LEVELS // 2
    return torch.from_numpy(keep.view(np.uint8)).view(shape).to(device)


class _Masked(torch.autograd.Function):
    """x * keep * scale, saving the byte mask (1 byte per element, as torch's dropout does)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _apply(x, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return _apply(grad, keep, ctx.scale), None, None


def _apply(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # x times a uint8 mask, not where(keep, x, 0): where on a boolean mask ran at a fifth of the speed
    out = x * keep
    return out if scale == 1.0 else out.mul_(scale)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True, *, rescale: bool = True) -> torch.Tensor:
    """Dropout with the cheaper mask; rescale=False leaves out the 1 / (1 - p) (the caller applies it)."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    return _Masked.apply(x, keep_mask(x.shape, p, x.device), 1.0 / keep_probability(p) if rescale else 1.0)


class FastDropout(nn.Dropout):
    """nn.Dropout with the cheaper mask; no state, so saved weights and PEFT adapters are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function: SDPA unless training with dropout on a bidirectional layer."""
    if not dropout or kwargs.get("is_causal") or getattr(module, "is_causal", False) or query.shape[1] != key.shape[1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # (batch, heads, length, head_dim), as transformers hands them to SDPA. In-place steps on the
    # (batch, heads, length, length) scores: matmul keeps its inputs for backward, not its output.
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(scale)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend (sdpa_mask's convention)
            # made additive at the mask's size (heads times smaller than the scores): masked_fill_ over
            # the scores is as slow as where; adding min gives min, exp(min - max) = 0 all the same
            attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(
                ~attention_mask, torch.finfo(scores.dtype).min)
        scores.add_(attention_mask)
    # `dropout` is the rate (transformers' name). Its 1 / (1 - p) goes on the output, a tensor
    # length / head_dim times smaller than the probabilities: (P * keep / q) V = ((P * keep) V) / q.
    probs = fast_dropout(scores.softmax(-1), dropout, rescale=False)
    del scores  # softmax keeps its output for backward, not its input
    out = torch.matmul(probs, value)
    if dropout < 1.0:
        out.mul_(1.0 / keep_probability(dropout))
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks SDPA gets


def _swap_dropouts(model: nn.Module, old: type, new: type) -> int:
    """Replace every module of exactly type `old` (subclasses may do something else) by `new`."""
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is old:
                module._modules[name] = new(child.p, child.inplace).train(child.training)
                swapped += 1
    return swapped


def _switch_attention(model: nn.Module, old: str, new: str) -> bool:
    """Point the model's (shared) configs from attention implementation `old` to `new`."""
    configs = {id(m.config): m.config for m in model.modules()
               if getattr(getattr(m, "config", None), "_attn_implementation", None) == old}
    for config in configs.values():
        config._attn_implementation = new
    return bool(configs)


def why_off(model: nn.Module, where) -> str | None:
    """None on CPU, where torch draws one Bernoulli sample per element; elsewhere its fused kernel is fast."""
    return None if where.device_type == "cpu" else f"torch's fused dropout on {where.device_type}"


def install(model: nn.Module, where) -> str:
    """Swap the model's dropouts for FastDropout; returns what changed, for the run log."""
    _register()
    swapped = _swap_dropouts(model, nn.Dropout, FastDropout)
    attention_too = _switch_attention(model, "sdpa", NAME)
    return f"{swapped} dropout layer(s)" + (", attention-probability dropout" if attention_too else "")


def remove(model: nn.Module) -> None:
    """Back to torch's dropout and SDPA (before saving: a saved config must not name lorafit_sdpa)."""
    _swap_dropouts(model, FastDropout, nn.Dropout)
    _switch_attention(model, NAME, "sdpa")
