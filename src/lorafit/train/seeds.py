"""`lorafit train --seeds 0,1,2`: one run per seed, then mean ± sd of every metric.

All seeds share one validation set: data.split_seed is pinned to the config's split seed (its
`seed` unless set), so the spread measures training (initialisation, data order, dropout), not
which items happened to land in validation.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from ..errors import LorafitError
from ..io import atomic_write_text

METRICS = ("accuracy", "macro_f1", "mcc", "loss", "micro_f1", "subset_accuracy", "pearson", "spearman", "rmse")  # those a run has


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise LorafitError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise LorafitError(f"--seeds {text!r}: give distinct seeds, e.g. --seeds 0,1,2")
    return seeds


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    from ..data.examples import split_seed

    pinned = split_seed(cfg.data, cfg.seed)
    return cfg.model_copy(update={"seed": seed, "data": cfg.data.model_copy(update={"split_seed": pinned})})


def summarize(runs: dict[int, dict]) -> dict:
    """{'seeds': [...], 'metrics': {'validation.accuracy': {mean, sd, values}, ...}} over the runs' results."""
    out: dict = {"seeds": list(runs), "metrics": {}}
    first = next(iter(runs.values()))
    keys = [f"{split}.{m}" for split in ("validation", "test") if split in first for m in METRICS]
    keys += ["wall_seconds", "train_seconds"]
    for key in keys:
        values = [_get(r, key) for r in runs.values()]
        if any(v is None for v in values):
            continue
        m, sd = mean_sd(values)
        out["metrics"][key] = {"mean": m, "sd": sd, "values": values}
    out["trainable"] = first["trainable"]
    return out


def _get(result: dict, key: str):
    node = result
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def format_summary(summary: dict) -> str:
    lines = [f"| metric | mean ± sd over seeds {', '.join(map(str, summary['seeds']))} | values |", "|---|---|---|"]
    for key, s in summary["metrics"].items():
        digits = 1 if key.endswith("seconds") else 4
        vals = ", ".join(f"{v:.{digits}f}" for v in s["values"])
        lines.append(f"| {key} | {s['mean']:.{digits}f} ± {s['sd']:.{digits}f} | {vals} |")
    return "\n".join(lines)


def run_seeds(cfg: RunConfig, seeds: list[int], out: str | Path, *, overwrite: bool = False,
              log: Callable = print, command: str | None = None) -> dict:
    """Train each seed into OUT/seed-N; write OUT/seeds.json and OUT/seeds.md; return the summary.
    OUT is a folder of runs, not a run: overwrite replaces each OUT/seed-N that is a run (refusing,
    before any training, one that is not) and rewrites seeds.json/seeds.md; nothing else in OUT is touched."""
    from ..runs.directory import check_run_dir, is_run_dir
    from . import tracking
    from .run import run_training

    out = Path(out)
    taken = [out / f"seed-{s}" for s in seeds if is_run_dir(out / f"seed-{s}")]
    if taken and not overwrite:  # checked before the first seed trains, not when the second one starts
        raise LorafitError(f"{taken[0]}: run directory already exists; pass --overwrite or choose another --out")
    for s in seeds:
        check_run_dir(out / f"seed-{s}", overwrite=overwrite, resume=False)
    runs: dict[int, dict] = {}
    for s in seeds:
        log(f"seed {s}: training into {out / f'seed-{s}'}")
        t0 = time.perf_counter()
        with tracking.group(out.name, out, f"seed-{s}", seed=s, group=out.name):  # one MLflow experiment
            result = run_training(seed_config(cfg, s), out / f"seed-{s}", overwrite=overwrite, log=log)
        result["wall_seconds"] = time.perf_counter() - t0
        result["train_seconds"] = _train_seconds(out / f"seed-{s}")
        runs[s] = result
    summary = summarize(runs)
    summary["runs"] = {s: f"seed-{s}" for s in seeds}
    if int(os.environ.get("RANK", "0")) != 0:  # under DDP every process trained; one writes
        return summary
    table = format_summary(summary)
    head = [f"# {len(seeds)} seeds", "", f"- trainable parameters: {summary['trainable']:,}",
            "- one validation set for all seeds (data.split_seed pinned); sd is the sample standard deviation"]
    if command:
        head.append(f"- command: `{command}`")
    atomic_write_text(out / "seeds.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "seeds.md", "\n".join(head + ["", table, ""]))
    log(table)
    return summary


def _train_seconds(run_dir: Path) -> float | None:
    """Training time without evaluations, from the last evaluation's record."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in rows if r.get("type") == "eval"]
    return evals[-1].get("train_seconds") if evals else None
