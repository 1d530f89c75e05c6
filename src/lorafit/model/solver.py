"""Which LoRA layouts fit the trainable-parameter budget, and the largest rank for one layout.

A layout is: the linear layers that get LoRA (a target set, on all layers or the top half), the
head, whether LayerNorms train, and one rank r for every adapted matrix. Its count is affine in r:

    trainable(r) = head + norms + r * sum(in + out) over adapted linears  [+ sum(out) with DoRA]

read off the model built on the meta device (shapes only, no weights). tests/test_solver.py checks
this closed form against PEFT's own count for each head, target set and option, and `--solve`
builds its pick with PEFT once more before printing it. `adapter.r: auto` (largest_rank) does not
use the closed form at all: it counts PEFT builds at r=1 and r=2 and verifies the result.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import AdapterConfig, RunConfig, validate_config
from ..errors import BudgetError, LorafitError
from .adapters import LAYER_INDEX, default_targets, linear_layer_modules, num_layers, resolve_targets
from .heads import apply_head, encoder_of
from .load import checkpoint_keys, load_base

TARGET_SETS = ("all", "attn", "qv")  # preference: more adapted matrices first (all linear layers do best)
HEADS = ("mean_linear", "cls_linear", "model", "lora_dense")  # preference: cheap heads leave rank to LoRA
MIN_PICK_RANK = 4  # below this, prefer adapting fewer matrices at a higher rank


@dataclass(frozen=True)
class Layout:
    target_set: str                    # all | attn | qv
    targets: tuple[str, ...]           # adapter.targets
    layers: tuple[int, ...] | None     # adapter.layers (None: all layers)
    head: str
    layernorm: bool
    r: int
    trainable: int

    @property
    def layer_text(self) -> str:
        return "all" if self.layers is None else f"{self.layers[0]}-{self.layers[-1]}"

    def describe(self) -> str:
        return (f"LoRA r={self.r} on {self.target_set} [{','.join(self.targets)}], layers {self.layer_text}, "
                f"head {self.head}, layernorm {'trained' if self.layernorm else 'frozen'}")

    def overrides(self) -> list[str]:
        # no spaces: each item must survive a shell as one word
        layers = "null" if self.layers is None else f"[{','.join(map(str, self.layers))}]"
        return [f"adapter.targets=[{','.join(self.targets)}]", f"adapter.layers={layers}", f"adapter.r={self.r}",
                f"head.type={self.head}", f"adapter.train_layernorm={str(self.layernorm).lower()}"]

    def apply(self, cfg: RunConfig) -> RunConfig:
        raw = cfg.model_dump(mode="json")
        raw["adapter"].update(targets=list(self.targets), layers=None if self.layers is None else list(self.layers),
                              r=self.r, train_layernorm=self.layernorm)
        raw["head"]["type"] = self.head
        return validate_config(raw, "solver layout")


# ---------------------------------------------------------------- target sets

def _suffixes(chosen: list[str], everything: list[str]) -> list[str]:
    """Shortest dotted suffix of each chosen path that matches no path outside `chosen`
    (`dense` would also hit intermediate.dense, so attention's is `attention.output.dense`)."""
    hits = lambda s, path: path == s or path.endswith("." + s)
    out: list[str] = []
    for path in chosen:
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            s = ".".join(parts[-k:])
            if all(p in chosen for p in everything if hits(s, p)):
                break
        if s not in out:
            out.append(s)
    return out


def target_sets(model: nn.Module, wide: bool = False) -> dict[str, tuple[str, ...]]:
    """qv: PEFT's default for the model type; attn: every attention linear; all: every linear in
    the encoder layers; wide adds each kind of linear alone (named by its suffix, e.g. query), for
    budgets too small for two. Sets that adapt the same modules are listed once."""
    first: dict[str, str] = {}
    for name in linear_layer_modules(model):
        m = LAYER_INDEX.search(name + ".")
        rel = (name + ".")[m.end():].rstrip(".")
        first.setdefault(rel, name)
    rel = list(first)
    sets = {"all": _suffixes(rel, rel), "attn": _suffixes([r for r in rel if "attn" in r or "attention" in r], rel)}
    try:
        sets["qv"] = default_targets(model)
    except LorafitError:
        pass
    singles = [s for path in rel for s in _suffixes([path], rel)] if wide else []
    out: dict[str, tuple[str, ...]] = {}
    seen: set[frozenset] = set()
    for name in (*TARGET_SETS, *singles):
        targets = sets.get(name) or ([name] if name in singles else None)
        if not targets:
            continue
        hit = frozenset(resolve_targets(model, AdapterConfig(targets=list(targets))))
        # a suffix that also names another kind (BERT's FFN `output.dense` ends attention's too) is not one kind
        if name in singles and len(hit) > num_layers(model):
            continue
        if hit not in seen:
            seen.add(hit)
            out[name] = tuple(targets)
    return out


# ---------------------------------------------------------------- closed form

def params_in(model: nn.Module, modules: list[str]) -> int:
    seen: set[int] = set()
    total = 0
    for name in modules:
        for p in model.get_submodule(name).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def lora_costs(model: nn.Module, modules: list[str], dora: bool) -> tuple[int, int, int]:
    """(parameters per unit of rank, fixed DoRA magnitudes, largest useful rank) of LoRA on these linears."""
    linears = [model.get_submodule(n) for n in modules]
    per_rank = sum(m.in_features + m.out_features for m in linears)
    magnitudes = sum(m.out_features for m in linears) if dora else 0
    cap = min(min(m.in_features, m.out_features) for m in linears)
    return per_rank, magnitudes, cap


def _norm_names(model: nn.Module, head_modules: list[str]) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)
            and not any(n.startswith(h + ".") for h in head_modules)]


def _head_weights_known(cfg: RunConfig, model: nn.Module, lora_modules: list[str]) -> str | None:
    """None when lora_dense's frozen dense layers are in the checkpoint, else why it is left out."""
    keys = checkpoint_keys(cfg.model)
    if keys is None:
        return "left out: lora_dense needs pretrained weights for the head's dense layer, and the checkpoint cannot be " \
               "read without weights (a RoBERTa base checkpoint has none)"
    prefix, _ = encoder_of(model)
    for name in lora_modules:
        if not {f"{name}.weight", f"{name.removeprefix(prefix + '.')}.weight"} & keys:
            return f"left out: the checkpoint has no pretrained {name} (it would stay random)"
    return None


@dataclass(frozen=True)
class _Option:
    """A layout before its rank is chosen: trainable(r) = fixed + r * per_rank, for 1 <= r <= cap."""
    target_set: str
    targets: tuple[str, ...]
    layers: tuple[int, ...] | None
    head: str
    layernorm: bool
    fixed: int
    per_rank: int
    cap: int

    def at(self, r: int) -> Layout:
        return Layout(self.target_set, self.targets, self.layers, self.head, self.layernorm, r, self.fixed + r * self.per_rank)


def _space(cfg: RunConfig, label_names: list[str], wide: bool) -> tuple[list[_Option], list[str]]:
    """Every layout of the solver's space (wide: also each kind of linear alone, and the last layer
    alone), with notes on heads left out and why."""
    a = cfg.adapter
    if a.method != "lora" or a.bias != "none":
        raise LorafitError("budget --solve: lays out LoRA with adapter.bias: none; set adapter.method: lora, adapter.bias: none")
    options: list[_Option] = []
    notes: list[str] = []
    for head in HEADS:
        base = load_base(cfg.model, label_names, weights=False)
        try:
            plan = apply_head(base, head)
        except LorafitError as e:
            notes.append(f"head {head}: {e}")
            continue
        if plan.lora:
            why = _head_weights_known(cfg, base, plan.lora)
            if why:
                notes.append(f"head {head}: {why}")
                continue
        head_params = params_in(base, plan.train_full)
        norm_params = params_in(base, _norm_names(base, plan.train_full))
        n = num_layers(base)
        layer_options = [None] + ([tuple(range(n // 2, n))] if n >= 2 else [])
        if wide and n > 2:
            layer_options.append((n - 1,))
        for set_name, targets in target_sets(base, wide).items():
            for layers in layer_options:
                chosen = AdapterConfig(targets=list(targets), layers=None if layers is None else list(layers))
                per_rank, magnitudes, cap = lora_costs(base, resolve_targets(base, chosen) + plan.lora, a.dora)
                for layernorm in (True, False):
                    fixed = head_params + magnitudes + (norm_params if layernorm else 0)
                    options.append(_Option(set_name, targets, layers, head, layernorm, fixed, per_rank, cap))
    return options, notes


def solve(cfg: RunConfig, label_names: list[str], wide: bool = False) -> tuple[list[Layout], list[str]]:
    """Every layout within budget.max_trainable at its largest rank, largest count first; plus notes
    on options left out and why. wide: see _space (for budgets the usual space does not fit)."""
    budget = cfg.budget.max_trainable
    if budget is None:
        raise LorafitError("budget --solve: set budget.max_trainable (e.g. --set budget.max_trainable=1000000)")
    options, notes = _space(cfg, label_names, wide)
    layouts = [o.at(min(o.cap, (budget - o.fixed) // o.per_rank)) for o in options if o.fixed + o.per_rank <= budget]
    layouts.sort(key=lambda x: (-x.trainable, _preference(x)))
    return layouts, notes


def smallest(cfg: RunConfig, label_names: list[str], wide: bool = False) -> Layout | None:
    """The layout of the space with the fewest trainable parameters (rank 1): what a budget must allow."""
    layouts = [o.at(1) for o in _space(cfg, label_names, wide)[0]]
    return min(layouts, key=lambda x: (x.trainable, _preference(x))) if layouts else None


def _preference(x: Layout) -> tuple:
    # every layer first, then more layers; named sets before single kinds of linear
    rank = TARGET_SETS.index(x.target_set) if x.target_set in TARGET_SETS else len(TARGET_SETS)
    return rank, x.layers is not None, -len(x.layers or ()), HEADS.index(x.head), not x.layernorm


def pick(layouts: list[Layout]) -> Layout | None:
    """Most adapted matrices (all linear layers, every layer), then the cheapest head that reads every
    token (mean pooling), then LayerNorms, at the largest rank that fits, if that rank is at least
    MIN_PICK_RANK; else the same order over whatever fits."""
    good = [x for x in layouts if x.r >= MIN_PICK_RANK] or layouts
    return min(good, key=_preference) if good else None


def count_exact(cfg: RunConfig, label_names: list[str]) -> int:
    """Trainable parameters of cfg as PEFT builds it on the meta device."""
    from . import budget_table

    rows, _ = budget_table(cfg, label_names)
    return sum(r.total for r in rows)


# ---------------------------------------------------------------- adapter.r: auto

def largest_rank(cfg: RunConfig, label_names: list[str]) -> int:
    """The largest uniform rank within budget.max_trainable for cfg's own targets, layers, head and
    options. PEFT's count is affine in r, so builds at r=1 and r=2 give it; the result is built once
    more to confirm."""
    budget = cfg.budget.max_trainable
    if budget is None:
        raise LorafitError("adapter.r: 'auto' needs budget.max_trainable (the rank is the largest that fits it)")
    at = lambda r: cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"r": r})})
    from . import build_model
    from .budget import count_trainable

    model, _ = build_model(at(1), label_names, weights=False)
    c1 = count_trainable(model)
    cap = min(min(m.in_features, m.out_features) for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "in_features"))
    per_rank = count_exact(at(2), label_names) - c1
    if c1 > budget:
        raise BudgetError(f"adapter.r: auto: even rank 1 needs {c1:,} trainable parameters, over the budget of "
                          f"{budget:,}; narrow adapter.targets/layers or choose a smaller head (see `lorafit budget --solve`)")
    r = min(cap, 1 + (budget - c1) // per_rank)
    got = count_exact(at(r), label_names)
    if got > budget or got != c1 + (r - 1) * per_rank:
        raise RuntimeError(f"adapter.r: auto: rank {r} counts {got:,}, not the {c1 + (r - 1) * per_rank:,} expected")
    return r


def resolve_rank(cfg: RunConfig, label_names: list[str]) -> tuple[RunConfig, str | None]:
    """cfg with adapter.r: auto replaced by the largest fitting rank (LoRA only: AdaLoRA starts at
    init_r and full fine-tuning has no rank), and a line saying so."""
    if cfg.adapter.r != "auto" or cfg.adapter.method != "lora":
        return cfg, None
    r = largest_rank(cfg, label_names)
    resolved = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"r": r})})
    return resolved, f"adapter.r: auto -> {r} (largest uniform rank within budget.max_trainable {cfg.budget.max_trainable:,})"


def format_layouts(layouts: list[Layout], notes: list[str], budget: int) -> list[str]:
    """One line per layout; heads of equal cost (cls_linear, mean_linear) share a line."""
    rows: dict[tuple, list[str]] = {}
    for x in layouts:
        rows.setdefault((x.trainable, x.target_set, x.targets, x.layer_text, x.r, x.layernorm), []).append(x.head)
    width = max([len(f"{k[1]} [{','.join(k[2])}]") for k in rows] + [7])
    lines = [f"layouts within budget.max_trainable {budget:,} (exact trainable counts, largest first):",
             f"  {'trainable':>11}  {'targets':<{width}}  {'layers':<6}  {'r':>4}  {'layernorm':<9}  head"]
    for (n, set_name, targets, layers, r, layernorm), heads in rows.items():
        t = f"{set_name} [{','.join(targets)}]"
        lines.append(f"  {n:>11,}  {t:<{width}}  {layers:<6}  {r:>4}  {'yes' if layernorm else 'no':<9}  {' | '.join(heads)}")
    lines += [f"note: {n}" for n in notes]
    return lines
