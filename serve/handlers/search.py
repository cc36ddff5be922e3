"""GET /v1/search: validate the query, run it in the caller's conversations, shape the hits.

A read-only query straight to storage, like the conversation list: membership is part of the
SQL (a join on ``memberships``), so no conversation entity needs to be asked.
"""

from __future__ import annotations

import base64
import binascii
import re

from serve.ratelimit import SendRateLimiter
from storage.search import SearchHit, SearchStore, search_terms
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    INT64_MAX,
    SEARCH_QUERY_MAX,
    SearchHitPublic,
    SearchPagePublic,
)

_SNIPPET_CHARS = 120
_CURSOR_PREFIX = "s1:"


def encode_cursor(message_id: int) -> str:
    """An opaque ``before`` cursor for the hits older than ``message_id``."""
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}{message_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The message id of a cursor (VALIDATION for anything ``encode_cursor`` did not make)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if raw.startswith(_CURSOR_PREFIX):
            value = int(raw[len(_CURSOR_PREFIX) :])
            if 1 <= value <= INT64_MAX:
                return value
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise WarblerError(ErrorCode.VALIDATION, "before is not a cursor this server returned")


def snippet(text: str, terms: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """A window of ``text`` around the first matched word, and the matches' offsets in it."""
    pattern = re.compile(
        r"(?<![^\W_])(?:" + "|".join(re.escape(t) for t in terms) + r")(?![^\W_])", re.IGNORECASE
    )
    first = pattern.search(text)
    start = 0
    if first is not None and len(text) > _SNIPPET_CHARS:
        start = max(0, min(first.start() - _SNIPPET_CHARS // 3, len(text) - _SNIPPET_CHARS))
    window = text[start : start + _SNIPPET_CHARS]
    return window, [(m.start(), m.end()) for m in pattern.finditer(window)]


class SearchHandler:
    """What the search route calls."""

    def __init__(self, settings: Settings, store: SearchStore) -> None:
        self._store = store
        self._limiter = SendRateLimiter(settings.search_rate_per_s, settings.search_burst)

    async def search(
        self,
        user_id: int,
        q: str,
        *,
        conversation_id: int | None,
        limit: int,
        before: str | None,
    ) -> SearchPagePublic:
        """One page of hits, newest first (VALIDATION for an empty or too long query)."""
        query = q.strip()
        if not query or len(query) > SEARCH_QUERY_MAX:
            raise WarblerError(ErrorCode.VALIDATION, f"q must be 1-{SEARCH_QUERY_MAX} characters")
        terms = search_terms(query)
        if not terms:
            raise WarblerError(ErrorCode.VALIDATION, "q has no words to search for")
        before_id = decode_cursor(before) if before else None
        wait_s = self._limiter.try_take(user_id)
        if wait_s > 0:
            raise WarblerError(
                ErrorCode.RATE_LIMITED,
                "searching too fast",
                details={"retry_after_ms": int(wait_s * 1000) + 1},
            )
        # One more than asked: whether a next page exists without a second query.
        hits = await self._store.search_messages(
            user_id,
            terms,
            conversation_id=conversation_id,
            before_id=before_id,
            limit=limit + 1,
        )
        more = len(hits) > limit
        hits = hits[:limit]
        return SearchPagePublic(
            hits=[_public(h, terms) for h in hits],
            next=encode_cursor(hits[-1].id) if more and hits else None,
        )


def _public(hit: SearchHit, terms: list[str]) -> SearchHitPublic:
    window, highlights = snippet(hit.text, terms)
    return SearchHitPublic(
        conversation_id=hit.conversation_id,
        seq=hit.seq,
        sender_id=hit.sender_id,
        created_at=hit.created_at,
        body=hit.text,
        snippet=window,
        highlights=highlights,
    )
