"""The HTTP API (FastAPI): predict per served run, model list, health, readiness, Prometheus metrics.

`create_app(registry, limits)` is importable, so the app runs under any ASGI server
(`uvicorn 'lorafit.serve.app:from_env' --factory` with LORAFIT_SERVE_RUNS set, or your own code).
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

from .auth import BearerAuth, read_key
from .batcher import Batcher, QueueFull, Stopped, auto_streams
from .drain import AnswerCancelled, Drain
from .registry import Registry



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
    probs: StrictBool = False
    logits: StrictBool = False


class PredictResponse(BaseModel):
    model: str
    labels: list[Any]
    label_ids: list[int]
    probs: Optional[list[list[float]]] = None
    logits: Optional[list[list[float]]] = None


class ClientError(Exception):
    def __init__(self, status: int, detail: str, headers: dict | None = None):
        self.status, self.detail, self.headers = status, detail, headers or {}


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err.get("loc", ())) or "body"
    if err.get("type") == "extra_forbidden":
        return f"{where}: unknown field; allowed: texts, probs, logits"
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
    return req


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
                      streams=limits.streams or auto_streams(run.device for run in registry.runs.values()))
    m["queue"].set_function(batcher.depth)
    m["streams"].set(batcher.streams)
    m["busy"].set_function(lambda: batcher.busy)

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

    @app.get("/v1/models", summary="Served runs")
    async def models():
        return {"models": [r.describe() for r in registry.runs.values()]}

    schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": PredictRequest.model_json_schema(),
        "example": {"texts": ["Stocks rallied as oil prices fell.", "The striker scored twice."], "probs": True}}}}}

    @app.post("/v1/models/{name}/predict", response_model=PredictResponse, response_model_exclude_none=True,
              openapi_extra=schema, summary="Classify texts with one served run")
    async def predict(name: str, request: Request):
        start = time.monotonic()
        label = name if name in registry.runs else "unknown"
        status, job = 500, None
        m["in_flight"].inc()
        try:
            if drain.draining:  # SIGTERM came before this request: refused (those already in flight go on)
                raise Stopped()
            run = registry.runs.get(name)
            if run is None:
                status = 404
                raise ClientError(404, f"model '{name[:80]}' is not served; served: {', '.join(registry.names())}")
            req = parse_request(await _read_body(request, limits.body_limit()), limits)
            texts = [t.strip() for t in req.texts]  # as predict reads a text column (join_texts strips)
            try:
                job = batcher.submit(run, texts)
                logits = await _wait_or_disconnect(job, request, batcher)
            except QueueFull:
                raise ClientError(503, f"server: queue full ({limits.queue} requests waiting, --queue); retry after "
                                       f"{limits.retry_after_s} s", {"Retry-After": str(limits.retry_after_s)}) from None
            if logits is None:
                status = 499  # client closed the connection: nothing to answer
                return PlainTextResponse("", status_code=499)
            ids = logits.argmax(-1)
            out: dict = {"model": name, "labels": [run.labels[k] for k in ids], "label_ids": ids.tolist()}
            if req.probs:
                from ..calibration import softmax

                out["probs"] = softmax(logits, run.temperature).tolist()  # calibrated, as predict --probs
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
        except asyncio.CancelledError:  # the server's shutdown timeout: AnswerCancelled answers 503
            status = 503
            if job is not None:
                batcher.cancel(job)
            raise
        finally:
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
    """App factory for other ASGI servers: LORAFIT_SERVE_RUNS='NAME=RUN_DIR,...' (and LORAFIT_SERVE_API_KEY_FILE)."""
    from .registry import parse_specs

    specs = parse_specs([s for s in os.environ.get("LORAFIT_SERVE_RUNS", "").split(",") if s.strip()])
    key_file = os.environ.get("LORAFIT_SERVE_API_KEY_FILE")
    return create_app(Registry.load(specs), Limits(), read_key(key_file) if key_file else None)
