"""A seeded WebSocket frame fuzzer against the real gateway: thousands of mutated frames (wrong
types, huge ints, lone surrogates, deep nesting, missing and extra fields, binary frames,
invalid UTF-8, oversize). After each one the socket must answer a ping; at the end no frame may
have been answered `internal_error` and the socket must still be open (issue 11)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest
from gwclient import connect, make_account
from websockets.asyncio.client import ClientConnection

from tests.support import GatewayInfo

pytestmark = pytest.mark.ray

SEED = 11
FRAMES = 2500
TIMEOUT_S = 20.0


def _values(rng: random.Random) -> list[Any]:
    """Odd values to put where a field's value should be."""
    depth = rng.choice([3, 50, 300])
    nested: Any = 1
    for _ in range(depth):
        nested = [nested] if rng.random() < 0.5 else {"a": nested}
    return [
        None,
        True,
        False,
        0,
        -1,
        1,
        2**31,
        2**63 - 1,
        2**63,
        -(2**63) - 1,
        10**40,
        1.5,
        -0.0,
        1e308,
        "",
        "x",
        "é",
        "\x00",
        "a" * rng.choice([65, 300, 5000]),
        [],
        [1, "a", None],
        {},
        {"x": 1},
        nested,
    ]


def _base_frames(conversation_id: int, peer_id: int) -> list[dict[str, Any]]:
    return [
        {"type": "ping"},
        {"type": "send", "conversation_id": conversation_id, "client_msg_id": "c", "body": "hi"},
        {"type": "send", "to_user_id": peer_id, "client_msg_id": "d", "kind": "json", "body": {}},
        {"type": "sync", "cursors": {str(conversation_id): 0}},
        {"type": "history", "conversation_id": conversation_id, "before_seq": 5, "limit": 3},
        {"type": "read", "conversation_id": conversation_id, "seq": 1},
        {"type": "typing", "conversation_id": conversation_id, "active": True},
        {"type": "presence", "user_ids": [peer_id]},
        {"type": "hello", "protocol": 1, "token": "x"},
    ]


def _mutate(rng: random.Random, base: dict[str, Any]) -> str | bytes:
    """One mutated frame, as the text or bytes to send."""
    frame = json.loads(json.dumps(base))
    frame["id"] = rng.choice([rng.randrange(10**6), f"f{rng.randrange(10**6)}", None])
    op = rng.randrange(12)
    keys = list(frame)
    if op == 0:  # a field gets an odd value
        frame[rng.choice(keys)] = rng.choice(_values(rng))
    elif op == 1:  # a field goes missing
        frame.pop(rng.choice(keys))
    elif op == 2:  # an unknown field
        frame[rng.choice(["extra", "Type", "ID", "\u00e9"])] = rng.choice(_values(rng))
    elif op == 3:  # a lone surrogate in a string (as a JSON escape: valid JSON text)
        text = json.dumps(frame)
        key = rng.choice(keys)
        surrogate = rng.choice(["\\ud800", "\\udfff", "\\ud83d"])
        return (
            text.replace(f'"{key}"', f'"{key}{surrogate}"', 1)
            if rng.random() < 0.3
            else (text[:-1] + f', "{key}": "{surrogate}"' + "}")
        )
    elif op == 4:  # binary frame: valid JSON, or invalid UTF-8
        raw = json.dumps(frame).encode()
        if rng.random() < 0.5:
            pos = rng.randrange(len(raw))
            raw = raw[:pos] + bytes([rng.choice([0x80, 0xC3, 0xFF, 0xED])]) + raw[pos:]
        return raw
    elif op == 5:  # truncated or garbled JSON
        text = json.dumps(frame)
        return text[: rng.randrange(len(text))] if rng.random() < 0.5 else text.replace(":", "=", 1)
    elif op == 6:  # oversize (above limits.max_frame_bytes, below the 16 MiB server limit)
        frame["pad"] = "x" * rng.choice([70_000, 300_000])
    elif op == 7:  # not an object at all
        return json.dumps(rng.choice([[frame], "ping", 42, None, True]))
    elif op == 8:  # deep nesting in place of a value
        depth = rng.choice([100, 1000, 20_000])
        frame[rng.choice(keys)] = None
        text = json.dumps(frame)
        return text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    elif op == 9:  # a wrong or odd type tag
        frame["type"] = rng.choice(["", "PING", "pong", "error", "hello_ok", 1, None, ["ping"]])
    elif op == 10:  # huge numbers written as JSON text (beyond what any int64 holds)
        text = json.dumps(frame)
        return text[:-1] + ', "conversation_id": ' + "9" * rng.choice([20, 400, 5000]) + "}"
    else:  # several fields at once
        for key in rng.sample(keys, k=min(len(keys), 2)):
            frame[key] = rng.choice(_values(rng))
    return json.dumps(frame)


async def _read_until_pong(ws: ClientConnection, ping_id: str, seen: list[dict[str, Any]]) -> None:
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        seen.append(frame)
        if frame.get("type") == "pong" and frame.get("id") == ping_id:
            return


async def test_mutated_frames_never_break_a_socket(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice = await make_account(http, "fuzz")
    bob = await make_account(http, "fuzzpeer")
    r = await http.post(
        "/v1/conversations",
        json={"title": "fuzz", "member_ids": [bob.user_id]},
        headers=alice.headers,
    )
    conv = r.json()["id"]
    sock, _ = await connect(gateway.ws_url, alice)
    # Raw reads from here on: stop the helper's reader.
    assert sock._reader is not None
    sock._reader.cancel()
    ws = sock.ws
    rng = random.Random(SEED)
    bases = _base_frames(conv, bob.user_id)
    seen: list[dict[str, Any]] = []
    for i in range(FRAMES):
        data = _mutate(rng, rng.choice(bases))
        await ws.send(data)
        ping_id = f"p{i}"
        await ws.send(json.dumps({"type": "ping", "id": ping_id}))
        await _read_until_pong(ws, ping_id, seen)
    # Answers of frames handled in tasks (send, history, ...) may trail their pong.
    await ws.send(json.dumps({"type": "ping", "id": "last"}))
    await _read_until_pong(ws, "last", seen)
    await asyncio.sleep(1.0)
    await ws.send(json.dumps({"type": "ping", "id": "final"}))
    await _read_until_pong(ws, "final", seen)
    errors = [f for f in seen if f.get("type") == "error"]
    internal = [f for f in errors if f.get("code") == "internal_error"]
    assert not internal, internal[:5]
    codes = {f["code"] for f in errors}
    assert codes <= {
        "bad_request",
        "validation_error",
        "too_large",
        "not_member",
        "not_found",
        "forbidden",
        "rate_limited",
        "conflict",
    }, codes
    # The fuzzer did reach the deeper paths, not only the parser.
    assert {"bad_request", "validation_error", "too_large"} <= codes
    assert ws.close_code is None
    await ws.close()
