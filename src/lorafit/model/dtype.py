"""model.dtype: the dtype the frozen base weights are kept in, while everything that trains stays float32.

The standard LoRA recipe (and the one QLoRA generalises): the frozen base in bfloat16 holds half the
memory and runs its matmuls on the CPU's or GPU's bf16 units, while the adapter, the head and any
trained LayerNorm keep float32 weights, gradients and optimizer state, so small updates are not
rounded away. PEFT's LoRA layers already compute the adapter in its own dtype (they cast the input
to lora_A's dtype and add the result to the base output); this module does the same at the other
seams: a float32 module fed 16-bit states gets them in float32, a trained encoder LayerNorm hands
16-bit states on, and the logits leave the model in float32 for the loss.

Nothing saved changes: the adapter's tensors are the float32 trainables, so an adapter trained on a
bf16 base loads on a float32 base with plain `PeftModel.from_pretrained`.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (oneDNN uses them for bf16 matmuls)


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where that cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve(choice: str, device: torch.device | str) -> tuple[torch.dtype, str]:
    """(dtype of the frozen base, why) for model.dtype on this device; the reason goes in the run log."""
    device = torch.device(device)
    if choice == "nf4":
        return torch.bfloat16, "model.dtype: nf4"  # the Linear layers 4-bit (model/nf4.py), the rest bf16
    if choice != "auto":
        return DTYPES[choice], f"model.dtype: {choice}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: this GPU supports bf16"
        return torch.float32, "auto: this GPU has no bf16"
    if device.type == "cpu":
        have = [f for f in CPU_BF16_FLAGS if f in cpu_flags()]
        if have:
            return torch.bfloat16, f"auto: the CPU has native bf16 dot products ({', '.join(have)})"
        return torch.float32, "auto: the CPU has no native bf16 dot products (avx512_bf16 / amx_bf16)"
    return torch.float32, f"auto: float32 on {device.type}"


def _is_adapter_part(name: str) -> bool:
    # PEFT's own adapter modules (lora_A, lora_B, DoRA magnitudes, ...): PEFT casts around them itself
    return any(part.startswith("lora_") for part in name.split("."))


def _to(dtype: torch.dtype):
    def cast(x):
        return x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() and x.dtype != dtype else x
    return cast


class Hooks:
    """The casts at the seams between the 16-bit base and the float32 trainables; remove() takes them out."""

    def __init__(self):
        self.handles: list = []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def keep_base_in(model: nn.Module, dtype: torch.dtype) -> Hooks:
    """Cast every frozen floating parameter (and floating buffer) to dtype, keep trainable ones float32,
    and hook the seams. A float32 model is left alone (no hooks)."""
    hooks = Hooks()
    if dtype == torch.float32:
        return hooks
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.float() if p.requires_grad else p.data.to(dtype)
    for mod in model.modules():
        for name, b in mod.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(mod, name, b.to(dtype))
    to32, to16 = _to(torch.float32), _to(dtype)
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        if not own or _is_adapter_part(name) or not any(p.dtype == torch.float32 for p in own):
            continue

        def pre(m, args, kwargs):
            return tuple(to32(a) for a in args), {k: to32(v) for k, v in kwargs.items()}

        hooks.handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        if isinstance(mod, nn.LayerNorm) or type(mod).__name__.endswith(("LayerNorm", "RMSNorm")):
            # an encoder norm trained in full: the frozen 16-bit layers after it read its output
            hooks.handles.append(mod.register_forward_hook(lambda m, a, out: to16(out)))
    hooks.handles.append(model.register_forward_hook(_float_logits))
    return hooks


def _float_logits(module, args, out):
    """The loss and the metrics read float32 logits, whatever dtype the last layer computed in."""
    logits = getattr(out, "logits", None)
    if torch.is_tensor(logits) and logits.dtype != torch.float32:
        out.logits = logits.float()
    return out


def dtype_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per (dtype, trainable) — what the run log and the tests read."""
    counts: dict[str, int] = {}
    for p in model.parameters():
        key = f"{str(p.dtype).removeprefix('torch.')}{' trainable' if p.requires_grad else ''}"
        counts[key] = counts.get(key, 0) + p.numel()
    return counts


def decide(model: nn.Module, choice: str, device, tokens: int | None = None) -> tuple[torch.dtype, str]:
    """(dtype of the frozen base, why) for model.dtype: auto on a CPU with bf16 dot products is decided by a
    probe of the model's own matmuls at `tokens` per batch (dtype_probe.py)."""
    dtype, why = resolve(choice, device)
    if choice == "auto" and dtype == torch.bfloat16 and torch.device(device).type == "cpu" and tokens:
        from .dtype_probe import probe

        dtype, why = probe(model, tokens)
    return dtype, why


def decide_for_run(model: nn.Module, choice: str, acc, tokens: int, resumed: dict | None) -> tuple[torch.dtype, str]:
    """decide() for a training run: a resumed run keeps the dtype its checkpoint recorded (a probe now could
    measure differently and change the numbers mid-run); under DDP every process takes the main one's."""
    if choice == "auto" and resumed and resumed.get("base_dtype") in DTYPES:
        name = resumed["base_dtype"]
        return DTYPES[name], f"auto: {name}, as decided when this run started (recorded in its checkpoint)"
    dtype, why = decide(model, choice, acc.device, tokens)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = broadcast_object_list([(str(dtype).removeprefix("torch."), why)], from_process=0)
        dtype, why = DTYPES[box[0][0]], box[0][1]
    return dtype, why


def apply(model: nn.Module, choice: str, device, tokens: int | None = None,
          decided: tuple[torch.dtype, str] | None = None) -> tuple[Hooks, str]:
    """keep_base_in for model.dtype on this device; (hooks, the run-log line). `decided`: a decision already
    taken (a resumed run's, or the main process's under DDP), so every part of one run uses one dtype."""
    dtype, why = decided or decide(model, choice, device, tokens)
    if dtype != torch.float32 and all(p.requires_grad for p in model.parameters() if p.is_floating_point()):
        return Hooks(), f"base dtype: float32 ({why}, but every parameter trains: trainables stay float32)"
    hooks = keep_base_in(model, dtype)
    if choice == "nf4":
        from .nf4 import quantize_frozen_linears

        n = quantize_frozen_linears(model, device)
        return hooks, (f"base dtype: nf4 ({n} frozen Linear layers in 4-bit NormalFloat via bitsandbytes, the rest "
                       "bfloat16); trainable parameters and optimizer state float32")
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.float32:
        return hooks, f"base dtype: float32 ({why})"
    return hooks, f"base dtype: {name} ({why}); trainable parameters and optimizer state float32"
