"""Signed access tokens and refresh-token strings (HMAC-SHA256 with the cluster's secret key).

An access token is ``v1.<payload>.<signature>``: the payload is base64url JSON
``{"sub": user id, "sid": refresh token id, "iat": issued, "exp": expiry}``, the signature an
HMAC-SHA256 over ``v1.<payload>``. It is checked with no I/O, so authenticating a request costs
no database round trip. A refresh token given to clients is ``<row id>.<HMAC of the id>``: the
row id alone (say, from a database dump) is not enough to use it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from warbler.errors import ErrorCode, WarblerError

_VERSION = "v1"
_MAX_TOKEN_LEN = 4096


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says: who, which login session, until when."""

    user_id: int
    session_id: str
    issued_at: int
    expires_at: int


class TokenSigner:
    """Issues and verifies access tokens and refresh-token strings with one secret key."""

    def __init__(self, secret_key: str, access_ttl_s: int) -> None:
        if not secret_key:
            raise WarblerError(ErrorCode.CONFIG, "the token signing key is empty")
        self._key = hashlib.sha256(b"warbler-tokens:" + secret_key.encode()).digest()
        self._access_ttl_s = access_ttl_s

    @property
    def access_ttl_s(self) -> int:
        """Lifetime of an access token in seconds."""
        return self._access_ttl_s

    def _sign(self, data: str) -> str:
        return _b64(hmac.new(self._key, data.encode(), hashlib.sha256).digest())

    def issue_access(self, user_id: int, session_id: str, *, now: float | None = None) -> str:
        """A new access token for the user, tied to the login session (refresh token id)."""
        issued = int(now if now is not None else time.time())
        payload = {
            "sub": user_id,
            "sid": session_id,
            "iat": issued,
            "exp": issued + self._access_ttl_s,
        }
        body = f"{_VERSION}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
        return f"{body}.{self._sign(body)}"

    def verify_access(self, token: str, *, now: float | None = None) -> AccessClaims:
        """The claims of a valid token; UNAUTHENTICATED if forged or malformed, TOKEN_EXPIRED
        if its time has passed."""
        # Tokens are ASCII: anything else (a header holding "\xe9") is refused before it
        # reaches hmac.compare_digest, which raises TypeError on non-ASCII str (was a 500).
        if len(token) > _MAX_TOKEN_LEN or not token.isascii():
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "malformed access token")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "malformed access token")
        body = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._sign(body), parts[2]):
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "invalid access token signature")
        try:
            payload = json.loads(_unb64(parts[1]))
            claims = AccessClaims(
                user_id=int(payload["sub"]),
                session_id=str(payload["sid"]),
                issued_at=int(payload["iat"]),
                expires_at=int(payload["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "malformed access token") from None
        if claims.expires_at <= (now if now is not None else time.time()):
            raise WarblerError(ErrorCode.TOKEN_EXPIRED, "the access token has expired")
        return claims

    def wrap_refresh(self, token_id: str) -> str:
        """The refresh-token string handed to the client for a RefreshToken row id."""
        return f"{token_id}.{self._sign('refresh:' + token_id)}"

    def unwrap_refresh(self, token: str) -> str:
        """The RefreshToken row id inside a refresh-token string; UNAUTHENTICATED if forged."""
        token_id, sep, sig = token.rpartition(".")
        if not sep or not token_id or not token.isascii():
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "malformed refresh token")
        if not hmac.compare_digest(self._sign("refresh:" + token_id), sig):
            raise WarblerError(ErrorCode.UNAUTHENTICATED, "invalid refresh token")
        return token_id
