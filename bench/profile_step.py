"""Where a training step's time goes: torch.profiler over N steps of lorafit's default path.

    python bench/profile_step.py --model PATH --data PATH/train.csv [--steps 20] [--set key=value ...]

Same recipe as bench/compare.py's lorafit side (LoRA r=8 q/v, batch 32, <= 128 tokens). Prints the
operators by self CPU time and the page faults per step (what heap trimming costs, see src/lorafit/speed/memory.py).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="steps before profiling starts")
    ap.add_argument("--rows", type=int, default=25, help="operators shown")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()

    import torch
    from compare import RECIPE, recipe_sets
    from lorafit.config import load_config
    from lorafit.train.recipe import Recipe

    n = args.warmup + args.steps
    sets = [f"model.name={args.model}", f"data.train={args.data}", "data.val_size=200",
            f"data.limit={n * RECIPE['batch_size'] + 200}", *recipe_sets(),
            f"train.max_steps={n}", f"train.eval_every={n + 1}", "train.log_every=1000", *args.sets]
    recipe = Recipe(load_config(None, sets), Path(tempfile.mkdtemp()), overwrite=True, log=print).setup()
    step, faults = [0], []
    inner = recipe.optimizer.step

    def counted(*a, **k):  # profile the steps after the warm-up ones; faults per step from getrusage
        out = inner(*a, **k)
        step[0] += 1
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        if step[0] == args.warmup:
            prof.start()
        if step[0] == n:
            prof.stop()  # before the evaluation that ends training
        return out

    recipe.optimizer.step = counted
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    recipe.train()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    per_step = (faults[-1] - faults[args.warmup - 1]) / args.steps
    print(f"minor page faults per step: {per_step:,.0f} (4 KiB each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
