"""Calibrated probabilities, single-label: temperature scaling (Guo et al. 2017), the expected
calibration error, and the reliability diagram.

At the end of training one temperature T is fitted on the validation logits by minimising their
negative log-likelihood (torch's LBFGS over log T, float64); probabilities are then
softmax(logits / T). T > 1 softens an over-confident model, T < 1 sharpens an under-confident one;
the predicted label never changes. T is saved in RUN/calibration.json (what `lorafit predict
--probs` reads); eval.json's `calibration` and report.md give the ECE and NLL before (T = 1) and
after, and calibration.png the reliability diagram.

ECE: 15 equal-width bins of the top-class probability, sum over bins of (items in bin / n) *
|accuracy in bin - mean confidence in bin|. On validation it is measured on the items T was
fitted on (in-sample); data.test, when given, is the out-of-sample check.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LorafitError

BINS = 15
FEW = 10  # a reliability bin with fewer items is greyed out: one item moves its accuracy 10 points or more
FILE, PLOT = "calibration.json", "calibration.png"
FILES = (FILE, PLOT)
# a validation set the model gets all right pulls T towards 0 (ever sharper is ever better on it):
# bounded, and said so, rather than saving a temperature that makes every probability 0 or 1
T_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities of softmax(logits / T), in float64, each row summing to 1."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    return float(F.cross_entropy(z, torch.as_tensor(np.asarray(labels, dtype=np.int64))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (logits, labels), within T_RANGE."""
    if len(labels) == 0:
        return 1.0
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.clamp(lo - 1, hi + 1).exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, T_RANGE[0]), T_RANGE[1]) if math.isfinite(t) else 1.0


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width confidence bin (lo, hi]: items, mean top-class probability, accuracy."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        n = int(sel.sum())
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n,
                    "confidence": float(conf[sel].mean()) if n else None,
                    "accuracy": float(correct[sel].mean()) if n else None})
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error over equal-width bins of the top-class probability."""
    n = len(labels)
    if n == 0:
        return 0.0
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, labels, bins) if b["n"]))


def split_summary(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    return {"n": int(len(labels)),
            "ece_before": ece(softmax(logits), labels), "ece_after": ece(softmax(logits, temperature), labels),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature)}


@dataclass
class Calibrated:
    """The fitted temperature, its summary for eval.json, and what the reliability diagram shows."""
    temperature: float
    summary: dict
    splits: dict = field(default_factory=dict)  # name -> (logits, labels)

    def write(self, run_dir: Path) -> None:
        from .io import atomic_write_text

        record = {k: self.summary[k] for k in ("temperature", "fitted_on", "method", "bins")}
        atomic_write_text(Path(run_dir) / FILE, json.dumps(record, indent=2) + "\n")
        name = "test" if "test" in self.splits else "validation"
        plot_reliability(*self.splits[name], self.temperature, Path(run_dir) / PLOT, name)


def fit(val: Sequence[np.ndarray], test: Optional[Sequence[np.ndarray]] = None, *,
        seen_in_training: bool = False, held_out: Optional[Sequence[np.ndarray]] = None) -> Calibrated:
    """Fit T on the validation (logits, labels); measure before/after on validation and test. When the
    validation items were trained on (train.final_on_val) they would fit a T too sharp: T is fitted on
    `held_out`, the same items' logits from the best checkpoint before they were trained on, or stays 1."""
    fit_on = held_out if seen_in_training else val
    if fit_on is None:
        t, fitted_on = 1.0, None
    else:
        t = fit_temperature(*fit_on)
        fitted_on = "validation, before the final epoch on train+validation" if seen_in_training else "validation"
    summary = {"temperature": t, "fitted_on": fitted_on, "method": "temperature scaling: NLL minimised by LBFGS",
               "bins": BINS, "validation": split_summary(*val, t)}
    if seen_in_training and held_out is None:
        summary["note"] = ("not fitted: the validation items were trained on (train.final_on_val), so the "
                           "probabilities are the plain softmax (T = 1)")
    elif len(fit_on[1]) and (np.asarray(fit_on[0]).argmax(1) == np.asarray(fit_on[1])).all():
        summary["note"] = ("every validation item is predicted right, so the fitted temperature can only sharpen the "
                           "probabilities; it says little about new data (a larger data.val_size helps)")
    elif t in T_RANGE:
        summary["note"] = f"the fitted temperature reached its bound {t}: the validation set is too small to fit it"
    splits = {"validation": tuple(val)}
    if test is not None:
        summary["test"] = split_summary(*test, t)
        splits["test"] = tuple(test)
    return Calibrated(t, summary, splits)


def read_temperature(run_dir: str | Path) -> Optional[float]:
    """The run's saved temperature; None for a run trained before calibration was saved."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        return None
    try:
        t = json.loads(path.read_text(encoding="utf-8"))["temperature"]
    except (ValueError, KeyError, TypeError):
        raise LorafitError(f"{path}: not a lorafit calibration file (no 'temperature'); delete it to use the plain "
                           "softmax, or train the run again") from None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0 < t < math.inf):
        raise LorafitError(f"{path}: temperature {t!r} is not a positive number; delete the file to use the plain softmax")
    return float(t)


def plot_reliability(logits: np.ndarray, labels: np.ndarray, temperature: float, path: Path, split: str) -> None:
    """Write calibration.png (reliability_figure)."""
    import matplotlib.pyplot as plt

    fig = reliability_figure(logits, labels, temperature, split)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_figure(logits: np.ndarray, labels: np.ndarray, temperature: float, split: str):
    """Accuracy against confidence per bin, before (T = 1) and after temperature scaling, each bin's item
    count written over it and drawn in a strip below: a bin of 2 items at 100% looked as solid as one of
    2,000. Bins under FEW items are grey (their accuracy moves 10 points or more per item); a bin's shade
    deepens with its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(2, 2, figsize=(10, 5.6), sharex=True, sharey="row", gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / BINS
    panels = (("before (T = 1)", 1.0), (f"after (T = {temperature:.3g})", temperature))
    for (ax, strip), (title, t) in zip(axes.T, panels):
        probs = softmax(logits, t)
        filled = [r for r in reliability(probs, labels) if r["n"]]
        most = max([r["n"] for r in filled], default=1)
        for r in filled:
            few = r["n"] < FEW
            shade = "lightgray" if few else "tab:blue"
            alpha = 1.0 if few else 0.35 + 0.65 * math.sqrt(r["n"] / most)  # sqrt: a 1% bin stays visible
            ax.bar(r["lo"], r["accuracy"], width=width, align="edge", edgecolor="black", color=shade, alpha=alpha)
            if not few:  # hatched, not filled: visible above and inside the accuracy bar
                ax.bar(r["lo"], r["confidence"] - r["accuracy"], width=width, align="edge", bottom=r["accuracy"],
                       facecolor="none", hatch="//", edgecolor="tab:red")
            ax.text(r["lo"] + width / 2, max(r["accuracy"], r["confidence"]) + 0.02, f"n={r['n']:,}", rotation=90,
                    ha="center", va="bottom", fontsize=7, color="dimgray" if few else "black")
            strip.bar(r["lo"], r["n"], width=width, align="edge", edgecolor="black", color=shade)
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.25)  # room for the counts over a bar at 100%
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title(f"{title}: ECE {ece(probs, labels):.4f}")
        ax.grid(alpha=0.3)
        strip.set_yscale("log")  # most items sit in the top bin; a bin of 3 must still show
        strip.set_xlabel("confidence (top-class probability)")
        strip.grid(alpha=0.3)
    axes[0, 0].set_ylabel(f"accuracy ({split}, n={len(labels):,})")
    axes[1, 0].set_ylabel("items per bin")
    fig.legend(handles=[Patch(color="tab:blue", label="accuracy (darker: more items)"),
                        Patch(facecolor="none", hatch="//", edgecolor="tab:red", label="gap to the confidence"),
                        Patch(color="lightgray", label=f"under {FEW} items: too few to read"),
                        Line2D([], [], color="black", ls="--", lw=1, label="perfect calibration")],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))  # the legend below the panels, where it hides no bar
    return fig
