"""REST plumbing that needs no server: request validation, problem JSON decoding, and search
paging through a rate limit."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from client import WarblerClient
from client.auth import Tokens
from client.rest import RestClient, build, error_from_response
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import GroupCreate, UserPublic

# Nothing listens here: a call that reached the network would fail with UNAVAILABLE instead.
NOWHERE = "http://127.0.0.1:9"


def test_build_turns_bad_fields_into_a_validation_error() -> None:
    assert build(GroupCreate, title="Team", member_ids=[1, 2]).member_ids == [1, 2]
    with pytest.raises(WarblerError) as err:
        build(GroupCreate, title="", member_ids=[])
    assert err.value.code is ErrorCode.VALIDATION
    assert "title" in err.value.message


async def test_bad_input_is_refused_before_anything_is_sent() -> None:
    async with WarblerClient(NOWHERE) as client:
        with pytest.raises(WarblerError) as err:
            await client.register("ab", "long enough password")
        assert err.value.code is ErrorCode.VALIDATION and "username" in err.value.message
        with pytest.raises(WarblerError) as err:
            await client.register("fine_name", "short")
        assert err.value.code is ErrorCode.VALIDATION and "password" in err.value.message
        with pytest.raises(WarblerError) as err:
            await client.login("alice", "whatever password")
        assert err.value.code is ErrorCode.UNAVAILABLE


def test_problem_json_becomes_the_same_warbler_error() -> None:
    problem = WarblerError(ErrorCode.NOT_MEMBER, "not yours", details={"conversation_id": 3})
    response = httpx.Response(403, json=problem.to_problem("/v1/x"))
    err = error_from_response(response)
    assert (err.code, err.message, err.status) == (ErrorCode.NOT_MEMBER, "not yours", 403)
    assert err.details == {"conversation_id": 3}


def test_a_bare_error_status_maps_to_a_code() -> None:
    err = error_from_response(httpx.Response(502, text="Bad Gateway"))
    assert err.code is ErrorCode.INTERNAL and err.status == 502
    err = error_from_response(httpx.Response(503, text="no replicas"))
    assert err.code is ErrorCode.UNAVAILABLE
    unknown = {"code": "brand_new_code", "detail": "from a newer server"}
    err = error_from_response(httpx.Response(400, json=unknown))
    assert err.code is ErrorCode.INTERNAL and err.message == "from a newer server"


async def test_bad_searches_are_refused_before_anything_is_sent() -> None:
    async with WarblerClient(NOWHERE) as client:
        for query, limit in (("", 20), ("   ", 20), ("x" * 201, 20), ("kiwi", 0), ("kiwi", 101)):
            with pytest.raises(WarblerError) as err:
                await client.search(query, limit=limit)
            assert err.value.code is ErrorCode.VALIDATION, (query, limit)
            assert ("query" if limit == 20 else "limit") in err.value.message
        # A good query does go out (and finds no server here).
        client.rest.tokens = _tokens()
        with pytest.raises(WarblerError) as err:
            await client.search("kiwi")
        assert err.value.code is ErrorCode.UNAVAILABLE


def _tokens() -> Tokens:
    user = UserPublic(id=1, username="alice", display_name="Alice", created_at=datetime.now(UTC))
    return Tokens("access", "refresh", time.monotonic() + 3600, user)


def _hit(seq: int) -> dict[str, object]:
    return {
        "conversation_id": 7,
        "seq": seq,
        "sender_id": 1,
        "created_at": "2026-12-03T07:00:00Z",
        "body": f"kiwi {seq}",
        "snippet": f"kiwi {seq}",
        "highlights": [[0, 4]],
    }


async def test_iter_search_follows_the_cursor_and_waits_out_the_rate_limit() -> None:
    # The gateway's limiter is per replica and cannot be made to refuse on demand, so a
    # transport plays it: page one, a 429 with retry_after_ms, then the last page.
    seen: list[dict[str, str]] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        if len(seen) == 1:
            return httpx.Response(200, json={"hits": [_hit(3), _hit(2)], "next": "czE6Mg"})
        if len(seen) == 2:
            problem = WarblerError(
                ErrorCode.RATE_LIMITED, "searching too fast", details={"retry_after_ms": 10}
            )
            return httpx.Response(429, json=problem.to_problem("/v1/search"))
        return httpx.Response(200, json={"hits": [_hit(1)], "next": None})

    async with WarblerClient(NOWHERE) as client:
        await client.rest.aclose()
        client.rest = RestClient(NOWHERE, transport=httpx.MockTransport(gateway))
        client.rest.tokens = _tokens()
        hits = [h async for h in client.iter_search("kiwi", conversation_id=7, page=2)]
    assert [(h.seq, h.snippet, h.highlights) for h in hits] == [
        (3, "kiwi 3", [(0, 4)]),
        (2, "kiwi 2", [(0, 4)]),
        (1, "kiwi 1", [(0, 4)]),
    ]
    assert seen[0] == {"q": "kiwi", "limit": "2", "conversation_id": "7"}
    assert seen[1]["before"] == seen[2]["before"] == "czE6Mg"
