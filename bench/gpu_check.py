"""GPU check: roberta-base (random weights), LoRA r=8 on query/value, bf16, batch 32 — lorafit vs the notebook.

    python bench/gpu_check.py [--config-dir ../shared/models/roberta-base-config] [--steps 120] [--warmup 20]
    python bench/gpu_check.py --smoke --config-dir TINY_MODEL_DIR      # CPU, a few steps: the test's mode

Speed depends on shapes, not on trained values, so the model is built from config.json alone. Inputs
are AG News-length (token counts drawn from --lengths, default mean ~57 like AG News under RoBERTa's
tokenizer, at most 128). Two sides, one after the other in this process, the same batches:

- notebook: HF Trainer + PEFT, `bf16=True` (autocast over a float32 model), every item padded to 128;
- lorafit: its model path (build_model, model.dtype bfloat16: frozen base in bf16, LoRA and head
  float32; last layer on the first token), dynamic padding, float32 AdamW.

Prints samples/s (steps after --warmup), peak GPU memory (torch.cuda.max_memory_allocated) and
model-FLOPs utilisation: 6 x params x real tokens per step for the notebook's full-precision-equivalent
count would overstate LoRA, so both use 4 x (encoder Linear params) x tokens computed (forward and
input gradients; the frozen base computes no weight gradients), over the GPU's dense bf16 peak
(--peak-tflops, default from the device name). Well under 10 minutes on one GPU in all.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def random_model_dir(config_dir: Path, out: Path) -> Path:
    """config.json (+ tokenizer files if any) and random safetensors weights: what lorafit loads."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModel

    out.mkdir(parents=True, exist_ok=True)
    for f in config_dir.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(out, safe_serialization=True)
    return out


def make_batches(n: int, batch: int, vocab: int, mean_len: int, max_len: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = (torch.randn(batch, generator=g) * 0.3 * mean_len + mean_len).clamp(8, max_len).long()
        ids = torch.randint(5, vocab, (batch, max_len), generator=g)
        mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask + 1 * (1 - mask), "attention_mask": mask,
                    "labels": torch.randint(0, 4, (batch,), generator=g)})
    return out


def lorafit_side(model_dir: Path, batches, device, steps: int, warmup: int) -> dict:
    import torch

    from lorafit.config import load_config
    from lorafit.model import build_model
    from lorafit.model import dtype as base_dtype
    from lorafit.speed import Where, apply, first_token

    dtype = "bfloat16" if device.type == "cuda" else "auto"
    cfg = load_config(None, [f"model.name={model_dir}", "adapter.r=8", "adapter.alpha=16", "adapter.dropout=0.1",
                             "adapter.targets=[query, value]", f"model.dtype={dtype}"])
    torch.manual_seed(0)
    model, _ = build_model(cfg, ["a", "b", "c", "d"])
    _, note = base_dtype.apply(model, dtype, device)
    apply(first_token, model, Where(device, cfg))
    model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4,
                            fused=device.type == "cuda")

    def step(b):
        width = int(b["attention_mask"].sum(1).max())  # dynamic padding: the batch's longest item
        loss = torch.nn.functional.cross_entropy(
            model(input_ids=b["input_ids"][:, :width].to(device), attention_mask=b["attention_mask"][:, :width].to(device)).logits,
            b["labels"].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, batches, device, steps, warmup) | {"note": note}


def notebook_side(model_dir: Path, batches, device, steps: int, warmup: int, out: Path) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=4)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))
    rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["labels"]))]  # padded to max_len

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_end(self, args, state, control, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.t.append(time.perf_counter())

    clock = Clock()
    bs = len(batches[0]["labels"])
    targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=bs, max_steps=steps + warmup,
                              learning_rate=5e-4, bf16=device.type == "cuda", use_cpu=device.type != "cuda",
                              logging_steps=10**6, save_strategy="no", report_to=[], dataloader_drop_last=True,
                              disable_tqdm=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    Trainer(model=model, args=targs, train_dataset=rows * 4, callbacks=[clock]).train()
    seconds = clock.t[-1] - clock.t[warmup - 1]
    tokens = rows[0]["input_ids"].numel()  # every item padded: the notebook computes all of them
    return {"samples_per_s": steps * bs / seconds, "step_s": seconds / steps, "tokens_per_item": tokens,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def timed(step, batches, device, steps: int, warmup: int) -> dict:
    import torch

    for i in range(warmup):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(steps):
        step(batches[(warmup + i) % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    bs = len(batches[0]["labels"])
    used = [batches[(warmup + i) % len(batches)] for i in range(steps)]
    real = sum(int(b["attention_mask"].sum(1).max()) * bs for b in used) / (steps * bs)
    return {"samples_per_s": steps * bs / seconds, "step_s": seconds / steps, "tokens_per_item": real,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config-dir", default=str(ROOT.parent / "shared" / "models" / "roberta-base-config"))
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--mean-length", type=int, default=57, help="mean real tokens per item (AG News, RoBERTa tokenizer)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    ap.add_argument("--smoke", action="store_true", help="CPU, 3 steps after 1 warm-up: checks that it runs")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    if args.smoke:
        args.steps, args.warmup, args.batch, args.max_length, args.mean_length = 3, 1, 4, 32, 16
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type != "cuda" and not args.smoke:
        print("error: no CUDA device; run this on a GPU machine (or --smoke on CPU to check that it runs)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="lorafit-gpu-check-"))
    model_dir = random_model_dir(Path(args.config_dir), work / "model")
    from transformers import AutoConfig

    mcfg = AutoConfig.from_pretrained(model_dir)
    batches = make_batches(16, args.batch, mcfg.vocab_size, min(args.mean_length, args.max_length - 8), args.max_length)
    t0 = time.perf_counter()
    results = {"lorafit": lorafit_side(model_dir, batches, device, args.steps, args.warmup),
               "notebook": notebook_side(model_dir, batches, device, args.steps, args.warmup, work / "trainer")}
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or peak_tflops(name)
    linear = mcfg.num_hidden_layers * (4 * mcfg.hidden_size ** 2 + 2 * mcfg.hidden_size * mcfg.intermediate_size)
    print(f"device: {name}; roberta-base shapes from {args.config_dir}; batch {args.batch}; "
          f"{args.steps} timed steps after {args.warmup}; {time.perf_counter() - t0:.0f} s for both sides")
    print("| side | samples/s | tokens computed per item | peak GPU memory (MB) | model TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|")
    for side, r in results.items():
        tflops = 4 * linear * r["tokens_per_item"] * args.batch / r["step_s"] / 1e12
        r["tflops"], r["mfu"] = tflops, (tflops / peak if peak else None)
        mem = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"| {side} | {r['samples_per_s']:.1f} | {r['tokens_per_item']:.0f} | {mem} | {tflops:.2f} | {mfu} |")
    ratio = results["lorafit"]["samples_per_s"] / results["notebook"]["samples_per_s"]
    print(f"lorafit vs notebook: {ratio:.2f}x samples/s; {results['lorafit']['note']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "ratio": ratio, **results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
