"""A local stand-in for an OpenAI-compatible chat-completions endpoint, speaking the real
streaming wire format (``data: {chunk}\\n\\n`` lines, then ``data: [DONE]``), with knobs for
the failures a provider has: an error status, a stall, a slow stream."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeOpenAI:
    """``reply`` is streamed in ``pieces``; ``fail_first`` requests answer 500; ``stall_first``
    requests send nothing for ``stall_s``; ``delay_s`` between pieces; ``garble_first``
    requests (counted before the others) stream a chunk that is not a chunk object."""

    reply: str = "Hello from the model."
    pieces: int = 4
    delay_s: float = 0.0
    fail_first: int = 0
    stall_first: int = 0
    stall_s: float = 30.0
    garble_first: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization", ""))
        n = len(self.requests)
        if n <= self.garble_first:
            garbled = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await garbled.prepare(request)
            await garbled.write(b"data: [1]\n\ndata: [DONE]\n\n")
            await garbled.write_eof()
            return garbled
        n -= self.garble_first
        if n <= self.fail_first:
            return web.json_response({"error": {"message": "overloaded"}}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if n <= self.fail_first + self.stall_first:
            await asyncio.sleep(self.stall_s)
        size = max(1, len(self.reply) // self.pieces + 1)
        chunks = [self.reply[i : i + size] for i in range(0, len(self.reply), size)]
        await response.write(b": keep-alive\n\n")
        for i, text in enumerate(chunks):
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "delta": ({"role": "assistant"} if i == 0 else {})
                     | {"content": text}, "finish_reason": None}
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        done = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(done)}\n\n".encode())
        usage = {"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": 42}}
        await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
