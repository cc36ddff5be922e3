"""Accounts over REST through Serve: register, login, refresh rotation, logout, profiles,
and problem JSON for bad input."""

from __future__ import annotations

import httpx
import pytest
from gwclient import make_account

PROBLEM = "application/problem+json"

pytestmark = pytest.mark.ray


async def test_register_login_profile(http: httpx.AsyncClient) -> None:
    alice = await make_account(http, "alice")
    r = await http.get("/v1/users/me", headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["username"] == alice.username
    r = await http.patch("/v1/users/me", json={"display_name": "Alice L."}, headers=alice.headers)
    assert r.status_code == 200 and r.json()["display_name"] == "Alice L."
    r = await http.get(f"/v1/users/{alice.user_id}", headers=alice.headers)
    assert r.json()["display_name"] == "Alice L."
    r = await http.get("/v1/users", params={"prefix": alice.username[:12]}, headers=alice.headers)
    assert [u["id"] for u in r.json()] == [alice.user_id]
    r = await http.get(
        "/v1/users", params={"ids": f"{alice.user_id},999999999"}, headers=alice.headers
    )
    assert [u["id"] for u in r.json()] == [alice.user_id]


async def test_bad_input_is_problem_json(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/auth/register", json={"username": "x", "password": "short"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["code"] == "validation_error" and body["status"] == 422
    assert {tuple(e["loc"]) for e in body["details"]["errors"]} >= {("body", "username")}

    r = await http.post(
        "/v1/auth/register", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)

    r = await http.get("/v1/users/me")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = await http.get("/v1/users/me", headers={"Authorization": "Bearer v1.forged.token"})
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)

    r = await http.get("/v1/no/such/route")
    assert r.status_code == 404 and r.json()["code"] == "not_found"

    alice = await make_account(http, "alice")
    r = await http.post(
        "/v1/auth/register", json={"username": alice.username, "password": "longenough"}
    )
    assert r.status_code == 409 and r.json()["code"] == "username_taken"
    r = await http.post(
        "/v1/auth/login", json={"username": alice.username, "password": "wrong-password"}
    )
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = await http.get("/v1/users/abc", headers=alice.headers)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
    r = await http.post(
        "/v1/messages", json={"client_msg_id": "x", "body": "hi"}, headers=alice.headers
    )
    assert r.status_code == 422 and "exactly one" in r.json()["detail"]


async def test_refresh_rotates_and_logout_revokes(http: httpx.AsyncClient) -> None:
    bob = await make_account(http, "bob")
    r = await http.post("/v1/auth/refresh", json={"refresh_token": bob.refresh_token})
    assert r.status_code == 200
    pair = r.json()
    assert pair["refresh_token"] != bob.refresh_token
    # A forged one is refused without touching the database.
    r = await http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"] + "x"})
    assert r.status_code == 401
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    r = await http.get("/v1/users/me", headers=headers)
    assert r.status_code == 200
    r = await http.post(
        "/v1/auth/logout", json={"refresh_token": pair["refresh_token"]}, headers=headers
    )
    assert r.status_code == 204
    r = await http.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    # The old refresh token was rotated out (its reuse revokes the family: test_edge_inputs).
    r = await http.post("/v1/auth/refresh", json={"refresh_token": bob.refresh_token})
    assert r.status_code == 401


async def test_health(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json()["status"] == "ok"
    r = await http.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {
        "sql": "ok",
        "redis": "ok",
        "delivery": "ok",
        "hosts": "ok",
    }
    r = await http.get("/openapi.json")
    assert r.status_code == 200 and "/v1/messages" in r.json()["paths"]
