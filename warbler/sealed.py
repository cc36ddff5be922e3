"""Secrets kept at rest sealed (authenticated encryption), opened only where they are used.

A bot's provider API key is the one such secret today: the gateway seals it before the row is
written (``seal_provider``) and the bot entity opens it just before it calls the provider
(``open_provider``), so the database, its backups and exports never hold it in clear. The key
is derived from the cluster's signing key (``Settings.resolved_secret_key``) with HKDF, under a
purpose label of its own, so the signing key itself never encrypts anything. Fernet
(AES-128-CBC + HMAC-SHA256, from ``cryptography``) is the format: the token carries its own
version, IV and MAC, so a tampered or foreign value fails to open instead of decrypting to junk.

Rotating ``WARBLER_SECRET_KEY`` makes the sealed keys unreadable: such a bot answers with its
provider error until its owner sets the key again (the log says why).
"""

from __future__ import annotations

import base64
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from warbler.errors import ErrorCode, WarblerError

_PURPOSE = b"warbler sealed secrets v1"
# The provider config's field for the sealed key (the clear one, "api_key", is never stored).
SEALED_FIELD = "api_key_sealed"


@lru_cache(maxsize=4)
def _fernet(secret_key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(value: str, secret_key: str) -> str:
    """``value`` encrypted and authenticated under a key derived from ``secret_key``."""
    return _fernet(secret_key).encrypt(value.encode()).decode("ascii")


def unseal(token: str, secret_key: str) -> str:
    """The value ``seal`` sealed; CONFIG if the token was sealed under another key or altered."""
    try:
        return _fernet(secret_key).decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError, ValueError) as exc:
        raise WarblerError(
            ErrorCode.CONFIG,
            "a sealed secret does not open with this cluster's key (was WARBLER_SECRET_KEY "
            "changed?); set it again",
        ) from exc


def seal_provider(config: dict[str, Any], secret_key: str) -> dict[str, Any]:
    """A provider config as it is stored: ``api_key`` replaced by its sealed form."""
    stored = {k: v for k, v in config.items() if k != "api_key"}
    key = config.get("api_key")
    if key:
        stored[SEALED_FIELD] = seal(str(key), secret_key)
    return stored


def open_provider(config: dict[str, Any], secret_key: str) -> dict[str, Any]:
    """A stored provider config with its ``api_key`` in clear again (rows written before
    keys were sealed hold it in clear, and are used as they are)."""
    token = config.get(SEALED_FIELD)
    if not token:
        return config
    opened = {k: v for k, v in config.items() if k != SEALED_FIELD}
    opened["api_key"] = unseal(str(token), secret_key)
    return opened
