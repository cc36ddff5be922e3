"""The protocol's shared ground: constants, field types, the wire time, and the base models.

Everything here is used by both the REST bodies (``rest``) and the WebSocket frames
(``frames``); import the public names from ``warbler.protocol``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictInt, StrictStr

PROTOCOL_VERSION = 1
API_PREFIX = "/v1"
WS_PATH = "/v1/ws"
# Query parameter that may carry the access token on the WebSocket handshake (browsers cannot
# set headers on a WebSocket); the Authorization header and the hello frame work too.
WS_TOKEN_QUERY = "access_token"
# Seconds the server waits for the hello frame before closing with CloseCode.HELLO_TIMEOUT.
HELLO_TIMEOUT_S = 10.0
PROBLEM_CONTENT_TYPE = "application/problem+json"

# Every integer on the wire fits a signed 64-bit SQL column: larger ones are refused as input
# (a 4xx), never passed to the database (SQLite raised OverflowError: a 500).
INT64_MAX = 2**63 - 1
# A client's request id, echoed in the answer: a short string or an integer (never a bool).
RequestId = (
    Annotated[StrictStr, Field(max_length=64)]
    | Annotated[StrictInt, Field(ge=-INT64_MAX, le=INT64_MAX)]
)
MessageKind = Literal["text", "json", "system"]
SendKind = Literal["text", "json"]
Role = Literal["owner", "admin", "member"]
ConversationKind = Literal["direct", "group"]


# A string stored in a SQL text column: PostgreSQL text cannot hold NUL (the insert failed: a
# 500), and no name or id needs one. A pattern, checked in pydantic's core: a Python validator
# here cost 16% of a send frame's parse (3.5 us of 22).
_NO_NUL = r"^[^\x00]*$"
_SqlText = Annotated[str, Field(pattern=_NO_NUL)]
_ClientMsgId = Annotated[_SqlText, Field(min_length=1, max_length=64)]
_Username = Annotated[str, Field(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
_Password = Annotated[str, Field(min_length=8, max_length=256)]
_DisplayName = Annotated[_SqlText, Field(min_length=1, max_length=64)]
_Title = Annotated[_SqlText, Field(min_length=1, max_length=128)]
_Id = Annotated[int, Field(ge=1, le=INT64_MAX)]
_Seq = Annotated[int, Field(ge=0, le=INT64_MAX)]
# Public aliases for route parameters (path and query) so the schema and behaviour agree.
Id = _Id
Seq = _Seq


def wire_time(value: datetime) -> str:
    """The one encoding of a time on the wire: ISO 8601 in UTC with a ``Z`` (pydantic writes
    ``Z``, ``isoformat`` ``+00:00``, and a naive time no zone at all; clients saw all three)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # our stores keep UTC; a naive one is UTC too
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A datetime field of a wire model: encoded by ``wire_time`` in JSON.
WireTime = Annotated[datetime, PlainSerializer(wire_time, return_type=str, when_used="json")]


class _Model(BaseModel):
    """Base of every wire model: unknown fields are refused so typos surface as errors."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    """Base of models the server sends: clients ignore fields they do not know (forward compat)."""

    model_config = ConfigDict(extra="ignore")
