"""Typed REST calls to the gateway (``/v1``), with token refresh and retry of idempotent calls."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from client.auth import Tokens
from client.backoff import Backoff
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import (
    API_PREFIX,
    SEARCH_LIMIT_DEFAULT,
    SEARCH_LIMIT_MAX,
    SEARCH_QUERY_MAX,
    AckPublic,
    ConversationPublic,
    ConversationSummaryPublic,
    ConversationUpdate,
    DirectCreate,
    GroupCreate,
    LogoutCreate,
    MembersCreate,
    MessageCreate,
    MessagePagePublic,
    PresencePublic,
    ReadCreate,
    ReceiptPublic,
    RefreshCreate,
    Role,
    RoleUpdate,
    SearchPagePublic,
    SessionCreate,
    TokenPublic,
    UserCreate,
    UserPublic,
    UserUpdate,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
_USERS = TypeAdapter(list[UserPublic])
_SUMMARIES = TypeAdapter(list[ConversationSummaryPublic])
# Statuses worth retrying for an idempotent request: the load balancer found no live replica,
# or the replica answered while draining.
_RETRY_STATUS = {502, 503, 504}
_STATUS_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.TOO_LARGE,
    422: ErrorCode.VALIDATION,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


def error_from_response(response: httpx.Response) -> WarblerError:
    """The WarblerError a failed response carries (problem JSON), or one built from its status."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict) and isinstance(problem.get("code"), str):
        try:
            code = ErrorCode(problem["code"])
        except ValueError:
            code = ErrorCode.INTERNAL
        details = problem.get("details")
        return WarblerError(
            code,
            str(problem.get("detail") or code.value),
            response.status_code,
            details if isinstance(details, dict) else None,
        )
    code = _STATUS_CODES.get(response.status_code, ErrorCode.INTERNAL)
    text = response.text[:200] or response.reason_phrase
    return WarblerError(code, f"HTTP {response.status_code}: {text}", response.status_code)


M = TypeVar("M", bound=BaseModel)


def build(model: type[M], **fields: Any) -> M:
    """A request body from fields; bad input raises ``WarblerError(VALIDATION)``, sends nothing."""
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or model.__name__
        raise WarblerError(ErrorCode.VALIDATION, f"{where}: {first['msg']}") from None


class RestClient:
    """One user's REST session against a gateway. Holds the tokens and refreshes them.

    Every call raises ``WarblerError`` on failure (the server's code when it sent problem JSON;
    ``UNAVAILABLE`` when the gateway could not be reached). Idempotent calls are retried with
    backoff through transient failures (a dead replica, a draining one).

    Example::

        rest = RestClient("http://127.0.0.1:8000")
        await rest.login("alice", "correct horse")
        for conv in await rest.list_conversations():
            print(conv.id, conv.unread)
        await rest.aclose()
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 15.0,
        retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens: Tokens | None = None
        self._retries = retries
        self._http = httpx.AsyncClient(
            base_url=self.base_url + API_PREFIX, timeout=timeout_s, transport=transport
        )
        self._refresh_lock = asyncio.Lock()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._http.aclose()

    # ---- plumbing ---------------------------------------------------------------------------

    def _require_tokens(self) -> Tokens:
        if self.tokens is None:
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "log in or register first")
        return self.tokens

    async def access_token(self) -> str:
        """A valid access token, refreshed first when it is about to expire."""
        tokens = self._require_tokens()
        if tokens.access_expiring():
            await self.refresh(stale=tokens.access_token)
        return self._require_tokens().access_token

    async def refresh(self, *, stale: str | None = None) -> Tokens:
        """Trade the refresh token for a new pair.

        ``stale`` is the access token the caller found wanting: if another task already
        replaced it, that refresh is reused (refresh tokens rotate, so refreshing twice with the
        same one would fail).
        """
        async with self._refresh_lock:
            tokens = self._require_tokens()
            if stale is not None and tokens.access_token != stale:
                return tokens
            body = build(RefreshCreate, refresh_token=tokens.refresh_token)
            answer = await self._call("POST", "/auth/refresh", body, auth=False, idempotent=False)
            self.tokens = Tokens.from_public(TokenPublic.model_validate(answer))
            logger.debug("refreshed tokens of user %s", self.tokens.user.id)
            return self.tokens

    async def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | None = None,
        *,
        params: dict[str, Any] | None = None,
        auth: bool = True,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one request; returns the decoded JSON (None for 204)."""
        if idempotent is None:
            idempotent = method in {"GET", "PUT", "DELETE"}
        payload = body.model_dump(mode="json", exclude_none=True) if body is not None else None
        backoff = Backoff(base_s=0.1, max_s=2.0)
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            headers = {}
            token: str | None = None
            if auth:
                token = await self.access_token()
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = await self._http.request(
                    method, path, json=payload, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if idempotent and attempt <= self._retries:
                    logger.info("%s %s failed (%s); retrying", method, path, exc)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                raise WarblerError(
                    ErrorCode.UNAVAILABLE, f"cannot reach {self.base_url}: {exc}"
                ) from exc
            if response.is_success:
                return response.json() if response.content else None
            if response.status_code == 401 and auth and not refreshed and token is not None:
                # The access token expired (or the server restarted with a new key): refresh once.
                refreshed = True
                await self.refresh(stale=token)
                continue
            if response.status_code in _RETRY_STATUS and idempotent and attempt <= self._retries:
                await asyncio.sleep(backoff.next_delay())
                continue
            raise error_from_response(response)

    @staticmethod
    def _parse(model: type[T] | TypeAdapter[T], data: Any) -> T:
        try:
            if isinstance(model, TypeAdapter):
                return model.validate_python(data)
            return TypeAdapter(model).validate_python(data)
        except ValidationError as exc:
            raise WarblerError(
                ErrorCode.INTERNAL, f"unexpected answer from the server: {exc}"
            ) from exc

    # ---- accounts ---------------------------------------------------------------------------

    async def register(
        self, username: str, password: str, display_name: str | None = None
    ) -> UserPublic:
        """Create an account (does not log in)."""
        body = build(UserCreate, username=username, password=password, display_name=display_name)
        return self._parse(UserPublic, await self._call("POST", "/auth/register", body, auth=False))

    async def login(self, username: str, password: str) -> Tokens:
        """Log in and keep the tokens for later calls."""
        body = build(SessionCreate, username=username, password=password)
        answer = await self._call("POST", "/auth/login", body, auth=False, idempotent=True)
        self.tokens = Tokens.from_public(self._parse(TokenPublic, answer))
        return self.tokens

    async def logout(self, *, all_devices: bool = False) -> None:
        """Revoke this session's refresh token (or every device's) and forget the tokens."""
        tokens = self._require_tokens()
        body = build(LogoutCreate, refresh_token=tokens.refresh_token, all_devices=all_devices)
        await self._call("POST", "/auth/logout", body, idempotent=True)
        self.tokens = None

    async def me(self) -> UserPublic:
        """The logged-in user."""
        return self._parse(UserPublic, await self._call("GET", "/users/me"))

    async def update_me(self, display_name: str) -> UserPublic:
        """Change the logged-in user's display name."""
        body = build(UserUpdate, display_name=display_name)
        return self._parse(UserPublic, await self._call("PATCH", "/users/me", body))

    async def get_user(self, user_id: int) -> UserPublic:
        """One user by id."""
        return self._parse(UserPublic, await self._call("GET", f"/users/{user_id}"))

    async def list_users(self, user_ids: list[int]) -> list[UserPublic]:
        """Users by id (unknown ids are left out)."""
        if not user_ids:
            return []
        params = {"ids": ",".join(str(i) for i in user_ids)}
        return self._parse(_USERS, await self._call("GET", "/users", params=params))

    async def search_users(self, prefix: str, limit: int = 20) -> list[UserPublic]:
        """Users whose username starts with ``prefix``."""
        params = {"prefix": prefix, "limit": limit}
        return self._parse(_USERS, await self._call("GET", "/users", params=params))

    async def get_user_by_username(self, username: str) -> UserPublic | None:
        """The user with exactly this username, or None."""
        for user in await self.search_users(username, limit=50):
            if user.username == username:
                return user
        return None

    async def presence(self, user_ids: list[int]) -> PresencePublic:
        """Which of these users are online."""
        params = {"user_ids": ",".join(str(i) for i in user_ids)}
        return self._parse(PresencePublic, await self._call("GET", "/presence", params=params))

    # ---- conversations ----------------------------------------------------------------------

    async def list_conversations(self) -> list[ConversationSummaryPublic]:
        """The user's conversations with last message and unread count."""
        return self._parse(_SUMMARIES, await self._call("GET", "/conversations"))

    async def get_conversation(self, conversation_id: int) -> ConversationPublic:
        """A conversation with its members."""
        answer = await self._call("GET", f"/conversations/{conversation_id}")
        return self._parse(ConversationPublic, answer)

    async def create_group(self, title: str, member_ids: list[int]) -> ConversationPublic:
        """Create a group; the caller becomes its owner."""
        body = build(GroupCreate, title=title, member_ids=member_ids)
        return self._parse(ConversationPublic, await self._call("POST", "/conversations", body))

    async def open_direct(self, user_id: int) -> ConversationPublic:
        """Get or open the direct conversation with a user."""
        body = build(DirectCreate, user_id=user_id)
        answer = await self._call("POST", "/conversations/direct", body, idempotent=True)
        return self._parse(ConversationPublic, answer)

    async def rename(self, conversation_id: int, title: str) -> ConversationPublic:
        """Rename a group (owner or admin)."""
        body = build(ConversationUpdate, title=title)
        answer = await self._call("PATCH", f"/conversations/{conversation_id}", body)
        return self._parse(ConversationPublic, answer)

    async def add_members(
        self, conversation_id: int, user_ids: list[int], role: Literal["admin", "member"] = "member"
    ) -> ConversationPublic:
        """Add users to a group (owner or admin)."""
        body = build(MembersCreate, user_ids=user_ids, role=role)
        answer = await self._call(
            "POST", f"/conversations/{conversation_id}/members", body, idempotent=True
        )
        return self._parse(ConversationPublic, answer)

    async def remove_member(self, conversation_id: int, user_id: int) -> None:
        """Remove a member (owner or admin; removing yourself leaves)."""
        await self._call("DELETE", f"/conversations/{conversation_id}/members/{user_id}")

    async def set_role(self, conversation_id: int, user_id: int, role: Role) -> ConversationPublic:
        """Change a member's role (owner only)."""
        path = f"/conversations/{conversation_id}/members/{user_id}/role"
        answer = await self._call("PUT", path, build(RoleUpdate, role=role))
        return self._parse(ConversationPublic, answer)

    async def leave(self, conversation_id: int) -> None:
        """Leave a group."""
        await self._call("POST", f"/conversations/{conversation_id}/leave", idempotent=True)

    async def page_messages(
        self,
        conversation_id: int,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> MessagePagePublic:
        """One page of history, ascending seq (see ``WarblerClient.history``)."""
        params: dict[str, Any] = {"limit": limit}
        if after_seq is not None:
            params["after_seq"] = after_seq
        if before_seq is not None:
            params["before_seq"] = before_seq
        answer = await self._call(
            "GET", f"/conversations/{conversation_id}/messages", params=params
        )
        return self._parse(MessagePagePublic, answer)

    async def search_messages(
        self,
        query: str,
        *,
        conversation_id: int | None = None,
        limit: int = SEARCH_LIMIT_DEFAULT,
        before: str | None = None,
    ) -> SearchPagePublic:
        """One page of ``GET /v1/search`` (see ``WarblerClient.search``).

        The query's length and ``limit`` are checked here, so a bad call sends nothing; whether
        the query has any word to search for is the server's rule (422 ``validation_error``).
        """
        q = query.strip()
        if not 1 <= len(q) <= SEARCH_QUERY_MAX:
            raise WarblerError(
                ErrorCode.VALIDATION, f"query: must be 1-{SEARCH_QUERY_MAX} characters"
            )
        if not 1 <= limit <= SEARCH_LIMIT_MAX:
            raise WarblerError(ErrorCode.VALIDATION, f"limit: must be 1-{SEARCH_LIMIT_MAX}")
        params: dict[str, Any] = {"q": q, "limit": limit}
        if conversation_id is not None:
            params["conversation_id"] = conversation_id
        if before is not None:
            params["before"] = before
        return self._parse(SearchPagePublic, await self._call("GET", "/search", params=params))

    async def mark_read(self, conversation_id: int, seq: int) -> ReceiptPublic:
        """Mark everything up to ``seq`` read."""
        body = build(ReadCreate, seq=seq)
        path = f"/conversations/{conversation_id}/read"
        answer = await self._call("POST", path, body, idempotent=True)
        return self._parse(ReceiptPublic, answer)

    async def post_message(self, message: MessageCreate) -> AckPublic:
        """Send over REST (idempotent by ``client_msg_id``, so retried like a GET)."""
        answer = await self._call("POST", "/messages", message, idempotent=True)
        return self._parse(AckPublic, answer)
