"""What every request passes before a route sees it, as plain ASGI middleware (they run before
FastAPI reads the body, and the body limit must count what is read, not what a header claims):

- `RequireKey`: a bearer key on every route but the probes (/health, /ready), and the admin key on
  /admin; compared in constant time; a missing or wrong key is a 401 that never echoes it.
- `LimitBody`: the request body is read here, counting its bytes, chunked or not; past the limit
  the reading stops and the answer is a 413; under it the body is handed on whole.
- `Shed`: while the queue would refuse any request, /predict is a 429 before its body is read.
- `KnownMethods`: a method no route has is a 501 before the metrics see it (a made-up method name
  would otherwise become a new series).
Paths are judged without the prefix the app is mounted under (`route_path`).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import MutableMapping
from typing import Any

from headkit.ship.serve.batcher import Batcher, Overloaded

ASGIApp = Any  # starlette.types.ASGIApp; kept loose to avoid importing starlette's typing here

PROBES = ("/health", "/ready")
ADMIN_PREFIX = "/admin"


async def send_error(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """A JSON `{"error": message}` answer, straight to the ASGI `send`."""
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def bearer(scope: dict) -> bytes | None:
    """The key of an `Authorization: Bearer <key>` header, as sent, if there is one."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, key = value.partition(b" ")
            return key.strip() if scheme.lower() == b"bearer" else None
    return None


def same_key(given: bytes | None, expected: str) -> bool:
    """Constant-time comparison (hmac.compare_digest), so timing does not tell how much matched."""
    return given is not None and hmac.compare_digest(given, expected.encode())


def route_path(scope: MutableMapping[str, Any]) -> str:
    """The path the app routes on: without the prefix it is mounted under (`root_path`: a mount,
    uvicorn --root-path, a Ray Serve route prefix), which the raw path still carries."""
    path, root = scope.get("path", ""), scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):  # as starlette's routing strips it
        return path[len(root) :] or "/"
    return path


class RequireKey:
    """401 unless the request carries the key its route needs (`api_key` for the API, `admin_key`
    for /admin; None: that part is open). The probes never need one: they tell nothing but status."""

    def __init__(self, app: ASGIApp, api_key: str | None, admin_key: str | None):
        self.app, self.api_key, self.admin_key = app, api_key, admin_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await self.app(scope, receive, send)
        path = route_path(scope)
        if scope["type"] == "http" and path in PROBES:
            return await self.app(scope, receive, send)
        admin = path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
        expected = self.admin_key if admin else self.api_key
        if expected is not None and scope["type"] == "websocket":  # the server has none: closed, never open
            return await send({"type": "websocket.close", "code": 1008})
        if expected is not None and not same_key(bearer(scope), expected):
            which = "the admin key" if admin else "the server's API key"
            return await send_error(
                send, 401, f"send {which} as 'Authorization: Bearer <key>'", {"www-authenticate": "Bearer"}
            )
        return await self.app(scope, receive, send)


class KnownMethods:
    """501 (RFC 9110: a method the server does not recognise) for a method no route has, before
    anything else counts it; a known method on the wrong route is FastAPI's 405 with its Allow."""

    METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "OPTIONS"})

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] not in self.METHODS:
            return await send_error(send, 501, f"method {scope['method'][:16]} is not served")
        return await self.app(scope, receive, send)


class Shed:
    """Load shedding at the door: while the batcher would refuse even a one-text request, a POST
    to /predict gets its 429 here, before its body is read, parsed and validated. Under a flood
    the refusals then cost little, and the worker keeps the CPU (and the GIL) for the requests it
    took."""

    def __init__(self, app: ASGIApp, batcher: Batcher):
        self.app, self.batcher = app, batcher

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and route_path(scope) == "/predict":
            try:
                self.batcher.admit(1)
            except Overloaded as e:
                return await send_error(send, *e.answer())
        return await self.app(scope, receive, send)


class LimitBody:
    """413 for a request body over `max_bytes`, counted on the bytes received."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, f"request body is {int(declared):,} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # the client is gone: the answer is for the metrics
                return await send_error(send, 400, "the client disconnected before sending its body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # stop reading: the rest is never buffered
                return await self._refuse(send, f"request body is over {self.max_bytes:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, when the client goes

        return await self.app(scope, replay, send)

    async def _refuse(self, send: Any, what: str) -> None:
        await send_error(send, 413, f"{what}; the limit is {self.max_bytes:,}", {"connection": "close"})
