"""Accounts and refresh tokens."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from storage.db import Database
from storage.models import DISPLAY_NAME_MAX, USERNAME_MAX, RefreshToken, User
from storage.types import utcnow
from warbler.errors import ErrorCode, WarblerError

_SEARCH_LIMIT_MAX = 100
# A refresh token id is "<family>~<random>": the family is shared by every token rotated from
# one login, so a reused (stolen) token can revoke the whole chain with one prefix match and no
# extra column. Ids without "~" (issued before families) are a family of their own.
_FAMILY_SEP = "~"


def token_family(token_id: str) -> str:
    """The family (login chain) of a refresh token id."""
    family, sep, _ = token_id.partition(_FAMILY_SEP)
    return family if sep else token_id


def _check_username(username: str) -> None:
    if not username or len(username) > USERNAME_MAX:
        raise WarblerError(ErrorCode.VALIDATION, f"username must be 1-{USERNAME_MAX} characters")


def _check_display_name(name: str) -> None:
    if len(name) > DISPLAY_NAME_MAX:
        raise WarblerError(
            ErrorCode.VALIDATION, f"display name must be at most {DISPLAY_NAME_MAX} characters"
        )


def escape_like(text: str) -> str:
    """``text`` with LIKE wildcards escaped (use with ``escape="\\\\"``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class UserStore:
    """Users and their refresh tokens."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_user(self, username: str, password_hash: str, display_name: str) -> User:
        """Create an account; ``WarblerError(USERNAME_TAKEN)`` if the name exists."""
        _check_username(username)
        _check_display_name(display_name)
        if not password_hash:
            raise WarblerError(ErrorCode.VALIDATION, "password hash is empty")
        user = User(username=username, password_hash=password_hash, display_name=display_name)
        async with self._db.session() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise WarblerError(
                    ErrorCode.USERNAME_TAKEN, f"username {username!r} is taken"
                ) from exc
        return user

    async def get_user(self, user_id: int) -> User | None:
        """The user with this id, or None."""
        async with self._db.session() as session:
            return await session.get(User, user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        """The user with exactly this username, or None."""
        async with self._db.session() as session:
            result = await session.exec(select(User).where(User.username == username))
            return result.first()

    async def list_users(self, ids: Iterable[int]) -> list[User]:
        """The users among ``ids`` that exist, ordered by id."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        async with self._db.session() as session:
            result = await session.exec(
                select(User).where(col(User.id).in_(wanted)).order_by(col(User.id))
            )
            return list(result.all())

    async def search_users(self, prefix: str, limit: int = 20) -> list[User]:
        """Users whose username starts with ``prefix`` (exact case), by username."""
        limit = max(1, min(limit, _SEARCH_LIMIT_MAX))
        async with self._db.session() as session:
            result = await session.exec(
                select(User)
                .where(col(User.username).like(escape_like(prefix) + "%", escape="\\"))
                .order_by(col(User.username))
                .limit(limit)
            )
            return list(result.all())

    async def set_display_name(self, user_id: int, name: str) -> User:
        """Change a user's display name; ``WarblerError(NOT_FOUND)`` for an unknown user."""
        _check_display_name(name)
        async with self._db.session() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise WarblerError(ErrorCode.NOT_FOUND, f"no user {user_id}")
            user.display_name = name
            session.add(user)
            await session.commit()
            return user

    async def create_refresh_token(
        self, user_id: int, ttl_s: int, family: str | None = None
    ) -> RefreshToken:
        """A new random refresh token for ``user_id`` valid for ``ttl_s`` seconds, in
        ``family`` (a rotation) or a new family (a login)."""
        if ttl_s <= 0:
            raise WarblerError(ErrorCode.VALIDATION, "refresh token ttl must be positive")
        now = utcnow()
        family = family or secrets.token_urlsafe(12)
        token = RefreshToken(
            id=f"{family}{_FAMILY_SEP}{secrets.token_urlsafe(24)}",
            user_id=user_id,
            expires_at=now + timedelta(seconds=ttl_s),
            created_at=now,
        )
        async with self._db.session() as session:
            session.add(token)
            try:
                await session.commit()
            except IntegrityError as exc:
                raise WarblerError(ErrorCode.NOT_FOUND, f"no user {user_id}") from exc
        return token

    async def get_refresh_token(self, token_id: str) -> RefreshToken | None:
        """The token row (expired and revoked ones included), or None."""
        async with self._db.session() as session:
            return await session.get(RefreshToken, token_id)

    async def revoke_refresh_token(self, token_id: str) -> bool:
        """Revoke one token. True if this call revoked it (False: unknown or already revoked),
        so a caller rotating tokens can detect a token used twice."""
        async with self._db.session() as session:
            result = await session.exec(
                update(RefreshToken)
                .where(col(RefreshToken.id) == token_id, col(RefreshToken.revoked_at).is_(None))
                .values(revoked_at=utcnow())
            )
            await session.commit()
            return bool(result.rowcount)

    async def revoke_token_family(self, token_id: str, recent_s: float) -> list[str]:
        """Revoke every token of ``token_id``'s family (the login chain it was rotated in).
        Returns the ids whose access tokens may still live: those not revoked before this
        call, or revoked less than ``recent_s`` seconds ago (access tokens outlive their
        refresh token's rotation by up to their own lifetime)."""
        family = token_family(token_id)
        in_family = or_(
            col(RefreshToken.id) == family,
            col(RefreshToken.id).like(escape_like(family + _FAMILY_SEP) + "%", escape="\\"),
        )
        since = utcnow() - timedelta(seconds=recent_s)
        async with self._db.session() as session:
            result = await session.exec(
                select(RefreshToken.id).where(
                    in_family,
                    or_(
                        col(RefreshToken.revoked_at).is_(None),
                        col(RefreshToken.revoked_at) > since,
                    ),
                )
            )
            ids = [str(token_id) for token_id in result.all()]
            await session.exec(
                update(RefreshToken)
                .where(in_family, col(RefreshToken.revoked_at).is_(None))
                .values(revoked_at=utcnow())
            )
            await session.commit()
        return ids

    async def live_refresh_token_ids(self, user_id: int) -> list[str]:
        """Ids of the user's refresh tokens not revoked (expired ones included: their access
        tokens may still live)."""
        async with self._db.session() as session:
            result = await session.exec(
                select(RefreshToken.id).where(
                    col(RefreshToken.user_id) == user_id, col(RefreshToken.revoked_at).is_(None)
                )
            )
            return [str(token_id) for token_id in result.all()]

    async def revoke_all_refresh_tokens(self, user_id: int) -> int:
        """Revoke every live token of ``user_id``; returns how many were revoked."""
        async with self._db.session() as session:
            result = await session.exec(
                update(RefreshToken)
                .where(col(RefreshToken.user_id) == user_id, col(RefreshToken.revoked_at).is_(None))
                .values(revoked_at=utcnow())
            )
            await session.commit()
            return int(result.rowcount)
