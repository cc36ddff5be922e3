"""The authorization matrix as one table (issue 11): who may do what to a group, over REST and
over the socket, and which tokens open nothing. Each row is an actor, a request, and the
answer it must get; a row that passes by accident (a 200 where a 403 belongs) fails."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import websockets
from gwclient import Account, connect, make_account

from serve.tokens import TokenSigner
from tests.support import GatewayInfo

pytestmark = pytest.mark.ray

PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Row:
    """One cell of the matrix: ``who`` does ``method path`` and gets ``status``/``code``."""

    who: str
    method: str
    path: str
    body: dict[str, Any] | None
    status: int
    code: str | None


def _rows() -> list[Row]:
    g = "/v1/conversations/{conv}"
    outsider_rows = [
        ("GET", g, None),
        ("GET", g + "/messages", None),
        ("POST", "/v1/messages", {"conversation_id": "{conv}", "client_msg_id": "x", "body": "hi"}),
        ("POST", g + "/read", {"seq": 0}),
        ("PATCH", g, {"title": "mine now"}),
        ("POST", g + "/members", {"user_ids": ["{outsider}"]}),
        ("DELETE", g + "/members/{member}", None),
        ("PUT", g + "/members/{outsider}/role", {"role": "owner"}),
    ]
    rows: list[Row] = []
    for who in ("outsider", "removed"):
        rows += [Row(who, m, p, b, 403, "not_member") for m, p, b in outsider_rows]
    # Role escalation: a plain member and an admin try what only their betters may do.
    rows += [
        Row("member", "PATCH", g, {"title": "renamed"}, 403, "forbidden"),
        Row("member", "POST", g + "/members", {"user_ids": ["{outsider}"]}, 403, "forbidden"),
        Row("member", "PUT", g + "/members/{member}/role", {"role": "admin"}, 403, "forbidden"),
        Row("member", "PUT", g + "/members/{member}/role", {"role": "owner"}, 403, "forbidden"),
        Row("member", "DELETE", g + "/members/{admin}", None, 403, "forbidden"),
        Row("member", "DELETE", g + "/members/{owner}", None, 403, "forbidden"),
        Row("admin", "PUT", g + "/members/{admin}/role", {"role": "owner"}, 403, "forbidden"),
        Row("admin", "DELETE", g + "/members/{owner}", None, 403, "forbidden"),
        # What each may do (the matrix would pass vacuously if every answer were 403).
        Row("member", "GET", g, None, 200, None),
        Row("member", "POST", g + "/read", {"seq": 0}, 200, None),
        Row("admin", "PATCH", g, {"title": "by the admin"}, 200, None),
    ]
    # Tokens that open nothing, on a route every member may use.
    for who, code in (
        ("forged", "unauthenticated"),
        ("expired", "token_expired"),
        ("revoked", "unauthenticated"),
        ("nobody", "unauthenticated"),
    ):
        rows.append(Row(who, "GET", g, None, 401, code))
        rows.append(Row(who, "GET", "/v1/users/me", None, 401, code))
    return rows


def _fill(value: Any, ids: dict[str, int]) -> Any:
    if isinstance(value, str):
        for name, number in ids.items():
            if value == "{" + name + "}":
                return number
            value = value.replace("{" + name + "}", str(number))
        return value
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    return value


async def _party(http: httpx.AsyncClient, gateway: GatewayInfo) -> dict[str, Any]:
    """A group with an owner, an admin, a member, a removed member and an outsider, and the
    headers of every kind of bad token."""
    owner, admin, member, removed, outsider, leaver = [
        await make_account(http, label)
        for label in ("owner", "admin", "member", "removed", "outsider", "leaver")
    ]
    r = await http.post(
        "/v1/conversations",
        json={"title": "matrix", "member_ids": [member.user_id, removed.user_id]},
        headers=owner.headers,
    )
    assert r.status_code == 201, r.text
    conv = r.json()["id"]
    r = await http.post(
        f"/v1/conversations/{conv}/members",
        json={"user_ids": [admin.user_id], "role": "admin"},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    r = await http.delete(
        f"/v1/conversations/{conv}/members/{removed.user_id}", headers=owner.headers
    )
    assert r.status_code == 204, r.text
    signer = TokenSigner(
        gateway.settings.resolved_secret_key(), gateway.settings.access_token_ttl_s
    )
    sid = uuid.uuid4().hex
    expired = signer.issue_access(member.user_id, sid, now=time.time() - 3600)
    forged = member.access_token[:-2] + ("AA" if not member.access_token.endswith("AA") else "BB")
    r = await http.post("/v1/auth/logout", json={}, headers=leaver.headers)
    assert r.status_code == 204, r.text
    accounts = {
        "owner": owner,
        "admin": admin,
        "member": member,
        "removed": removed,
        "outsider": outsider,
    }
    headers: dict[str, dict[str, str]] = {k: a.headers for k, a in accounts.items()}
    headers |= {
        "forged": {"Authorization": f"Bearer {forged}"},
        "expired": {"Authorization": f"Bearer {expired}"},
        "revoked": leaver.headers,
        "nobody": {},
    }
    ids = {k: a.user_id for k, a in accounts.items()} | {"conv": conv}
    return {
        "accounts": accounts,
        "headers": headers,
        "ids": ids,
        "tokens": {
            "forged": forged,
            "expired": expired,
            "revoked": leaver.access_token,
        },
    }


async def test_the_authorization_matrix(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    party = await _party(http, gateway)
    ids, headers = party["ids"], party["headers"]
    wrong: list[str] = []
    for row in _rows():
        r = await http.request(
            row.method,
            _fill(row.path, ids),
            json=_fill(row.body, ids),
            headers=headers[row.who],
        )
        code = (
            r.json().get("code") if r.headers.get("content-type", "").startswith(PROBLEM) else None
        )
        if r.status_code != row.status or code != row.code:
            wrong.append(
                f"{row.who} {row.method} {row.path}: {r.status_code} {code} {r.text[:120]}"
            )
    assert not wrong, "\n".join(wrong)
    # Nothing the refused rows tried happened.
    r = await http.get(f"/v1/conversations/{ids['conv']}", headers=headers["owner"])
    group = r.json()
    assert group["title"] == "by the admin"
    roles = {m["user_id"]: m["role"] for m in group["members"]}
    assert roles == {
        ids["owner"]: "owner",
        ids["admin"]: "admin",
        ids["member"]: "member",
    }


async def test_the_socket_matrix(http: httpx.AsyncClient, gateway: GatewayInfo) -> None:
    party = await _party(http, gateway)
    ids, accounts = party["ids"], party["accounts"]
    conv = ids["conv"]
    frames = [
        {"type": "history", "conversation_id": conv},
        {"type": "send", "conversation_id": conv, "client_msg_id": "s", "body": "hi"},
        {"type": "read", "conversation_id": conv, "seq": 0},
        {"type": "typing", "conversation_id": conv},
        {"type": "sync", "cursors": {str(conv): 0}},
    ]
    for who in ("outsider", "removed"):
        sock, _ = await connect(gateway.ws_url, accounts[who])
        try:
            for frame in frames:
                answer = await sock.request(dict(frame))
                if frame["type"] == "sync":
                    # A sync skips conversations the user is not in: nothing of this one.
                    assert answer["type"] == "sync_done", answer
                    assert str(conv) not in answer["cursors"], answer
                    assert not sock.messages(conv)
                else:
                    assert answer["type"] == "error", (who, frame, answer)
                    assert answer["code"] == "not_member", (who, frame, answer)
        finally:
            await sock.close()
    for name, token in party["tokens"].items():
        async with websockets.connect(gateway.ws_url) as ws:
            await ws.send(json.dumps({"type": "hello", "id": 1, "token": token}))
            error = json.loads(await ws.recv())
            assert error["type"] == "error", (name, error)
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4401, name


async def test_refresh_reuse_revokes_the_family(http: httpx.AsyncClient) -> None:
    dave = await make_account(http, "dave")
    first = await http.post("/v1/auth/refresh", json={"refresh_token": dave.refresh_token})
    second = await http.post(
        "/v1/auth/refresh", json={"refresh_token": first.json()["refresh_token"]}
    )
    assert first.status_code == second.status_code == 200
    # The token two rotations back comes back: every token of the chain dies.
    r = await http.post("/v1/auth/refresh", json={"refresh_token": dave.refresh_token})
    assert r.status_code == 401
    for pair in (first.json(), second.json()):
        r = await http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 401
    latest = Account(dave.user_id, dave.username, second.json()["access_token"], "")
    for _ in range(100):
        if (await http.get("/v1/users/me", headers=latest.headers)).status_code == 401:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the newest access token of the family still works")
