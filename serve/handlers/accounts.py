"""Accounts: register, login, token refresh and logout, profiles, user lookup.

Accounts are stateless rows no entity owns, so this handler uses storage's UserStore directly
(docs/contracts.md). Access tokens are verified with no I/O (serve.tokens).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from serve.passwords import hash_password, verify_password
from serve.ratelimit import AbuseThrottle
from serve.revocations import Revocation, Revocations
from serve.tokens import AccessClaims, TokenSigner
from storage import UserStore
from storage.models import User
from storage.users import token_family
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import TokenPublic, UserCreate, UserPublic

logger = logging.getLogger(__name__)


def user_public(user: User) -> UserPublic:
    """The wire form of a user row."""
    return UserPublic(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        created_at=user.created_at,
    )


class AccountsHandler:
    """Account operations over a UserStore and a TokenSigner."""

    def __init__(
        self,
        users: UserStore,
        signer: TokenSigner,
        refresh_ttl_s: int,
        revocations: Revocations | None = None,
        throttle: AbuseThrottle | None = None,
    ) -> None:
        self._users = users
        self._signer = signer
        self._refresh_ttl_s = refresh_ttl_s
        self._revocations = revocations
        self._throttle = throttle

    def authenticate(self, token: str | None) -> AccessClaims:
        """The claims of a valid access token of a session not logged out; UNAUTHENTICATED /
        TOKEN_EXPIRED otherwise. No I/O (revocations are in memory)."""
        if not token:
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "an access token is required")
        claims = self._signer.verify_access(token)
        if self._revocations is not None and self._revocations.is_revoked(claims):
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "this session was logged out")
        return claims

    async def register(self, body: UserCreate, address: str = "unknown") -> UserPublic:
        """Create an account (USERNAME_TAKEN if the name exists; RATE_LIMITED after too many
        registrations from the client's address)."""
        if self._throttle is not None:
            await self._throttle.check_registration(address)
        password_hash = await hash_password(body.password)
        user = await self._users.create_user(
            body.username, password_hash, body.display_name or body.username
        )
        logger.info("registered user %s (%s)", user.id, user.username)
        return user_public(user)

    async def login(self, username: str, password: str, address: str = "unknown") -> TokenPublic:
        """A fresh token pair for valid credentials; UNAUTHENTICATED otherwise (one message
        for an unknown user and a wrong password, so names cannot be probed). RATE_LIMITED
        while the account or the address has too many recent failures (checked before the
        password, so a locked account cannot be probed either)."""
        if self._throttle is not None:
            await self._throttle.check_login(username, address)
        user = await self._users.get_user_by_username(username)
        ok = await verify_password(user.password_hash if user else None, password)
        if user is None or not ok:
            if self._throttle is not None:
                await self._throttle.login_failed(username, address)
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "wrong username or password")
        if self._throttle is not None:
            await self._throttle.login_succeeded(username)
        return await self._issue(user)

    async def refresh(self, refresh_token: str) -> TokenPublic:
        """Rotate: revoke the presented refresh token and issue a new pair in its family.

        A token presented again after its rotation means two parties hold it (one stole it):
        the whole family (every token rotated from that login) is revoked and the access
        tokens of its sessions die at once, so neither party keeps the session."""
        token_id = self._signer.unwrap_refresh(refresh_token)
        row = await self._users.get_refresh_token(token_id)
        now = datetime.now(UTC)
        if row is None or row.expires_at <= now:
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "the refresh token is not valid")
        # Revoke first: of two concurrent refreshes with one token only the first wins.
        if row.revoked_at is not None or not await self._users.revoke_refresh_token(token_id):
            await self._revoke_family(row.user_id, token_id)
            raise WarblerError(
                ErrorCode.UNAUTHENTICATED,
                "the refresh token was already used; its login session is revoked",
            )
        user = await self._users.get_user(row.user_id)
        if user is None:
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "the account no longer exists")
        return await self._issue(user, family=token_family(token_id))

    async def _revoke_family(self, user_id: int, token_id: str) -> None:
        sessions = await self._users.revoke_token_family(token_id, self._signer.access_ttl_s)
        logger.warning(
            "refresh token reuse for user %s: %d sessions of its family revoked",
            user_id,
            len(sessions),
        )
        if self._revocations is not None:
            for sid in {*sessions, token_id}:
                await self._revocations.revoke(Revocation(user_id, session_id=sid))

    async def logout(
        self, claims: AccessClaims, refresh_token: str | None, all_devices: bool
    ) -> None:
        """Revoke one refresh token (the given one, else this session's) or all of the user's."""
        if all_devices:
            # Whole seconds, compared strictly: a login right after this (same second) keeps
            # its token; the sessions live now are revoked one by one, which covers their
            # tokens issued earlier in this second.
            before = int(time.time())
            sessions = await self._users.live_refresh_token_ids(claims.user_id)
            count = await self._users.revoke_all_refresh_tokens(claims.user_id)
            if self._revocations is not None:
                for sid in {*sessions, claims.session_id}:
                    await self._revocations.revoke(Revocation(claims.user_id, session_id=sid))
                await self._revocations.revoke(Revocation(claims.user_id, before=before))
            logger.info("user %s logged out of %d sessions", claims.user_id, count)
            return
        token_id = (
            self._signer.unwrap_refresh(refresh_token) if refresh_token else claims.session_id
        )
        row = await self._users.get_refresh_token(token_id)
        if row is None or row.user_id != claims.user_id:
            raise WarblerError(ErrorCode.NOT_FOUND, "no such session for this user")
        await self._users.revoke_refresh_token(token_id)
        if self._revocations is not None:
            await self._revocations.revoke(Revocation(claims.user_id, session_id=token_id))

    async def get_user(self, user_id: int) -> UserPublic:
        """One user by id (NOT_FOUND if none)."""
        user = await self._users.get_user(user_id)
        if user is None:
            raise WarblerError(ErrorCode.NOT_FOUND, f"no user {user_id}")
        return user_public(user)

    async def set_display_name(self, user_id: int, display_name: str) -> UserPublic:
        """Change the caller's display name."""
        return user_public(await self._users.set_display_name(user_id, display_name))

    async def list_users(self, ids: list[int]) -> list[UserPublic]:
        """The users among ids that exist."""
        return [user_public(u) for u in await self._users.list_users(ids)]

    async def search_users(self, prefix: str, limit: int) -> list[UserPublic]:
        """Users whose username starts with prefix."""
        return [user_public(u) for u in await self._users.search_users(prefix, limit)]

    async def _issue(self, user: User, family: str | None = None) -> TokenPublic:
        row = await self._users.create_refresh_token(user.id, self._refresh_ttl_s, family)
        return TokenPublic(
            access_token=self._signer.issue_access(user.id, row.id),
            refresh_token=self._signer.wrap_refresh(row.id),
            expires_in=self._signer.access_ttl_s,
            user=user_public(user),
        )
