"""lorafit serve with many adapters over one base: mixed-adapter batches against one merged adapter
and against each run's own forwards (issue 29 point 4). Not a test.

    python bench/serve_many.py [--counts 1,10,100] [--anchor-counts 10,100] [--dir-count 1000] [--max-loaded 100]
                               [--traffic uniform,zipf] [--seconds 10] [--passes 2] [--clients 32]
                               [--model MINILM] [--work DIR] [--out FILE]

Adapters: two real MiniLM-L6 runs trained briefly here (AG News, 4 classes; SST-2, 2 classes; a
few hundred rows, train.max_steps steps: speed and memory do not depend on accuracy), copied into
N run folders whose LoRA A/B are perturbed (x (1 + 0.2 N(0, 1)), seeded per copy) so that no two
adapters are equal; even copies are 4-class, odd 2-class. Tokenizer files are hard links.

Servers, each a real `lorafit serve` process on a loopback port, started one at a time (start-up
measured alone), then all held while they take turns under load, --passes times (medians reported):
  one       1 adapter (merged into the base: predict's fast path);
  mixed N   N adapters named on the command line, rows of different adapters in one forward;
  apart N   the same with --no-mixed: each run's texts in forwards of their own (today's path before
            mixed batches: one PEFT module tree per run over the shared base tensors);
  dir N     --adapters-dir with N run folders and --max-loaded (nothing named: every run loaded on
            its first request, the least recently used unloaded beyond the limit).
Traffic: C clients (asyncio + httpx), each sending its next request when the last is answered, for
--seconds after a warm-up; two short texts a request (AG News titles, seeded); the adapter of each
request drawn uniformly or Zipf-skewed (p ∝ 1/rank^1.1, ranks shuffled). Reported per server and
traffic: texts/s, p50/p99 request latency, errors; per server: start-up seconds (process start to
its `serving` line, every named adapter loaded), RSS after the load (VmRSS). Cold load: the time to
load one more adapter into an in-process BasePool over MiniLM (mixed slot, and the per-run module
tree), p50/p99 of --cold loads; and over HTTP from the dir server: the first request of runs not
loaded, one after another, while the other clients keep ten loaded runs busy, and those clients' p99
against the same traffic without cold loads.
Also the LoRA products alone: grouped per adapter (what infer/mixed.py does) against gathered per
row (BGMV), at MiniLM's shapes. Appends a section to bench/RESULTS.md (--out) with the load average.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data"

from serve_load import default_model, free_port, memory_mb, start, stop  # noqa: E402  (bench/ on the path)

SKIP = {"checkpoints"}  # run-folder entries the copies do not need (served runs never read them)


def train_source(model: str, data: Path, out: Path, steps: int) -> Path:
    """A finished MiniLM run after `steps` optimizer steps on a few hundred rows (kept for reruns)."""
    if (out / "adapter").is_dir():
        return out
    from lorafit.config import load_config
    from lorafit.train.recipe import Recipe

    sets = [f"model.name={model}", f"data.train={data}", "data.limit=300", "data.val_size=60", "data.max_length=64",
            f"train.max_steps={steps}", "train.batch_size=16", "train.eval_batch_size=64", "optim.lr=1e-3"]
    recipe = Recipe(load_config(None, sets), out, log=lambda *a: None).setup()
    recipe.train()
    recipe.finish()
    return out


def copy_adapter(src: Path, dst: Path, seed: int) -> int:
    """src's run folder as dst with its LoRA A/B perturbed; the adapter file's size in bytes."""
    import torch
    from safetensors.torch import load_file, save_file

    if not (dst / "adapter" / "adapter_model.safetensors").is_file():
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "adapter").mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix != ".png":
                shutil.copy2(f, tmp / f.name)
        for f in (src / "adapter").iterdir():
            if f.name != "adapter_model.safetensors":
                os.link(f, tmp / "adapter" / f.name)
        gen = torch.Generator().manual_seed(seed)
        state = load_file(str(src / "adapter" / "adapter_model.safetensors"))
        state = {k: v * (1 + 0.2 * torch.randn(v.shape, generator=gen)) if ".lora_" in k else v for k, v in state.items()}
        save_file(state, str(tmp / "adapter" / "adapter_model.safetensors"), metadata={"format": "pt"})
        tmp.rename(dst)
    return (dst / "adapter" / "adapter_model.safetensors").stat().st_size


def draw(n: int, traffic: str, k: int, seed: int) -> list[int]:
    """k adapter indices under uniform or Zipf traffic (ranks shuffled: the popular ones are not the first)."""
    rng = random.Random(seed)
    if traffic == "uniform":
        return [rng.randrange(n) for _ in range(k)]
    ranks = list(range(n))
    rng.shuffle(ranks)
    return rng.choices(ranks, weights=[1 / (r + 1) ** 1.1 for r in range(n)], k=k)


async def load(url: str, names: list[str], texts: list[str], traffic: str, clients: int, seconds: float, seed: int) -> dict:
    """C clients for `seconds`: each sends its next request (two texts, an adapter drawn by traffic) when
    its last is answered. Texts/s of answered requests, p50/p99 latency (ms), errors."""
    import httpx
    import numpy as np

    picks = draw(len(names), traffic, 200_000, seed)
    rng = random.Random(seed + 1)
    latencies, errors, done, nxt = [], 0, 0, iter(picks)
    end = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker():
            nonlocal errors, done
            while time.perf_counter() < end:
                body = {"texts": rng.sample(texts, 2)}
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/models/{names[next(nxt)]}/predict", json=body)
                if r.status_code != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t)
                done += 2
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies or [float("nan")]) * 1000
    return {"texts_s": done / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "errors": errors}


def first_requests(url: str, names: list[str], texts: list[str], args) -> dict:
    """Cold loads as a client sees them: the first request of runs not loaded (as /v1/models says),
    sent one after another by one client while C-1 clients keep `warm` loaded runs busy; and the busy
    clients' p99 in as many seconds without cold loads, for comparison."""
    import httpx
    import numpy as np

    warm = 10
    hot = names[:warm]
    for n in hot:  # loaded before the measurement
        httpx.post(f"{url}/v1/models/{n}/load", timeout=120).raise_for_status()
    calm = asyncio.run(load(url, hot, texts, "uniform", args.clients - 1, args.seconds, seed=7))
    state = {m["name"]: m["state"] for m in httpx.get(f"{url}/v1/models", timeout=60).json()["models"]}
    fresh = [n for n in names[warm:] if state.get(n) == "available"]
    random.Random(3).shuffle(fresh)

    async def both():
        firsts = []

        async def cold_client():
            async with httpx.AsyncClient(timeout=120) as client:
                for n in fresh:
                    t = time.perf_counter()
                    r = await client.post(f"{url}/v1/models/{n}/predict", json={"texts": texts[:2]})
                    r.raise_for_status()
                    firsts.append(time.perf_counter() - t)
                    if len(firsts) >= 20 or time.perf_counter() - start > args.seconds:
                        return
        start = time.perf_counter()
        busy, _ = await asyncio.gather(load(url, hot, texts, "uniform", args.clients - 1, args.seconds, seed=8),
                                       cold_client())
        return busy, firsts
    busy, firsts = asyncio.run(both())
    lat = np.array(firsts) * 1000
    return {"n": len(firsts), "warm": warm, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "busy_p99": busy["p99"], "calm_p99": calm["p99"]}


def cold_loads(model_dirs: list[Path], count: int) -> dict:
    """Seconds to load one more adapter into a BasePool over the base (after the first two): mixed slots
    and per-run module trees, `count` each (in this process)."""
    import numpy as np
    import torch

    from lorafit.infer.pool import BasePool
    from lorafit.runs.compat import read_run_folder

    out = {}
    for mixed in (True, False):
        dirs = model_dirs[:count + 2]
        pool = BasePool(torch.device("cpu"), expected=[read_run_folder(d).cfg for d in dirs], mixed=mixed)
        for d in dirs[:2]:  # the base's tensors read, the mixed base built
            pool.load(d)
        times = []
        for d in dirs[2:]:
            t = time.perf_counter()
            loaded = pool.load(d).loaded
            times.append(time.perf_counter() - t)
            assert (loaded.mixed is not None) == mixed
        out["mixed" if mixed else "apart"] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
    return out


def lora_kernels(repeats: int = 20) -> list[str]:
    """Grouped LoRA products (infer/mixed.py's MultiLoraLinear: an addmm per adapter's row slice) against
    BGMV (each row's A and B gathered from a bank, two batched matmuls), at MiniLM's shapes: 64 rows
    of 24 tokens, 384 -> 384, rank 8; k adapters in the batch. Best of `repeats`, ms per layer call,
    the frozen matmul included (its time alone in the first column)."""
    import torch
    from torch.nn import functional as F

    from lorafit.infer.mixed_layers import MultiLoraLinear, Route

    torch.manual_seed(0)
    rows, tokens, hidden, r = 64, 24, 384, 8
    x = torch.randn(rows, tokens, hidden)
    linear = torch.nn.Linear(hidden, hidden)

    def best(*fns) -> list[float]:
        """Best time of each, ms; the variants take turns (a busy moment of the machine hits them alike)."""
        times = [[] for _ in fns]
        for _ in range(repeats + 3):
            for k, fn in enumerate(fns):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        return [min(t[3:]) * 1000 for t in times]  # the first calls warm up

    lines = ["| adapters in the batch | frozen matmul alone ms | grouped (SGMV-like) ms | gathered per row (BGMV) ms |",
             "|---|---|---|---|"]
    with torch.inference_mode():
        for k in (1, 8, 32, 64):
            route = Route()
            layer = MultiLoraLinear(linear, route)
            bank_a, bank_b = torch.randn(k, hidden, r) * 0.01, torch.randn(k, r, hidden) * 0.01
            for slot in range(k):
                layer.loras[slot] = (bank_a[slot].contiguous(), bank_b[slot].contiguous())
            size = rows // k
            route.segments = tuple((slot, slot * size, (slot + 1) * size) for slot in range(k))
            idx = torch.arange(rows) // size

            def gathered():
                y = F.linear(x, linear.weight, linear.bias)
                return y.baddbmm_(torch.bmm(x, bank_a[idx]), bank_b[idx])
            assert torch.allclose(layer(x), gathered(), atol=1e-4)
            plain, grouped, per_row = best(lambda: linear(x), lambda: layer(x), gathered)
            lines.append(f"| {k} | {plain:.2f} | {grouped:.2f} | {per_row:.2f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--counts", default="1,10,100", help="adapters served by the mixed server (1: the merged one)")
    ap.add_argument("--anchor-counts", default="10,100", help="counts also served with --no-mixed")
    ap.add_argument("--traffic", default="uniform,zipf")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per server, traffic and pass")
    ap.add_argument("--passes", type=int, default=2, help="turns of every server and traffic (median reported)")
    ap.add_argument("--warm", type=float, default=3.0, help="warm-up seconds before each measurement")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps of each source run")
    ap.add_argument("--cold", type=int, default=10, help="adapters loaded one by one for the cold-load times")
    ap.add_argument("--dir-count", type=int, default=1000, help="adapters in the --adapters-dir server (0: none)")
    ap.add_argument("--max-loaded", type=int, default=100, help="its --max-loaded")
    ap.add_argument("--work", default="/tmp/lorafit-serve-many", help="folder for the runs (kept for reruns)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    import pandas as pd

    counts = [int(c) for c in args.counts.split(",")]
    anchors = [int(c) for c in args.anchor_counts.split(",") if c]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sources = [train_source(args.model, DATA / "agnews" / "train.csv", work / "src-agnews", args.steps),
               train_source(args.model, DATA / "sst2" / "train.csv", work / "src-sst2", args.steps)]
    n_max = max(counts + anchors + [args.dir_count])
    sizes = [copy_adapter(sources[i % 2], work / "adapters" / f"a{i:04d}", seed=i) for i in range(n_max)]
    dirs = [work / "adapters" / f"a{i:04d}" for i in range(n_max)]
    titles = pd.read_csv(DATA / "agnews" / "train.csv")["text"].astype(str).tolist()[-2000:]
    texts = [" ".join(t.split()[:12]) for t in titles]  # short texts: about a title's length

    py = sys.executable
    serve = [py, "-m", "lorafit", "serve", "--port", "0", "--queue", "4096"]
    servers = [("one", 1, [])] + [(f"mixed {n}", n, []) for n in counts if n > 1]
    servers += [(f"apart {n}", n, ["--no-mixed"]) for n in anchors]
    if args.dir_count:  # nothing named: every run in the folder, loaded on its first request
        servers.append((f"dir {args.dir_count}, max {args.max_loaded}", args.dir_count,
                        ["--adapters-dir", str(work / "adapters"), "--max-loaded", str(args.max_loaded)]))
    traffics = args.traffic.split(",")
    results, procs = {}, {}
    try:
        for label, n, extra in servers:  # started one at a time: each start-up on a machine without the others' load
            t0 = time.perf_counter()
            named = [] if "--adapters-dir" in extra else [str(d) for d in dirs[:n]]
            procs[label] = start(serve + extra + named, timeout=1800)
            results[label] = {"startup": time.perf_counter() - t0, "runs": {t: [] for t in traffics}, "load": []}
            print(f"{label}: started in {results[label]['startup']:.1f} s", file=sys.stderr, flush=True)
        # every server holds its adapters while the others are measured; the servers take turns, pass after
        # pass, so a busy moment of the shared machine falls on all of them alike
        for p in range(args.passes):
            for label, n, _ in servers:
                url, names = procs[label][1], [d.name for d in dirs[:n]]
                for k, traffic in enumerate(traffics):
                    asyncio.run(load(url, names, texts, traffic, args.clients, args.warm, seed=100 + k))
                    r = asyncio.run(load(url, names, texts, traffic, args.clients, args.seconds, seed=10 * p + k))
                    results[label]["runs"][traffic].append(r)
                    results[label]["load"].append(os.getloadavg()[0])
                    print(f"pass {p} {label} {traffic}: {r['texts_s']:.1f} texts/s p50 {r['p50']:.0f} p99 {r['p99']:.0f} "
                          f"ms ({r['errors']} errors, load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        for label in procs:
            results[label]["rss"] = memory_mb(procs[label][0].pid)[0]
        dir_label = servers[-1][0] if args.dir_count else None
        cold_http = first_requests(procs[dir_label][1], [d.name for d in dirs[:args.dir_count]], texts, args) \
            if dir_label else None
    finally:
        for proc, _ in procs.values():
            stop(proc)
    cold = cold_loads(dirs, min(args.cold, n_max - 2)) if n_max >= 3 and args.cold else {}

    def summary(label: str, traffic: str) -> dict:
        """Median texts/s over the passes; p50/p99 of the passes' own (their median)."""
        import numpy as np

        runs = results[label]["runs"][traffic]
        return {k: float(np.median([r[k] for r in runs])) for k in ("texts_s", "p50", "p99")} | {
            "errors": sum(r["errors"] for r in runs)}

    lines = ["| server | adapters' files MB | start-up s | RSS MB | " + " | ".join(
        f"{t} texts/s (x one) | {t} p50/p99 ms" for t in traffics) + " |",
             "|---|---|---|---|" + "---|---|" * len(traffics)]
    for label, n, _ in servers:
        res, cells = results[label], []
        for t in traffics:
            r, base = summary(label, t), summary("one", t)
            cells.append(f"{r['texts_s']:.1f} ({r['texts_s'] / base['texts_s']:.2f}x)"
                         + (f", {r['errors']} errors" if r["errors"] else "") + f" | {r['p50']:.0f}/{r['p99']:.0f}")
        lines.append(f"| {label} | {sum(sizes[:n]) / 2**20:.1f} | {res['startup']:.1f} | {res['rss']:.0f} | "
                     + " | ".join(cells) + " |")
    one = results["one"]
    if cold_http:
        c = cold_http
        lines += ["", f"Cold load over HTTP ({dir_label}): the first request of {c['n']} runs not loaded, one after "
                  f"another, while {args.clients - 1} clients send uniform traffic to {c['warm']} loaded runs: first-request "
                  f"latency p50 / p99 {c['p50']:.0f} / {c['p99']:.0f} ms; the other clients' p99 {c['busy_p99']:.0f} ms "
                  f"against {c['calm_p99']:.0f} ms in the same seconds without cold loads "
                  f"({c['busy_p99'] / c['calm_p99']:.2f}x)."]
    if cold:
        lines += ["", f"Cold load of one more MiniLM adapter into a BasePool in this process (p50 / p99 of "
                  f"{min(args.cold, n_max - 2)}): mixed slot {cold['mixed'][0] * 1000:.0f} / {cold['mixed'][1] * 1000:.0f} ms, "
                  f"per-run module tree {cold['apart'][0] * 1000:.0f} / {cold['apart'][1] * 1000:.0f} ms."]
    for n in counts:
        if n > 1 and f"mixed {n}" in results:
            budget = one["rss"] + 1.5 * sum(sizes[:n]) / 2**20
            lines.append(f"Memory, {n} adapters mixed: RSS {results[f'mixed {n}']['rss']:.0f} MB against one adapter's "
                         f"{one['rss']:.0f} MB + 1.5 x their files = {budget:.0f} MB.")
    lines += ["", "LoRA products of a mixed forward, one layer (lora_kernels: best of 30, variants taking turns, ms):", "",
              *lora_kernels(30)]
    load_now = os.getloadavg()
    loads = [x for res in results.values() for x in res["load"]]
    detail = (f"C={args.clients}, {args.passes} passes of {args.seconds:g} s per server and traffic (each after {args.warm:g} s "
              f"warm-up; servers taking turns, all held in memory; median of the passes), two short AG News "
              f"texts (first 12 words) a request; MiniLM-L6 LoRA adapters (r 8, query/value, head model) copied from "
              f"two runs of {args.steps} steps with perturbed A/B, 4- and 2-class alternately; 1-minute load average "
              f"{min(loads):.1f}-{max(loads):.1f} during the measurements, {load_now[0]:.1f} / {load_now[1]:.1f} / "
              f"{load_now[2]:.1f} (1/5/15 min) at the end: a shared 2-core machine, compare ratios within this run")
    from compare import append_section

    print(append_section(args.out, "lorafit serve: many adapters, mixed batches", detail, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
