"""Export speed: `lorafit predict` against the ONNX export in ONNX Runtime, fp32 and int8, side by side.

    python bench/export_speed.py --run RUN_DIR [--data FILE] [--limit 2000] [--batch 64] [--repeats 3]

Exports the run with `lorafit export --format onnx --quantize int8` (into a temporary folder, with
the check at export on the same texts), then predicts the same texts three ways, in the same
length-sorted batches: lorafit's own path (as `lorafit predict`: merged weights, last layer on the
first token, prepacked Linear weights), ONNX Runtime on model.onnx and on model.int8.onnx (default
session options: all graph optimisations, one thread per core). The three take turns --repeats
times, so a slow spell of a busy machine hits them alike; the best time counts. Reports samples/s,
the ratio to lorafit and the share of labels equal to lorafit's; appends a table to --out
(bench/RESULTS.md by default). Without --data, the texts are the run's validation texts.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished lorafit run directory")
    ap.add_argument("--data", help="CSV/JSONL/Parquet with the run's text column(s) (default: its validation texts)")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()

    from lorafit.speed.memory import request_huge_pages

    request_huge_pages()  # as the lorafit command does, before torch loads
    import numpy as np

    from compare import append_section
    from lorafit.export import ExportSettings, export_run
    from lorafit.export import onnx as ox
    from lorafit.export.check import check_texts
    from lorafit.infer import engine
    from lorafit.infer.loaded import load_run
    from lorafit.runs.directory import read_run

    cfg, _ = read_run(args.run)
    texts = check_texts(Path(args.run), cfg, args.data)[1][: args.limit]
    with tempfile.TemporaryDirectory(prefix="lorafit-export-bench-") as tmp:
        t = time.perf_counter()
        manifest = export_run(ExportSettings(args.run, "onnx", Path(tmp) / "onnx", quantize="int8", min_agreement=1.0,
                                             check=args.data), log=print)
        export_s = time.perf_counter() - t
        loaded = load_run(args.run)
        cfg = loaded.cfg
        folder = Path(tmp) / "onnx"
        on = {"lorafit predict (torch)": loaded,  # the same engine on each backend: the runtimes alone differ
              "ONNX Runtime fp32": loaded.with_session(ox.session(folder / "model.onnx")),
              "ONNX Runtime int8 (dynamic quantisation)": loaded.with_session(ox.session(folder / "model.int8.onnx"))}
        runners = {name: (lambda r: lambda: engine.logits(r, texts, batch_size=args.batch))(r) for name, r in on.items()}
        best = {name: float("inf") for name in runners}
        labels = {}
        for run in runners.values():  # warm-up: first calls allocate and pick kernels
            run()
        for _ in range(args.repeats):
            for name, run in runners.items():
                t = time.perf_counter()
                labels[name] = run().argmax(-1)
                best[name] = min(best[name], time.perf_counter() - t)
    ref = next(iter(runners))
    lines = ["| path | samples/s | vs lorafit predict | labels equal to lorafit's |", "|---|---|---|---|"]
    for name in runners:
        agree = float(np.mean(labels[name] == labels[ref]))
        lines.append(f"| {name} | {len(texts) / best[name]:.1f} | {best[ref] / best[name]:.2f}x | {100 * agree:.2f}% |")
    detail = (f"{len(texts)} texts ({manifest['check']['texts']}), max_length {cfg.data.max_length}, batches of "
              f"{args.batch} sorted by length; best of {args.repeats} turns per path; export with its checks took "
              f"{export_s:.0f} s; fp32 check: max |logit diff| {manifest['check']['max_abs_diff']:.2e}")
    print(append_section(args.out, "Export: lorafit predict vs ONNX Runtime fp32 / int8", detail, lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
