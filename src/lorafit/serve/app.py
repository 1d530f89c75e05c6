"""The HTTP API (FastAPI): predict per served run (any task; text pairs for runs trained on them), the
model list and on-demand load/unload (registry.py), health, readiness, Prometheus metrics.

`create_app(registry, limits)` is importable, so the app runs under any ASGI server
(`uvicorn 'lorafit.serve.app:from_env' --factory` with LORAFIT_SERVE_RUNS and/or
LORAFIT_SERVE_ADAPTERS_DIR set, or your own code). The answer's fields are the run's task's
(tasks/*.py `response`): the app only checks the request's shape against the run and adds `logits`.
Every client mistake is a 4xx with a one-line `detail` naming the field and the limit; the body
is read with a byte cap before it is parsed, so an oversized body costs no more than the cap."""
from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError

from ..tasks import task_of
from .auth import BearerAuth, read_key
from .batcher import Batcher, QueueFull, Stopped, auto_streams
from .drain import AnswerCancelled, Drain
from .registry import NotServable, Registry



@dataclass
class Limits:
    max_batch: int = 64
    max_wait_ms: float = 5.0
    queue: int = 512
    max_texts: int = 256
    max_chars: int = 100_000
    max_body_bytes: int = 0       # 0: derived from max_texts x max_chars (see body_limit)
    retry_after_s: int = 1
    stop_wait_s: float = 5.0      # at exit, how long the forwards still running may take (drain.py)
    max_round: int = 0            # texts per run a round may take when many wait; 0: 4 x max_batch (batcher.ROUND_BATCHES)
    streams: int = 0              # worker threads computing rounds; 0: batcher.auto_streams (2 on a CPU, 1 on a GPU)

    def body_limit(self) -> int:
        # every text at its limit, each char escaped as \uXXXX (6 bytes), plus room for the JSON around it
        return self.max_body_bytes or self.max_texts * (self.max_chars * 6 + 8) + 4096


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr]
    text_pairs: Optional[list[StrictStr]] = None  # the second text of each pair (runs trained on pairs)
    probs: StrictBool = False
    logits: StrictBool = False


class PredictResponse(BaseModel):
    model: str
    labels: list[Any]                 # a label (single_label), a list of labels (multi_label), a number (regression)
    label_ids: Optional[list[int]] = None  # single_label
    probs: Optional[list[list[float]]] = None
    thresholds: Optional[list[float]] = None  # multi_label with probs: each label's decision threshold
    logits: Optional[list[list[float]]] = None


class ClientError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers or {}


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err.get("loc", ())) or "body"
    if err.get("type") == "extra_forbidden":
        return f"{where}: unknown field; allowed: texts, text_pairs, probs, logits"
    if err.get("type") == "missing":
        return f"{where}: field required, e.g. {{\"texts\": [\"some text\"]}}"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where}: {err.get('msg', 'invalid')}{more}"


def parse_request(body: bytes, limits: Limits) -> PredictRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ClientError(400, f"body: not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(data, dict):
        raise ClientError(422, "body: must be a JSON object, e.g. {\"texts\": [\"some text\"]}")
    texts = data.get("texts")
    if isinstance(texts, list) and len(texts) > limits.max_texts:  # before validating every item
        raise ClientError(413, f"texts: {len(texts)} texts, at most {limits.max_texts} per request (--max-texts)")
    try:
        req = PredictRequest.model_validate(data)
    except ValidationError as e:
        raise ClientError(422, _one_line(e)) from None
    if not req.texts:
        raise ClientError(422, "texts: empty list; give at least one text")
    for i, t in enumerate(req.texts):
        if len(t) > limits.max_chars:
            raise ClientError(413, f"texts.{i}: {len(t)} characters, at most {limits.max_chars} (--max-chars)")
        if not t.strip():  # training drops such rows and predict leaves their label empty: no label to give
            raise ClientError(422, f"texts.{i}: empty or whitespace-only text; remove it (there is nothing to classify)")
    if req.text_pairs is not None:
        if len(req.text_pairs) != len(req.texts):
            raise ClientError(422, f"text_pairs: {len(req.text_pairs)} pair texts for {len(req.texts)} texts; give one "
                                   "per text, in the same order")
        for i, t in enumerate(req.text_pairs):  # an empty second text is a pair predict computes too
            if len(t) > limits.max_chars:
                raise ClientError(413, f"text_pairs.{i}: {len(t)} characters, at most {limits.max_chars} (--max-chars)")
    return req


def refused(name: str, run, req: PredictRequest):
    """The 422 for a request whose shape does not fit the run (pairs, probs), before anything is computed."""
    if run.pairs and req.text_pairs is None:
        return ClientError(422, f"text_pairs: field required: model '{name}' was trained on text pairs; give "
                                "{\"texts\": [...], \"text_pairs\": [...]}, one pair text per text")
    if not run.pairs and req.text_pairs is not None:
        return ClientError(422, f"text_pairs: model '{name}' was trained on single texts; drop text_pairs")
    why = task_of(run.cfg).request_refused(req.probs)
    return ClientError(422, why) if why else None


def _metrics(registry_names: list[str]):
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    reg = CollectorRegistry()  # per app: two apps in one process (tests) keep their own counts
    return reg, {
        "requests": Counter("lorafit_requests", "Predict requests by model and HTTP status", ["model", "status"],
                            registry=reg),
        "latency": Histogram("lorafit_request_seconds", "Predict request latency (received to answered)", ["model"],
                             buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=reg),
        "batch": Histogram("lorafit_batch_texts", "Texts per model forward", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
                           registry=reg),
        "round": Histogram("lorafit_round_texts", "Texts the batcher took per round (cut into forwards)",
                           buckets=(1, 4, 16, 64, 128, 256, 512, 1024), registry=reg),
        "texts": Counter("lorafit_texts", "Texts classified, by model", ["model"], registry=reg),
        "queue": Gauge("lorafit_queue_depth", "Requests waiting or running in the batcher", registry=reg),
        "streams": Gauge("lorafit_streams", "Worker streams computing rounds (--streams)", registry=reg),
        "busy": Gauge("lorafit_streams_busy", "Worker streams computing a round now", registry=reg),
        "in_flight": Gauge("lorafit_requests_in_flight", "Predict requests received and not answered yet", registry=reg),
        "loads": Counter("lorafit_adapter_loads", "Runs loaded on demand, by model", ["model"], registry=reg),
        "unloads": Counter("lorafit_adapter_unloads", "Runs unloaded (evicted or on request), by model", ["model"],
                           registry=reg),
        "load_seconds": Histogram("lorafit_adapter_load_seconds", "On-demand load time (asked to loaded)",
                                  buckets=(.05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=reg),
        "loaded": Gauge("lorafit_adapters_loaded", "Runs loaded on demand now (pinned runs not counted)", registry=reg),
    }


def create_app(registry: Registry, limits: Limits | None = None, api_key: str | None = None):
    """The ASGI app over loaded runs. The batcher threads start with the app's lifespan and stop when
    the server shuts down (what is left dropped; a forward already running finishes, up to
    limits.stop_wait_s). `app.state.drain.begin(grace)` on SIGTERM answers in time (drain.py)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    prom, m = _metrics(registry.names())
    batcher = Batcher(limits.max_batch, limits.max_wait_ms, limits.queue, on_batch=m["batch"].observe,
                      max_round=limits.max_round, on_round=m["round"].observe,
                      streams=limits.streams or auto_streams(registry.devices()))
    m["queue"].set_function(batcher.depth)
    m["streams"].set(batcher.streams)
    m["busy"].set_function(lambda: batcher.busy)
    m["loaded"].set_function(lambda: len(registry.loaded))

    def loaded(name, seconds):
        m["loads"].labels(name).inc()
        m["load_seconds"].observe(seconds)
    registry.on_load, registry.on_unload = loaded, lambda name: m["unloads"].labels(name).inc()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        drain.attach()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await asyncio.to_thread(batcher.stop, limits.stop_wait_s)
            await asyncio.to_thread(registry.close)

    app = FastAPI(title="lorafit serve", version="1", lifespan=lifespan,
                  description="Text classification with lorafit runs: many adapters over one shared base model.")
    drain = Drain(batcher)
    app.state.ready, app.state.drain, app.state.batcher = False, drain, batcher
    key = api_key.encode() if api_key else None

    if key is not None:
        app.add_middleware(BearerAuth, key=key)
    app.add_middleware(AnswerCancelled, retry_after_s=limits.retry_after_s)  # outermost: sees every cancel

    @app.exception_handler(ClientError)
    async def client_error(request, e: ClientError):
        return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

    @app.exception_handler(NotServable)
    async def not_servable(request, e: NotServable):
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in err.get("loc", ())) or "request"
        return JSONResponse({"detail": f"{where}: {err.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return JSONResponse({"detail": str(e.detail)}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.get("/healthz", summary="Alive (no key needed)")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Models loaded and accepting requests")
    async def readyz():
        if not app.state.ready or drain.draining:
            return JSONResponse({"status": "draining" if drain.draining else "starting"}, status_code=503)
        return {"status": "ready", "models": registry.names()}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(prom), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="Served runs: loaded ones (all they report) and those available on demand")
    async def models():
        return registry.models()

    @app.post("/v1/models/{name}/load", summary="Load a run of --adapters-dir now (a no-op when loaded)")
    async def load(name: str):
        return await registry.ensure_loaded(name)

    @app.delete("/v1/models/{name}", summary="Unload a run loaded on demand (freed once its requests are answered)")
    async def unload(name: str):
        return await registry.unload(name)

    schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema(),
        "example": {"texts": ["Stocks rallied as oil prices fell.", "The striker scored twice."], "probs": True}}}}}

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True,
              openapi_extra=schema, summary="Classify texts with one served run")
    async def predict(name: str, request: Request):
        start = time.monotonic()
        label = name if registry.known(name) else "unknown"
        status, job, lease = 500, None, None
        m["in_flight"].inc()
        try:
            if drain.draining:  # SIGTERM came before this request: refused (those already in flight go on)
                raise Stopped()
            registry.check(name)  # an unknown name: 404 before the body is read
            req = parse_request(await _read_body(request, limits.body_limit()), limits)
            lease = await registry.acquire(name)  # loaded first when on demand (off the event loop)
            run = lease.run
            bad = refused(name, run, req)
            if bad is not None:
                raise bad
            texts = [t.strip() for t in req.texts]  # as predict reads a text column (join_texts strips)
            pairs = None if req.text_pairs is None else [t.strip() for t in req.text_pairs]  # as pair_texts reads them
            try:
                job = batcher.submit(run, texts, pairs)
                logits = await _wait_or_disconnect(job, request, batcher)
            except QueueFull:
                raise ClientError(503, f"server: queue full ({limits.queue} requests waiting, --queue); retry after "
                                       f"{limits.retry_after_s} s", {"Retry-After": str(limits.retry_after_s)}) from None
            if logits is None:
                status = 499  # client closed the connection: nothing to answer
                return PlainTextResponse("", status_code=499)
            # the task's answer fields (tasks/): labels (+ label_ids), probs as predict --probs computes them
            out: dict = {"model": name, **task_of(run.cfg).response(logits, run.labels, temperature=run.temperature,
                                                                     thresholds=run.thresholds, probs=req.probs)}
            if req.logits:
                out["logits"] = logits.astype(np.float64).tolist()
            m["texts"].labels(name).inc(len(texts))
            status = 200
            return JSONResponse(out)
        except Stopped:  # refused after SIGTERM, or dropped at the --grace deadline (not computed)
            status = 503
            raise ClientError(503, "server: shutting down; this request was not computed; retry",
                              {"Retry-After": str(limits.retry_after_s)}) from None
        except ClientError as e:
            status = e.status
            raise
        except NotServable as e:
            status = e.status
            raise ClientError(e.status, e.detail) from None
        except asyncio.CancelledError:  # the server's shutdown timeout: AnswerCancelled answers 503
            status = 503
            if job is not None:
                batcher.cancel(job)
            raise
        finally:
            if lease is not None:
                # held until no stream computes with the run (a cancelled request's forward may still run)
                if job is None or job.released.done():
                    registry.release(lease)
                else:
                    job.released.add_done_callback(lambda _: registry.release(lease))
            m["requests"].labels(label, str(status)).inc()
            m["in_flight"].dec()
            m["latency"].labels(label).observe(time.monotonic() - start)

    return app


async def _read_body(request, limit: int) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise ClientError(413, f"body: {int(size)} bytes, at most {limit} (--max-texts x --max-chars)")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ClientError(413, f"body: over {limit} bytes (--max-texts x --max-chars)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_or_disconnect(job, request, batcher):
    """The job's logits, or None when the client disconnects first (the job is then skipped if it has not started)."""
    async def disconnected():
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                return
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({job.future, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if job.future in done:
        return job.future.result()
    batcher.cancel(job)
    return None


def from_env():
    """App factory for other ASGI servers: LORAFIT_SERVE_RUNS='NAME=RUN_DIR,...' and/or
    LORAFIT_SERVE_ADAPTERS_DIR=DIR (with LORAFIT_SERVE_MAX_LOADED=N), and LORAFIT_SERVE_API_KEY_FILE."""
    from ..errors import LorafitError
    from .registry import parse_specs

    specs = parse_specs([s for s in os.environ.get("LORAFIT_SERVE_RUNS", "").split(",") if s.strip()])
    adapters = os.environ.get("LORAFIT_SERVE_ADAPTERS_DIR") or None
    if not specs and adapters is None:
        raise LorafitError("serve: set LORAFIT_SERVE_RUNS or LORAFIT_SERVE_ADAPTERS_DIR")
    key_file = os.environ.get("LORAFIT_SERVE_API_KEY_FILE")
    registry = Registry.load(specs, adapters_dir=adapters, max_loaded=int(os.environ.get("LORAFIT_SERVE_MAX_LOADED", 0)))
    return create_app(registry, Limits(), read_key(key_file) if key_file else None)
