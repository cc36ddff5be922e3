"""ChatAI end to end: bots through the real gateway, real Ray hosts, real Serve embedder, real
SQL and Redis, real WebSocket clients. One FAQ bot setup per test (unique names)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from typing import Any

import httpx
import pytest
from gwclient import Account, Socket, connect, make_account

from storage import Database
from storage.bots import BotStore
from tests.fake_openai import FakeOpenAI
from tests.support import GatewayInfo

pytestmark = [pytest.mark.ray]

FAQ = """# Acme help centre

## How do I reset my password?
Open Settings, choose Security and press Reset password. We email you a link that is valid
for one hour.

## What are your opening hours?
Our shops are open from 9:00 to 18:00, Monday to Saturday. On Sundays we are closed.

## Can I return an item?
Yes: within 30 days, with the receipt, in any shop or by post.

## How much is shipping?
Shipping is free above 50 euros; below that it costs 4.90 euros.
"""


async def _bot(
    http: httpx.AsyncClient, owner: Account, *, faq: bool = True, **fields: Any
) -> dict[str, Any]:
    body = {"username": f"helper-{uuid.uuid4().hex[:8]}", "display_name": "Helper", **fields}
    r = await http.post("/v1/bots", json=body, headers=owner.headers)
    assert r.status_code == 201, r.text
    bot = r.json()
    if faq:
        r = await http.put(
            f"/v1/bots/{bot['id']}/documents/faq.md",
            content=FAQ.encode(),
            headers={**owner.headers, "Content-Type": "text/markdown"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["chunks"] == 4
    return dict(bot)


async def _customer_of_provider_bot(
    http: httpx.AsyncClient, gateway: GatewayInfo, fake: FakeOpenAI
) -> tuple[Account, dict[str, Any], Socket]:
    """A shop's bot on the fake provider, and a customer connected to talk to it."""
    owner = await make_account(http, "shop")
    customer = await make_account(http, "cust")
    bot = await _bot(
        http, owner, provider={"kind": "openai", "url": fake.url, "model": "fake", "api_key": "k"}
    )
    sock, _ = await connect(gateway.ws_url, customer)
    return customer, bot, sock


def _final(sock: Socket, conv: int, seq: int | None = None) -> Any:
    return lambda f: (
        f.get("type") == "message_delta"
        and f["conversation_id"] == conv
        and f["final"]
        and (seq is None or f["seq"] == seq)
    )


async def _log(http: httpx.AsyncClient, who: Account, conv: int) -> list[dict[str, Any]]:
    r = await http.get(
        f"/v1/conversations/{conv}/messages",
        params={"after_seq": 0, "limit": 500},
        headers=who.headers,
    )
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


def _bot_messages(log: list[dict[str, Any]], bot: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in log if m["sender_id"] == bot["user_id"]]


async def _ask(sock: Socket, conv: int, text: str) -> int:
    ack = await sock.send_message(text, conversation_id=conv)
    assert ack["type"] == "ack", ack
    return int(ack["seq"])


async def test_dm_is_answered_from_the_faq_streamed_and_cited(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    owner = await make_account(http, "shop")
    customer = await make_account(http, "cust")
    bot = await _bot(http, owner)
    sock, _ = await connect(gateway.ws_url, customer)
    try:
        ack = await sock.send_message(
            "I forgot my password, how can I change it?", to_user_id=bot["user_id"]
        )
        conv, trigger = ack["conversation_id"], ack["seq"]
        final = await sock.wait_for(_final(sock, conv), timeout=60)
        deltas = [
            f
            for f in sock.pushed
            if f.get("type") == "message_delta" and f["conversation_id"] == conv
        ]
    finally:
        await sock.close()
    body = final["body"]
    assert "Reset password" in body["text"]
    assert body["bot"]["sources"][0]["heading"] == "How do I reset my password?"
    assert body["bot"]["sources"][0]["document"] == "faq.md"
    assert all(s["heading"] != "How much is shipping?" for s in body["bot"]["sources"])
    # Streamed: several deltas for one seq, each text extending the one before, final last.
    assert len(deltas) >= 3
    assert {d["seq"] for d in deltas} == {final["seq"]}
    texts = [d["text"] for d in deltas]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert [d["final"] for d in deltas] == [False] * (len(deltas) - 1) + [True]
    # What history returns is the final body, under the trigger-derived id.
    mine = _bot_messages(await _log(http, customer, conv), bot)
    assert len(mine) == 1
    assert mine[0]["seq"] == final["seq"] > trigger
    assert mine[0]["client_msg_id"] == f"bot:{conv}:{trigger}"
    assert mine[0]["body"] == body
    r = await http.get(f"/v1/bots/{bot['id']}", headers=owner.headers)
    assert r.json()["tokens_used"] > 0


async def test_group_answers_only_when_mentioned(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    owner = await make_account(http, "shop")
    customer = await make_account(http, "cust")
    bot = await _bot(http, owner)
    r = await http.post(
        "/v1/conversations",
        json={"title": "help", "member_ids": [customer.user_id, bot["user_id"]]},
        headers=owner.headers,
    )
    conv = r.json()["id"]
    sock, _ = await connect(gateway.ws_url, customer)
    try:
        quiet = await _ask(sock, conv, "what are your opening hours?")
        asked = await _ask(sock, conv, f"@{bot['username']} what are your opening hours?")
        final = await sock.wait_for(_final(sock, conv), timeout=60)
    finally:
        await sock.close()
    assert "9:00 to 18:00" in final["body"]["text"]
    mine = _bot_messages(await _log(http, owner, conv), bot)
    # The turn without a mention came first in the bot's mailbox and logged nothing.
    assert [m["client_msg_id"] for m in mine] == [f"bot:{conv}:{asked}"]
    assert quiet < asked


async def test_bots_never_answer_bots_and_turns_are_limited(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    owner = await make_account(http, "shop")
    customer = await make_account(http, "cust")
    a = await _bot(http, owner, answer_all=True)
    b = await _bot(http, owner, answer_all=True)
    r = await http.post(
        "/v1/conversations",
        json={"title": "two bots", "member_ids": [customer.user_id, a["user_id"], b["user_id"]]},
        headers=owner.headers,
    )
    conv = r.json()["id"]
    limit = gateway.settings.bot_turns_per_minute
    sock, _ = await connect(gateway.ws_url, customer)
    try:
        seqs = [await _ask(sock, conv, f"can I return an item? ({i})") for i in range(limit + 3)]
        await sock.wait_for(
            lambda f: f.get("type") == "message_delta" and f["final"]
            and f["body"]["text"].startswith("Yes: within 30 days"),
            timeout=60,
        )
        # Past the limit the turns are handled (and dropped) in order; wait until the last
        # one has been seen by asking for the bot state, which queues behind it (a 503 is
        # the call's own timeout while turns are still queued: ask again).
        deadline = asyncio.get_running_loop().time() + 180.0
        while asyncio.get_running_loop().time() < deadline:
            log = await _log(http, owner, conv)
            answers = _bot_messages(log, a) + _bot_messages(log, b)
            if len(answers) >= limit and all(
                (m["body"].get("bot") or {}).get("final") for m in answers
            ):
                break
            await asyncio.sleep(1.0)
        while True:
            r = await http.get(f"/v1/conversations/{conv}/bot", headers=customer.headers)
            if r.status_code != 503 or asyncio.get_running_loop().time() > deadline:
                break
        assert r.status_code == 200, r.text
        await asyncio.sleep(1.0)
        log = await _log(http, owner, conv)
    finally:
        await sock.close()
    answers = _bot_messages(log, a) + _bot_messages(log, b)
    # One answer per customer message (from the first bot), none to the other bot's words,
    # and no more than the per-minute limit.
    assert len(answers) == limit
    assert {m["sender_id"] for m in answers} == {min(a["user_id"], b["user_id"])}
    assert {m["client_msg_id"] for m in answers} == {f"bot:{conv}:{s}" for s in seqs[:limit]}


async def test_budget_exhausted_says_so_once(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    owner = await make_account(http, "shop")
    customer = await make_account(http, "cust")
    bot = await _bot(http, owner, token_budget=1)
    sock, _ = await connect(gateway.ws_url, customer)
    try:
        ack = await sock.send_message("how much is shipping?", to_user_id=bot["user_id"])
        conv = ack["conversation_id"]
        await sock.wait_for(_final(sock, conv), timeout=60)
        second = await _ask(sock, conv, "and can I return an item?")
        notice = await sock.wait_for(
            lambda f: f.get("type") == "message" and f["conversation_id"] == conv
            and f["seq"] > second and f["sender_id"] == bot["user_id"],
            timeout=60,
        )
        third = await _ask(sock, conv, "hello?")
        r = await http.get(f"/v1/conversations/{conv}/bot", headers=customer.headers)
        assert r.status_code == 200
        log = await _log(http, customer, conv)
    finally:
        await sock.close()
    assert notice["body"]["bot"]["error"] == "budget_exhausted"
    assert "budget" in notice["body"]["text"]
    mine = _bot_messages(log, bot)
    assert len(mine) == 2  # the first answer and one notice; silence after
    assert all(m["seq"] < third for m in mine)


async def test_handoff_to_an_agent_and_hand_back(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    owner = await make_account(http, "shop")
    agent = await make_account(http, "agent")
    customer = await make_account(http, "cust")
    stranger = await make_account(http, "stranger")
    r = await http.post(
        "/v1/conversations",
        json={"title": "agents", "member_ids": [agent.user_id]},
        headers=owner.headers,
    )
    team = r.json()["id"]
    bot = await _bot(http, owner, support_group_id=team)
    agent_sock, _ = await connect(gateway.ws_url, agent)
    sock, _ = await connect(gateway.ws_url, customer)
    try:
        ack = await sock.send_message("please let me talk to a human", to_user_id=bot["user_id"])
        conv = ack["conversation_id"]
        notice = await sock.wait_for(
            lambda f: f.get("type") == "message" and f["conversation_id"] == conv
            and f["sender_id"] == bot["user_id"],
            timeout=60,
        )
        support = notice["body"]["bot"]["handoff"]["support_conversation_id"]
        assert notice["body"]["bot"]["handoff"]["agent_id"] in (agent.user_id, owner.user_id)
        # The agent is told: added to the support conversation, with the customer's words.
        await agent_sock.wait_for(
            lambda f: f.get("type") == "conversation" and f["conversation_id"] == support
            and f["event"] == "added",
            timeout=30,
        )
        r = await http.get(f"/v1/conversations/{support}", headers=customer.headers)
        members = {m["user_id"] for m in r.json()["members"]}
        assert {customer.user_id, bot["user_id"]} <= members and len(members) == 3
        r = await http.get(f"/v1/conversations/{conv}/bot", headers=customer.headers)
        assert r.json()["handed_off"] is True
        silent = await _ask(sock, conv, "what are your opening hours?")
        # Only an agent of the support group hands back.
        r = await http.post(f"/v1/conversations/{conv}/handback", headers=stranger.headers)
        assert r.status_code == 403, r.text
        helper = agent if agent.user_id in members else owner
        r = await http.post(f"/v1/conversations/{support}/handback", headers=helper.headers)
        assert r.status_code == 200, r.text
        assert r.json()["handed_off"] is False
        r = await http.get(f"/v1/conversations/{conv}/bot", headers=customer.headers)
        assert r.json()["handed_off"] is False
        again = await _ask(sock, conv, "what are your opening hours?")
        final = await sock.wait_for(_final(sock, conv), timeout=60)
        log = await _log(http, customer, conv)
        support_log = await _log(http, customer, support)
    finally:
        await sock.close()
        await agent_sock.close()
    assert "9:00 to 18:00" in final["body"]["text"]
    ids = {m["client_msg_id"] for m in _bot_messages(log, bot)}
    assert f"bot:{conv}:{again}" in ids
    assert f"bot:{conv}:{silent}" not in ids  # silent while handed off
    assert any("talk to a human" in str(m["body"]) for m in support_log)


def _pid_of(name: str, namespace: str) -> int:
    import ray

    handle = ray.get_actor(name, namespace=namespace)
    return int(ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30))


@pytest.mark.slow
async def test_host_killed_mid_answer_gives_one_answer(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    from actors.cluster import current_map

    reply = "Our shops open at nine. " * 12
    fake = await FakeOpenAI(reply=reply, pieces=24, delay_s=0.25).start()
    owner = await make_account(http, "shop")
    bot = await _bot(
        http, owner, provider={"kind": "openai", "url": fake.url, "model": "fake", "api_key": "k"}
    )
    customer = await make_account(http, "cust")
    r = await http.post(
        "/v1/conversations/direct", json={"user_id": bot["user_id"]}, headers=customer.headers
    )
    conv = r.json()["id"]
    shard_map = await current_map(gateway.settings)
    assert shard_map is not None
    # The bot entity's host; on two hosts it is also the conversation's (the shard of
    # "bot:N" and "conv:N" agree), so the turn's sender dies too and the pending-turn sweep
    # of the other host resends it.
    victim = shard_map.owner(f"bot:{conv}")
    sock, _ = await connect(gateway.ws_url, customer)
    try:
        trigger = await _ask(sock, conv, "when do you open?")
        await sock.wait_for(
            lambda f: f.get("type") == "message_delta" and f["conversation_id"] == conv,
            timeout=60,
        )
        os.kill(_pid_of(victim, gateway.settings.namespace), signal.SIGKILL)
        final = await sock.wait_for(_final(sock, conv), timeout=120)
        await asyncio.sleep(2.0)
        log = await _log(http, customer, conv)
    finally:
        await sock.close()
        await fake.stop()
    assert final["body"]["text"] == reply
    mine = _bot_messages(log, bot)
    assert [m["client_msg_id"] for m in mine] == [f"bot:{conv}:{trigger}"]
    assert mine[0]["body"]["text"] == reply
    assert len(fake.requests) == 2  # the killed attempt and the one after the restart


async def test_a_failing_turn_is_retried_a_few_times_then_says_so(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    from actors.bot import TURN_ATTEMPTS, TURN_FAILED_TEXT
    from actors.bot_link import TURN_RESEND_AFTER_S

    # A provider whose stream is garbage: the turn itself fails (not just the provider call).
    fake = await FakeOpenAI(reply="Back to normal.", garble_first=1000).start()
    customer, bot, sock = await _customer_of_provider_bot(http, gateway, fake)
    try:
        ack = await sock.send_message("when do you open?", to_user_id=bot["user_id"])
        conv, trigger = ack["conversation_id"], ack["seq"]
        # Resent with backoff (2 + 6 + 18 s, swept every 3 s), then one error message.
        final = await sock.wait_for(_final(sock, conv), timeout=120)
        assert final["body"]["bot"]["error"] == "turn_failed", final
        assert final["body"]["text"] == TURN_FAILED_TEXT
        assert len(fake.requests) == TURN_ATTEMPTS
        # And no more: a resend would come within TURN_RESEND_AFTER_S.
        await asyncio.sleep(TURN_RESEND_AFTER_S + 1.0)
        assert len(fake.requests) == TURN_ATTEMPTS
        # The bot still answers the next message once the provider is well.
        fake.garble_first = 0
        second = await _ask(sock, conv, "and on Sundays?")
        answer = await sock.wait_for(
            lambda f: _final(sock, conv)(f) and f["seq"] > second, timeout=60
        )
        log = await _log(http, customer, conv)
    finally:
        await sock.close()
        await fake.stop()
    assert answer["body"]["text"] == "Back to normal."
    mine = _bot_messages(log, bot)
    # One message per trigger: the failed one's placeholder became the error message.
    assert [m["client_msg_id"] for m in mine] == [f"bot:{conv}:{trigger}", f"bot:{conv}:{second}"]
    assert mine[0]["body"]["bot"] == {"final": True, "bot_id": bot["id"], "error": "turn_failed"}
    assert mine[0]["body"]["text"] == TURN_FAILED_TEXT


async def test_the_provider_key_is_stored_sealed_and_sent_in_clear(
    http: httpx.AsyncClient, gateway: GatewayInfo, db: Database
) -> None:
    secret = "sk-test-" + uuid.uuid4().hex
    fake = await FakeOpenAI(reply="We open at nine.").start()
    owner = await make_account(http, "shop")
    customer = await make_account(http, "cust")
    provider = {"kind": "openai", "url": fake.url, "model": "fake", "api_key": secret}
    bot = await _bot(http, owner, provider=provider)
    assert secret not in json.dumps(bot)
    sock, _ = await connect(gateway.ws_url, customer)
    try:
        ack = await sock.send_message("when do you open?", to_user_id=bot["user_id"])
        final = await sock.wait_for(_final(sock, ack["conversation_id"]), timeout=60)
    finally:
        await sock.close()
        await fake.stop()
    assert final["body"]["text"] == "We open at nine."
    assert fake.auth == [f"Bearer {secret}"]  # opened for the call
    stored = await BotStore(db).get_bot(bot["id"])
    assert stored is not None
    assert "api_key" not in stored.provider and stored.provider["api_key_sealed"]
    assert secret not in json.dumps(stored.provider)  # the row never holds it in clear


async def test_a_provider_that_always_fails_answers_once(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    fake = await FakeOpenAI(fail_first=1000).start()
    customer, bot, sock = await _customer_of_provider_bot(http, gateway, fake)
    try:
        ack = await sock.send_message("when do you open?", to_user_id=bot["user_id"])
        conv = ack["conversation_id"]
        final = await sock.wait_for(_final(sock, conv), timeout=90)
        await asyncio.sleep(4.0)  # more than a sweep
        log = await _log(http, customer, conv)
    finally:
        await sock.close()
        await fake.stop()
    assert final["body"]["bot"]["error"] == "provider"
    assert len(fake.requests) == 2  # the attempt and its one retry (run_with_retry)
    assert len(_bot_messages(log, bot)) == 1


async def test_bad_bot_input_is_a_clear_error(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    owner = await make_account(http, "shop")
    other = await make_account(http, "other")
    r = await http.post(
        "/v1/bots", json={"username": "x", "provider": {"kind": "openai"}}, headers=owner.headers
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem")
    bot = await _bot(http, owner, faq=False)
    r = await http.put(
        f"/v1/bots/{bot['id']}/documents/a.bin",
        content=b"\x00\x01",
        headers={**other.headers, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 404  # not their bot
    r = await http.put(
        f"/v1/bots/{bot['id']}/documents/a.bin",
        content=b"\x00\x01",
        headers={**owner.headers, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 400 and r.json()["code"] == "unsupported"
    r = await http.post("/v1/auth/login", json={"username": bot["username"], "password": "x" * 12})
    assert r.status_code == 401  # bots never log in
