"""Count trainable parameters per module, format the table, refuse an over-budget setup."""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BudgetError

_LAYER = re.compile(r"\.(layer|layers|h|block|blocks)\.(\d+)\.")


@dataclass
class Row:
    module: str       # with layer indices folded: encoder.layer.{0-11}.attention.self.query.lora_A
    per_layer: int
    layers: list[int]

    @property
    def total(self) -> int:
        return self.per_layer * max(1, len(self.layers))


def _clean(name: str) -> str:
    """Parameter name → module path without PEFT's bookkeeping segments (they say nothing about where)."""
    name = name.removeprefix("base_model.model.")
    for junk in (".modules_to_save.default.", ".original_module.", ".default."):
        name = name.replace(junk, ".")
    return name.rsplit(".", 1)[0]


def _span(layers: list[int]) -> str:
    if not layers:
        return ""
    s = sorted(layers)
    return f"{s[0]}-{s[-1]}" if s == list(range(s[0], s[-1] + 1)) and len(s) > 1 else ",".join(map(str, s))


def trainable_rows(model: nn.Module) -> list[Row]:
    """One row per module kind, layer indices folded: `encoder.layer.{0-11}.attention.self.query.lora_A`."""
    per_module: "OrderedDict[str, int]" = OrderedDict()
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = _clean(name)
            per_module[key] = per_module.get(key, 0) + p.numel()
    groups: "OrderedDict[tuple[str, int], list[int]]" = OrderedDict()
    for module, n in per_module.items():
        m = _LAYER.search(module + ".")
        if m:
            folded = module[: m.start()] + f".{m.group(1)}.*." + (module + ".")[m.end():]
            groups.setdefault((folded.rstrip("."), n), []).append(int(m.group(2)))
        else:
            groups.setdefault((module, n), [])
    return [Row(mod.replace(".*", f".{{{_span(ls)}}}") if ls else mod, n, ls) for (mod, n), ls in groups.items()]


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_all(model: nn.Module) -> int:
    """Parameters of the model as used; PEFT's frozen originals of `modules_to_save` are not counted twice."""
    return sum(p.numel() for n, p in model.named_parameters() if ".original_module." not in n)


def format_table(rows: list[Row], total_params: int, budget: int | None) -> str:
    trainable = sum(r.total for r in rows)
    width = max([len(r.module) for r in rows] + [len("parameter")])
    lines = [f"{'parameter':<{width}}  {'each':>10}  {'x':>3}  {'total':>11}"]
    lines += [f"{r.module:<{width}}  {r.per_layer:>10,}  {max(1, len(r.layers)):>3}  {r.total:>11,}" for r in rows]
    pct = 100.0 * trainable / total_params if total_params else 0.0
    lines.append(f"model parameters: {total_params:,} ({pct:.3f}% trainable)")
    lines.append(f"trainable: {trainable:,} / budget: {'none' if budget is None else f'{budget:,}'}")
    return "\n".join(lines)


def check_budget(rows: list[Row], budget: int | None) -> None:
    trainable = sum(r.total for r in rows)
    if budget is None or trainable <= budget:
        return
    top = sorted(rows, key=lambda r: -r.total)[:3]
    biggest = ", ".join(f"{r.module} {r.total:,}" for r in top)
    raise BudgetError(f"budget.max_trainable: {trainable:,} trainable parameters exceed the budget of {budget:,} "
                      f"by {trainable - budget:,}; biggest: {biggest}. Lower adapter.r, narrow adapter.targets/layers, "
                      "or choose a smaller head (see `lorafit budget --solve`)")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}
