"""Where a bot's words come from: an OpenAI-compatible chat-completions endpoint (streamed
over SSE), or the offline extractive answer built from the best passages.

Both stream: ``stream`` yields pieces of text as they come. ``run_with_retry`` bounds each
attempt by a timeout and tries once more after a failure (the text starts over; frames carry
the whole text so far, so a client just shows the newer text).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from storage.knowledge import Passage
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

# Extractive answers quote at most this many passages (the rest are below the cut).
MAX_QUOTED = 2
# A passage counts as relevant to the question when its cosine is within this of the best.
RELEVANCE_MARGIN = 0.08


def estimate_tokens(text: str) -> int:
    """About four characters per token (what English text averages with GPT tokenizers)."""
    return max(1, len(text) // 4)


@dataclass(frozen=True, slots=True)
class Prompt:
    """What a provider answers: the bot's instructions, the question and the ranked passages."""

    system_prompt: str
    question: str
    passages: tuple[tuple[float, Passage], ...]


@dataclass(slots=True)
class Answer:
    """A finished answer: the text, the passages it rests on, tokens spent."""

    text: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0


class Provider(Protocol):
    """Streams the text of an answer."""

    def stream(self, prompt: Prompt, usage: dict[str, int]) -> AsyncIterator[str]:
        """Pieces of text; may set ``usage["total_tokens"]`` when the provider reports it."""
        ...


def cited(prompt: Prompt) -> list[tuple[float, Passage]]:
    """The passages worth citing: the best, and the next ones close to it."""
    if not prompt.passages:
        return []
    best = prompt.passages[0][0]
    return [
        (score, p) for score, p in prompt.passages[:MAX_QUOTED] if score >= best - RELEVANCE_MARGIN
    ]


class ExtractiveProvider:
    """No generative model: answer with the best passages themselves, in the order ranked."""

    async def stream(self, prompt: Prompt, usage: dict[str, int]) -> AsyncIterator[str]:
        """The quoted passages, a few words per piece (so clients see it grow like any other)."""
        quoted = cited(prompt)
        if not quoted:
            text = "I could not find anything about that in my documents."
        else:
            text = "\n\n".join(p.text for _, p in quoted)
        words = text.split(" ")
        for i in range(0, len(words), 6):
            piece = " ".join(words[i : i + 6])
            yield piece if i == 0 else " " + piece
            await asyncio.sleep(0)


class OpenAIProvider:
    """``POST {url}/chat/completions`` with ``stream: true``; parses ``data: {...}`` lines up to
    ``data: [DONE]`` and yields each ``choices[0].delta.content``."""

    def __init__(self, url: str, model: str, api_key: str, timeout_s: float) -> None:
        self._url = url.rstrip("/") + "/chat/completions"
        self._model = model
        self._api_key = api_key
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))

    def _messages(self, prompt: Prompt) -> list[dict[str, str]]:
        context = "\n\n".join(
            f"[{i + 1}] ({p.doc_name}: {p.heading}) {p.text}"
            for i, (_, p) in enumerate(prompt.passages)
        )
        system = (
            (prompt.system_prompt or "You are a helpful support assistant.")
            + "\n\nAnswer from these passages of the knowledge base when they help:\n"
            + (context or "(none)")
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt.question}]

    async def stream(self, prompt: Prompt, usage: dict[str, int]) -> AsyncIterator[str]:
        """The completion's pieces as the endpoint sends them."""
        body = {
            "model": self._model,
            "messages": self._messages(prompt),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        async with (
            httpx.AsyncClient(timeout=self._timeout) as client,
            client.stream("POST", self._url, json=body, headers=headers) as response,
        ):
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:200]
                raise WarblerError(
                    ErrorCode.UNAVAILABLE, f"provider answered {response.status_code}: {detail}"
                )
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ": keep-alive" comments, event: lines
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if chunk.get("usage"):
                    usage["total_tokens"] = int(chunk["usage"].get("total_tokens", 0))
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content


def provider_for(config: dict[str, Any], timeout_s: float) -> Provider:
    """The provider a bot's ``provider`` config names (``extractive`` by default)."""
    kind = config.get("kind", "extractive")
    if kind == "extractive":
        return ExtractiveProvider()
    if kind == "openai":
        return OpenAIProvider(
            str(config["url"]),
            str(config.get("model", "gpt-4o-mini")),
            str(config.get("api_key", "")),
            timeout_s,
        )
    raise WarblerError(ErrorCode.CONFIG, f"unknown provider kind {kind!r}")


async def run_with_retry(
    provider: Provider,
    prompt: Prompt,
    on_text: Callable[[str], Awaitable[None]],
    *,
    timeout_s: float,
    attempts: int = 2,
) -> tuple[str, int]:
    """Stream an answer, calling ``on_text`` with the whole text so far after each piece.
    Each attempt has ``timeout_s`` in all; a failed one is retried once from the start.
    Returns the text and the tokens spent (reported by the provider, else estimated)."""
    last: BaseException | None = None
    for attempt in range(attempts):
        usage: dict[str, int] = {}
        text = ""
        try:
            async with asyncio.timeout(timeout_s):
                async for piece in provider.stream(prompt, usage):
                    text += piece
                    await on_text(text)
            tokens = usage.get("total_tokens") or (
                estimate_tokens(prompt.question)
                + sum(estimate_tokens(p.text) for _, p in prompt.passages)
                + estimate_tokens(text)
            )
            return text, tokens
        except (TimeoutError, httpx.HTTPError, WarblerError, ValueError) as exc:
            last = exc
            logger.warning("provider attempt %d failed: %r", attempt + 1, exc)
    raise WarblerError(ErrorCode.UNAVAILABLE, f"the answer provider failed: {last!r}")
