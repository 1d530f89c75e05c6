"""Dynamic batching: the texts of concurrent requests, gathered for up to max_wait_ms or max_batch
texts, run in one worker thread (off the event loop: health checks answer while a batch computes).

Each round takes waiting requests in arrival order until max_batch texts are reached (a request
with more texts than that is taken whole and split into several forwards), groups the texts per
run, and runs each group as `lorafit predict` does: tokenised alike, sorted by length (longest
first), padded per forward to its longest item, in forwards of at most max_batch texts; the
logits go back to each request in its own order. A run's rows never see another run's, and the
attention mask keeps padding out of every real token, so a text's logits do not depend on what
else was in the batch (beyond float rounding; tests/test_serve.py checks 1e-4).

The queue is bounded (max_queue requests waiting or running): `submit` refuses at once when it is
full (the server answers 503 + Retry-After), so memory stays bounded under any load. A request
whose client went away is dropped before its texts are computed."""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch


class QueueFull(Exception):
    pass


class Stopped(Exception):
    pass


@dataclass
class Job:
    run: object                      # registry.ServedRun
    texts: list[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False          # the client went away: skip if not started

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


def tokenize_texts(run, texts: list[str]) -> list[list[int]]:
    """The token ids `lorafit predict` computes for these texts: the run's truncation (data.encoding),
    without the disk cache."""
    from ..data.encoding import Encoding, encode

    d = run.cfg.data
    return encode(run.tokenizer, texts, Encoding(run.max_length, d.truncation, d.head_tokens), None, cache=False)[0]


@torch.inference_mode()
def run_logits(run, ids: list[list[int]], batch_size: int) -> np.ndarray:
    """Logits in input order: predict_logits' length-sorted, per-batch padded forwards."""
    from ..data.batches import Collator, LengthGroupedBatches

    out = np.zeros((len(ids), len(run.labels)), dtype=np.float32)
    collate = Collator(run.tokenizer.pad_token_id)
    for idx in LengthGroupedBatches([len(x) for x in ids], batch_size, shuffle=False):
        batch = collate([(ids[i], None) for i in idx])
        logits = run.model(**{k: v.to(run.device) for k, v in batch.items()}).logits
        out[np.asarray(idx)] = logits.float().cpu().numpy()
    return out


class Batcher:
    def __init__(self, max_batch: int = 64, max_wait_ms: float = 5.0, max_queue: int = 512, on_batch=None):
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.on_batch = on_batch or (lambda size: None)  # metrics hook: texts per forward
        self.pending: deque[Job] = deque()
        self.running = 0                 # requests taken by the worker, not finished
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="lorafit-batcher", daemon=True)

    def start(self) -> "Batcher":
        self.thread.start()
        return self

    def depth(self) -> int:
        with self.cond:
            return len(self.pending) + self.running

    def submit(self, run, texts: list[str]) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(run, texts, loop.create_future(), loop)
        with self.cond:
            if self.stopping:
                raise Stopped()
            if len(self.pending) + self.running >= self.max_queue:
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
                pass  # already taken: its result is dropped

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was taken, fail what still waits, end the thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _take(self) -> list[Job] | None:
        """Wait for work, then gather up to max_batch texts or until the oldest waited max_wait."""
        with self.cond:
            while not self.pending and not self.stopping:
                self.cond.wait(0.5)
            if not self.pending:
                return None
            deadline = self.pending[0].queued_at + self.max_wait
            while not self.stopping:
                n = sum(len(j.texts) for j in self.pending if not j.cancelled)
                left = deadline - time.monotonic()
                if n >= self.max_batch or left <= 0:
                    break
                self.cond.wait(left)
            jobs, n = [], 0
            while self.pending and (not jobs or n + len(self.pending[0].texts) <= self.max_batch):
                job = self.pending.popleft()
                if job.cancelled or job.future.done():
                    continue
                jobs.append(job)
                n += len(job.texts)
            self.running += len(jobs)
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
                    self.running -= len(jobs)

    def _compute(self, jobs: list[Job]) -> None:
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.run.name, []).append(job)
        for group in groups.values():
            group = [j for j in group if not j.cancelled]
            if not group:
                continue
            run = group[0].run
            try:
                ids = tokenize_texts(run, [t for j in group for t in j.texts])
                for s in range(0, len(ids), self.max_batch):
                    self.on_batch(min(self.max_batch, len(ids) - s))
                logits = run_logits(run, ids, self.max_batch)
            except Exception as e:  # a fault of the server, not of the request: the caller answers 500
                for j in group:
                    j.finish(error=e)
                continue
            at = 0
            for j in group:
                j.finish(logits[at:at + len(j.texts)])
                at += len(j.texts)
