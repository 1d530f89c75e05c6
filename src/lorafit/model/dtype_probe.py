"""model.dtype: auto on a CPU: bfloat16 only where this machine runs this model's matmuls faster in it.

CPU flags say a bf16 dot-product instruction exists (avx512_bf16, amx_bf16), not that it wins: at the
small matrices of a small encoder, oneDNN's bf16 path pays for reordering weights and converting
activations, and an AMX Xeon once trained 0.90x as fast in bf16 as in float32 (an AMX tile only pays off
on large blocks). So `auto` measures: the encoder's own Linear shapes (tokens x hidden @ hidden x hidden,
tokens x hidden @ hidden x intermediate, and the input gradient of the latter) at a typical number of
tokens per batch, float32 and bfloat16 in turn, within about a second; the run log states the figures.
`decide` is the pure rule (tested with given figures), `measure` the timing."""
from __future__ import annotations

import functools
import time

import torch

BUDGET_S = 1.0      # the whole probe, warm-up included
MAX_TOKENS = 2048   # rows of the probe's activations: past this the ratio no longer changes, the time does
MAX_FLOPS = 2e9     # per round: a large model probes fewer tokens, so the probe stays within BUDGET_S
MARGIN = 0.10       # bf16 must be this much faster: the probe leaves out the casts at the seams (model/dtype.py)


def decide(figures: dict[str, float], what: str = "") -> tuple[torch.dtype, str]:
    """(dtype, why) from the seconds one round of the shapes took in each dtype: bfloat16 only when it
    is faster by MARGIN or more."""
    f32, bf16 = figures["float32"], figures["bfloat16"]
    speedup = f32 / bf16 if bf16 > 0 else 0.0
    said = (f"auto: probe of this model's matmuls{what}: float32 {f32 * 1e3:.2f} ms, bfloat16 {bf16 * 1e3:.2f} ms "
            f"({speedup:.2f}x)")
    if speedup >= 1 / (1 - MARGIN):
        return torch.bfloat16, said + ": bfloat16 is faster here"
    return torch.float32, said + f": bfloat16 is not {MARGIN:.0%} faster here, float32 kept"


def _round(tensors) -> float:
    x, w_h, w_i, g = tensors
    t = time.perf_counter()
    x @ w_h
    x @ w_i
    g @ w_i.T
    return time.perf_counter() - t


def probe_tokens(hidden: int, intermediate: int, tokens: int) -> int:
    """The tokens a probe round uses: the run's, within MAX_TOKENS and MAX_FLOPS, at least 16."""
    per_token = 2 * hidden * (hidden + 2 * intermediate)
    return int(max(16, min(tokens, MAX_TOKENS, MAX_FLOPS // per_token)))


def measure(hidden: int, intermediate: int, tokens: int, budget_s: float = BUDGET_S) -> dict[str, float]:
    """Seconds per round of the model's matmul shapes, per dtype: the fastest of rounds taken in turn
    (float32, bfloat16, float32, ...) until budget_s is spent, so both see the same load."""
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(tokens, hidden, generator=gen), torch.randn(hidden, hidden, generator=gen),
            torch.randn(hidden, intermediate, generator=gen), torch.randn(tokens, intermediate, generator=gen)]
    sets = {"float32": base, "bfloat16": [t.to(torch.bfloat16) for t in base]}
    best = {k: float("inf") for k in sets}
    start = time.perf_counter()
    with torch.no_grad():
        for tensors in sets.values():  # warm-up: oneDNN picks and caches its kernels on the first call
            _round(tensors)
        for _ in range(50):
            before = time.perf_counter()
            for name, tensors in sets.items():
                best[name] = min(best[name], _round(tensors))
            now = time.perf_counter()
            if now + (now - before) - start > budget_s:  # the next pair would end past the budget
                break
    return best


def probe(model, tokens: int) -> tuple[torch.dtype, str]:
    """decide(measure(...)) for a transformers model (its config's hidden and intermediate sizes)."""
    cfg = model.config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "dim", None)
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "hidden_dim", None) or 4 * hidden
    return _probe_shapes(int(hidden), int(inter), probe_tokens(int(hidden), int(inter), tokens))


@functools.lru_cache(maxsize=None)
def _probe_shapes(hidden: int, inter: int, tokens: int) -> tuple[torch.dtype, str]:
    # once per process and shape: the seeds of one `lorafit train --seeds` (and a sweep's trials) then train
    # on one dtype, whatever the load did to a second probe's figures
    figures = measure(hidden, inter, tokens)
    return decide(figures, f" ({tokens} tokens x {hidden} @ {hidden} x {hidden} / {inter}, on this CPU)")
