"""`lorafit serve` over any task and text pairs, and `--adapters-dir` (runs loaded on demand), as real
server processes on loopback ports spoken to over real HTTP: answers equal `lorafit predict`'s file
for every task and for pairs; nothing loads at start-up; explicit load/unload; LRU eviction at
--max-loaded 2 (requests racing the evictions all answered); concurrent first requests load once;
a bad folder is a 4xx that harms no other run; names escaping the folder are refused; the key is
needed for load/unload. And in-process: --max-adapter-memory evicts by the runs' own bytes and gives
the pool's index back."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import http.client
import json
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_rows, train_briefly
from test_serve import TEXTS, Server
from test_tasks import multi_rows, regression_rows, write_jsonl
from test_text_pairs import pair_rows

EMPTY_FOLDERS = 1000  # folders that are not runs: listed at start-up, never read until asked for
FAST = dict(train__max_steps=3, optim__lr=5e-2, budget__max_trainable=200000)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_roberta, tiny_bert):
    """An adapters folder: single-label runs of 4 and 2 labels (two heads, two ranks), a multi_label run, a
    regression run and a text-pair run over the tiny BERT; a damaged run (its adapter weights cut short),
    EMPTY_FOLDERS empty folders, and a symlink to a run outside the folder. Returns (folder, outside run)."""
    root = tmp_path_factory.mktemp("adapters")
    d = root / "dir"
    d.mkdir()
    four, two = root / "four.csv", root / "two.csv"
    synthetic_rows(120, seed=3).to_csv(four, index=False)
    synthetic_rows(120, seed=4, n_labels=2).to_csv(two, index=False)
    reg, pairs = root / "reg.csv", root / "pairs.csv"
    regression_rows(120).to_csv(reg, index=False)
    pair_rows(120).to_csv(pairs, index=False)
    multi = write_jsonl(root / "multi.jsonl", multi_rows(120))
    train_briefly(tiny_roberta, four, d / "topics", **FAST)
    train_briefly(tiny_roberta, two, d / "binary", head__type="cls_linear", adapter__train_layernorm=True, adapter__r=2,
                  **FAST)
    train_briefly(tiny_roberta, multi, d / "multi", data__task="multi_label", data__label_column="topics",
                  head__type="mean_linear", **FAST)
    train_briefly(tiny_roberta, reg, d / "score", data__task="regression", data__label_column="score", **FAST)
    train_briefly(tiny_bert, pairs, d / "pairs", data__text_pair_column="hypothesis", **FAST)
    shutil.copytree(d / "topics", d / "broken")
    weights = next((d / "broken").rglob("adapter_model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    for k in range(EMPTY_FOLDERS):
        (d / f"empty{k:04d}").mkdir()
    shutil.copytree(d / "binary", root / "outside")
    (d / "escape").symlink_to(root / "outside", target_is_directory=True)
    return d, root / "outside"


RUNS = ("topics", "binary", "multi", "score", "pairs")
PAIR_TEXTS = [r["text"] for r in pair_rows(12, seed=8).to_dict("records")]
PAIR_SECOND = [r["hypothesis"] for r in pair_rows(12, seed=8).to_dict("records")]


@pytest.fixture(scope="module")
def reference(adapters, tmp_path_factory):
    """`lorafit predict --with-logits [--probs]` of every run (pairs: its own texts)."""
    from lorafit.cli import main

    d, _ = adapters
    root = tmp_path_factory.mktemp("ref")
    pd.DataFrame({"text": TEXTS}).to_csv(root / "in.csv", index=False)
    pd.DataFrame({"text": PAIR_TEXTS, "hypothesis": PAIR_SECOND}).to_csv(root / "pair-in.csv", index=False)
    out = {}
    for name in RUNS:
        args = ["predict", str(d / name), "--input", str(root / ("pair-in.csv" if name == "pairs" else "in.csv")),
                "--output", str(root / f"{name}.csv"), "--with-logits"] + ["--probs"] * (name != "score")
        assert main(args) == 0
        out[name] = pd.read_csv(root / f"{name}.csv", keep_default_na=False)
    return out


def start(*args) -> Server:
    s = Server(*args, "--max-batch", "8", "--max-wait-ms", "10", timeout=180).ready()
    # read the log on from here (loads and evictions are logged): a full pipe would block the server
    threading.Thread(target=lambda: s.log.extend(iter(s.proc.stderr.readline, "")), daemon=True).start()
    return s


@pytest.fixture(scope="module")
def server(adapters, reference):
    """Everything on demand, but `score` also named on the command line (pinned, alone over its base:
    merged, predict's own path), so both paths are compared with predict."""
    d, _ = adapters
    s = start(f"score={d / 'score'}", "--adapters-dir", d)
    yield s
    assert s.stop() == 0


def predict(url, name, texts, timeout=60, headers=None, **fields):
    return httpx.post(f"{url}/v1/models/{name}/predict", json={"texts": texts, **fields}, headers=headers, timeout=timeout)


def models(url, **kw) -> dict:
    r = httpx.get(f"{url}/v1/models", timeout=30, **kw)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


def loads(url, name, **kw) -> float:
    m = re.search(rf'^lorafit_adapter_loads_total\{{model="{name}"\}} ([\d.]+)$', httpx.get(f"{url}/metrics", **kw).text,
                  re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow
def test_start_up_lists_the_folder_and_loads_nothing(server, adapters):
    by = models(server.url)
    assert len(by) == len(RUNS) + 1 + EMPTY_FOLDERS  # + broken; the symlink out is not listed
    assert "escape" not in by
    assert by["score"]["state"] == "loaded" and by["score"]["pinned"] and by["score"]["shared_parameters"] == 0
    assert all(m["state"] == "available" and m["loads"] == 0 for n, m in by.items() if n != "score")
    assert "runs on demand from" in "".join(server.log)


@pytest.mark.slow
def test_every_task_and_pairs_answer_as_predict(server, reference):
    """Labels (names, sets, numbers), label_ids, probs (calibrated / sigmoids) and logits equal predict's
    file; each run answered first on demand (cold) and again (loaded), concurrently over runs."""
    def ask(name):
        texts, pairs = (PAIR_TEXTS, {"text_pairs": PAIR_SECOND}) if name == "pairs" else (TEXTS, {})
        r = predict(server.url, name, texts, logits=True, probs=name != "score", **pairs)
        assert r.status_code == 200, (name, r.text)
        return r.json()

    with cf.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(ask, RUNS + RUNS))
    for name, ans in zip(RUNS + RUNS, answers):
        ref = reference[name]
        logits = ref[[c for c in ref.columns if c.startswith("logit_")]].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(ans["logits"], logits, rtol=1e-4, atol=1e-4)
        if name == "score":
            np.testing.assert_allclose(ans["labels"], ref["label"].astype(float), rtol=1e-4)
            assert set(ans) == {"model", "labels", "logits"}
            continue
        probs = ref[[c for c in ref.columns if c.startswith("prob_")]].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(ans["probs"], probs, rtol=1e-4, atol=1e-6)
        if name == "multi":
            assert [sorted(x) for x in ans["labels"]] == [sorted(json.loads(x)) for x in ref["label"]]
            assert "label_ids" not in ans and len(ans["thresholds"]) == probs.shape[1]
        else:
            assert [str(x) for x in ans["labels"]] == ref["label"].astype(str).tolist()
            assert ans["label_ids"] == np.argmax(logits, 1).tolist()
    by = models(server.url)
    assert {by[n]["task"] for n in RUNS} == {"single_label", "multi_label", "regression"} and by["pairs"]["text_pairs"]
    assert all(by[n]["loads"] == 1 for n in RUNS if n != "score")  # on demand: once each, then served loaded


SHAPE = [
    ("pairs for a single-text run", "topics", {"texts": ["a"], "text_pairs": ["b"]}, "text_pairs: model 'topics' was "
                                                                                      "trained on single texts"),
    ("no pairs for a pair run", "pairs", {"texts": ["a"]}, "text_pairs: field required"),
    ("pairs of another length", "pairs", {"texts": ["a", "b"], "text_pairs": ["c"]}, "text_pairs: 1 pair texts for 2"),
    ("probs of a regression", "score", {"texts": ["a"], "probs": True}, "probs: a regression run predicts a value"),
    ("probs of a regression on demand", "score", {"texts": ["a"], "probs": True}, "drop probs"),
]


@pytest.mark.slow
@pytest.mark.parametrize("what,name,body,words", SHAPE, ids=[s[0] for s in SHAPE])
def test_a_request_of_the_wrong_shape_is_a_422_naming_the_field(server, what, name, body, words):
    r = httpx.post(f"{server.url}/v1/models/{name}/predict", json=body, timeout=60)
    assert r.status_code == 422 and words in r.json()["detail"], r.text


@pytest.mark.slow
def test_concurrent_first_requests_load_once(server, reference):
    """Eight requests at once for a run not loaded (after an explicit unload): one load, eight answers."""
    assert httpx.delete(f"{server.url}/v1/models/binary", timeout=30).status_code == 200
    assert models(server.url)["binary"]["state"] == "available"
    before = loads(server.url, "binary")
    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda k: predict(server.url, "binary", TEXTS[k:k + 3]), range(8)))
    assert [r.status_code for r in got] == [200] * 8, [r.text for r in got]
    want = reference["binary"]["label"].astype(str).tolist()
    assert [[str(x) for x in r.json()["labels"]] for r in got] == [want[k:k + 3] for k in range(8)]
    assert loads(server.url, "binary") == before + 1 and models(server.url)["binary"]["loads"] == before + 1


@pytest.mark.slow
def test_a_bad_folder_is_a_4xx_and_harms_no_one(server, reference, adapters):
    with cf.ThreadPoolExecutor(4) as pool:
        bad = [pool.submit(predict, server.url, "broken", ["x"]) for _ in range(3)]
        good = pool.submit(predict, server.url, "topics", TEXTS[:4])
        for f in bad:
            r = f.result()
            assert r.status_code == 422 and r.json()["detail"].startswith("model 'broken': "), r.text
            assert str(adapters[0]) not in r.json()["detail"]  # the name, not the server's path
        assert [str(x) for x in good.result().json()["labels"]] == reference["topics"]["label"].astype(str).tolist()[:4]
    r = predict(server.url, "empty0007", ["x"])
    assert r.status_code == 422 and "not a finished lorafit run" in r.json()["detail"], r.text
    r = httpx.post(f"{server.url}/v1/models/broken/load", timeout=60)
    assert r.status_code == 422, r.text
    by = models(server.url)
    assert by["broken"]["state"] == "available" and by["broken"]["error"].startswith("model 'broken'")
    assert predict(server.url, "pairs", PAIR_TEXTS[:2], text_pairs=PAIR_SECOND[:2]).status_code == 200


def raw(url: str, method: str, path: str, body: bytes = b'{"texts": ["x"]}') -> int:
    """The status of a request sent as written (httpx would normalise dot segments)."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
def test_names_outside_the_folder_are_refused(server, adapters):
    d, outside = adapters
    paths = ["/v1/models/../predict", "/v1/models/%2e%2e/predict", "/v1/models/%2E%2E/load", "/v1/models/..%2Fescape/predict",
             "/v1/models/%2e%2e%2foutside/predict", "/v1/models/%2Ftmp/predict", f"/v1/models/{'%2F'.join(d.parts)}/predict",
             "/v1/models/escape/predict", "/v1/models/escape/load", "/v1/models/.hidden/predict"]
    for path in paths:
        status = raw(server.url, "POST", path)
        assert 400 <= status < 500, (path, status)
    assert raw(server.url, "POST", "/v1/models/escape/predict") == 403  # the symlink out: refused, not loaded
    assert raw(server.url, "DELETE", "/v1/models/%2e%2e") in (403, 404)
    assert "escape" not in models(server.url) and loads(server.url, "escape") == 0
    assert not any(re.search(r"loaded (escape|outside|\.)", line) for line in server.log)


@pytest.fixture(scope="module")
def lru(adapters, reference, tmp_path_factory):
    key = "k" * 20 + "-adapters"
    path = tmp_path_factory.mktemp("key") / "key"
    path.write_text(key + "\n")
    d, _ = adapters
    s = start(f"score={d / 'score'}", "--adapters-dir", d, "--max-loaded", "2", "--api-key-file", path)
    yield s, {"Authorization": f"Bearer {key}"}
    assert s.stop() == 0


@pytest.mark.slow
def test_lru_eviction_at_max_loaded_2_and_the_key(lru, reference):
    s, auth = lru
    for name in ("topics", "binary"):
        assert predict(s.url, name, TEXTS[:2], headers=auth).status_code == 200
    assert predict(s.url, "topics", TEXTS[:2], headers=auth).status_code == 200  # topics is now the most recent
    assert predict(s.url, "multi", TEXTS[:2], headers=auth).status_code == 200  # a third: binary goes
    by = models(s.url, headers=auth)
    assert [n for n, m in by.items() if m["state"] == "loaded"] == ["score", "topics", "multi"], by
    assert by["binary"]["state"] == "available" and by["binary"]["loads"] == 1 and by["score"]["pinned"]
    assert 'lorafit_adapter_unloads_total{model="binary"} 1.0' in httpx.get(f"{s.url}/metrics", headers=auth).text
    # load / unload need the key
    for method, path in (("POST", "/v1/models/binary/load"), ("DELETE", "/v1/models/topics")):
        assert httpx.request(method, f"{s.url}{path}", timeout=30).status_code == 401
        assert httpx.request(method, f"{s.url}{path}", headers={"Authorization": "Bearer wrong-key-wrong"},
                             timeout=30).status_code == 401
    r = httpx.post(f"{s.url}/v1/models/binary/load", headers=auth, timeout=60)  # topics is the least recent now
    assert r.status_code == 200 and r.json()["state"] == "loaded" and r.json()["loads"] == 2, r.text
    by = models(s.url, headers=auth)
    assert {n for n, m in by.items() if m["state"] == "loaded"} == {"score", "multi", "binary"}
    assert httpx.delete(f"{s.url}/v1/models/multi", headers=auth, timeout=30).json()["state"] == "available"
    assert httpx.delete(f"{s.url}/v1/models/score", headers=auth, timeout=30).status_code == 409  # pinned
    assert httpx.delete(f"{s.url}/v1/models/nope", headers=auth, timeout=30).status_code == 404
    assert {n for n, m in models(s.url, headers=auth).items() if m["state"] == "loaded"} == {"score", "binary"}


@pytest.mark.slow
def test_requests_racing_evictions_all_get_their_answers(lru, reference):
    """Four runs over --max-loaded 2, 40 requests from 8 clients: every one answered as predict answers,
    though runs are evicted and loaded again all along (a run is never evicted under a request)."""
    s, auth = lru
    rng = np.random.default_rng(1)
    names = ["topics", "binary", "multi", "pairs"]
    jobs = [(names[int(rng.integers(4))], int(rng.integers(0, 10))) for _ in range(40)]

    def ask(job):
        name, k = job
        texts, pairs = (PAIR_TEXTS, {"text_pairs": PAIR_SECOND[k:k + 2]}) if name == "pairs" else (TEXTS, {})
        return predict(s.url, name, texts[k:k + 2], headers=auth, timeout=120, logits=True, **pairs)

    with cf.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, jobs))
    assert [r.status_code for r in got] == [200] * len(jobs), [r.text for r in got if r.status_code != 200]
    for (name, k), r in zip(jobs, got):
        ref = reference[name]
        logits = ref[[c for c in ref.columns if c.startswith("logit_")]].to_numpy(dtype=np.float64)[k:k + 2]
        np.testing.assert_allclose(r.json()["logits"], logits, rtol=1e-4, atol=1e-4)
    by = models(s.url, headers=auth)
    assert sum(m["state"] == "loaded" for n, m in by.items() if n != "score") <= 2
    assert sum(by[n]["loads"] for n in names) > len(names)  # runs were evicted and loaded again


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [True, False])
def test_max_adapter_memory_evicts_by_own_bytes_in_process(adapters, mixed):
    """Registry in-process (real loads in its worker thread; slots of a mixed base, and per-run models): a
    budget that holds one tiny adapter's own bytes keeps the most recent one only; an evicted run holds
    nothing afterwards, and the pool's index and packed weights stop growing over load/evict cycles."""
    import torch

    from lorafit.serve.registry import Registry

    d, _ = adapters

    async def go():
        probe = Registry.load([], device=torch.device("cpu"), adapters_dir=d, mixed=mixed)
        sizes = []
        for name in ("topics", "binary"):
            lease = await probe.acquire(name)
            sizes.append(lease.run.own_bytes)
            probe.release(lease)
        probe.close()
        assert all(0 < size < 1_000_000 for size in sizes)

        # room for either alone, not for both
        reg = Registry.load([], device=torch.device("cpu"), adapters_dir=d, max_bytes=max(sizes) + min(sizes) // 2,
                            mixed=mixed)
        held = lambda: sum(len(v) for v in reg.loader.pool.shared.tensors.values())
        first = await reg.acquire("topics")
        second = await reg.acquire("binary")
        assert list(reg.loaded) == ["topics", "binary"]  # over budget, but topics is in use: not evicted under it
        assert (first.run.loaded.mixed is not None) == mixed  # slots of one mixed base, or a module tree each
        reg.release(first)
        assert list(reg.loaded) == ["binary"]  # free now: the least recently used goes
        await asyncio.get_running_loop().run_in_executor(reg._worker(), lambda: None)  # the unload has run
        assert first.run.loaded is None  # the evicted run holds no tensors
        reg.release(second)
        sizes = []
        for cycle in range(3):  # each load evicts the other: the pool's index and packed weights stop growing
            for name in ("topics", "binary"):
                reg.release(await reg.acquire(name))
                await asyncio.get_running_loop().run_in_executor(reg._worker(), lambda: None)
                assert len(reg.loaded) == 1
            sizes.append((held(), len(reg.loader.pool.packed)))
        assert sizes[1] == sizes[2], sizes
        assert reg.loads["topics"] == 4 and reg.loads["binary"] == 4
        reg.close()

    asyncio.run(asyncio.wait_for(go(), 300))


def test_mean_pooling_reads_the_mask_of_its_own_threads_forward():
    """Two streams computing one mean-pooled run at once: each forward pools over its own attention mask
    (the mask was one attribute per Pool: the later forward's mask replaced the earlier's)."""
    import torch

    from lorafit.model.heads import Pool

    pool, hidden = Pool("mean"), torch.arange(10.0).reshape(1, 5, 2)
    masks = [torch.tensor([[1, 1, 0, 0, 0]]), torch.tensor([[1, 1, 1, 1, 1]])]
    set_both, got = threading.Barrier(2, timeout=30), [None, None]

    def forward(k):
        pool.mask = masks[k]  # what the model's pre-hook does at the start of its forward
        set_both.wait()       # the other thread's forward has set its mask too
        got[k] = pool(hidden)

    threads = [threading.Thread(target=forward, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got[0].tolist() == [[1.0, 2.0]] and got[1].tolist() == [[4.0, 5.0]]


@pytest.mark.slow
def test_a_request_whose_client_left_holds_its_run_until_its_forward_ends(adapters):
    """A job cancelled while its forward runs: `released` (what the server waits for before it lets the
    registry unload the run) is done only once that forward has ended; a job cancelled while it waits
    is released at once."""
    import torch

    from lorafit.serve.batcher import Batcher
    from lorafit.serve.registry import Registry

    d, _ = adapters
    run = Registry.load([("topics", d / "topics")], device=torch.device("cpu")).runs["topics"]
    started, resume = threading.Event(), threading.Event()

    def hook(size):  # in the stream's thread, just before its forward
        started.set()
        resume.wait(60)

    async def go():
        batcher = Batcher(max_batch=4, max_wait_ms=0, on_batch=hook, streams=1).start()
        try:
            job = batcher.submit(run, TEXTS[:2])
            for _ in range(600):
                if started.is_set():
                    break
                await asyncio.sleep(0.01)
            batcher.cancel(job)  # taken: its forward is held in the hook
            await asyncio.sleep(0.2)
            assert not job.released.done()
            resume.set()
            await asyncio.wait_for(job.released, 60)
            started.clear()
            waiting = Batcher(max_batch=4, max_wait_ms=60_000).start()  # never takes it within the test
            try:
                queued = waiting.submit(run, TEXTS[:1])
                waiting.cancel(queued)
                await asyncio.wait_for(queued.released, 5)
            finally:
                waiting.stop()
        finally:
            resume.set()
            batcher.stop()

    asyncio.run(asyncio.wait_for(go(), 120))
