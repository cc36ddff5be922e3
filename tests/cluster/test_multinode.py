"""The Ray autoscaler adds a node for unmet ``warbler_host`` demand and removes it when idle.

A real autoscaler (the head's monitor.py) with Ray's fake multi-node provider: worker "nodes"
are extra raylets on this machine (see fake_cluster.py). The driver runs in a subprocess, apart
from the session's local ``ray.init()``. The test prints the timeline of scaling events (run
with ``-s`` or ``-rP`` to see it on success).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_cluster import FakeNodeType, fake_cluster, session_pids

from actors.cluster import HOST_RESOURCE

DRIVER = Path(__file__).with_name("multinode_driver.py")
IDLE_TIMEOUT_MIN = 0.1  # 6 s: the autoscaler's idle timeout for a worker node
HOLD_S = 12.0  # twice the idle timeout: a busy node must outlive it
# Bounds for each phase (not performance assertions: generous, so a loaded machine passes).
SCALE_UP_TIMEOUT_S = 120.0
SCALE_DOWN_TIMEOUT_S = 120.0
DRIVER_TIMEOUT_S = 60 + SCALE_UP_TIMEOUT_S + HOLD_S + SCALE_DOWN_TIMEOUT_S
# Above every bound here plus starting and stopping the cluster, so the test's own bounds
# report what went wrong (and the cluster is stopped) before pytest-timeout fires.
TEST_TIMEOUT_S = int(DRIVER_TIMEOUT_S + 120)


def _timeline(driver: list[dict[str, Any]], autoscaler: list[tuple[float, str]]) -> list[str]:
    """Both sources merged by time, relative to the actor request."""
    rows = [
        (e["t"], "driver", e["event"], {k: v for k, v in e.items() if k not in ("t", "event")})
        for e in driver
    ]
    rows += [(t, "autoscaler", message, {}) for t, message in autoscaler]
    rows.sort(key=lambda row: row[0])
    start = next((e["t"] for e in driver if e["event"] == "actor_requested"), rows[0][0])
    return [
        f"{t - start:+8.2f}s  {source:<10}  {what}  {json.dumps(extra) if extra else ''}".rstrip()
        for t, source, what, extra in rows
    ]


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_host_demand_scales_a_node_up_then_idle_scales_it_down() -> None:
    host = FakeNodeType({"CPU": 1, HOST_RESOURCE: 1}, min_workers=0, max_workers=1)
    with fake_cluster({"host": host}, idle_timeout_minutes=IDLE_TIMEOUT_MIN) as cluster:
        session = cluster.session_id
        result = subprocess.run(
            [
                sys.executable,
                str(DRIVER),
                f"--scale-up-timeout={SCALE_UP_TIMEOUT_S}",
                f"--hold={HOLD_S}",
                f"--scale-down-timeout={SCALE_DOWN_TIMEOUT_S}",
            ],
            env=cluster.driver_env(),
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
        )
        autoscaler_events = cluster.autoscaler_events()

    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    timeline = _timeline(events, autoscaler_events) if events else []
    # The brief asks for the timeline in the test's output.
    print("\nscaling timeline (t=0: actor requested):\n" + "\n".join(timeline))  # noqa: T201
    assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr[-3000:]}"

    by_name = {e["event"]: e for e in events}
    order = [
        "connected",
        "actor_requested",
        "node_joined",
        "actor_placed",
        "held",
        "actor_released",
        "node_removed",
        "done",
    ]
    assert [e["event"] for e in events] == order
    # Nothing could hold the actor before the autoscaler acted.
    assert by_name["connected"]["host_resource"] == 0
    assert by_name["connected"]["nodes"] == 1
    # The actor ran on the node that joined, not on the head.
    new_node = by_name["node_joined"]["node_id"]
    assert by_name["node_joined"]["resources"][HOST_RESOURCE] == 1
    assert by_name["actor_placed"]["node_id"] == new_node != by_name["connected"]["head_node_id"]
    # A node with a live actor is not idle: it outlived two idle timeouts.
    assert by_name["held"]["node_alive"] is True
    assert by_name["node_removed"]["node_id"] == new_node
    # The autoscaler itself says why: it launched a "host" node and removed it as idle.
    messages = [message for _, message in autoscaler_events]
    assert any(m.startswith("Adding 1 node(s) of type host") for m in messages), messages
    assert any("of type host (idle)" in m for m in messages), messages
    # Stopping the cluster left none of its processes behind (fake worker raylets included).
    assert session_pids(session) == []
