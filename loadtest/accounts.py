"""Bench accounts: log in (registering when needed) many users through the REST API.

Passwords are hashed with argon2id on the server (~0.2 s of CPU each by design), so registering
and logging in a thousand users costs minutes. Bench users therefore keep fixed names, and their
refresh tokens are cached in a JSON file per server URL: a later run trades each for a fresh
access token with ``/auth/refresh`` (no hashing) and only falls back to a password login.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from client.auth import Tokens
from client.rest import RestClient
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import UserPublic

logger = logging.getLogger(__name__)

BENCH_PASSWORD = "warbler-bench-password"


@dataclass(frozen=True)
class Account:
    """A logged-in bench user."""

    user_id: int
    username: str
    access_token: str


class TokenCache:
    """Refresh tokens of bench users, per server URL, in one JSON file (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, dict[str, str]]] = {}
        if path.exists():
            try:
                self._data = json.loads(path.read_text())
            except (ValueError, OSError):
                logger.warning("ignoring unreadable token cache %s", path)

    def get(self, base_url: str, username: str) -> dict[str, str] | None:
        """The cached entry (refresh token and user JSON) or None."""
        return self._data.get(base_url, {}).get(username)

    def put(self, base_url: str, tokens: Tokens) -> None:
        """Remember a user's newest refresh token."""
        self._data.setdefault(base_url, {})[tokens.user.username] = {
            "refresh_token": tokens.refresh_token,
            "user": tokens.user.model_dump_json(),
        }

    def drop(self, base_url: str, username: str) -> None:
        """Forget a user (its refresh token no longer works)."""
        self._data.get(base_url, {}).pop(username, None)

    def save(self) -> None:
        """Write the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._data))
        tmp.chmod(0o600)
        os.replace(tmp, self.path)


async def _refresh(rest: RestClient, entry: dict[str, str]) -> Tokens:
    rest.tokens = Tokens(
        access_token="",
        refresh_token=entry["refresh_token"],
        access_expires_at=0.0,
        user=UserPublic.model_validate_json(entry["user"]),
    )
    return await rest.refresh()


async def _one(base_url: str, username: str, cache: TokenCache | None) -> Tokens:
    rest = RestClient(base_url, retries=3)
    try:
        entry = cache.get(base_url, username) if cache is not None else None
        if entry is not None:
            try:
                return await _refresh(rest, entry)
            except WarblerError as exc:
                if exc.code not in (ErrorCode.UNAUTHENTICATED, ErrorCode.TOKEN_EXPIRED):
                    raise
                assert cache is not None
                cache.drop(base_url, username)
        try:
            return await rest.login(username, BENCH_PASSWORD)
        except WarblerError as login_error:
            if login_error.code != ErrorCode.UNAUTHENTICATED:
                raise
        try:
            await rest.register(username, BENCH_PASSWORD)
        except WarblerError as register_error:
            if register_error.code != ErrorCode.USERNAME_TAKEN:  # a concurrent run registered it
                raise
        return await rest.login(username, BENCH_PASSWORD)
    finally:
        await rest.aclose()


async def provision(
    base_url: str,
    usernames: list[str],
    *,
    cache: TokenCache | None = None,
    concurrency: int = 8,
) -> list[Account]:
    """Accounts for these usernames, in order (registered first when they do not exist)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str) -> Tokens:
        async with gate:
            tokens = await _one(base_url, name, cache)
            if cache is not None:
                cache.put(base_url, tokens)
            return tokens

    try:
        results = await asyncio.gather(*(one(n) for n in usernames))
    finally:
        if cache is not None:
            cache.save()
    return [Account(t.user.id, t.user.username, t.access_token) for t in results]


async def open_directs(base_url: str, pairs: list[tuple[Account, Account]]) -> list[int]:
    """The direct conversation id of each (a, b) pair, opened by a."""
    gate = asyncio.Semaphore(16)

    async def one(a: Account, b: Account) -> int:
        async with gate:
            rest = await session_for(base_url, a)
            try:
                return (await rest.open_direct(b.user_id)).id
            finally:
                await rest.aclose()

    return list(await asyncio.gather(*(one(a, b) for a, b in pairs)))


async def create_group(base_url: str, owner: Account, members: list[Account], title: str) -> int:
    """A new group of ``owner`` plus ``members``; returns its id."""
    rest = await session_for(base_url, owner)
    try:
        conv = await rest.create_group(title, [m.user_id for m in members])
        return conv.id
    finally:
        await rest.aclose()


async def last_seq(base_url: str, account: Account, conversation_id: int) -> int:
    """The conversation's last seq, as one of its members sees it."""
    rest = await session_for(base_url, account)
    try:
        return (await rest.get_conversation(conversation_id)).last_seq
    finally:
        await rest.aclose()


async def session_for(base_url: str, account: Account) -> RestClient:
    """A REST client acting as a logged-in bench account (close it after use)."""
    rest = RestClient(base_url, retries=3)
    # The access token is all these calls need; a far expiry stops the client refreshing.
    rest.tokens = Tokens(
        access_token=account.access_token,
        refresh_token="",
        access_expires_at=float("inf"),
        user=UserPublic(
            id=account.user_id, username=account.username, display_name=account.username,
            created_at=datetime(1970, 1, 1, tzinfo=UTC),
        ),
    )
    return rest
