"""`lorafit serve` as a real subprocess on a free loopback port, spoken to over real HTTP (httpx):
answers equal `lorafit predict --with-logits`, mixed concurrent requests, every bad input a 4xx,
start-up errors one line, auth, overload, SIGTERM draining."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, synthetic_rows, train_briefly
from lorafit.calibration import read_temperature, softmax

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_roberta, tiny_bert):
    """Two adapters over the tiny RoBERTa (4 labels, model head; 2 labels, cls_linear head + trained
    LayerNorms, another rank) and one over the tiny BERT (3 named labels)."""
    root = tmp_path_factory.mktemp("serve")
    data4 = root / "four.csv"
    synthetic_rows(120, seed=3).to_csv(data4, index=False)
    data2 = root / "two.csv"
    synthetic_rows(120, seed=4, n_labels=2).to_csv(data2, index=False)
    data3 = root / "three.csv"
    rows = synthetic_rows(120, seed=5, n_labels=3)
    rows["label"] = rows["label"].map({0: "politics", 1: "sport", 2: "business"})
    rows.to_csv(data3, index=False)
    fast = dict(train__max_steps=3, optim__lr=5e-2, budget__max_trainable=200000)
    train_briefly(tiny_roberta, data4, root / "topics", **fast)
    train_briefly(tiny_roberta, data2, root / "binary", head__type="cls_linear", adapter__train_layernorm=True,
                  adapter__r=2, **fast)
    train_briefly(tiny_bert, data3, root / "named", **fast)
    return {"topics": root / "topics", "binary": root / "binary", "named": root / "named"}


TEXTS = [r["text"] for r in synthetic_rows(40, seed=9).to_dict("records")] + [
    "  padded with spaces  ", "Stocks", "war " * 30]  # an empty text is a 422 (BAD)


class Server:
    """`python -m lorafit serve ... --port 0`; the port is read from its start line."""

    def __init__(self, *args, timeout=120):
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen([sys.executable, "-m", "lorafit", "serve", *map(str, args), "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        self.timeout, self.url = timeout, None

    def ready(self) -> "Server":
        """Wait for the start line (the models load meanwhile, so other setup can run first)."""
        if self.url:
            return self
        timeout = self.timeout
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stderr, selectors.EVENT_READ)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not sel.select(timeout=1.0):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"serving .* on http://([\d.]+):(\d+)", line)
            if m:
                self.url = f"http://{m.group(1)}:{m.group(2)}"
                return self
        self.stop()
        raise AssertionError("server did not start:\n" + "".join(self.log))

    def stop(self, sig=signal.SIGTERM, timeout=30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


@pytest.fixture(scope="module")
def starting(runs):
    s = Server(*(f"{k}={v}" for k, v in runs.items()), "--max-batch", "8", "--max-wait-ms", "20", "--max-texts", "50",
               "--max-chars", "1000")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def server(starting, reference):
    return starting.ready()


@pytest.fixture(scope="module")
def reference(runs, starting, tmp_path_factory):
    """`lorafit predict --with-logits` on TEXTS for every run (the CLI's own entry point, in this process,
    while the server loads)."""
    from lorafit.cli import main

    root = tmp_path_factory.mktemp("ref")
    pd.DataFrame({"text": TEXTS}).to_csv(root / "in.csv", index=False)
    out = {}
    for name, run in runs.items():
        assert main(["predict", str(run), "--input", str(root / "in.csv"), "--output", str(root / f"{name}.csv"),
                     "--with-logits"]) == 0
        df = pd.read_csv(root / f"{name}.csv", keep_default_na=False)
        out[name] = (df["label"].astype(str).tolist(), df[[c for c in df.columns if c.startswith("logit_")]].to_numpy())
    return out


def _predict(url, name, texts, **kw):
    r = httpx.post(f"{url}/v1/models/{name}/predict", json={"texts": texts, "logits": True, **kw}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_answers_equal_predict_whatever_else_is_in_the_batch(server, reference, runs):
    """Concurrent requests over all three runs, each a different slice of TEXTS (so forwards mix
    lengths, requests and runs): labels equal and logits within 1e-4 of `lorafit predict`."""
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(24):
        name = list(reference)[k % 3]
        idx = sorted(rng.choice(len(TEXTS), size=int(rng.integers(1, 12)), replace=False).tolist())
        jobs.append((name, idx))
    jobs.append(("topics", list(range(len(TEXTS)))))  # more texts than --max-batch: split into forwards
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda j: _predict(server.url, j[0], [TEXTS[i] for i in j[1]], probs=True), jobs))
    for (name, idx), ans in zip(jobs, answers):
        labels, logits = reference[name]
        assert ans["model"] == name
        assert [str(x) for x in ans["labels"]] == [labels[i] for i in idx]
        np.testing.assert_allclose(np.array(ans["logits"]), logits[idx], atol=1e-4)
        np.testing.assert_allclose(np.array(ans["probs"]).sum(1), 1.0, atol=1e-6)
        # the run's fitted temperature, as `lorafit predict --probs` applies it
        np.testing.assert_allclose(ans["probs"], softmax(logits[idx], read_temperature(runs[name])), atol=1e-4)
        assert ans["label_ids"] == np.argmax(logits[idx], 1).tolist()
    # the batcher did gather: some forward held more than one request's texts
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'lorafit_requests_total{model="named",status="200"}' in metrics
    assert 1 <= float(re.search(r"^lorafit_streams ([\d.]+)$", metrics, re.M).group(1)) <= 2  # CPU default: 2 (1 core: 1)
    assert re.search(r"^lorafit_streams_busy [\d.]+$", metrics, re.M)
    counts = {float(m.group(1)): float(m.group(2))
              for m in re.finditer(r'lorafit_batch_texts_bucket\{le="([\d.+inf]+)"\} ([\d.]+)', metrics) if m.group(1) != "+Inf"}
    assert counts[8.0] > 0 and counts[8.0] - counts.get(4.0, 0) > 0  # forwards of 5-8 texts happened


@pytest.mark.slow
def test_models_health_ready_openapi(server, runs):
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    by = {m["name"]: m for m in models}
    assert set(by) == {"topics", "binary", "named"}
    assert by["named"]["labels"] == ["business", "politics", "sport"]
    assert [str(x) for x in by["binary"]["labels"]] == ["0", "1"] and len(by["topics"]["labels"]) == 4
    assert 0 < by["binary"]["trainable_parameters"] < by["binary"]["shared_parameters"]
    for name, run in runs.items():  # the count training reported, whether the run's base is shared or merged
        assert by[name]["trainable_parameters"] == json.loads((run / "eval.json").read_text())["trainable"]
    assert by["named"]["shared_parameters"] == 0  # alone over its base: merged, predict's own path
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/models/{name}/predict" in spec["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


BAD = [
    ("unknown model", "nope", {"texts": ["x"]}, 404, "topics, binary, named"),
    ("invalid JSON", "topics", b'{"texts": [', 400, "not valid JSON"),
    ("not an object", "topics", b'["x"]', 422, "JSON object"),
    ("missing texts", "topics", {"probs": True}, 422, "texts: field required"),
    ("extra field", "topics", {"texts": ["x"], "temperature": 2}, 422, "temperature: unknown field"),
    ("non-string text", "topics", {"texts": ["x", 3]}, 422, "texts.1"),
    ("texts not a list", "topics", {"texts": "x"}, 422, "texts"),
    ("probs not a bool", "topics", {"texts": ["x"], "probs": "yes"}, 422, "probs"),
    ("empty list", "topics", {"texts": []}, 422, "empty list"),
    ("empty text", "topics", {"texts": ["x", "y", ""]}, 422, "texts.2: empty or whitespace-only text"),
    ("blank text", "named", {"texts": [" \t\n ", "x"]}, 422, "texts.0: empty or whitespace-only text"),
    ("too many texts", "topics", {"texts": ["x"] * 51}, 413, "at most 50"),
    ("text too long", "topics", {"texts": ["x", "y" * 1001]}, 413, "texts.1: 1001 characters, at most 1000"),
    ("body too large", "topics", b'{"texts": ["' + b"z" * 400_000 + b'"]}', 413, "body:"),
]


@pytest.mark.parametrize("what,name,body,status,words", BAD, ids=[b[0] for b in BAD])
@pytest.mark.slow
def test_bad_input_is_a_one_line_4xx(server, what, name, body, status, words):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{server.url}/v1/models/{name}/predict", timeout=30, **kw)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail


def test_empty_texts_are_refused_by_the_request_check():
    """Without a server: parse_request names the first empty text's index (a 422, like training drops them)."""
    from lorafit.serve.app import ClientError, Limits, parse_request

    assert parse_request(b'{"texts": ["  padded  ", "x"]}', Limits()).texts == ["  padded  ", "x"]
    for body, index in ((b'{"texts": ["a", ""]}', 1), (b'{"texts": ["\\u00a0\\n", "a", ""]}', 0)):
        with pytest.raises(ClientError) as e:
            parse_request(body, Limits())
        assert e.value.status == 422 and e.value.detail.startswith(f"texts.{index}: empty or whitespace-only"), e.value.detail


@pytest.mark.slow
def test_bad_inputs_leave_the_server_answering(server, reference):
    """Interleaved with bad requests, good ones still get predict's answers; 4xx counted in /metrics."""
    with cf.ThreadPoolExecutor(6) as pool:
        bad = [pool.submit(httpx.post, f"{server.url}/v1/models/topics/predict", content=b"{", timeout=30)
               for _ in range(6)]
        good = pool.submit(_predict, server.url, "binary", TEXTS[:5])
        assert all(f.result().status_code == 400 for f in bad)
        np.testing.assert_allclose(np.array(good.result()["logits"]), reference["binary"][1][:5], atol=1e-4)
    assert 'status="400"' in httpx.get(f"{server.url}/metrics").text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_startup_errors_are_one_line_exit_2(runs, tmp_path):
    key = tmp_path / "key"
    key.write_text("")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    import shutil

    unfinished = tmp_path / "unfinished"  # a run whose training did not finish: no weights
    shutil.copytree(runs["topics"], unfinished)
    shutil.rmtree(unfinished / "adapter")
    cases = [
        ([str(unfinished)], "no trained weights (adapter/ missing)"),
        (["--adapters-dir", str(tmp_path / "missing")], "--adapters-dir: "),
        ([str(runs["topics"]), "--max-loaded", "2"], "give --adapters-dir DIR"),
        ([], "give at least one RUN_DIR, or --adapters-dir DIR"),
        ([str(tmp_path / "missing")], "no such run directory"),
        ([str(tmp_path)], "not a finished lorafit run"),
        ([f"a={runs['topics']}", f"a={runs['binary']}"], "two runs are named 'a'"),
        ([str(runs["topics"]), "--port", str(busy.getsockname()[1])], "--port: cannot listen"),
        ([str(runs["topics"]), "--api-key-file", str(tmp_path / "nokey")], "--api-key-file: cannot read"),
        ([str(runs["topics"]), "--api-key-file", str(key)], "--api-key-file:"),
        ([str(runs["topics"]), "--host", "0.0.0.0"], "--api-key-file FILE (or --insecure"),
        ([str(runs["topics"]), "--streams", "-1"], "--streams: -1 is below 0"),
    ]
    try:
        with cf.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda c: run_cli("serve", *c[0], timeout=60), cases))
    finally:
        busy.close()
    for (args, words), r in zip(cases, results):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, r.stderr)


@pytest.mark.slow
def test_auth_overload_recovery_and_sigterm_drain(runs, tmp_path):
    """One server with a key and a queue of 1, whose batcher waits 1.5 s for company: a second request
    while the first waits is refused at once (503 + Retry-After), a later one succeeds; SIGTERM while a
    request is in flight: that request still gets its answer, then exit 0."""
    key = "k" * 20 + "-secret"
    (tmp_path / "key").write_text(key + "\n")
    s = Server(f"topics={runs['topics']}", "--api-key-file", tmp_path / "key", "--queue", "1", "--max-wait-ms", "1500")
    s.ready()
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{s.url}/v1/models/topics/predict"
    try:
        assert httpx.get(f"{s.url}/healthz").status_code == 200  # open: a liveness probe has no secret
        for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"Authorization": key}):
            r = httpx.post(url, json={"texts": ["x"]}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        for path in ("/v1/models", "/metrics", "/readyz", "/openapi.json"):
            assert httpx.get(f"{s.url}{path}").status_code == 401
        assert httpx.get(f"{s.url}/v1/models", headers=auth).status_code == 200
        with cf.ThreadPoolExecutor(2) as pool:
            first = pool.submit(httpx.post, url, json={"texts": ["goal match"]}, headers=auth, timeout=30)
            time.sleep(0.5)
            refused = httpx.post(url, json={"texts": ["x"]}, headers=auth, timeout=30)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert not first.done()  # refused at once, not after waiting for the first
            assert first.result().status_code == 200
        assert httpx.post(url, json={"texts": ["x"]}, headers=auth, timeout=30).status_code == 200  # recovered
        # a client that leaves while its request waits: the request leaves the queue, no forward runs for it
        forwards = lambda: float(re.search(r"lorafit_batch_texts_count ([\d.]+)",
                                           httpx.get(f"{s.url}/metrics", headers=auth).text).group(1))
        before = forwards()
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url, json={"texts": ["gone"]}, headers=auth, timeout=0.4)
        time.sleep(1.6)  # past the batcher's 1.5 s wait
        assert forwards() == before
        assert 'lorafit_requests_total{model="topics",status="499"} 1.0' in httpx.get(f"{s.url}/metrics", headers=auth).text
        assert httpx.post(url, json={"texts": ["x"]}, headers=auth, timeout=30).status_code == 200  # its place is free
        with cf.ThreadPoolExecutor(1) as pool:
            inflight = pool.submit(httpx.post, url, json={"texts": ["stocks profit"]}, headers=auth, timeout=30)
            time.sleep(0.5)
            s.proc.send_signal(signal.SIGTERM)
            r = inflight.result()
            assert r.status_code == 200 and len(r.json()["labels"]) == 1
        assert s.proc.wait(30) == 0
        assert key not in "".join(s.log) + s.proc.stderr.read()
    finally:
        s.stop()


def _frozen(run) -> dict:
    """A served run's frozen base tensors: plain name -> data_ptr (a mixed slot's are its mixed base's)."""
    from lorafit.infer.pool import owned

    if run.loaded.mixed is not None:
        base = run.loaded.mixed[0]
        return {f"{base.prefix}.{n}".replace(".base.", "."): p.data_ptr() for n, p in base.encoder.named_parameters()}
    return {n.rsplit("base_model.model.", 1)[-1]: p.data_ptr() for n, p in run.model.named_parameters() if not owned(n)}


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [True, False])
def test_runs_over_one_base_hold_one_copy_of_its_files(runs, tiny_roberta, tmp_path, mixed):
    """Registry in-process: topics and binary (one tiny RoBERTa folder) are built over one read of its
    checkpoint (their frozen tensors are the same memory: slots of one mixed base, or, with mixed
    batches off, their own module trees over it); a run over a byte-equal copy of that folder
    gets its own (shared by file identity, never by a path it did not read) and the same logits as
    binary; a checkpoint whose file changed is read again."""
    import os
    import shutil

    import torch
    import yaml

    from lorafit.infer.engine import encode, forward as forward_logits

    def tokenize_texts(run, texts):
        return encode(run, texts)[0]
    from lorafit.infer.pool import base_state
    from lorafit.serve.registry import Registry, check_run

    copy, other = tmp_path / "tiny-roberta-copy", tmp_path / "other"
    shutil.copytree(tiny_roberta, copy)
    shutil.copytree(runs["binary"], other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["name"] = str(copy)
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    reg = Registry.load([("topics", runs["topics"]), ("binary", runs["binary"]), ("other", other)],
                        device=torch.device("cpu"), mixed=mixed)
    assert [r.loaded.mixed is not None for r in reg.runs.values()] == [mixed, mixed, False]  # other: alone, merged
    frozen = {name: _frozen(run) for name, run in reg.runs.items()}
    word = "roberta.embeddings.word_embeddings.weight"
    assert frozen["topics"][word] == frozen["binary"][word] != frozen["other"][word]
    both = set(frozen["topics"].values()) & set(frozen["binary"].values())
    assert len(both) >= len(frozen["topics"]) - 4  # all but the original heads (each run's own)
    assert not set(frozen["other"].values()) & (set(frozen["topics"].values()) | set(frozen["binary"].values()))
    ids = tokenize_texts(reg.runs["binary"], TEXTS[:8])
    np.testing.assert_allclose(forward_logits(reg.runs["other"], ids), forward_logits(reg.runs["binary"], ids), atol=1e-6)

    states, run_cfg = {}, check_run(runs["topics"]).cfg
    first = base_state(run_cfg, "cpu", states)
    assert base_state(run_cfg, "cpu", states) is first and len(states) == 1
    weights = Path(run_cfg.model.name) / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as if rewritten: not the file read before
    try:
        assert base_state(run_cfg, "cpu", states) is not first and len(states) == 2
    finally:
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_plan_forwards_is_the_cut_that_pads_least():
    """Every text once, longest first, at most max_batch per forward, and the least padded tokens plus
    overhead per forward of all contiguous cuts of the sorted lengths (checked by enumerating them)."""
    import itertools

    from lorafit.infer.engine import plan_forwards

    def cost(lens, forwards, overhead):
        return sum(len(f) * max(lens[i] for i in f) + overhead for f in forwards)

    rng = np.random.default_rng(0)
    for trial in range(60):
        n, b, overhead = int(rng.integers(1, 9)), int(rng.integers(1, 5)), int(rng.choice([0, 3, 40]))
        lens = rng.integers(1, 30, size=n).tolist()
        plan = plan_forwards(lens, b, overhead)
        flat = [i for f in plan for i in f]
        assert sorted(flat) == list(range(n)) and all(1 <= len(f) <= b for f in plan)
        assert [lens[i] for i in flat] == sorted(lens, reverse=True)
        order = sorted(range(n), key=lambda i: -lens[i])
        best = min(cost(lens, [order[a:z] for a, z in zip((0, *cuts), (*cuts, n))], overhead)
                   for k in range(n) for cuts in itertools.combinations(range(1, n), k)
                   if all(z - a <= b for a, z in zip((0, *cuts), (*cuts, n))))
        assert cost(lens, plan, overhead) == best, (lens, b, overhead, plan)


@pytest.mark.slow
def test_a_round_takes_several_forwards_worth_sorted_by_length(runs):
    """Four requests of three texts wait together (submitted under the batcher's lock): with
    --max-batch 4 one round takes all twelve, sorted by length and cut as plan_forwards cuts them
    (no forward over 4 texts), and every text gets the logits it has alone; --max-round 4 bounds a
    round to the requests that fit (each request then its own round); the bound is per group (two runs'
    requests alternating, --max-round 6: two rounds of 6 when they are slots of one mixed base, one
    round of 6 + 6 when each run is its own group)."""
    import asyncio

    import torch

    from lorafit.infer.engine import encode, forward as forward_logits, plan_forwards
    from lorafit.serve.batcher import Batcher

    def tokenize_texts(run, texts):
        return encode(run, texts)[0]
    from lorafit.serve.registry import Registry

    reg = Registry.load([("topics", runs["topics"]), ("binary", runs["binary"])], device=torch.device("cpu"))
    texts = [TEXTS[-1:] + TEXTS[0:2], TEXTS[-2:-1] + TEXTS[2:4], TEXTS[-3:-2] + TEXTS[4:6], TEXTS[6:9]]
    texts = [[t.strip() for t in r] for r in texts]

    def alone(requests):  # per request: each text in a forward of its own
        return [np.concatenate([forward_logits(run, [x]) for x in tokenize_texts(run, r)]) for run, r in requests]

    def check(got, want):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, atol=1e-4)

    def serve(requests, **kw):
        forwards, rounds = [], []

        async def go():
            batcher = Batcher(max_batch=4, max_wait_ms=50, on_batch=forwards.append, on_round=rounds.append, **kw)
            batcher.start()
            try:
                with batcher.cond:  # all four wait before the batcher looks
                    jobs = [batcher.submit(run, r) for run, r in requests]
                return await asyncio.wait_for(asyncio.gather(*(j.future for j in jobs)), 120)
            finally:
                batcher.stop()
        return asyncio.run(go()), forwards, rounds

    topics = reg.runs["topics"]
    one_run = [(topics, r) for r in texts]
    logits, forwards, rounds = serve(one_run)
    assert rounds == [12]
    ids = tokenize_texts(topics, [t for r in texts for t in r])
    assert forwards == [len(f) for f in plan_forwards([len(x) for x in ids], 4)] and max(forwards) <= 4
    assert len(forwards) >= 3  # 12 texts in forwards of at most 4
    check(logits, alone(one_run))
    logits, forwards, rounds = serve(one_run, max_round=4)
    assert rounds == [3, 3, 3, 3]
    check(logits, alone(one_run))
    two_runs = [(reg.runs[("topics", "binary")[k % 2]], r) for k, r in enumerate(texts)]
    logits, forwards, rounds = serve(two_runs, max_round=6)
    assert rounds == [6, 6]  # slots of one mixed base: one group, its rows in shared forwards
    check(logits, alone(two_runs))
    apart = Registry.load([("topics", runs["topics"]), ("binary", runs["binary"])], device=torch.device("cpu"),
                          mixed=False)
    two_runs = [(apart.runs[("topics", "binary")[k % 2]], r) for k, r in enumerate(texts)]
    logits, forwards, rounds = serve(two_runs, max_round=6)
    assert rounds == [12]
    check(logits, alone(two_runs))


@pytest.mark.slow
def test_streams_compute_side_by_side_sharing_the_cores(runs):
    """Two streams: while one stream's forward is held (its on_batch hook blocks), a later request is
    computed by the other stream and answered; a forward alone gets every core torch had, two at once
    share them. One stream: the later request waits for the held one (the contrast that makes the
    first check mean something)."""
    import asyncio
    import threading

    import torch

    from lorafit.serve.batcher import Batcher, auto_streams
    from lorafit.serve.registry import Registry

    run = Registry.load([("topics", runs["topics"])], device=torch.device("cpu")).runs["topics"]
    cores = torch.get_num_threads()

    def serve(streams):
        seen, release = [], threading.Event()

        def hook(size):  # runs in the stream's thread, just before its forward
            seen.append(torch.get_num_threads())
            if len(seen) == 1:
                release.wait(60)

        async def go():
            batcher = Batcher(max_batch=4, max_wait_ms=0, on_batch=hook, streams=streams).start()
            try:
                held = batcher.submit(run, [TEXTS[0]])
                for _ in range(600):  # until the first forward is held
                    if seen:
                        break
                    await asyncio.sleep(0.01)
                later = batcher.submit(run, [TEXTS[1]])
                try:
                    await asyncio.wait_for(asyncio.shield(later.future), 1.0 if streams == 1 else 60)
                    answered_while_held = True
                except asyncio.TimeoutError:
                    answered_while_held = False
                release.set()
                await asyncio.wait_for(asyncio.gather(held.future, later.future), 60)
                return answered_while_held
            finally:
                release.set()
                batcher.stop()
        return asyncio.run(go()), seen

    answered, seen = serve(2)
    assert answered and seen == [cores, max(1, cores // 2)]
    answered, seen = serve(1)
    assert not answered and seen == [cores, cores]
    assert auto_streams([torch.device("cpu")]) == min(2, cores)
    assert auto_streams([torch.device("cpu"), torch.device("cuda", 0)]) == 1  # a GPU: one stream


def test_the_socket_listens_before_uvicorn_starts():
    """A client that connects as soon as the start line is out is queued, not refused, while uvicorn
    starts (a loaded machine once refused the first request of a test)."""
    import socket

    from lorafit.serve.main import bind

    sock = bind("127.0.0.1", 0)
    try:
        client = socket.create_connection(sock.getsockname()[:2], timeout=5)
        client.close()
    finally:
        sock.close()
