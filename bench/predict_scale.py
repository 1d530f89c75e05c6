"""Batch predict at scale: throughput, memory, disk, first row, kill + --resume, several runs, Ray.

    python bench/predict_scale.py --run RUN_A [--run-b RUN_B] [--rows 10000,100000] [--kill-rows 10000]
        [--ray-rows 10000] [--two-rows 10000] [--tiny-run TINY_RUN --tiny-rows 10000,1000000] [--work DIR]

Inputs are built from real texts of ../shared/data: short SST-2 phrases and AG News items, mixed 3:1,
drawn with replacement by a seeded RNG into a CSV of N rows (ID,text). Each `lorafit predict` runs as a
child process, one after the other, on the same machine: wall time (rows/s), peak RSS of the child
(ru_maxrss), time until its first finished row is in OUTPUT.partial, and disk used besides the output
(the growth of lorafit's token cache, LORAFIT_CACHE set to an empty folder per run, plus the largest
size of the files beside OUTPUT during the run: manifest, bad-rows list).

Sections: each size of --rows with --run (peak RSS ratio to the smallest: the issue asks <= 1.25x);
kill -9 at ~50% of the rows and `--resume`: total time against an uninterrupted run's, output compared
byte for byte (cmp); RUN_A RUN_B in one pass against two predicts; `--ray local` (all the machine's
CPUs) against local predict; --tiny-run's sizes (memory only: a tiny model is fast enough for 1M rows).
Every row says the model, the rows and the load average before it ran: this machine is shared.
Appends a table to --out (bench/RESULTS.md)."""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "data"
PY = sys.executable


def build_input(path: Path, n: int, seed: int = 0) -> Path:
    """n rows (ID,text) drawn from SST-2 phrases and AG News items (3:1), written as they are drawn."""
    if path.exists():
        return path
    def texts(name):
        with open(DATA / name / "train.csv", newline="") as f:
            return [row["text"] for row in csv.DictReader(f) if row["text"].strip()]
    sst2, agnews, rng = texts("sst2"), texts("agnews"), random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ID", "text"])
        for i in range(n):
            w.writerow([f"r{i}", rng.choice(agnews) if rng.random() < 0.25 else rng.choice(sst2)])
    tmp.rename(path)
    return path


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


CHUNK: list = []  # ["--chunk-rows", N] when given


def predict(runs: list, src: Path, out: Path, *flags, kill_at: float | None = None, rows: int = 0) -> dict:
    """One `lorafit predict` child: wall s, peak RSS MB, first row s, disk besides the output (bytes).
    kill_at: SIGKILL it once the manifest says this share of `rows` is done."""
    cache = out.parent / f"cache-{out.name}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LORAFIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    partial, manifest = Path(f"{out}.partial"), Path(f"{out}.partial.json")
    load = loadavg()
    t0 = time.perf_counter()
    log = out.parent / f"{out.name}.stderr"
    with open(log, "w") as err_file:
        p = subprocess.Popen([PY, "-m", "lorafit", "predict", *map(str, runs), "--input", str(src), "--output", str(out),
                              *CHUNK, *map(str, flags)], stdout=subprocess.DEVNULL, stderr=err_file, env=env)
    first, beside, killed = None, 0, False
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)  # not p.poll(): it would reap the child and its rusage
        if pid:
            break
        if first is None and partial.exists():
            with open(partial, "rb") as f:
                if f.read(1 << 16).count(b"\n") >= 2:  # the header and a row
                    first = time.perf_counter() - t0
        beside = max(beside, sum(q.stat().st_size for q in out.parent.glob(out.name + ".*")
                                 if q.is_file() and q not in (partial, log)))
        if kill_at is not None and not killed and manifest.exists():
            try:
                done = json.loads(manifest.read_text()).get("rows", 0)
            except (ValueError, OSError):
                done = 0
            if done >= kill_at * rows:
                os.kill(p.pid, signal.SIGKILL)
                killed = True
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if not killed and code != 0:
        raise SystemExit(f"predict failed ({code}): {log.read_text()[-2000:]}")
    if first is None and out.exists():
        first = wall
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "first": first, "disk": du(cache) + beside, "load": load,
            "killed": killed}


def same(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def row(what: str, model: str, n: int, r: dict, extra: str = "") -> str:
    first = "n/a" if r["first"] is None else f"{r['first']:.1f}"
    return (f"| {what} | {model} | {n:,} | {n / r['wall']:,.1f} | {r['wall']:.1f} | {r['rss_mb']:.0f} | {first} | "
            f"{r['disk'] / 1024:.0f} | {r['load']} | {extra} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished run (the model of the main rows)")
    ap.add_argument("--run-b", help="a second run over the same base, for RUN_A RUN_B in one pass")
    ap.add_argument("--model", default="MiniLM-L6", help="the run's model, as the table names it")
    ap.add_argument("--rows", default="10000,100000")
    ap.add_argument("--kill-rows", type=int, default=10000, help="rows of the kill -9 + --resume test (0: skip)")
    ap.add_argument("--two-rows", type=int, default=10000, help="rows of the two-runs test (0: skip)")
    ap.add_argument("--ray-rows", type=int, default=10000, help="rows of the Ray local test (0: skip)")
    ap.add_argument("--tiny-run", help="a run of a tiny model, for memory at sizes the real model would take hours on")
    ap.add_argument("--tiny-rows", default="10000,1000000")
    ap.add_argument("--chunk-rows", type=int, help="lorafit predict --chunk-rows for every predict (default: lorafit's)")
    ap.add_argument("--sections", default="sizes,kill,two,ray,tiny", help="which parts to run, comma-separated")
    ap.add_argument("--work", default="/tmp/predict_scale")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    from compare import append_section

    sections = set(args.sections.split(","))
    if args.chunk_rows:
        CHUNK.extend(["--chunk-rows", str(args.chunk_rows)])
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lines = ["| measure | model | rows | rows/s | wall s | peak RSS MB | first row s | disk besides output KB | "
             "load avg | note |", "|---|---|---|---|---|---|---|---|---|---|"]

    def say(line):
        lines.append(line)
        print(line, flush=True)

    def sizes(run, model, spec, tag):
        base = None
        for n in [int(x) for x in spec.split(",") if x]:
            src = build_input(work / f"in{n}.csv", n)
            r = predict([run], src, work / f"{tag}{n}.csv")
            base = base or r
            say(row("predict", model, n, r, f"peak RSS {r['rss_mb'] / base['rss_mb']:.2f}x the smallest size's"))

    if "sizes" in sections:
        sizes(args.run, args.model, args.rows, "a")
    if args.kill_rows and "kill" in sections:
        n = args.kill_rows
        src = build_input(work / f"in{n}.csv", n)
        whole = predict([args.run], src, work / f"whole{n}.csv")
        say(row("uninterrupted", args.model, n, whole))
        out = work / f"killed{n}.csv"
        first = predict([args.run], src, out, kill_at=0.5, rows=n)
        done = json.loads(Path(f"{out}.partial.json").read_text()).get("rows", 0)
        second = predict([args.run], src, out, "--resume")
        total = {**second, "wall": first["wall"] + second["wall"], "rss_mb": max(first["rss_mb"], second["rss_mb"]),
                 "first": first["first"]}
        say(row("kill -9 at ~50% + --resume", args.model, n, total,
                f"killed after {done:,} rows committed; total {total['wall'] / whole['wall']:.2f}x uninterrupted; "
                f"output identical (cmp): {same(out, work / f'whole{n}.csv')}"))
    if args.two_rows and args.run_b and "two" in sections:
        n = args.two_rows
        src = build_input(work / f"in{n}.csv", n)
        a = predict([args.run], src, work / f"twoA{n}.csv")
        b = predict([args.run_b], src, work / f"twoB{n}.csv")
        both = predict([args.run, args.run_b], src, work / f"two{n}.csv")
        sep = {**a, "wall": a["wall"] + b["wall"], "rss_mb": max(a["rss_mb"], b["rss_mb"])}
        say(row("2 runs, 2 predicts", args.model, n, sep))
        say(row("2 runs, one pass", args.model, n, both, f"{both['wall'] / sep['wall']:.2f}x the two predicts' time"))
    if args.ray_rows and "ray" in sections:
        n = args.ray_rows
        src = build_input(work / f"in{n}.csv", n)
        local = predict([args.run], src, work / f"local{n}.csv")
        on_ray = predict([args.run], src, work / f"ray{n}.csv", "--ray", "local")
        say(row("local predict", args.model, n, local))
        say(row("--ray local (2 CPUs)", args.model, n, on_ray,
                f"{on_ray['wall'] / local['wall']:.2f}x local's time (cluster start included); output identical "
                f"(cmp): {same(work / f'local{n}.csv', work / f'ray{n}.csv')}; peak RSS is the driver's only"))
    if args.tiny_run and "tiny" in sections:
        sizes(args.tiny_run, "tiny random (hidden 32)", args.tiny_rows, "t")
    print(append_section(args.out, "Batch predict at scale (issue 27)", "one child process per line, one after the "
                         f"other; chunk rows: {args.chunk_rows or 'lorafit default (8192)'}; the machine is shared with "
                         "other engineers' work (load average per line)", lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
