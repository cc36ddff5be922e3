"""Entity keys and host actor names, built and parsed in one place.

Entity keys are strings: ``"conv:<id>"`` (a direct or group conversation) and ``"user:<id>"``
(a user session). ``"conv:new"`` addresses the factory that creates conversations, which have no
id yet. Host actors are named Ray actors in the namespace ``settings.namespace``.
"""

from __future__ import annotations

import re

from warbler.errors import ErrorCode, WarblerError

CONV = "conv"
USER = "user"
# Where CreateGroup / OpenDirect go: the conversation does not exist yet, so it has no key.
NEW_CONVERSATION_KEY = "conv:new"

# The host-pool autoscaler's actor (one per namespace).
AUTOSCALER_NAME = "warbler-autoscaler"

_ID_KEY = re.compile(r"^([a-z]+):([1-9][0-9]{0,18})$")
_DEDICATED_SAFE = re.compile(r"[^a-z0-9]+")


def conv_key(conversation_id: int) -> str:
    """The key of a conversation entity."""
    return f"{CONV}:{conversation_id}"


def user_key(user_id: int) -> str:
    """The key of a user-session entity."""
    return f"{USER}:{user_id}"


def parse_key(key: str) -> tuple[str, int]:
    """Split ``"<kind>:<id>"`` into kind and positive id; anything else is BAD_REQUEST."""
    match = _ID_KEY.match(key)
    if match is None:
        raise WarblerError(ErrorCode.BAD_REQUEST, f"bad entity key {key!r}")
    return match.group(1), int(match.group(2))


def pool_host_name(index: int) -> str:
    """Name of the ``index``-th pool host actor (one namespace per cluster, so no prefix)."""
    return f"host-{index}"


def dedicated_host_name(key: str) -> str:
    """Name of the host dedicated to entity ``key``."""
    return "dedicated-" + _DEDICATED_SAFE.sub("-", key.lower()).strip("-")
