"""Model assembly: base encoder + head plan + adapter, and the budget table."""
from __future__ import annotations

from torch import nn

from ..config import RunConfig
from .adapters import wrap
from .budget import Row, check_budget, count_all, format_table, trainable_rows
from .heads import HeadPlan, apply_head
from .load import load_base, load_tokenizer


def layernorm_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]


def build_model(cfg: RunConfig, label_names: list[str], *, weights: bool = True, total_steps: int | None = None):
    """Base model with the configured head and adapter; only the intended parameters train.
    weights=False builds on the meta device (counting only)."""
    base = load_base(cfg.model, label_names, weights=weights)
    plan = head_plan(base, cfg)
    return wrap(base, cfg, plan, total_steps, counting=not weights), plan


def head_plan(base: nn.Module, cfg: RunConfig) -> HeadPlan:
    plan = apply_head(base, cfg.head.type)
    if cfg.adapter.train_layernorm:
        plan.norms = [n for n in layernorm_names(base) if not any(n.startswith(h + ".") for h in plan.train_full)]
    return plan


def budget_table(cfg: RunConfig, label_names: list[str]) -> tuple[list[Row], int]:
    """Trainable rows and total parameter count, from config.json alone."""
    model, _ = build_model(cfg, label_names, weights=False)
    return trainable_rows(model), count_all(model)


__all__ = ["build_model", "budget_table", "check_budget", "format_table", "trainable_rows", "load_tokenizer", "HeadPlan"]
