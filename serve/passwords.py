"""Password hashing with argon2id, run in a worker thread so the event loop never stalls on it
(one hash costs tens of milliseconds of CPU by design)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher()
# Verified against when the username does not exist, so a login for an unknown user takes as
# long as one with a wrong password (no user enumeration by timing).
_DUMMY_HASH = _HASHER.hash("warbler-dummy-password")


async def hash_password(password: str) -> str:
    """The argon2id hash of a password."""
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when the password matches the hash; a None hash (unknown user) is always False."""

    def _verify() -> bool:
        try:
            return _HASHER.verify(password_hash or _DUMMY_HASH, password) and (
                password_hash is not None
            )
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(_verify)
