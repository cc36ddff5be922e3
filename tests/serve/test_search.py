"""GET /v1/search end to end through the gateway: messages sent over REST are found by
members only, paged newest first, filtered by conversation; bad queries are 422 problems.

Words carry a unique tag so that tests sharing a database never see each other's hits.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from gwclient import Account, make_account

pytestmark = pytest.mark.ray


async def _send(
    http: httpx.AsyncClient, who: Account, body: Any, kind: str = "text", **to: int
) -> dict[str, Any]:
    r = await http.post(
        "/v1/messages",
        headers=who.headers,
        json={"client_msg_id": uuid.uuid4().hex, "kind": kind, "body": body, **to},
    )
    assert r.status_code == 201, r.text
    ack: dict[str, Any] = r.json()
    return ack


async def _search(http: httpx.AsyncClient, who: Account, **params: Any) -> dict[str, Any]:
    r = await http.get("/v1/search", headers=who.headers, params=params)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


async def _group(http: httpx.AsyncClient, owner: Account, *members: Account) -> int:
    r = await http.post(
        "/v1/conversations",
        headers=owner.headers,
        json={"title": "search", "member_ids": [m.user_id for m in members]},
    )
    assert r.status_code == 201, r.text
    conv: int = r.json()["id"]
    return conv


async def test_search_finds_pages_and_filters(http: httpx.AsyncClient) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    word = f"mango{uuid.uuid4().hex[:10]}"
    group = await _group(http, alice, bob)
    other = await _group(http, alice)
    seqs = [
        (await _send(http, alice, f"msg {n} about {word}", conversation_id=group))["seq"]
        for n in range(5)
    ]
    seqs.append((await _send(http, bob, f"Bob says {word.upper()}!", conversation_id=group))["seq"])
    elsewhere = (await _send(http, alice, f"{word} elsewhere", conversation_id=other))["seq"]
    await _send(http, alice, {"text": word}, kind="json", conversation_id=group)
    await _send(http, alice, "unrelated words", conversation_id=group)

    page = await _search(http, alice, q=word, limit=4)
    assert [(h["conversation_id"], h["seq"]) for h in page["hits"]] == [
        (other, elsewhere),
        (group, seqs[5]),
        (group, seqs[4]),
        (group, seqs[3]),
    ]
    bob_hit = page["hits"][1]
    assert bob_hit["sender_id"] == bob.user_id and bob_hit["body"] == f"Bob says {word.upper()}!"
    start, end = bob_hit["highlights"][0]
    assert bob_hit["snippet"][start:end] == word.upper()
    assert bob_hit["created_at"].endswith("Z")
    assert page["next"]
    rest = await _search(http, alice, q=word, limit=4, before=page["next"])
    assert [h["seq"] for h in rest["hits"]] == seqs[2::-1] and rest["next"] is None

    only = await _search(http, alice, q=f"{word} bob", conversation_id=group)
    assert [h["seq"] for h in only["hits"]] == [seqs[5]]
    in_other = (await _search(http, alice, q=word, conversation_id=other))["hits"]
    assert [h["seq"] for h in in_other] == [elsewhere]
    # Bob is not in `other`: filtering on it gives nothing, not its messages.
    assert (await _search(http, bob, q=word, conversation_id=other))["hits"] == []
    assert len((await _search(http, bob, q=word, limit=100))["hits"]) == 6


async def test_non_members_and_removed_members_find_nothing(http: httpx.AsyncClient) -> None:
    alice, bob, eve = [await make_account(http, n) for n in ("alice", "bob", "eve")]
    word = f"papaya{uuid.uuid4().hex[:10]}"
    group = await _group(http, alice, bob)
    await _send(http, alice, f"group {word}", conversation_id=group)
    dm = await _send(http, alice, f"private {word}", to_user_id=bob.user_id)
    assert len((await _search(http, bob, q=word))["hits"]) == 2
    # Eve is in neither: not the group's message, never the private DM.
    assert (await _search(http, eve, q=word))["hits"] == []
    assert (await _search(http, eve, q=word, conversation_id=dm["conversation_id"]))["hits"] == []

    r = await http.delete(f"/v1/conversations/{group}/members/{bob.user_id}", headers=alice.headers)
    assert r.status_code == 204, r.text
    hits = (await _search(http, bob, q=word))["hits"]
    assert [h["conversation_id"] for h in hits] == [dm["conversation_id"]]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "   "},
        {"q": "?!..."},
        {"q": "x" * 201},
        {"q": "ok", "limit": 0},
        {"q": "ok", "limit": 101},
        {"q": "ok", "before": "not-a-cursor"},
    ],
)
async def test_bad_queries_are_422_problems(http: httpx.AsyncClient, params: Any) -> None:
    alice = await make_account(http, "alice")
    r = await http.get("/v1/search", headers=alice.headers, params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_search_needs_a_token(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/search", params={"q": "hello"})
    assert r.status_code == 401
