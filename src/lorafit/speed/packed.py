"""Linear layers on oneDNN's prepacked weights, for prediction on CPU.

nn.Linear on CPU hands the weight to MKL's sgemm in its plain row-major layout on every call.
oneDNN's matmul with the weight reordered once into its own blocked layout (what torch.compile's CPU
freezing pass does) ran the same fp32 products 1.2-1.5x faster on this project's 2-core AMD EPYC
(AVX-512), and MiniLM's prediction 1.2-1.35x faster (bench/predict_speed.py). Same math in fp32;
only the order of float sums differs (tests/test_packed.py: logits equal to 1e-5, labels identical).
The cost is a second copy of the Linear weights while predicting (43 MB for MiniLM-L6, 340 MB for
roberta-base).

Inference only: the packed copy is made once, after loading, and is not updated if the weight
changes. The weight parameter stays, so state_dict and saving see nothing new, and a call with
gradients enabled takes nn.Linear's own path (correct gradients, no speed-up). `remove` undoes it.
"""
from __future__ import annotations

import platform
import types

import torch
from torch import nn
from torch.nn import functional as F


def why_off(model: nn.Module, where) -> str | None:
    """None when packing applies on this device (where.device) and weight dtype (where.dtype), else the reason."""
    if where.dtype_name != "float32":
        return f"{where.dtype_name} (16-bit) weights: torch already runs them on oneDNN"
    if where.device_type != "cpu":
        return f"device {where.device}: packed weights are a CPU (oneDNN) path"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{platform.machine()} processor: measured on x86-64 only"
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return "this torch build has no oneDNN, or torch.backends.mkldnn.enabled is False"
    if not all(hasattr(torch.ops.mkldnn, op) for op in ("_reorder_linear_weight", "_linear_pointwise")):
        return "this torch version has no oneDNN linear ops"
    return None


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
        return F.linear(x, self.weight, self.bias)  # the packed op has no backward
    return torch.ops.mkldnn._linear_pointwise(x, self._lorafit_packed, self.bias, "none", [], "")


def _packable(m: nn.Module) -> bool:
    # Exactly nn.Linear: subclasses (quantised, PEFT's) have their own forward to keep.
    return type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"


def install(model: nn.Module, where) -> str:
    """Pack every plain fp32 CPU nn.Linear of the model; says how many. With where.shared (runs over one
    base), a weight already packed for another run is shared, not packed again."""
    pool = {} if where.shared is None else where.shared  # data_ptr -> (weight, its packed copy)
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if _packable(m):
                key = m.weight.data_ptr()
                if key not in pool:  # the weight is kept beside its copy, so its data_ptr stays taken
                    # batch size hint None: one layout for every batch shape (measured as fast as a fixed hint)
                    pool[key] = (m.weight, torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None))
                m._lorafit_packed = pool[key][1]
                m.forward = types.MethodType(_forward, m)
                n += 1
    return f"{n} Linear layer(s) on prepacked oneDNN weights"


def remove(model: nn.Module) -> None:
    for m in model.modules():
        if "_lorafit_packed" in m.__dict__:
            del m._lorafit_packed, m.forward
