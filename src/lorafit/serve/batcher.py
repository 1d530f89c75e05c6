"""Dynamic batching: the texts of concurrent requests, gathered for up to max_wait_ms or max_batch
texts, run in one worker thread (off the event loop: health checks answer while a batch computes).

A round waits until max_batch texts wait or the oldest has waited max_wait_ms, then takes every
waiting request in arrival order up to max_round texts per group (several forwards' worth; a request
with more texts than that is taken whole), groups the texts, and computes them with `lorafit
predict`'s engine (infer/engine.py): encoded with each run's truncation, sorted by length and cut
into forwards of at most max_batch texts, each padded to its longest item (plan_forwards). A group
is one run, or every run that is a slot of one mixed base (infer/mixed.py: runs over one base whose
rows share a forward, engine.forward_rows). A request is answered as soon as its last text is
computed; the logits go back to each request in its own order. The attention mask keeps padding out
of every real token and each row gets its own run's adapter, norms and head, so a text's logits do
not depend on what else was in the batch (beyond float rounding; tests/test_serve.py and
tests/test_mixed.py check 1e-4).

Why rounds of several forwards: a forward costs about its padded tokens, and requests of random
texts padded to the longest of 64 random AG News texts are half padding (0.44 real tokens per
padded one, against 0.92 when predict sorts a whole file). Taking more waiting texts per round and
sorting them is what predict does; the cost is latency for the first requests of a round, which
only arises when more than max_batch texts wait (under load they wait in the queue anyway).

The queue is bounded (max_queue requests waiting or running): `submit` refuses at once when it is
full (the server answers 503 + Retry-After), so memory stays bounded under any load. A request
whose client went away is dropped before its texts are computed (also between a round's forwards).
`drop` (the --grace deadline, and `stop`) drops every request waiting or taken: each is failed with
Stopped (the server answers 503), no round or forward starts for it any more, and only the forwards
already running finish; `stop` then joins the threads, so no thread is inside torch when the
interpreter shuts down (a daemon thread there aborts the process: `terminate called without an
active exception`, exit 134). texts_computed / texts_dropped count every submitted text once.
A job's `released` is done once no stream computes with its run any more (its round ended, or it
never started): the server holds a run loaded on demand until then, so the registry never unloads
a run under a forward (a request whose client left may still have rows in one).

Streams: `streams` worker threads take rounds from the one queue (a round per thread; arrival order
kept). Why more than one on a CPU: one forward over torch's intra-op threads (one per core) loses a
core whenever anything else runs on the machine (the HTTP loop, a load generator, the other thread
of the same op waits at every op's barrier for the one that was descheduled), so the served model
kept ~1.6 of 2 cores busy where offline predict keeps 2. Two streams each run their forward on
cores / busy-streams intra-op threads, chosen per forward: under load each stream has its own
core and nothing waits on a descheduled partner (1.11-1.23x the texts/s of one stream at C=64 in two
runs, bench/RESULTS.md), and when only one stream is busy (light load) its forward uses every core
(C=1: within noise of one stream in one run, 13% below in the other). On a GPU one stream (kernels of several threads share the device anyway)."""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from ..infer import engine


class QueueFull(Exception):
    pass


class Stopped(Exception):
    pass


@dataclass(eq=False)  # a job is itself (identity hash: held in a set while taken)
class Job:
    run: object                      # registry.ServedRun
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    pairs: list[str] | None = None   # the second texts of text pairs (a run trained on pairs)
    queued_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False          # the client went away: skip if not started
    # done when no stream computes with the job's run any more (its round ended, or it never started):
    # the registry may unload a run only then (a cancelled job's forward may still be running)
    released: asyncio.Future | None = None

    def let_go(self) -> None:
        def set_it():
            if self.released is not None and not self.released.done():
                self.released.set_result(None)
        try:
            self.loop.call_soon_threadsafe(set_it)
        except RuntimeError:  # the loop has closed
            pass

    def finish(self, value=None, error: BaseException | None = None) -> None:
        def set_it():
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)
        try:
            self.loop.call_soon_threadsafe(set_it)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass


def auto_streams(devices) -> int:
    """Worker streams when not told: 1 on a GPU; 2 on a CPU with at least 2 cores (measured on 2
    cores; more streams mean more threads taking turns at the GIL between ops, so not one per core)."""
    if any(torch.device(d).type != "cpu" for d in devices):
        return 1
    return min(2, torch.get_num_threads())


ROUND_BATCHES = 4  # a round takes at most this many forwards' worth of waiting texts unless told (max_round)


class Batcher:
    def __init__(self, max_batch: int = 64, max_wait_ms: float = 5.0, max_queue: int = 512, on_batch=None,
                 max_round: int = 0, on_round=None, streams: int = 1):
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.max_round = max_round or ROUND_BATCHES * max_batch
        self.on_batch = on_batch or (lambda size: None)  # metrics hooks: texts per forward, per round
        self.on_round = on_round or (lambda size: None)
        self.pending: deque[Job] = deque()
        self.taken: set[Job] = set()     # requests taken by a stream, not finished
        self.texts_computed = self.texts_dropped = 0  # under cond; the summary `lorafit serve` logs at exit
        self.cond = threading.Condition()
        self.stopping, self.stop_by = False, float("inf")
        # intra-op threads to share among the streams busy at a forward's start (the creating thread's
        # torch setting: OMP_NUM_THREADS or the core count)
        self.streams, self.cores, self.busy = max(1, streams), torch.get_num_threads(), 0
        self.threads = [threading.Thread(target=self._loop, name=f"lorafit-batcher-{k}", daemon=True)
                        for k in range(self.streams)]

    def start(self) -> "Batcher":
        for t in self.threads:
            t.start()
        return self

    def depth(self) -> int:
        with self.cond:
            return len(self.pending) + len(self.taken)

    def submit(self, run, texts: list[str], pairs: list[str] | None = None) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(run, texts, loop.create_future(), loop, pairs, released=loop.create_future())
        with self.cond:
            if self.stopping:
                raise Stopped()
            if len(self.pending) + len(self.taken) >= self.max_queue:
                raise QueueFull()
            self.pending.append(job)
            self.cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: a job still waiting leaves the queue now (and frees its place)."""
        with self.cond:
            job.cancelled = True
            try:
                self.pending.remove(job)
            except ValueError:
                return  # already taken: its stream skips its texts not yet computed, and lets go at the round's end
            self.texts_dropped += len(job.texts)
            job.let_go()

    def drop(self) -> None:
        """Shutting down: fail every request waiting or taken with Stopped (its client is answered 503 now)
        and start no round or forward for it; the forwards already running finish, their results unused."""
        with self.cond:
            self.stopping = True
            for job in self.pending:
                self.texts_dropped += len(job.texts)
                job.let_go()  # never started (the taken ones let go when their round ends)
            for job in (*self.pending, *self.taken):
                if not job.cancelled:  # a cancelled one has nobody waiting (its error would never be read)
                    job.cancelled = True
                    job.finish(error=Stopped())
            self.pending.clear()
            self.cond.notify_all()

    def stop(self, timeout: float = 30.0) -> bool:
        """Drop what is left (nobody waits for it: the server has answered or closed every request), end
        the threads; False if a forward still runs after `timeout` s (torch cannot be interrupted mid-op)."""
        self.drop()
        # a second stop (the app's shutdown, then lorafit serve's own) waits no longer than the first
        end = self.stop_by = min(self.stop_by, time.monotonic() + timeout)
        for t in self.threads:
            if t.is_alive():
                t.join(max(0.0, end - time.monotonic()))
        return not self.alive()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def _take(self) -> list[Job] | None:
        """Wait for work until max_batch texts wait or the oldest waited max_wait; take up to max_round texts per run."""
        with self.cond:
            while not self.pending and not self.stopping:
                self.cond.wait(0.5)
            if self.stopping or not self.pending:  # stopping: what still waits was dropped (drop)
                return None
            deadline = self.pending[0].queued_at + self.max_wait
            while not self.stopping:
                n = sum(len(j.texts) for j in self.pending if not j.cancelled)
                left = deadline - time.monotonic()
                if n >= self.max_batch or left <= 0:
                    break
                self.cond.wait(left)
            # up to max_round texts per group, in arrival order (the first request that does not fit ends
            # the round: no request overtakes an older one); a group's texts are sorted and cut apart from
            # other groups', so the cap is per group: 4 groups pad no more than one
            jobs, per_group = [], {}
            while self.pending:
                head = self.pending[0]
                n = per_group.get(group_of(head.run), 0)
                if n and n + len(head.texts) > self.max_round:
                    break
                job = self.pending.popleft()
                if job.cancelled or job.future.done():
                    self.texts_dropped += len(job.texts)
                    job.let_go()
                    continue
                jobs.append(job)
                per_group[group_of(job.run)] = n + len(job.texts)
            self.taken.update(jobs)
            self.busy += 1  # in the same lock as the take: a stream taking next sees this one busy
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                if self.stopping:
                    return
                continue
            try:
                self._compute(jobs)
            finally:
                with self.cond:
                    self.taken.difference_update(jobs)
                    self.busy -= 1
                for job in jobs:
                    job.let_go()

    def _share_cores(self) -> None:
        """This stream's intra-op threads for its next forward: the cores over the streams busy now.
        Set before every forward, one stream too: torch's count is per thread, but a new thread starts
        with the count some other thread set last (another batcher's stream, in the same process)."""
        torch.set_num_threads(max(1, self.cores // max(1, self.busy)))

    def _compute(self, jobs: list[Job]) -> None:
        self.on_round(sum(len(j.texts) for j in jobs))
        groups: dict[object, list[Job]] = {}
        for job in jobs:
            groups.setdefault(group_of(job.run), []).append(job)
        for group in groups.values():
            self._count(dropped=sum(len(j.texts) for j in group if j.cancelled))
            group = [j for j in group if not j.cancelled]
            if group:
                self._compute_run(group)

    def _count(self, computed: int = 0, dropped: int = 0) -> None:
        with self.cond:
            self.texts_computed += computed
            self.texts_dropped += dropped

    def _compute_run(self, group: list[Job]) -> None:
        """One group's texts of this round (one run's, or the runs of one mixed base), in plan_forwards'
        forwards over all of them; each request answered when its last text is done."""
        owner = [k for k, j in enumerate(group) for _ in j.texts]
        first = np.cumsum([0] + [len(j.texts) for j in group])
        left = [len(j.texts) for j in group]
        out = [np.zeros((len(j.texts), len(j.run.labels)), dtype=np.float32) for j in group]
        try:
            ids: list = [None] * len(owner)
            types: list = [None] * len(owner)  # segment ids of pair rows (a run trained on pairs)
            by_run: dict[int, list[int]] = {}  # a run's texts (and pair texts) encoded in one call
            for k, job in enumerate(group):
                by_run.setdefault(id(job.run), []).append(k)
            for ks in by_run.values():
                rows = [i for k in ks for i in range(first[k], first[k + 1])]
                pairs = None if group[ks[0]].pairs is None else [p for k in ks for p in group[k].pairs]
                encoded, segments, _ = engine.encode(group[ks[0]].run, [t for k in ks for t in group[k].texts], pairs)
                for n, (i, x) in enumerate(zip(rows, encoded)):
                    ids[i] = x
                    types[i] = None if segments is None else segments[n]
            runs = [_loaded(group[k].run) for k in owner]
            for idx in engine.plan_forwards([len(x) for x in ids], self.max_batch):
                keep = [i for i in idx if not group[owner[i]].cancelled]  # its client went away, or drop()
                self._count(dropped=len(idx) - len(keep))
                idx = keep
                if not idx:
                    continue
                self._share_cores()
                self.on_batch(len(idx))
                rows = engine.forward_rows([runs[i] for i in idx], [ids[i] for i in idx], [types[i] for i in idx])
                self._count(computed=len(idx))
                for i, row in zip(idx, rows):
                    k = owner[i]
                    out[k][i - first[k]] = row
                    left[k] -= 1
                    if left[k] == 0:
                        group[k].finish(out[k])
        except Exception as e:  # a fault of the server, not of the request: the caller answers 500
            for k, j in enumerate(group):
                if left[k] > 0 and not j.cancelled:
                    j.finish(error=e)


def _loaded(run):
    """The engine's run (infer.loaded.LoadedRun) of a served run (registry.ServedRun wraps one)."""
    return getattr(run, "loaded", run)


def group_of(run) -> object:
    """Runs computed together: the slots of one mixed base (infer/mixed.py), else each run alone (by
    identity, not name: a run unloaded and loaded again on demand is another object)."""
    mixed = getattr(_loaded(run), "mixed", None)
    return ("mixed", id(mixed[0])) if mixed is not None else ("run", id(run))
