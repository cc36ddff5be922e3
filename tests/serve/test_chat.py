"""Chat end to end through Serve with real WebSocket clients: direct and group conversations,
offline catch-up, several devices, idempotent resends, authorization, malformed frames."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest
import websockets
from gwclient import Account, connect, make_account

from tests.support import GatewayInfo

pytestmark = pytest.mark.ray


async def test_direct_chat_opened_on_first_send(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    a, _ = await connect(gateway.ws_url, alice, cursors={})
    b, _ = await connect(gateway.ws_url, bob, cursors={}, token_in="header")
    try:
        ack = await a.send_message("hi bob", to_user_id=bob.user_id)
        assert ack["type"] == "ack", ack
        assert ack["seq"] == 1 and ack["duplicate"] is False
        conv = ack["conversation_id"]
        [msg] = await b.wait_messages(conv, 1)
        assert (
            msg["body"] == "hi bob" and msg["sender_id"] == alice.user_id and msg["kind"] == "text"
        )
        # Bob answers in the same conversation, with a JSON body.
        ack2 = await b.send_message({"sticker": "wave"}, conversation_id=conv, kind="json")
        assert ack2["seq"] == 2
        reply = await a.wait_for(lambda f: f["type"] == "message" and f["seq"] == 2)
        assert reply["body"] == {"sticker": "wave"} and reply["seq"] == 2
        # The sending socket got an ack, not an echo of its own message.
        assert [m["seq"] for m in a.messages(conv)] == [2]
        # Sending to the same user again finds the same conversation.
        ack3 = await a.send_message("again", to_user_id=bob.user_id)
        assert ack3["conversation_id"] == conv and ack3["seq"] == 3
        # REST sees the same log.
        r = await http.get(f"/v1/conversations/{conv}/messages", headers=alice.headers)
        page = r.json()
        assert [m["seq"] for m in page["messages"]] == [1, 2, 3] and page["has_more"] is False
        r = await http.get("/v1/conversations", headers=bob.headers)
        [row] = [c for c in r.json() if c["id"] == conv]
        assert row["kind"] == "direct" and row["peer_id"] == alice.user_id and row["last_seq"] == 3
        assert row["last_message"]["body"] == "again" and row["unread"] == 3
        # Bob reads: Alice gets a receipt; his unread count drops.
        receipt = await b.request({"type": "read", "conversation_id": conv, "seq": 3})
        assert receipt["type"] == "receipt" and receipt["read_seq"] == 3
        seen = await a.wait_for(lambda f: f["type"] == "receipt" and f["user_id"] == bob.user_id)
        assert seen["read_seq"] == 3
        r = await http.get("/v1/conversations", headers=bob.headers)
        assert [c["unread"] for c in r.json() if c["id"] == conv] == [0]
        # Typing reaches the other member only.
        await a.ws.send(json.dumps({"type": "typing", "conversation_id": conv}))
        typing = await b.wait_for(lambda f: f["type"] == "typing")
        assert typing["user_id"] == alice.user_id and typing["active"] is True
    finally:
        await a.close()
        await b.close()


async def test_group_chat(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    owner = await make_account(http, "owner")
    members = [await make_account(http, f"m{i}") for i in range(4)]
    r = await http.post(
        "/v1/conversations",
        json={"title": "Team", "member_ids": [m.user_id for m in members[:3]]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    group = r.json()
    conv = group["id"]
    assert {m["user_id"]: m["role"] for m in group["members"]} == {
        owner.user_id: "owner",
        **{m.user_id: "member" for m in members[:3]},
    }
    socks = [(await connect(gateway.ws_url, acc, cursors={}))[0] for acc in [owner, *members]]
    try:
        # Everybody sends; everybody else gets every message, in seq order.
        acks = await asyncio.gather(
            *(
                s.send_message(f"hello from {i}", conversation_id=conv)
                for i, s in enumerate(socks[:4])
            )
        )
        seqs = sorted(a["seq"] for a in acks)
        assert seqs == list(range(seqs[0], seqs[0] + 4))
        for s in socks[:4]:
            got = await s.wait_messages(conv, 3 + 1)  # 3 others' + the "created" system message
            assert [m["seq"] for m in got] == sorted(m["seq"] for m in got)
        # The outsider cannot read or write.
        outsider = socks[4]
        err = await outsider.send_message("let me in", conversation_id=conv)
        assert err["type"] == "error" and err["code"] == "not_member"
        err = await outsider.request({"type": "history", "conversation_id": conv})
        assert err["type"] == "error" and err["code"] == "not_member"
        r = await http.get(f"/v1/conversations/{conv}/messages", headers=members[3].headers)
        assert r.status_code == 403 and r.json()["code"] == "not_member"
        assert outsider.messages(conv) == []
        # Adding them: their socket is told and starts receiving the conversation.
        r = await http.post(
            f"/v1/conversations/{conv}/members",
            json={"user_ids": [members[3].user_id]},
            headers=owner.headers,
        )
        assert r.status_code == 200, r.text
        await outsider.wait_for(lambda f: f["type"] == "conversation" and f["event"] == "added")
        ack = await socks[1].send_message("welcome", conversation_id=conv)
        got = await outsider.wait_for(lambda f: f["type"] == "message" and f["seq"] == ack["seq"])
        assert got["body"] == "welcome"
        # Rename, roles, removal, leave.
        r = await http.patch(
            f"/v1/conversations/{conv}", json={"title": "Team 2"}, headers=owner.headers
        )
        assert r.json()["title"] == "Team 2"
        r = await http.patch(
            f"/v1/conversations/{conv}", json={"title": "No"}, headers=members[0].headers
        )
        assert r.status_code == 403
        r = await http.put(
            f"/v1/conversations/{conv}/members/{members[0].user_id}/role",
            json={"role": "admin"},
            headers=owner.headers,
        )
        assert {m["user_id"]: m["role"] for m in r.json()["members"]}[members[0].user_id] == "admin"
        r = await http.delete(
            f"/v1/conversations/{conv}/members/{members[1].user_id}", headers=members[0].headers
        )
        assert r.status_code == 204
        await socks[2].wait_for(lambda f: f["type"] == "conversation" and f["event"] == "removed")
        err = await socks[2].send_message("still here?", conversation_id=conv)
        assert err["code"] == "not_member"
        r = await http.post(f"/v1/conversations/{conv}/leave", headers=members[2].headers)
        assert r.status_code == 204
        ack = await socks[0].send_message("after the changes", conversation_id=conv)
        await socks[1].wait_for(lambda f: f["type"] == "message" and f["seq"] == ack["seq"])
        await asyncio.sleep(0.5)
        assert not [m for m in socks[2].messages(conv) if m["seq"] >= ack["seq"]]
    finally:
        for s in socks:
            await s.close()


async def test_offline_user_catches_up(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    a, _ = await connect(gateway.ws_url, alice, cursors={})
    try:
        first = await a.send_message("m1", to_user_id=bob.user_id)
        conv = first["conversation_id"]
        b, _ = await connect(gateway.ws_url, bob, cursors={})
        await b.wait_messages(conv, 1)
        await b.close()
        # Bob is offline: Alice sends 30 more; a socket without cursors would miss them.
        for i in range(30):
            await a.send_message(f"m{i + 2}", conversation_id=conv)
        # Bob reconnects with his cursor and, while catching up, Alice keeps sending.
        sender = asyncio.create_task(_send_many(a, conv, 20))
        b, _ = await connect(gateway.ws_url, bob, cursors={conv: 1})
        await sender
        got = await b.wait_messages(conv, 50)
        assert [m["seq"] for m in got] == list(range(2, 52))
        # No duplicates: every seq arrived exactly once, and sync_done came in between.
        seqs = [m["seq"] for m in b.messages(conv)]
        assert len(seqs) == len(set(seqs))
        done = [f for f in b.pushed if f["type"] == "sync_done"]
        assert len(done) == 1 and done[0]["cursors"][str(conv)] >= 31
        await b.close()
    finally:
        await a.close()


async def _send_many(sock, conv: int, n: int) -> None:  # type: ignore[no-untyped-def]
    for i in range(n):
        await sock.send_message(f"live {i}", conversation_id=conv)


async def test_two_devices_of_one_user(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    phone, _ = await connect(gateway.ws_url, alice, cursors={}, device_id="phone")
    laptop, _ = await connect(
        gateway.ws_url, alice, cursors={}, device_id="laptop", token_in="query"
    )
    b, _ = await connect(gateway.ws_url, bob, cursors={})
    try:
        ack = await phone.send_message("from the phone", to_user_id=bob.user_id)
        conv = ack["conversation_id"]
        # The laptop sees its own user's message sent from the phone; Bob sees it too.
        [m] = await laptop.wait_messages(conv, 1)
        assert m["body"] == "from the phone" and m["sender_id"] == alice.user_id
        await b.wait_messages(conv, 1)
        reply = await b.send_message("to both devices", conversation_id=conv)
        for dev in (phone, laptop):
            got = await dev.wait_for(
                lambda f: f.get("seq") == reply["seq"] and f["type"] == "message"
            )
            assert got["body"] == "to both devices"
        # Reading on one device tells the other.
        await laptop.request({"type": "read", "conversation_id": conv, "seq": reply["seq"]})
        r = await phone.wait_for(lambda f: f["type"] == "receipt" and f["user_id"] == alice.user_id)
        assert r["read_seq"] == reply["seq"]
        # Presence: Bob can ask.
        p = await b.request({"type": "presence", "user_ids": [alice.user_id]})
        assert p["type"] == "presence" and p["online"] is True
    finally:
        for s in (phone, laptop, b):
            await s.close()


async def test_resend_with_same_client_id_stores_once(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    a, _ = await connect(gateway.ws_url, alice, cursors={})
    try:
        cmid = uuid.uuid4().hex
        first = await a.send_message("once", to_user_id=bob.user_id, client_msg_id=cmid)
        conv = first["conversation_id"]
        again = await asyncio.gather(
            *(a.send_message("once", conversation_id=conv, client_msg_id=cmid) for _ in range(5))
        )
        assert {r["seq"] for r in again} == {first["seq"]}
        assert all(r["duplicate"] for r in again)
        r = await http.post(
            "/v1/messages",
            json={"conversation_id": conv, "client_msg_id": cmid, "body": "once"},
            headers=alice.headers,
        )
        assert (
            r.status_code == 200
            and r.json()["duplicate"] is True
            and r.json()["seq"] == first["seq"]
        )
        r = await http.get(f"/v1/conversations/{conv}/messages", headers=alice.headers)
        assert [m["seq"] for m in r.json()["messages"]] == [first["seq"]]
        # A new id over REST is a new message.
        r = await http.post(
            "/v1/messages",
            json={"conversation_id": conv, "client_msg_id": uuid.uuid4().hex, "body": "two"},
            headers=alice.headers,
        )
        assert r.status_code == 201 and r.json()["seq"] == first["seq"] + 1
    finally:
        await a.close()


async def test_malformed_frames_get_error_frames(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    a, _ = await connect(gateway.ws_url, alice)
    try:
        await a.ws.send("this is not json")
        err = await a.wait_for(lambda f: f["type"] == "error")
        assert err["code"] == "bad_request"
        err = await a.request({"type": "send", "client_msg_id": "x", "body": "no target"})
        assert err["type"] == "error" and err["code"] == "validation_error"
        err = await a.request({"type": "warp", "speed": 9})
        assert err["code"] == "validation_error"
        err = await a.request(
            {
                "type": "send",
                "to_user_id": bob.user_id,
                "client_msg_id": "y",
                "kind": "json",
                "body": "not an object",
            }
        )
        assert err["code"] == "validation_error"
        big = "x" * (gateway.settings.max_frame_bytes + 10)
        await a.ws.send(json.dumps({"type": "ping", "id": "big", "pad": big}))
        err = await a.wait_for(lambda f: f["type"] == "error" and f["code"] == "too_large")
        err = await a.request(
            {
                "type": "send",
                "to_user_id": bob.user_id,
                "client_msg_id": "z",
                "body": "y" * (gateway.settings.max_body_bytes + 1),
            }
        )
        assert err["code"] == "too_large"
        err = await a.request(
            {"type": "send", "to_user_id": alice.user_id, "client_msg_id": "me", "body": "hi me"}
        )
        assert err["code"] == "bad_request"
        err = await a.request({"type": "hello", "protocol": 1})
        assert err["code"] == "bad_request"
        # The socket still works.
        pong = await a.request({"type": "ping"})
        assert pong["type"] == "pong"
        ack = await a.send_message("still fine", to_user_id=bob.user_id)
        assert ack["type"] == "ack"
    finally:
        await a.close()


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"type": "ping"}, 4400),
        ({"type": "hello", "protocol": 99}, 4426),
        ({"type": "hello", "protocol": 1, "token": "v1.bad.token"}, 4401),
        ({"type": "hello", "protocol": 1}, 4401),
    ],
)
async def test_handshake_refusals(
    gateway: GatewayInfo, first: dict[str, object], code: int
) -> None:
    async with websockets.connect(gateway.ws_url) as ws:
        await ws.send(json.dumps(first))
        err = json.loads(await ws.recv())
        assert err["type"] == "error"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == code


async def test_send_rate_limit(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    alice: Account = await make_account(http, "alice")
    bob = await make_account(http, "bob")
    a, _ = await connect(gateway.ws_url, alice)
    try:
        burst = gateway.settings.send_burst
        results = await asyncio.gather(
            *(a.send_message(f"m{i}", to_user_id=bob.user_id) for i in range(burst + 20))
        )
        limited = [r for r in results if r["type"] == "error"]
        assert limited and all(r["code"] == "rate_limited" for r in limited)
        assert all(r["details"]["retry_after_ms"] > 0 for r in limited)
        assert len([r for r in results if r["type"] == "ack"]) >= burst
    finally:
        await a.close()


async def test_presence_pushed_to_direct_peers(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice, bob = await make_account(http, "alice"), await make_account(http, "bob")
    a, _ = await connect(gateway.ws_url, alice)
    try:
        ack = await a.send_message("hi", to_user_id=bob.user_id)
        conv = ack["conversation_id"]
        b, _ = await connect(gateway.ws_url, bob)
        online = await a.wait_for(lambda f: f["type"] == "presence" and f["user_id"] == bob.user_id)
        assert online["online"] is True
        await b.close()
        offline = await a.wait_for(
            lambda f: f["type"] == "presence" and f["user_id"] == bob.user_id and not f["online"]
        )
        assert offline["online"] is False
        r = await http.get(
            "/v1/presence",
            params={"user_ids": f"{alice.user_id},{bob.user_id}"},
            headers=alice.headers,
        )
        assert r.json() == {"online": [alice.user_id]}
        # History over the socket, both directions.
        for i in range(4):
            await a.send_message(f"h{i}", conversation_id=conv)
        back = await a.request(
            {"type": "history", "conversation_id": conv, "before_seq": 4, "limit": 2}
        )
        assert back["type"] == "history_page" and [m["seq"] for m in back["messages"]] == [2, 3]
        assert back["has_more"] is True
        fwd = await a.request(
            {"type": "history", "conversation_id": conv, "after_seq": 3, "limit": 5}
        )
        assert [m["seq"] for m in fwd["messages"]] == [4, 5] and fwd["has_more"] is False
        # Typing into a conversation one does not belong to is refused.
        carol = await make_account(http, "carol")
        c, _ = await connect(gateway.ws_url, carol)
        err = await c.request({"type": "typing", "conversation_id": conv})
        assert err["type"] == "error" and err["code"] == "not_member"
        await c.close()
    finally:
        await a.close()
