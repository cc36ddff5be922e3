"""The edge answers bad input with a 4xx problem JSON or an error frame, never a 500 nor a
dropped socket (issue 11): int64 bounds, non-ASCII tokens, lone surrogates, deep nesting,
request limits before parsing, plain-English messages, problem JSON in the OpenAPI."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from gwclient import Account, connect, make_account

from tests.support import GatewayInfo

PROBLEM = "application/problem+json"
BIG = 2**63  # one above the largest SQL BIGINT

pytestmark = pytest.mark.ray


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["code"] and body["detail"]
    return body


async def test_ids_and_seqs_beyond_int64_are_422_not_500(http: httpx.AsyncClient) -> None:
    alice = await make_account(http, "big")
    h = alice.headers
    r = await http.post("/v1/conversations", json={"title": "g"}, headers=h)
    conv = r.json()["id"]
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/conversations/{BIG}", {}),
        ("GET", "/v1/conversations/0", {}),
        ("GET", "/v1/conversations/-1", {}),
        ("PATCH", f"/v1/conversations/{BIG}", {"json": {"title": "x"}}),
        ("GET", f"/v1/users/{BIG}", {}),
        ("GET", "/v1/users/0", {}),
        ("GET", f"/v1/conversations/{conv}/messages", {"params": {"after_seq": BIG}}),
        ("GET", f"/v1/conversations/{conv}/messages", {"params": {"before_seq": BIG}}),
        ("POST", f"/v1/conversations/{conv}/read", {"json": {"seq": BIG}}),
        ("POST", f"/v1/conversations/{conv}/members", {"json": {"user_ids": [BIG]}}),
        ("DELETE", f"/v1/conversations/{conv}/members/{BIG}", {}),
        ("PUT", f"/v1/conversations/{conv}/members/{BIG}/role", {"json": {"role": "admin"}}),
        ("POST", "/v1/conversations/direct", {"json": {"user_id": BIG}}),
        ("POST", "/v1/conversations", {"json": {"title": "g", "member_ids": [BIG]}}),
        (
            "POST",
            "/v1/messages",
            {"json": {"conversation_id": BIG, "client_msg_id": "m", "body": "hi"}},
        ),
        ("POST", "/v1/messages", {"json": {"to_user_id": BIG, "client_msg_id": "m", "body": "x"}}),
        ("GET", "/v1/users", {"params": {"ids": str(BIG)}}),
        ("GET", "/v1/presence", {"params": {"user_ids": str(BIG)}}),
    ]
    for method, path, kwargs in requests:
        r = await http.request(method, path, headers=h, **kwargs)
        body = _problem(r, 422)
        assert body["code"] == "validation_error", (path, body)


async def test_ws_frames_beyond_int64_get_error_frames(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice = await make_account(http, "bigws")
    sock, _ = await connect(gateway.ws_url, alice)
    try:
        frames: list[dict[str, Any]] = [
            {"type": "history", "conversation_id": BIG},
            {"type": "history", "conversation_id": 0},
            {"type": "history", "conversation_id": 1, "after_seq": BIG},
            {"type": "sync", "cursors": {str(BIG): 0}},
            {"type": "sync", "cursors": {"1": BIG}},
            {"type": "send", "conversation_id": BIG, "client_msg_id": "m", "body": "x"},
            {"type": "send", "to_user_id": BIG, "client_msg_id": "m", "body": "x"},
            {"type": "read", "conversation_id": 1, "seq": BIG},
            {"type": "typing", "conversation_id": BIG},
            {"type": "presence", "user_ids": [BIG]},
        ]
        for frame in frames:
            answer = await sock.request(frame)
            assert answer["type"] == "error", (frame, answer)
            assert answer["code"] == "validation_error", (frame, answer)
        # An integer request id too big for the wire is refused, and the socket still answers.
        await sock.ws.send(json.dumps({"type": "ping", "id": BIG}))
        pong = await sock.request({"type": "ping"})
        assert pong["type"] == "pong"
    finally:
        await sock.close()
    assert sock.close_code in (None, 1000)


async def test_non_ascii_token_signatures_are_401(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    for header in ("Bearer v1.abc.\xe9", "Bearer v1.eyJzdWIiOjF9.\xe9\xe9"):
        r = await http.get("/v1/users/me", headers={"Authorization": header.encode("latin-1")})
        assert _problem(r, 401)["code"] == "unauthenticated"
    for token in ("abc.é", "é.abc", "v1.abc.\xe9"):
        r = await http.post("/v1/auth/refresh", json={"refresh_token": token})
        assert _problem(r, 401)["code"] == "unauthenticated", token
    # A lone surrogate is not even a string JSON can carry: refused as invalid input.
    r = await http.post(
        "/v1/auth/refresh",
        content=b'{"refresh_token": "abc.\\udc80"}',
        headers={"content-type": "application/json"},
    )
    assert _problem(r, 422)["code"] == "validation_error"
    # Over WS: an error frame, then close 4401 (not a dropped socket).
    async with websockets.connect(gateway.ws_url) as ws:
        await ws.send(json.dumps({"type": "hello", "id": 1, "token": "v1.abc.é"}))
        frame = json.loads(await ws.recv())
        assert frame["type"] == "error" and frame["code"] == "unauthenticated"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert ws.close_code == 4401


async def test_a_lone_surrogate_or_a_deep_frame_gets_an_error_frame(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    alice = await make_account(http, "surr")
    sock, _ = await connect(gateway.ws_url, alice)
    try:
        for raw in (
            '{"type":"ping","id":"\\ud800"}',
            '{"type":"\\udfff"}',
            '{"type":"send","conversation_id":1,"client_msg_id":"\\ud800","body":"x"}',
            "[" * 100_00 + "]" * 100_00,
            '{"type":"send","conversation_id":1,"client_msg_id":"a","body":' + "[" * 3000,
            '{"type":"ping","id":' + "9" * 5000 + "}",
        ):
            await sock.ws.send(raw)
            error = await sock.wait_for(lambda f: f.get("type") == "error")
            sock.pushed.clear()
            assert error["code"] in ("bad_request", "validation_error"), error
            pong = await sock.request({"type": "ping"})
            assert pong["type"] == "pong"
        # Binary frames with invalid UTF-8 are read as text with replacement characters.
        await sock.ws.send(b"\xff\xfe{\x80")
        error = await sock.wait_for(lambda f: f.get("type") == "error")
        assert error["code"] == "bad_request"
    finally:
        await sock.close()
    assert not sock.pushed or all(f["type"] == "error" for f in sock.pushed)


async def test_a_text_frame_of_invalid_utf8_closes_1007(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    # The one bad frame that may close a socket (RFC 6455 8.1, the WebSocket layer's own
    # rule): documented in docs/protocol.md, and a close frame, never a silent drop.
    alice = await make_account(http, "utf8")
    sock, _ = await connect(gateway.ws_url, alice)
    await sock.ws.send(b'{"type":"ping","id":"\xff"}', text=True)
    await asyncio.wait_for(sock.closed.wait(), 20.0)
    assert sock.close_code == 1007


async def test_a_bad_hello_closes_4400_with_an_error_frame(gateway: GatewayInfo) -> None:
    for raw in (
        '{"type":"ping","id":"\\ud800"}',
        "[" * 5000,
        '{"type":"hello","protocol":' + "9" * 30 + "}",
    ):
        async with websockets.connect(gateway.ws_url) as ws:
            await ws.send(raw)
            frame = json.loads(await ws.recv())
            assert frame["type"] == "error", frame
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4400, raw[:40]


async def test_messages_are_plain_english(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    r = await http.post(
        "/v1/auth/register", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert _problem(r, 422)["detail"] == "the body is not valid JSON"
    alice = await make_account(http, "eng")
    sock, _ = await connect(gateway.ws_url, alice)
    try:
        answer = await sock.request({"type": "nope"})
        assert answer["message"].startswith("unknown frame type 'nope'; expected one of hello,")
        answer = await sock.request({"kind": "x"})
        assert answer["message"].startswith("the frame has no 'type'; expected one of")
        await sock.ws.send("{not json")
        error = await sock.wait_for(lambda f: f.get("type") == "error")
        assert error["message"].startswith("the frame is not valid JSON")
    finally:
        await sock.close()


async def _raw_http(gateway: GatewayInfo, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a raw request (headers, then a little body) and read the answer's status and
    body: the server must answer without waiting for the rest of a huge body."""
    url = urlsplit(gateway.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20.0)
        status_line, _, header_text = answer.partition(b"\r\n")
        headers = dict(
            line.split(b": ", 1) for line in header_text.strip().split(b"\r\n") if b": " in line
        )
        length = int({k.lower(): v for k, v in headers.items()}[b"content-length"])
        content = await asyncio.wait_for(reader.readexactly(length), 20.0)
    finally:
        writer.close()
    return int(status_line.split(b" ", 2)[1]), content


async def test_request_bodies_are_capped_before_parsing(
    http: httpx.AsyncClient, gateway: GatewayInfo
) -> None:
    path = urlsplit(gateway.url).path
    # A declared 50 MB body is refused from its headers alone.
    head = (
        f"POST {path}/v1/auth/register HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    ).encode()
    status, body = await _raw_http(gateway, head, b'{"username": "')
    assert status == 413 and json.loads(body)["code"] == "too_large"
    # A chunked body is read only up to the cap.
    chunk = b"a" * 32_768
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3))
    head = (
        f"POST {path}/v1/auth/register HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    status, body = await _raw_http(gateway, head, chunks)
    assert status == 413 and json.loads(body)["code"] == "too_large"
    # And through an ordinary client.
    r = await http.post("/v1/auth/login", content=b"{" + b" " * 70_000 + b"}")
    assert _problem(r, 413)["code"] == "too_large"
    # Under the cap, all is as before.
    r = await http.post("/v1/auth/login", json={"username": "nobody-here", "password": "x"})
    assert r.status_code == 401


async def test_long_urls_and_headers_are_problem_json(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/users/me", params={"x": "a" * 9000})
    assert _problem(r, 414)["code"] == "too_large"
    r = await http.get("/v1/users/me", headers={"X-Big": "a" * 13_000})
    assert _problem(r, 431)["code"] == "too_large"


async def test_20_kib_urls_and_headers_pass_haproxy_and_get_problem_json(
    http: httpx.AsyncClient,
) -> None:
    # Over Serve's default haproxy buffer (16 KiB: haproxy's own HTML 400), under ours.
    r = await http.get("/v1/users/me", params={"x": "a" * 20 * 1024})
    assert _problem(r, 414)["code"] == "too_large"
    r = await http.get("/v1/users/me", headers={"X-Big": "a" * 20 * 1024})
    assert _problem(r, 431)["code"] == "too_large"


async def test_login_is_throttled_per_account(http: httpx.AsyncClient) -> None:
    victim = await make_account(http, "victim")
    limit = 10  # settings.login_failures_per_account
    for _ in range(limit):
        r = await http.post(
            "/v1/auth/login", json={"username": victim.username, "password": "guess-wrong"}
        )
        assert r.status_code == 401
    r = await http.post(
        "/v1/auth/login", json={"username": victim.username, "password": "guess-again"}
    )
    body = _problem(r, 429)
    assert body["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 300
    # Locked even with the right password (a brute force cannot tell it found it) ...
    r = await http.post(
        "/v1/auth/login", json={"username": victim.username, "password": "correct horse battery"}
    )
    assert r.status_code == 429
    # ... while other accounts log in as usual.
    other = await make_account(http, "bystander")
    assert other.access_token


async def test_openapi_declares_problem_json_and_bounds(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    ops = {
        (path, method): op for path, item in spec["paths"].items() for method, op in item.items()
    }
    for (path, method), op in ops.items():
        for status in ("400", "413", "414", "422", "431"):
            content = op["responses"][status]["content"]
            assert list(content) == [PROBLEM], (path, method, status)
    me = ops[("/v1/users/me", "get")]["responses"]
    assert list(me["401"]["content"]) == [PROBLEM]
    login = ops[("/v1/auth/login", "post")]["responses"]
    assert {"401", "429"} <= set(login)
    get_conv = ops[("/v1/conversations/{conversation_id}", "get")]
    (param,) = [p for p in get_conv["parameters"] if p["name"] == "conversation_id"]
    assert param["schema"]["minimum"] == 1 and param["schema"]["maximum"] == 2**63 - 1


async def test_refresh_reuse_revokes_the_whole_family(http: httpx.AsyncClient) -> None:
    carol = await make_account(http, "carol")
    # A second login of the same user: another family, which must survive.
    r = await http.post(
        "/v1/auth/login", json={"username": carol.username, "password": "correct horse battery"}
    )
    laptop = Account(
        carol.user_id, carol.username, r.json()["access_token"], r.json()["refresh_token"]
    )
    r = await http.post("/v1/auth/refresh", json={"refresh_token": carol.refresh_token})
    assert r.status_code == 200
    rotated = r.json()
    # The first token comes back (a thief's copy): refused, and its family dies with it.
    r = await http.post("/v1/auth/refresh", json={"refresh_token": carol.refresh_token})
    assert _problem(r, 401)["detail"].startswith("the refresh token was already used")
    r = await http.post("/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert r.status_code == 401
    headers = {"Authorization": f"Bearer {rotated['access_token']}"}
    for _ in range(100):
        if (await http.get("/v1/users/me", headers=headers)).status_code == 401:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the rotated session's access token still works")
    # The other login is untouched.
    assert (await http.get("/v1/users/me", headers=laptop.headers)).status_code == 200
    r = await http.post("/v1/auth/refresh", json={"refresh_token": laptop.refresh_token})
    assert r.status_code == 200
