"""`warbler up --detach` then `warbler down`, as a user runs them: a Ray head of its own, the
embedded Redis, SQLite, HAProxy in front; down stops exactly what up started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve.ingress import free_port
from serve.raycluster import pids_with_arg
from storage.redis import process_alive

pytestmark = pytest.mark.slow

WARBLER = str(Path(sys.executable).with_name("warbler"))


def test_up_detach_then_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "w"
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WARBLER_", "RAY_"))  # embedded defaults, whatever the session uses
    }
    env.update({"WARBLER_DATA_DIR": str(data_dir), "WARBLER_NAMESPACE": "launcher"})
    up = subprocess.run(
        [WARBLER, "up", "--detach", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    state_path = data_dir / "up.json"
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert f"http://127.0.0.1:{port}/docs" in up.stdout
        state = json.loads(state_path.read_text())
        assert process_alive(state["ray_head_pid"]) and process_alive(state["redis_pid"])
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"{base}/docs", timeout=10).status_code == 200
        r = httpx.post(
            f"{base}/v1/auth/register", json={"username": "launcher", "password": "longenough"}
        )
        assert r.status_code == 201, r.text
        assert pids_with_arg(state["haproxy_dir"]), "HAProxy fronts the gateway"
        # `up` started the host autoscaler; `warbler autoscaler` reports it and the pool.
        shown = subprocess.run(
            [WARBLER, "autoscaler", "--json"], env=env, capture_output=True, text=True, timeout=120
        )
        assert shown.returncode == 0, shown.stdout[-3000:] + shown.stderr[-3000:]
        report = json.loads(shown.stdout.strip().splitlines()[-1])
        assert report["hosts"] == ["host-0", "host-1"]
        assert report["autoscaler"]["running"] is True
        assert report["autoscaler"]["policy"]["max_hosts"] == 8
        assert "autoscaled 1-8" in up.stdout
    finally:
        down = subprocess.run(
            [WARBLER, "down"], env=env, capture_output=True, text=True, timeout=300
        )
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    # It says what it leaves on disk: the data dir, and the head's Ray session logs.
    assert f"Left on disk: {data_dir}" in down.stdout, down.stdout
    assert state["ray_session_dir"] and state["ray_session_dir"] in down.stdout, down.stdout
    assert not state_path.exists()
    assert not process_alive(state["ray_head_pid"])
    assert not process_alive(state["redis_pid"])
    assert not pids_with_arg(state["haproxy_dir"])
    # The data survives: the database file is still there for the next `up`.
    assert (data_dir / "warbler.db").exists()
