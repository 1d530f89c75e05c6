"""API keys: the key file read at start-up, and the check every route but /healthz passes through."""
from __future__ import annotations

import hmac
import json
from pathlib import Path

from ..errors import LorafitError

OPEN_PATHS = {"/healthz"}  # answered without a key: a liveness probe must not need the secret


def read_key(path: str) -> str:
    p = Path(path)
    try:
        key = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise LorafitError(f"--api-key-file: cannot read {p} ({why})") from None
    if len(key) < 16 or any(c.isspace() for c in key):
        raise LorafitError(f"--api-key-file: {p} must hold one key of at least 16 characters without spaces "
                           "(e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return key


class BearerAuth:
    """Pure ASGI (not BaseHTTPMiddleware, which would wrap `receive` and hide client disconnects):
    every path but /healthz needs `Authorization: Bearer <key>`, compared in constant time."""

    def __init__(self, app, key: bytes):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        body = json.dumps({"detail": "authorization: missing or wrong key; send 'Authorization: Bearer <key>'"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
