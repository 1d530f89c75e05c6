"""Shutting down within --grace: what the server answers from SIGTERM to exit.

uvicorn, on SIGTERM, stops accepting connections, waits up to its timeout_graceful_shutdown (--grace)
for the open ones, then cancels the requests still running: each becomes a CancelledError in the
handler, logged as a traceback and answered 500, while the batcher goes on computing their texts
for nobody. So lorafit answers first: SIGTERM starts the drain (new predict requests get 503 at
once, /readyz 503), and at the deadline, DEADLINE_MARGIN_S before uvicorn's, the batcher drops
every request still waiting or computing (batcher.drop fails each with Stopped: the handler answers
503 + Retry-After, and no forward starts for it). The connections then close before uvicorn's
timeout, so nothing is cancelled. AnswerCancelled is the backstop for a request cancelled anyway
(and the whole answer under uvicorn's own command line, where SIGTERM does not reach the app)."""
from __future__ import annotations

import asyncio
import json

# How long before uvicorn's own deadline lorafit answers what cannot finish: time for the event loop
# to write the 503s and close the connections under load (uvicorn checks them every 0.1 s)
DEADLINE_MARGIN_S = 0.5


class Drain:
    def __init__(self, batcher):
        self.batcher = batcher
        self.draining = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self) -> None:
        """At the app's start-up: the event loop the deadline will run on."""
        self.loop = asyncio.get_running_loop()

    def begin(self, grace: float) -> None:
        """SIGTERM/SIGINT; called from the signal handler, so the deadline is armed through the loop's
        thread-safe entry (a signal can land in the middle of the loop's own bookkeeping)."""
        if self.draining:
            return
        self.draining = True
        if self.loop is not None and not self.loop.is_closed():
            delay = max(0.0, grace - min(DEADLINE_MARGIN_S, grace / 2))
            self.loop.call_soon_threadsafe(self.loop.call_later, delay, self.batcher.drop)


class AnswerCancelled:
    """Pure ASGI: a request cancelled before it answered gets 503 + Retry-After instead of uvicorn's
    traceback and 500 (the predict handler has dropped its texts from the batcher)."""

    def __init__(self, app, retry_after_s: int = 1):
        self.app, self.retry_after = app, str(retry_after_s).encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            # not re-raised: the server cancelled this request because it is shutting down, and the
            # client is better served by a 503 to retry elsewhere than by a reset connection
            if started:
                return  # a half-sent answer: the server closes the connection
            body = json.dumps({"detail": "server: shutting down; this request could not finish in time; retry"}).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", self.retry_after)]})
            await send({"type": "http.response.body", "body": body})
