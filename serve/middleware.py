"""Limits applied to every HTTP request before any route parses it: URL length, header size and
body size (a declared Content-Length over the cap is refused unread; a chunked body is read only
up to the cap). Refusals are problem JSON like every other error (414, 431, 413)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.problems import problem_response
from warbler.errors import ErrorCode, WarblerError


class EdgeLimits:
    """Pure ASGI middleware (no per-request task or stream wrapping: the body is at most
    ``max_body`` bytes, so it is buffered whole and replayed to the app)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        max_url: int,
        max_headers: int,
        large_bodies: Sequence[tuple[str, re.Pattern[str], int]] = (),
    ) -> None:
        """``large_bodies``: (method, path pattern ending in ``$``, cap) of the routes whose body
        may exceed ``max_body`` (a knowledge-base document upload)."""
        self._app = app
        self._max_body = max_body
        self._large = tuple(large_bodies)
        self._max_url = max_url
        self._max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        cap = self._body_cap(scope)
        error = self._check_head(scope, cap)
        if error is not None:
            await self._refuse(error, scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left before its body was complete: nobody to answer.
                return
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > cap:
                await self._refuse(self._too_large(cap), scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._app(scope, replay, send)

    def _body_cap(self, scope: Scope) -> int:
        for method, pattern, cap in self._large:
            # search, not fullmatch: the path may carry the app's route prefix in front.
            if scope["method"] == method and pattern.search(scope["path"]):
                return cap
        return self._max_body

    def _check_head(self, scope: Scope, cap: int) -> WarblerError | None:
        url = len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"])
        if url > self._max_url:
            return WarblerError(
                ErrorCode.TOO_LARGE, f"the URL is limited to {self._max_url} bytes", status=414
            )
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if sum(len(k) + len(v) + 4 for k, v in headers) > self._max_headers:
            return WarblerError(
                ErrorCode.TOO_LARGE,
                f"request headers are limited to {self._max_headers} bytes",
                status=431,
            )
        for key, value in headers:
            if key == b"content-length":
                if not value.isdigit():
                    return WarblerError(ErrorCode.BAD_REQUEST, "Content-Length is not a number")
                if len(value) > 18 or int(value) > cap:
                    return self._too_large(cap)
        return None

    def _too_large(self, cap: int) -> WarblerError:
        return WarblerError(ErrorCode.TOO_LARGE, f"request bodies are limited to {cap} bytes")

    async def _refuse(self, error: WarblerError, scope: Scope, send: Send) -> None:
        response = problem_response(error, Request(scope))
        # The unread rest of the body makes the connection unusable for another request.
        response.headers["Connection"] = "close"
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
