"""The layers of a mixed base (infer/mixed.py): a frozen Linear or LayerNorm shared by every run over
one base, with each run's own LoRA product or norm applied to that run's rows, and a run's head.

A forward's rows are sorted by run into segments (slot, first row, end row), set per thread in a
Route (serve's streams compute side by side over one base), read by every wrapped layer."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


class Route(threading.local):
    """The forward running in this thread (serve's streams compute side by side): its segments, and
    whether its last layer runs on the first token only."""
    segments: tuple = ()
    first_token: bool = False


class MultiLoraLinear(nn.Module):
    """A frozen Linear shared by every run, plus each run's LoRA product on its rows."""

    def __init__(self, base: nn.Linear, route: Route):
        super().__init__()
        self.base, self.route = base, route
        self.loras: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot -> (Aᵀ, scale·Bᵀ)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for slot, s, e in self.route.segments:
            lora = self.loras.get(slot)
            if lora is not None:
                a, b = lora
                rows = y[s:e].view(-1, y.shape[-1])  # a view: rows of a contiguous output
                rows.addmm_(x[s:e].reshape(-1, x.shape[-1]) @ a, b)
        return y


class MultiLayerNorm(nn.Module):
    """A LayerNorm whose weight and bias some runs trained: those runs' rows use their own."""

    def __init__(self, base: nn.LayerNorm, route: Route):
        super().__init__()
        self.base, self.route = base, route
        self.own: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot -> (weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for slot, s, e in self.route.segments:
            own = self.own.get(slot)
            if own is not None:
                y[s:e] = F.layer_norm(x[s:e], self.base.normalized_shape, own[0], own[1], self.base.eps)
        return y


@dataclass
class Head:
    """One run's head: pool (first token or masked mean), optionally dense + tanh (BERT's pooler,
    RoBERTa's classifier.dense; with the run's LoRA when head.type is lora_dense), then the output layer."""
    pool: str
    out: tuple[torch.Tensor, torch.Tensor]
    dense: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    dense_lora: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    first_token: bool = False  # reads the first token only, and the run allows speed.last_layer_first_token

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            x = hidden[:, 0]
        else:  # heads.Pool's masked mean
            m = mask.to(hidden.dtype).unsqueeze(-1)
            x = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.dense is not None:
            h = F.linear(x, *self.dense)
            if self.dense_lora is not None:
                h = h + (x @ self.dense_lora[0]) @ self.dense_lora[1]
            x = torch.tanh(h)
        return F.linear(x, *self.out)
