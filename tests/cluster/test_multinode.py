"""Warbler traffic through host-pool and node scaling on a multi-node cluster on one machine.

A real Ray autoscaler (the head's monitor.py) with Ray's fake multi-node provider: worker "nodes"
are extra raylets on this machine (fake_cluster.py). The head holds one ``warbler_host``; a
second host fits only on a worker node, which only the autoscaler can add. The driver
(multinode_driver.py, its own process) runs real hosts against this session's database and
Redis, starts the host autoscaler as ``warbler up`` does, and drives appends; the test checks
the story (host added, node added, shards moved, load removed, host removed, node removed) and
that nothing was lost or duplicated, and prints the timeline (``-s`` or ``-rP`` shows it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from fake_cluster import FakeNodeType, fake_cluster, session_pids

from actors.cluster import HOST_RESOURCE
from warbler.config import Settings

DRIVER = Path(__file__).with_name("multinode_driver.py")
IDLE_TIMEOUT_MIN = 0.1  # 6 s: the autoscaler's idle timeout for a worker node
# Bounds for each phase (not performance assertions: generous, so a loaded machine passes).
SCALE_UP_TIMEOUT_S = 150.0
SCALE_DOWN_TIMEOUT_S = 150.0
DRIVER_TIMEOUT_S = 120 + SCALE_UP_TIMEOUT_S + 2 * SCALE_DOWN_TIMEOUT_S
# Above the driver's bound plus starting and stopping the cluster, so the test's own bounds
# report what went wrong (and the cluster is stopped) before pytest-timeout fires.
TEST_TIMEOUT_S = int(DRIVER_TIMEOUT_S + 120)


def _timeline(driver: list[dict[str, Any]], autoscaler: list[tuple[float, str]]) -> list[str]:
    """Both sources merged by time, relative to the start of the load."""
    rows = []
    for e in driver:
        extra = {k: v for k, v in e.items() if k not in ("t", "event", "at")}
        # Controller decisions carry the time they were taken.
        rows.append((e.get("at", e["t"]), "driver", e["event"], extra))
    rows += [(t, "autoscaler", message, {}) for t, message in autoscaler]
    rows.sort(key=lambda row: row[0])
    start = next((e["t"] for e in driver if e["event"] == "load_started"), rows[0][0])
    return [
        f"{t - start:+8.2f}s  {source:<10}  {what}  {json.dumps(extra) if extra else ''}".rstrip()
        for t, source, what, extra in rows
    ]


def _driver_env(settings: Settings, cluster_env: dict[str, str]) -> dict[str, str]:
    """The cluster's env plus this session's database and Redis (the hosts use them)."""
    env = dict(cluster_env)
    env["WARBLER_DATA_DIR"] = str(settings.data_dir)
    env["WARBLER_REDIS_URL"] = str(settings.redis_url)
    if settings.database_url:
        env["WARBLER_DATABASE_URL"] = settings.database_url
    return env


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_traffic_through_host_and_node_scaling_loses_nothing(settings: Settings) -> None:
    host = FakeNodeType({"CPU": 1, HOST_RESOURCE: 1}, min_workers=0, max_workers=1)
    namespace = f"{settings.namespace}-mn{uuid.uuid4().hex[:6]}"
    with fake_cluster(
        {"host": host},
        head_cpus=2,
        head_resources={HOST_RESOURCE: 1},
        idle_timeout_minutes=IDLE_TIMEOUT_MIN,
    ) as cluster:
        session = cluster.session_id
        result = subprocess.run(
            [
                sys.executable,
                str(DRIVER),
                f"--namespace={namespace}",
                f"--scale-up-timeout={SCALE_UP_TIMEOUT_S}",
                f"--scale-down-timeout={SCALE_DOWN_TIMEOUT_S}",
            ],
            env=_driver_env(settings, cluster.driver_env()),
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
        )
        autoscaler_events = cluster.autoscaler_events()

    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    timeline = _timeline(events, autoscaler_events) if events else []
    # The brief asks for the timeline in the test's output.
    print("\nscaling timeline (t=0: load started):\n" + "\n".join(timeline))  # noqa: T201
    assert result.returncode == 0, f"driver failed:\n{result.stdout}\n{result.stderr[-4000:]}"

    names = [e["event"] for e in events]
    first = {name: names.index(name) for name in names}
    by_name = {e["event"]: e for e in events}
    for needed in (
        "controller_started",
        "node_joined",
        "host_placed",
        "host_took_traffic",
        "host_took_share",
        "load_removed",
        "removed_shards_served",
        "node_removed",
        "verified",
        "controller_up",
        "controller_down",
        "done",
    ):
        assert needed in first, f"no {needed} event: {names}"
    # Cause before effect: the node came for the host, the host took traffic after the move,
    # the load left before the host did, and the node went after.
    assert first["controller_started"] < first["node_joined"] < first["host_placed"]
    assert first["host_placed"] < first["host_took_traffic"] < first["load_removed"]
    assert first["load_removed"] < first["removed_shards_served"] < first["node_removed"]

    # The controller added host-1 and later removed it; the shard map showed both moves.
    assert by_name["controller_up"]["added"] == ["host-1"]
    assert by_name["controller_down"]["removed"] == ["host-1"]
    committed = [e["shards_per_host"] for e in events if e["event"] == "map_committed"]
    assert {"host-0", "host-1"} <= set().union(*committed)
    assert list(committed[-1]) == ["host-0"]

    # host-1 ran on the node the autoscaler added, not on the head, and that node was removed.
    new_node = by_name["node_joined"]["node_id"]
    assert by_name["host_placed"]["node_id"] == new_node != by_name["connected"]["head_node_id"]
    assert by_name["hosts_started"]["node_id"] == by_name["connected"]["head_node_id"]
    assert by_name["node_removed"]["node_id"] == new_node
    messages = [message for _, message in autoscaler_events]
    assert any(m.startswith("Adding 1 node(s) of type host") for m in messages), messages
    assert any("of type host (idle)" in m for m in messages), messages

    # Zero lost, zero duplicated, gapless logs, across every scaling event.
    verified = by_name["verified"]
    assert verified["acked"] > 0 and verified["acked"] == verified["stored"]
    assert verified["lost"] == 0 and verified["duplicated"] == 0
    assert verified["conversations_with_gaps"] == 0
    # Stopping the cluster left none of its processes behind (fake worker raylets included).
    assert session_pids(session) == []
