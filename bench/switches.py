"""Which speed switches pay off on this machine? Measure before switching them on (or off).

    python bench/switches.py --model PATH --data PATH/train.csv [--steps 60] [--limit 3000]

Runs lorafit's training loop once per variant (the default path, then each one of VARIANTS asked for),
each in its own process, on the same rows, and reports steady-state training samples/s (steps
after the first evaluation, so compilation and warm-up are excluded) and the wall time of the
whole run (compilation included). Appends a table to --out (bench/RESULTS.md by default).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS = {"default": [], "compile": ["speed.compile=true"], "bf16": ["train.precision=bf16"],
            "bf16_base": ["model.dtype=bfloat16"],
            "torch_dropout": ["speed.fast_dropout=false"], "no_trim": ["speed.trim_heap=false"],
            "full_last_layer": ["speed.last_layer_first_token=false"], "no_huge_pages": [],
            "no_huge_pages_no_trim": ["speed.trim_heap=false"]}
ENV = {"no_huge_pages": {"THP_MEM_ALLOC_ENABLE": "0"}, "no_huge_pages_no_trim": {"THP_MEM_ALLOC_ENABLE": "0"}}
LABELS = {"default": "default (fp32, eager)", "compile": "torch.compile (dynamic shapes)", "bf16": "bf16 autocast",
          "bf16_base": "bf16 frozen base (model.dtype: bfloat16)",
          "torch_dropout": "torch's dropout (speed.fast_dropout: false)",
          "no_trim": "no heap trimming (speed.trim_heap: false)",
          "full_last_layer": "last layer on every token (speed.last_layer_first_token: false)",
          "no_huge_pages": "no huge pages (THP_MEM_ALLOC_ENABLE=0)",
          "no_huge_pages_no_trim": "no huge pages, no trimming"}


def run_variant(spec: dict) -> dict:
    import time

    from lorafit.speed.memory import request_huge_pages

    request_huge_pages()  # as the lorafit command does, before torch loads (a variant's environment may say 0)

    from lorafit.config import load_config
    from lorafit.train.recipe import Recipe

    every = spec["steps"] // 3
    sets = [f"model.name={spec['model']}", f"data.train={spec['data']}", f"data.limit={spec['limit']}",
            "data.val_size=200", f"data.max_length={spec['max_length']}", "adapter.targets=[query, value]", "adapter.r=8",
            "train.batch_size=32", f"train.max_steps={spec['steps']}", f"train.eval_every={every}", "seed=42",
            *spec["sets"]]
    recipe = Recipe(load_config(None, sets), Path(spec["workdir"]), overwrite=True, log=lambda *a: None).setup()
    t = time.perf_counter()
    recipe.train()
    wall = time.perf_counter() - t
    evals = [json.loads(x) for x in (Path(spec["workdir"]) / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    (s0, t0), (s1, t1) = (evals[0]["step"], evals[0]["train_seconds"]), (evals[-1]["step"], evals[-1]["train_seconds"])
    from compare import peak_rss_mb
    return {"steady_sps": (s1 - s0) * 32 / (t1 - t0), "wall_s": wall, "final_loss": evals[-1]["loss"],
            "peak_rss_mb": peak_rss_mb()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=False)
    ap.add_argument("--data", required=False)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--limit", type=int, default=3000)
    ap.add_argument("--max-length", type=int, default=128, help="tokens per item (at most what the model reads)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.spec:
        Path(args.result).write_text(json.dumps(run_variant(json.loads(Path(args.spec).read_text()))))
        return 0
    if not args.model or not args.data:
        ap.error("--model and --data are required")
    from compare import append_section  # same machine line as the main table

    work = Path(tempfile.mkdtemp(prefix="lorafit-switches-"))
    rows = []
    chosen = args.variants.split(",")
    if chosen[0] != "default" or any(v not in VARIANTS for v in chosen):
        ap.error(f"--variants: start with default, then any of {', '.join(VARIANTS)}")
    for i, name in enumerate(chosen):
        sets = VARIANTS[name]
        spec = {"model": args.model, "data": args.data, "limit": args.limit, "steps": args.steps, "sets": sets,
                "max_length": args.max_length,
                "workdir": str(work / f"v{i}")}
        (work / f"v{i}.json").write_text(json.dumps(spec))
        print(f"switches: {name}", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--spec", str(work / f"v{i}.json"),
                               "--result", str(work / f"v{i}.out")], env={**os.environ, **ENV.get(name, {})})
        if proc.returncode:
            rows.append((name, None))
            continue
        rows.append((name, json.loads((work / f"v{i}.out").read_text())))
    base = rows[0][1]
    lines = ["| variant | steady train samples/s | vs default | wall time incl. compile (s) | val loss at end | peak RSS (MB) |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        if r is None:
            lines.append(f"| {LABELS[name]} | failed | | | | |")
            continue
        lines.append(f"| {LABELS[name]} | {r['steady_sps']:.1f} | {r['steady_sps'] / base['steady_sps']:.2f}x | "
                     f"{r['wall_s']:.0f} | {r['final_loss']:.4f} | {r['peak_rss_mb']:.0f} |")
    print(append_section(args.out, "Optional switches on this machine", f"{args.steps} steps of batch 32 on "
                         f"{args.limit} rows; samples/s over the steps after the first third", lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
