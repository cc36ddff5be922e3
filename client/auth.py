"""The session's tokens: a short-lived access token and a rotating refresh token."""

from __future__ import annotations

import time
from dataclasses import dataclass

from warbler.protocol import TokenPublic, UserPublic

# Refresh this long before the access token expires, so a request in flight does not race it.
REFRESH_MARGIN_S = 30.0


@dataclass
class Tokens:
    """The tokens of one logged-in session and when the access token expires (monotonic clock).

    Example::

        tokens = Tokens.from_public(await rest.login("alice", "secret-password"))
        if tokens.access_expiring():
            ...  # refresh first
    """

    access_token: str
    refresh_token: str
    access_expires_at: float
    user: UserPublic

    @classmethod
    def from_public(cls, token: TokenPublic) -> Tokens:
        """Build from a login or refresh answer."""
        return cls(
            access_token=token.access_token,
            refresh_token=token.refresh_token,
            access_expires_at=time.monotonic() + token.expires_in,
            user=token.user,
        )

    def access_expiring(self, margin_s: float = REFRESH_MARGIN_S) -> bool:
        """True when the access token expires within ``margin_s`` seconds (or already did)."""
        return time.monotonic() >= self.access_expires_at - margin_s
