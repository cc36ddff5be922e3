"""Messages to entities and their results: frozen dataclasses, pickled across Ray calls.

Each message is a ``Request[Reply]``: ``class Append(Request[MessageEvent])`` is the entity
interface, read by mypy (handlers, callers) and by the call layer (one check per answer).

Conversation messages go to ``"conv:<id>"`` (``CreateGroup`` and ``OpenDirect`` to
``"conv:new"``); session messages go to ``"user:<id>"``. Every message that changes a
conversation carries an id that makes it idempotent: ``Append`` its ``client_msg_id``, the
membership commands an ``op_id`` (a fresh one by default; pass your own to retry safely across
your own restarts). A retried command returns the event of the first attempt with
``duplicate=True``.
"""

from __future__ import annotations

import types
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

Role = Literal["owner", "admin", "member"]
ConversationKind = Literal["direct", "group"]
R_co = TypeVar("R_co", covariant=True)


class _Wire:
    """Base of every message and result: pickles as ``(class, positional fields)``, several
    times faster than the ``__getstate__`` that slotted dataclasses get (every envelope and
    every result crosses a Ray call)."""

    __slots__ = ()
    __match_args__: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:
        return type(self), tuple([getattr(self, name) for name in self.__match_args__])


def new_op_id() -> str:
    """A fresh idempotency id for a membership command."""
    return uuid.uuid4().hex


class Request(_Wire, Generic[R_co]):
    """Base of every message to an entity; the parameter is its reply type.

    ``class Append(Request[MessageEvent])`` declares that an Append is answered with a
    MessageEvent: the handler must return one (mypy checks ``@handles``), ``Runtime.call``
    returns one, and the call layer checks it once per answer against ``reply_type``.
    """

    __slots__ = ()
    # The class an answer must be an instance of (``list`` for ``list[MessageEvent]``: the
    # items are the handler's typed return, not checked again per item).
    reply_type: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            if get_origin(base) is Request:
                (reply,) = get_args(base)
                checked = get_origin(reply) or reply
                if not isinstance(checked, type) or checked is types.UnionType:
                    raise TypeError(f"{cls.__name__}: a reply type must be a class, not {reply!r}")
                cls.reply_type = checked
        if not hasattr(cls, "reply_type"):
            raise TypeError(f"{cls.__name__}: declare its reply type, as in Request[MessageEvent]")


# --- conversation: results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageEvent(_Wire):
    """A committed message of a conversation's log (``kind="system"`` for membership changes).

    ``duplicate`` is True when this answers a retry: the message stored by the first attempt.
    """

    conversation_id: int
    seq: int
    sender_id: int
    client_msg_id: str
    kind: str
    body: dict[str, Any]
    created_at: datetime
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Receipt(_Wire):
    """A member's read position after a MarkRead."""

    conversation_id: int
    user_id: int
    read_seq: int


@dataclass(frozen=True, slots=True)
class MemberInfo(_Wire):
    """One member and their role."""

    user_id: int
    role: Role


@dataclass(frozen=True, slots=True)
class ConversationInfo(_Wire):
    """What GetInfo and OpenDirect answer. Members are in join order."""

    conversation_id: int
    kind: ConversationKind
    title: str | None
    members: tuple[MemberInfo, ...]
    last_seq: int


# --- user session: results ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceInfo(_Wire):
    """One connected device and the gateway replica holding its socket."""

    device_id: str
    replica_id: str


@dataclass(frozen=True, slots=True)
class SessionInfo(_Wire):
    """A user's connected devices, in connection order."""

    user_id: int
    devices: tuple[DeviceInfo, ...]

    @property
    def online(self) -> bool:
        """True when at least one device is connected."""
        return bool(self.devices)


# --- conversation: the log ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append(Request[MessageEvent]):
    """Append a message; answered after it is committed to SQL. ``kind`` is not ``"system"``."""

    sender_id: int
    client_msg_id: str
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReadLog(Request[list[MessageEvent]]):
    """A page of the log in ascending seq (members only); ``limit`` is capped by settings."""

    user_id: int
    after_seq: int | None = None
    before_seq: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class MarkRead(Request[Receipt]):
    """Everything up to ``seq`` is read by ``user_id``; the read position never moves back."""

    user_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class GetInfo(Request[ConversationInfo]):
    """Kind, title, members with roles and last seq (members only)."""

    user_id: int


# --- conversation: creation and membership -------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateGroup(Request[MessageEvent]):
    """Create a group (send to ``"conv:new"``): the creator is its owner, the others members."""

    creator_id: int
    title: str
    member_ids: tuple[int, ...] = ()
    op_id: str = field(default_factory=new_op_id)


@dataclass(frozen=True, slots=True)
class OpenDirect(Request[ConversationInfo]):
    """Get or create the direct conversation of two users (send to ``"conv:new"``)."""

    user_id: int
    peer_id: int


@dataclass(frozen=True, slots=True)
class AddMembers(Request[MessageEvent]):
    """Add users to a group (owner or admin; only the owner adds admins)."""

    actor_id: int
    user_ids: tuple[int, ...]
    role: Literal["admin", "member"] = "member"
    op_id: str = field(default_factory=new_op_id)


@dataclass(frozen=True, slots=True)
class RemoveMember(Request[MessageEvent]):
    """Remove a member (owner: anyone but themself; admin: plain members only)."""

    actor_id: int
    user_id: int
    op_id: str = field(default_factory=new_op_id)


@dataclass(frozen=True, slots=True)
class Leave(Request[MessageEvent]):
    """Leave a group (anyone); an owner leaving hands ownership on."""

    user_id: int
    op_id: str = field(default_factory=new_op_id)


@dataclass(frozen=True, slots=True)
class Rename(Request[MessageEvent]):
    """Rename a group (owner or admin)."""

    actor_id: int
    title: str
    op_id: str = field(default_factory=new_op_id)


@dataclass(frozen=True, slots=True)
class SetRole(Request[MessageEvent]):
    """Change a member's role (owner only); ``role="owner"`` transfers ownership."""

    actor_id: int
    user_id: int
    role: Role
    op_id: str = field(default_factory=new_op_id)


# --- user session ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectDevice(Request[SessionInfo]):
    """A device of this user connected to gateway replica ``replica_id``."""

    device_id: str
    replica_id: str


@dataclass(frozen=True, slots=True)
class DisconnectDevice(Request[SessionInfo]):
    """A device disconnected; ignored unless it is still registered on ``replica_id`` (a late
    disconnect from an old replica must not undo a reconnect elsewhere)."""

    device_id: str
    replica_id: str


@dataclass(frozen=True, slots=True)
class GetSession(Request[SessionInfo]):
    """The user's connected devices."""
