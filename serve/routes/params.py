"""Path and query parameters shared by the routes, with the bounds the wire models have: an id
is 1..2^63-1 and a seq 0..2^63-1, so the OpenAPI schema and the answers agree (a larger id once
reached SQLite and answered 500)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from warbler.protocol import INT64_MAX

ConversationId = Annotated[int, Path(ge=1, le=INT64_MAX, description="a conversation id")]
UserId = Annotated[int, Path(ge=1, le=INT64_MAX, description="a user id")]
SeqQuery = Annotated[int | None, Query(ge=0, le=INT64_MAX)]
BotId = Annotated[int, Path(ge=1, le=INT64_MAX, description="a bot id")]
