"""Which prediction switches pay off on this machine? Prediction speed of one finished run, per variant.

    python bench/predict_speed.py --run RUN_DIR --data FILE.csv [--limit 2000] [--batch 64] [--repeats 3]

Loads the run as `lorafit predict` does (merged weights, last layer on the first token, Linear layers on
prepacked oneDNN weights), then with one switch off at a time, and the plain unmerged model. Each
variant predicts the first --limit texts of --data in length-sorted batches; the variants take turns,
--repeats times, so a slow spell of the machine hits them alike, and the best time counts. Reports
samples/s, the ratio to the default and whether its labels equal the plain model's; appends a table
to --out (bench/RESULTS.md by default).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

VARIANTS = {  # name: load_trained keywords
    "default (as lorafit predict)": {"merge": True},
    "no packed weights (speed.packed_inference: false)": {"merge": True, "packed": False},
    "full last layer (speed.last_layer_first_token: false)": {"merge": True, "first_token": False},
    "plain unmerged model": {"merge": False, "first_token": False, "packed": False},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished lorafit run directory")
    ap.add_argument("--data", required=True, help="CSV/JSONL/Parquet with the run's text column(s)")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()

    from lorafit.speed.memory import request_huge_pages

    request_huge_pages()  # as the lorafit command does, before torch loads
    import numpy as np

    from compare import append_section
    from lorafit.predict import predict_logits, read_inputs
    from lorafit.runs.weights import load_trained
    from lorafit.runs.directory import read_run

    cfg, _ = read_run(args.run)
    texts = read_inputs(args.data, cfg.data, allow_pickle=False)[2][: args.limit]
    models = {name: load_trained(args.run, **kw)[:2] for name, kw in VARIANTS.items()}
    best = {name: float("inf") for name in models}
    labels = {}
    for name, (model, tok) in models.items():  # warm-up: first calls allocate and pick kernels
        predict_logits(model, tok, texts[: args.batch], cfg.data.max_length, args.batch)
    for _ in range(args.repeats):
        for name, (model, tok) in models.items():
            t = time.perf_counter()
            labels[name] = predict_logits(model, tok, texts, cfg.data.max_length, args.batch).argmax(-1)
            best[name] = min(best[name], time.perf_counter() - t)
    default, plain = next(iter(models)), list(models)[-1]
    lines = ["| variant | predict samples/s | vs default | labels equal the plain model's |", "|---|---|---|---|"]
    for name in models:
        sps = len(texts) / best[name]
        lines.append(f"| {name} | {sps:.1f} | {best[default] / best[name]:.2f}x | "
                     f"{bool(np.array_equal(labels[name], labels[plain]))} |")
    print(append_section(args.out, "Prediction switches on this machine", f"{len(texts)} texts, batches of "
                         f"{args.batch} sorted by length; best of {args.repeats} turns per variant", lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
