"""Small protocol promises a new user trips over: a `read` is answered once on its own socket,
every time on the wire has one format, and a reused `client_msg_id` with another body is a
conflict, not a duplicate."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from gwclient import connect, make_account

from tests.support import GatewayInfo

pytestmark = pytest.mark.ray

WIRE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


async def test_the_reading_socket_gets_its_receipt_once(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    laptop, _ = await connect(gateway.ws_url, alice, cursors={}, device_id="laptop")
    phone, _ = await connect(gateway.ws_url, alice, cursors={}, device_id="phone")
    b, _ = await connect(gateway.ws_url, bob, cursors={})
    try:
        ack = await b.send_message("one", to_user_id=alice.user_id)
        conv = ack["conversation_id"]
        await b.send_message("two", conversation_id=conv)
        await laptop.wait_messages(conv, 2)

        answer = await laptop.request({"type": "read", "conversation_id": conv, "seq": 2})
        assert answer["type"] == "receipt" and answer["read_seq"] == 2, answer
        # Alice's other device and Bob get it pushed (no id).
        mine = await phone.wait_for(lambda f: f["type"] == "receipt")
        theirs = await b.wait_for(lambda f: f["type"] == "receipt")
        assert mine["read_seq"] == theirs["read_seq"] == 2 and mine.get("id") is None
        # The entity publishes the receipt before this message on the same channel: once the
        # message is on the laptop, a pushed copy of the receipt would be there too.
        await b.send_message("three", conversation_id=conv)
        await laptop.wait_for(lambda f: f["type"] == "message" and f["seq"] == 3)
        pushed = [f for f in laptop.pushed if f["type"] == "receipt"]
        assert pushed == [], pushed

        # A read from the phone still reaches the laptop (it is news there).
        await phone.request({"type": "read", "conversation_id": conv, "seq": 3})
        news = await laptop.wait_for(lambda f: f["type"] == "receipt")
        assert news["user_id"] == alice.user_id and news["read_seq"] == 3
    finally:
        for sock in (laptop, phone, b):
            await sock.close()


def times_in(value: Any, found: list[str]) -> list[str]:
    """Every value of a *_at / *_time field, anywhere in a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if (key.endswith("_at") or key.endswith("_time")) and isinstance(item, str):
                found.append(item)
            else:
                times_in(item, found)
    elif isinstance(value, list):
        for item in value:
            times_in(item, found)
    return found


async def test_every_time_on_the_wire_is_utc_with_z(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    a, hello_ok = await connect(gateway.ws_url, alice, cursors={})
    b, _ = await connect(gateway.ws_url, bob, cursors={})
    try:
        docs: list[Any] = [hello_ok]
        ack = await a.send_message("when?", to_user_id=bob.user_id)
        conv = ack["conversation_id"]
        docs.append(ack)
        docs += await b.wait_messages(conv, 1)  # the live `message` frame
        docs.append(await a.request({"type": "history", "conversation_id": conv, "limit": 5}))
        docs.append(await a.request({"type": "ping"}))
        r = await http.post(
            "/v1/messages",
            headers=bob.headers,
            json={"conversation_id": conv, "client_msg_id": uuid.uuid4().hex, "body": "now"},
        )
        assert r.status_code == 201, r.text
        docs.append(r.json())
        docs += await a.wait_messages(conv, 1)
        for path in (f"/v1/conversations/{conv}/messages", "/v1/conversations", "/v1/users/me"):
            r = await http.get(path, headers=alice.headers)
            assert r.status_code == 200, r.text
            docs.append(r.json())
        times = times_in(docs, [])
        assert len(times) >= 9, times
        bad = [t for t in times if not WIRE_TIME.match(t)]
        assert bad == [], bad
    finally:
        await a.close()
        await b.close()


async def test_a_reused_client_msg_id_with_another_body_is_a_conflict(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    a, _ = await connect(gateway.ws_url, alice, cursors={})
    try:
        cmid = uuid.uuid4().hex
        first = await a.send_message("the original", to_user_id=bob.user_id, client_msg_id=cmid)
        conv = first["conversation_id"]
        # The same message again: a duplicate, acked with its seq.
        again = await a.send_message("the original", conversation_id=conv, client_msg_id=cmid)
        assert again["type"] == "ack" and again["duplicate"] is True
        assert again["seq"] == first["seq"]
        # The same id for another body (the entity remembers it: fast path): conflict.
        other = await a.send_message("something else", conversation_id=conv, client_msg_id=cmid)
        assert other["type"] == "error" and other["code"] == "conflict", other
        assert other["id"] is not None
        # Once the entity forgot it (more sends than it remembers), SQL still knows: conflict.
        for i in range(12):
            await a.send_message(f"filler {i}", conversation_id=conv)
        late = await a.send_message("late change", conversation_id=conv, client_msg_id=cmid)
        assert late["type"] == "error" and late["code"] == "conflict", late
        json_body = await a.send_message(
            {"text": "the original"}, conversation_id=conv, client_msg_id=cmid, kind="json"
        )
        assert json_body["type"] == "error" and json_body["code"] == "conflict", json_body
        # REST: 409 problem JSON.
        r = await http.post(
            "/v1/messages",
            headers=alice.headers,
            json={"conversation_id": conv, "client_msg_id": cmid, "body": "over REST"},
        )
        assert r.status_code == 409 and r.json()["code"] == "conflict", r.text
        r = await http.post(
            "/v1/messages",
            headers=alice.headers,
            json={"conversation_id": conv, "client_msg_id": cmid, "body": "the original"},
        )
        assert r.status_code == 200 and r.json()["duplicate"] is True, r.text
        # The same id in another conversation is a conflict too.
        r = await http.post(
            "/v1/conversations",
            headers=alice.headers,
            json={"title": "elsewhere", "member_ids": [bob.user_id]},
        )
        assert r.status_code == 201, r.text
        group = r.json()["id"]
        elsewhere = await a.send_message("the original", conversation_id=group, client_msg_id=cmid)
        assert elsewhere["type"] == "error" and elsewhere["code"] == "conflict", elsewhere
        # Nothing was stored by the refused sends.
        r = await http.get(f"/v1/conversations/{conv}/messages", headers=alice.headers)
        bodies = [m["body"] for m in r.json()["messages"]]
        assert bodies.count("the original") == 1 and len(bodies) == 13, bodies
    finally:
        await a.close()
