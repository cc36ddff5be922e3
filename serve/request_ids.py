"""Every HTTP request's id: the client's ``X-Request-ID`` when it is short and safe, else a new
one; echoed in the response's ``X-Request-ID``, put in every problem body (``request_id``) and
bound into the log context of the request's lines (``warbler.logs``).

Serve wraps each replica's app in its own request-id middleware, which echoes the id it saw on
the way in. ``RequestIds`` (inside the app) decides the id; ``SafeRequestId`` runs in front of
Serve's middleware (installed through Serve's HTTP callback, ``serve_middlewares``) so that the
id Serve sees and echoes is already the safe one and the response carries it once.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warbler import logs

HEADER = "x-request-id"
MAX_LENGTH = 64
# Safe to echo in a header and to grep for in logs.
_SAFE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_LENGTH}}}")
_SCOPE_KEY = "warbler.request_id"
# Serve's variable naming a function that returns middlewares for the replica's HTTP server;
# set in the gateway's runtime_env (serve.app.deployment_options).
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK_PATH = "serve.request_ids:serve_middlewares"


def new_request_id() -> str:
    """A fresh id (32 hex digits)."""
    return uuid.uuid4().hex


def safe_request_id(value: str | bytes | None) -> str | None:
    """``value`` when it is an acceptable request id, else None."""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if value is None or _SAFE.fullmatch(value) is None:
        return None
    return value


def request_id_of(scope: Scope) -> str | None:
    """The id ``RequestIds`` gave the request of ``scope`` (None outside it)."""
    rid = scope.get(_SCOPE_KEY)
    return rid if isinstance(rid, str) else None


def _inbound(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == HEADER.encode():
            return safe_request_id(value)
    return None


def _set_header(scope_or_message: Scope | Message, rid: str) -> None:
    scope_or_message.setdefault("headers", [])
    headers = MutableHeaders(scope=scope_or_message)
    # A client may send several: one, ours, is left.
    del headers[HEADER]
    headers[HEADER] = rid


class RequestIds:
    """Pure ASGI middleware (HTTP only: WebSocket frames carry their own ids)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        rid = _inbound(scope) or new_request_id()
        # In place: the error middleware outside this one (500s) reads the same scope.
        scope[_SCOPE_KEY] = rid
        _set_header(scope, rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                _set_header(message, rid)
            await send(message)

        with logs.context(request_id=rid):
            await self._app(scope, receive, send_with_id)


class SafeRequestId:
    """In front of Serve's request-id middleware: an unsafe inbound id is replaced before Serve
    reads it, and the response keeps one ``X-Request-ID`` (the app's and Serve's are the same
    id; Serve appends its copy)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        _set_header(scope, _inbound(scope) or new_request_id())

        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                values = headers.getlist(HEADER)
                if len(values) > 1:
                    _set_header(message, values[0])
            await send(message)

        await self._app(scope, receive, send_once)


def serve_middlewares() -> list[Middleware]:
    """Serve's HTTP callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    return [Middleware(SafeRequestId)]


__all__ = [
    "HEADER",
    "RequestIds",
    "SafeRequestId",
    "new_request_id",
    "request_id_of",
    "safe_request_id",
    "serve_middlewares",
]
