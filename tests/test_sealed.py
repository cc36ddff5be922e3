"""warbler.sealed: provider keys sealed at rest, opened only with the cluster's key."""

from __future__ import annotations

import pytest

from warbler.errors import ErrorCode, WarblerError
from warbler.sealed import SEALED_FIELD, open_provider, seal, seal_provider, unseal


def test_a_sealed_value_opens_with_its_key_only() -> None:
    token = seal("sk-live-123", "cluster key")
    assert "sk-live-123" not in token
    assert seal("sk-live-123", "cluster key") != token  # a fresh IV each time
    assert unseal(token, "cluster key") == "sk-live-123"
    with pytest.raises(WarblerError) as wrong:
        unseal(token, "another key")
    assert wrong.value.code is ErrorCode.CONFIG
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(WarblerError):
        unseal(tampered, "cluster key")
    with pytest.raises(WarblerError):
        unseal("not a token at all", "cluster key")


def test_a_provider_config_is_stored_without_its_key_in_clear() -> None:
    config = {"kind": "openai", "url": "http://llm/v1", "model": "m", "api_key": "sk-9"}
    stored = seal_provider(config, "k1")
    assert "api_key" not in stored and "sk-9" not in str(stored)
    assert stored["url"] == "http://llm/v1" and stored[SEALED_FIELD]
    assert open_provider(stored, "k1") == config
    # No key: nothing to seal; a row from before sealing is used as it is.
    assert seal_provider({"kind": "extractive"}, "k1") == {"kind": "extractive"}
    assert open_provider(config, "k1") == config
