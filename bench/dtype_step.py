"""float32 vs bfloat16 frozen base (model.dtype), one training step at a time, interleaved in one process.

    python bench/dtype_step.py --model PATH --data PATH/train.csv [--rounds 6] [--steps 5] [--probes 1]

It first runs model.dtype: auto's probe (model/dtype_probe.py) --probes times at this batch's tokens, so
the probe's decision can be read beside the training steps' measured ratio.
On a shared, busy machine two runs one after the other measure the load as much as the code; here
both models (the compare recipe: LoRA r=8 q/v, batch 32, <= 128 tokens, dynamic padding, the last
layer on the first token as lorafit trains) take turns, --steps optimizer steps each per round, on the
same batches, so the ratio is what the dtype changes. Prints samples/s per dtype (median of the rounds),
the ratio, peak RSS growth per model, and the matmul rate reached (forward + input gradients of the
encoder's Linear layers: 4 x params x tokens per step; the frozen base computes no weight gradients).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps per model per round")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--probes", type=int, default=1, help="times to run model.dtype: auto's probe (dtype_probe.py) first")
    args = ap.parse_args()

    import pandas as pd
    import torch

    from lorafit.config import load_config
    from lorafit.data.batches import Collator
    from lorafit.model import build_model, load_tokenizer
    from lorafit.model import dtype as base_dtype
    from lorafit.speed import Where, apply, first_token

    frame = pd.read_csv(args.data).sample(n=args.steps * 32 * 2, random_state=0)
    names = sorted(map(str, frame["label"].unique()))
    label_of = {n: i for i, n in enumerate(names)}
    models = {}
    for dt in args.dtypes.split(","):
        cfg = load_config(None, [f"model.name={args.model}", "adapter.r=8", "adapter.alpha=16", "adapter.dropout=0.1",
                                 "adapter.targets=[query, value]", f"model.dtype={dt}"])
        torch.manual_seed(0)
        model, _ = build_model(cfg, names)
        _, note = base_dtype.apply(model, dt, "cpu")
        apply(first_token, model, Where("cpu", cfg))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
        models[dt] = (model.train(), opt, note)
        print(note)
    tok = load_tokenizer(cfg.model)
    ids = tok(frame["text"].astype(str).tolist(), truncation=True, max_length=128)["input_ids"]
    collate = Collator(tok.pad_token_id)
    batches = [collate([(ids[i], label_of[str(frame["label"].iloc[i])]) for i in range(s, s + 32)])
               for s in range(0, len(ids), 32)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    linear = sum(m.weight.numel() for n, m in models[next(iter(models))][0].named_modules()
                 if isinstance(m, torch.nn.Linear) and ".layer." in n and "lora_" not in n)

    from lorafit.model.dtype_probe import probe  # what model.dtype: auto would decide here, beside the steps

    for r in range(args.probes):
        print(f"probe {r + 1}: {probe(models[next(iter(models))][0], int(tokens))[1]}")

    def step(model, opt, batch):
        batch = dict(batch)
        labels = batch.pop("labels")
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for dt, (model, opt, _) in models.items():  # warm-up: oneDNN primitives, allocator
        step(model, opt, batches[0])
    times = {dt: [] for dt in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))  # alternate who goes first
        for dt in order:
            model, opt, _ = models[dt]
            t = time.perf_counter()
            for i in range(args.steps):
                step(model, opt, batches[(r * args.steps + i) % len(batches)])
            times[dt].append(time.perf_counter() - t)
    print(f"\n{torch.__version__}, {torch.get_num_threads()} threads; {len(batches)} batches of 32, "
          f"{tokens:.0f} real tokens per batch (dynamic padding); {args.rounds} rounds x {args.steps} steps\n")
    print("| base dtype | train samples/s (median of rounds) | vs float32 | matmul GFLOP/s (4 x params x tokens) |")
    print("|---|---|---|---|")
    ref = None
    for dt, ts in times.items():
        per_step = statistics.median(ts) / args.steps
        sps = 32 / per_step
        ref = ref or sps
        print(f"| {dt} | {sps:.1f} | {sps / ref:.2f}x | {4 * linear * tokens / per_step / 1e9:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
