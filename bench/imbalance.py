"""Class imbalance and calibration on a real encoder: MiniLM-L6 on an imbalanced AG News sample.

    python bench/imbalance.py [--model DIR] [--data ../shared/data/agnews/train.csv] [--counts 2000,400,200,100]

Training rows: a seeded sample of the four classes in --counts proportions (World, Sports, Business,
Sci/Tech; default 20:4:2:1); validation: a stratified 10% of it (as imbalanced); test: a disjoint
balanced set of --test-per-class rows per class. One row per imbalance setting (none, class weights
balanced, balanced sampler), the seeds' recipe (configs/agnews-minilm-offline.yaml: LoRA r=8 q/v +
own head), --epochs epochs, train.metric macro_f1. Prints a markdown table: test accuracy, macro-F1,
MCC, and the expected calibration error before/after the temperature fitted on validation.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"
ROWS = [("none", []), ("class_weights: balanced", ["train.class_weights=balanced"]),
        ("sampler: balanced", ["train.sampler=balanced"])]


def main() -> int:
    from quality import default_model  # same folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--counts", default="2000,400,200,100", help="training+validation rows per class, labels 0..3")
    ap.add_argument("--test-per-class", type=int, default=250)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args()

    from lorafit.speed.memory import request_huge_pages

    request_huge_pages()
    import pandas as pd

    from lorafit.config import load_config
    from lorafit.train.run import run_training

    frame = pd.read_csv(args.data).sample(frac=1.0, random_state=args.seed)
    counts = [int(c) for c in args.counts.split(",")]
    train_parts, test_parts = [], []
    for label, n in enumerate(counts):
        rows = frame[frame["label"] == label]
        test_parts.append(rows.iloc[: args.test_per_class])
        train_parts.append(rows.iloc[args.test_per_class: args.test_per_class + n])
    runs = Path(args.runs or tempfile.mkdtemp(prefix="lorafit-imbalance-"))
    runs.mkdir(parents=True, exist_ok=True)
    train, test = runs / "train.csv", runs / "test.csv"
    pd.concat(train_parts).sample(frac=1.0, random_state=args.seed).to_csv(train, index=False)
    pd.concat(test_parts).to_csv(test, index=False)

    lines = ["| setting | test accuracy | test macro-F1 | test MCC | T | test ECE before → after | val ECE before → after |",
             "|---|---|---|---|---|---|---|"]
    commands = []
    for what, extra in ROWS:
        sets = [f"model.name={args.model}", f"data.train={train}", f"data.test={test}", "data.val_size=0.1",
                f"train.epochs={args.epochs:g}", "train.metric=macro_f1", f"seed={args.seed}", *extra]
        out = runs / what.split(":")[0].replace(" ", "_")
        commands.append(f"lorafit train --config configs/agnews-minilm-offline.yaml --out {out} --overwrite "
                        + " ".join(f"--set {shlex.quote(s)}" for s in sets))
        print(f"imbalance: {what}", flush=True)
        r = run_training(load_config(ROOT / "configs" / "agnews-minilm-offline.yaml", sets), out, overwrite=True,
                         log=lambda *a: None)
        t, c = r["test"], r["calibration"]
        lines.append(f"| {what} | {t['accuracy']:.4f} | {t['macro_f1']:.4f} | {t['mcc']:.4f} | {c['temperature']:.3f} | "
                     f"{c['test']['ece_before']:.4f} → {c['test']['ece_after']:.4f} | "
                     f"{c['validation']['ece_before']:.4f} → {c['validation']['ece_after']:.4f} |")
    print(f"\ntrain+val rows per class {counts} (World, Sports, Business, Sci/Tech), test {args.test_per_class} per "
          f"class, {args.epochs:g} epoch(s), seed {args.seed}\n")
    print("\n".join(lines))
    print("\n" + "\n".join(commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
