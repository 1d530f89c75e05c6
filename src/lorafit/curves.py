"""curves.png: what happened at every logged step — the training loss (raw and smoothed), the
learning rate, the gradient norm where recorded — and the validation metrics at every evaluation,
on one step axis, so a one-epoch run shows its whole curve rather than one point."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def latest_per_step(rows: list[dict], kind: str) -> list[dict]:
    """Rows of one type, one per step (the last written: a resumed run may log a step twice), by step."""
    by_step = {r["step"]: r for r in rows if r.get("type") == kind and "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def smooth(values, points: int | None = None) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing) over about a tenth of the points."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return v
    w = 1 - 1 / max(2.0, (points or len(v)) / 10)
    out, avg = np.empty_like(v), 0.0
    for i, x in enumerate(v):
        avg = w * avg + (1 - w) * x
        out[i] = avg / (1 - w ** (i + 1))
    return out


def step_curves(rows: list[dict], metrics: tuple[str, ...] = ("accuracy", "macro_f1")) -> dict[str, tuple[list, list]]:
    """The plotted series, name -> (steps, values); metrics: the validation scores (the task's own)."""
    train, evals = latest_per_step(rows, "train"), latest_per_step(rows, "eval")
    steps = [r["step"] for r in train]
    out = {"train loss": (steps, [r["loss"] for r in train]),
           "train loss (smoothed)": (steps, list(smooth([r["loss"] for r in train]))),
           "learning rate": (steps, [r["lr"] for r in train])}
    norms = [(r["step"], r["grad_norm"]) for r in train if r.get("grad_norm") is not None]
    if norms:
        out["gradient norm"] = ([s for s, _ in norms], [g for _, g in norms])
    es = [r["step"] for r in evals]
    for key in ("loss", *metrics):
        out[f"validation {key}"] = (es, [r.get(key) for r in evals])
    return out


def plot_step_curves(rows: list[dict], path: Path,
                     metrics: tuple[str, ...] = ("accuracy", "macro_f1")) -> dict[str, tuple[list, list]]:
    """Draw curves.png; returns the series drawn."""
    s = step_curves(rows, metrics)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    ax1.plot(*s["train loss"], "-", color="tab:blue", alpha=0.3, lw=1, label="train (each logged step)")
    ax1.plot(*s["train loss (smoothed)"], "-", color="tab:blue", lw=2, label="train (smoothed)")
    ax1.plot(*s["validation loss"], "s-", color="tab:orange", label="validation")
    ax1.set_ylabel("loss")
    ax2.plot(*s["learning rate"], "-", color="tab:green", label="learning rate")
    ax2.set_ylabel("learning rate")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if "gradient norm" in s:
        twin = ax2.twinx()
        twin.plot(*s["gradient norm"], "-", color="tab:gray", alpha=0.6, lw=1, label="gradient norm")
        twin.set_ylabel("gradient norm (before clipping)")
        twin.legend(loc="upper right")
    for key, style in zip(metrics, ("o-", "s--", "^:", "d-.")):
        ax3.plot(*s[f"validation {key}"], style, label=f"validation {key.replace('_', ' ')}")
    ax3.set_ylabel("metric")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left" if ax is ax2 else "best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return s
