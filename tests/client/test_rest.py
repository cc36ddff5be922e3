"""REST plumbing that needs no server: request validation and problem JSON decoding."""

from __future__ import annotations

import httpx
import pytest

from client import WarblerClient
from client.rest import build, error_from_response
from warbler.errors import ErrorCode, WarblerError
from warbler.protocol import GroupCreate

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
