"""Every HTTP request has an id (issue 13): the client's X-Request-ID when short and safe, else a
new one; echoed once in the response, in every problem body, and in the request's log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from serve.problems import install_problem_handlers
from serve.request_ids import RequestIds, safe_request_id
from warbler import logs

PROBLEM = "application/problem+json"
GENERATED = re.compile(r"[0-9a-f]{32}")


def _one_id(r: httpx.Response) -> str:
    values = r.headers.get_list("x-request-id")
    assert len(values) == 1, values
    return values[0]


def test_only_short_safe_ids_are_accepted() -> None:
    assert safe_request_id("abc-123_X.y") == "abc-123_X.y"
    assert safe_request_id(b"a" * 64) == "a" * 64
    for bad in ("a" * 65, "", "a b", "a/b", "<script>", "é", b"\xff"):
        assert safe_request_id(bad) is None, bad


# The app alone, in this process: the 500 path, whose handler runs outside the app's middlewares.


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("serve.problems")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


async def test_a_500_carries_the_id_in_body_header_and_log(json_log: io.StringIO) -> None:
    app = FastAPI()
    app.add_middleware(RequestIds)
    install_problem_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/boom", headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["request_id"] == "req-500" and _one_id(r) == "req-500"
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert [line["request_id"] for line in lines if "unexpected error" in line["msg"]] == [
        "req-500"
    ]


# Through the real ingress (HAProxy, Serve's own request-id middleware, the replica).


@pytest.mark.ray
async def test_the_clients_id_is_echoed_once_and_in_problems(http: httpx.AsyncClient) -> None:
    rid = f"client-{uuid.uuid4().hex[:8]}"
    r = await http.get("/readyz", headers={"X-Request-ID": rid})
    assert r.status_code == 200 and _one_id(r) == rid
    r = await http.get("/v1/users/me", headers={"X-Request-ID": rid})
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["request_id"] == rid and _one_id(r) == rid
    # A refusal of the edge limits, before any route.
    r = await http.get("/v1/users/me", params={"x": "a" * 9000}, headers={"X-Request-ID": rid})
    assert r.status_code == 414 and r.json()["request_id"] == rid and _one_id(r) == rid


@pytest.mark.ray
async def test_without_a_safe_id_the_gateway_makes_one(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/users/me")
    rid = _one_id(r)
    assert GENERATED.fullmatch(rid) and r.json()["request_id"] == rid
    for unsafe in ("x" * 65, "<script>alert(1)</script>", "a b"):
        r = await http.get("/v1/users/me", headers={"X-Request-ID": unsafe})
        rid = _one_id(r)
        assert GENERATED.fullmatch(rid), (unsafe, rid)
        assert r.json()["request_id"] == rid
    other = _one_id(await http.get("/v1/users/me"))
    assert other != rid


@pytest.mark.ray
async def test_the_requests_log_lines_carry_its_id(http: httpx.AsyncClient) -> None:
    import ray

    rid = f"log-{uuid.uuid4().hex[:12]}"
    username = f"logged-{uuid.uuid4().hex[:8]}"
    r = await http.post(
        "/v1/auth/register",
        json={"username": username, "password": "correct horse battery"},
        headers={"X-Request-ID": rid},
    )
    assert r.status_code == 201 and _one_id(r) == rid
    logs_dir = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    found: list[dict[str, Any]] = []
    for _ in range(40):  # the replica's stderr reaches its file within moments
        found = _json_lines_with(logs_dir, rid)
        if found:
            break
        await asyncio.sleep(0.25)
    assert any(
        line["msg"].startswith("registered user") and username in line["msg"] for line in found
    ), found
    assert all(line["request_id"] == rid and line["component"] == "gateway" for line in found)


def _json_lines_with(logs_dir: Path, needle: str) -> list[dict[str, Any]]:
    lines = []
    for path in logs_dir.glob("worker-*.err"):
        with path.open(errors="replace") as f:
            for text in f:
                if needle in text and text.startswith("{"):
                    lines.append(json.loads(text))
    return lines
