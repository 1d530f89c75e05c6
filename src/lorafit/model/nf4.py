"""model.dtype: nf4 — QLoRA: the frozen base's Linear layers in 4-bit NormalFloat (bitsandbytes).

Every frozen `nn.Linear` becomes a `bitsandbytes.nn.Linear4bit` (NF4 blocks of 64 with their scales,
computing in bfloat16); the rest of the frozen base is kept in bfloat16 and the trainables in float32
(model/dtype.py), and LoRA sits on top of the 4-bit layers exactly as on the float ones (PEFT's lora
Linear calls its base layer, whatever it is). The saved adapter is plain PEFT: it loads on a float32
base with `PeftModel.from_pretrained`.

On CPU, bitsandbytes 0.50 dequantises each layer's weight in PyTorch at every call (its faster CPU
kernel is downloaded from the hub by the `kernels` package, which lorafit keeps from loading unless
LORAFIT_HUB_KERNELS=1: see lorafit/__init__.py): it runs and saves memory, but is slower than bf16 there.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from ..errors import LorafitError

BLOCK = 64  # bitsandbytes' NF4 block: one scale per 64 weights along the input dimension


def why_off(model, where) -> str | None:
    """None when bitsandbytes runs NF4 layers (forward and backward) on where.device, else why not. Not a
    speed switch (4-bit weights change the numbers), but checked with the speed switches' signature
    (lorafit.speed.Where); the model plays no part."""
    return _probe(where.device_type)


@functools.lru_cache(maxsize=None)
def _probe(device_type: str) -> str | None:
    try:
        import bitsandbytes as bnb
    except Exception as e:  # not installed, or its native library fails to load
        return f"bitsandbytes cannot be imported ({type(e).__name__}: {str(e)[:120]}); pip install bitsandbytes"
    try:
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.bfloat16, quant_type="nf4").to(device_type)
        x = torch.randn(2, 64, dtype=torch.bfloat16, device=device_type, requires_grad=True)
        layer(x).float().sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            return f"bitsandbytes {bnb.__version__} gives no finite input gradient through a 4-bit layer on {device_type}"
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return f"bitsandbytes {bnb.__version__} does not run 4-bit layers on {device_type} ({first})"
    return None


def quantize_frozen_linears(model: nn.Module, device: torch.device | str) -> int:
    """Replace every frozen plain nn.Linear whose input width is a multiple of BLOCK (PEFT's LoRA base layers
    included) by an NF4 Linear4bit on device; returns how many."""
    import bitsandbytes as bnb

    from ..speed import Where

    device = torch.device(device)
    reason = why_off(model, Where(device))
    if reason is not None:
        raise LorafitError(f"model.dtype: nf4 needs bitsandbytes' 4-bit layers, and {reason}; use bfloat16 instead")
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or child.weight.requires_grad or child.in_features % BLOCK:
                continue  # trainable, or narrower than NF4's blocks (bitsandbytes' CPU packing needs whole blocks): bf16
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4")
            q.load_state_dict(child.state_dict())
            q.requires_grad_(False)
            setattr(parent, name, q.to(device))  # bitsandbytes quantises on the move to the device
            n += 1
    return n
