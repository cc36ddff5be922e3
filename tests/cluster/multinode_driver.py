"""Driver for test_multinode: run in its own process against a fake multi-node cluster.

It joins the cluster named by RAY_ADDRESS (with the cluster's token-auth env), asks for an actor
needing ``{"warbler_host": 1}`` that no node can hold, and watches the autoscaler add a node for
it, keep that node while the actor lives, and remove it once the actor is gone and the node has
been idle. Every observation is one JSON line on stdout: ``{"t": <unix time>, "event": ...}``.
Exit status 0 when every phase finished within its bound, 1 otherwise (with an "error" event).

A separate process because the pytest process may already hold the session's local
``ray.init()`` (tests/conftest.py), and one process joins one Ray cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import ray

from actors.cluster import HOST_RESOURCE

POLL_S = 0.25


def emit(event: str, **fields: Any) -> None:
    """One timeline line on stdout (the test parses these; not a log)."""
    sys.stdout.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")
    sys.stdout.flush()


@ray.remote(num_cpus=0, resources={HOST_RESOURCE: 1})
class Probe:
    """Stands in for an ActorHost: needs the host resource and nothing else."""

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's alive nodes as ``ray.nodes()`` describes them."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [node for node in nodes if node["Alive"]]


def host_nodes() -> dict[str, dict[str, float]]:
    """Alive nodes that carry the host resource: node id -> resources."""
    return {
        node["NodeID"]: node["Resources"]
        for node in alive_nodes()
        if node["Resources"].get(HOST_RESOURCE, 0) > 0
    }


class PhaseTimeout(Exception):
    """A phase did not finish within its bound."""


def scale_up(timeout_s: float) -> tuple[Any, str]:
    """Request the probe; wait for the new node and for the probe to run on it."""
    probe = Probe.remote()  # type: ignore[attr-defined]
    emit("actor_requested", resources={HOST_RESOURCE: 1})
    ready_ref = probe.node_id.remote()
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node_id, resources in host_nodes().items():
            if node_id not in seen:
                seen.add(node_id)
                emit("node_joined", node_id=node_id, resources=resources)
        done, _ = ray.wait([ready_ref], timeout=POLL_S)
        if done:
            placed_on = ray.get(done[0])
            emit("actor_placed", node_id=placed_on)
            return probe, placed_on
    raise PhaseTimeout(f"the probe was not placed within {timeout_s}s")


def hold(node_id: str, hold_s: float) -> None:
    """Keep the probe alive past the idle timeout: its node must stay."""
    time.sleep(hold_s)
    alive = node_id in host_nodes()
    emit("held", node_id=node_id, seconds=hold_s, node_alive=alive)


def scale_down(probe: Any, node_id: str, timeout_s: float) -> None:
    """Release the probe; wait for the autoscaler to remove its now idle node."""
    ray.kill(probe)
    emit("actor_released", node_id=node_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node_id not in host_nodes():
            emit("node_removed", node_id=node_id)
            return
        time.sleep(POLL_S)
    raise PhaseTimeout(f"node {node_id} was still alive {timeout_s}s after the probe left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale-up-timeout", type=float, default=120.0)
    parser.add_argument("--hold", type=float, default=10.0)
    parser.add_argument("--scale-down-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    ray.init(log_to_driver=False, namespace="warbler-fake-cluster")
    try:
        head = ray.get_runtime_context().get_node_id()
        emit(
            "connected",
            head_node_id=head,
            nodes=len(alive_nodes()),
            host_resource=ray.cluster_resources().get(HOST_RESOURCE, 0.0),  # type: ignore[no-untyped-call]
        )
        probe, node_id = scale_up(args.scale_up_timeout)
        hold(node_id, args.hold)
        scale_down(probe, node_id, args.scale_down_timeout)
        emit("done")
        return 0
    except PhaseTimeout as exc:
        emit("error", message=str(exc))
        return 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
