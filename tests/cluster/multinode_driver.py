"""Driver for test_multinode: Warbler traffic through host-pool and node scaling.

Run in its own process against a fake multi-node cluster (RAY_ADDRESS and the cluster's token
env; Warbler's database and Redis from WARBLER_* variables). The head holds one host; the
worker node type is the only other place a host fits, so a second host can only run once Ray's
autoscaler adds a node. The phases:

1. one pool host on the head; ``GROUPS`` group conversations; the host autoscaler actor started
   as ``warbler up`` starts it (``ensure_controller``), with a policy made quick for a test;
2. traffic on every conversation: the active entities exceed the target, the controller adds
   ``host-1``, Ray's autoscaler adds a node for it, shards move, ``host-1`` takes its share;
3. load removed (traffic on one conversation of ``host-0`` only): entities passivate, the
   controller removes ``host-1`` (its shards move back), Ray's autoscaler removes the idle node;
   a probe then appends to conversations that lived on ``host-1``: served by ``host-0``;
4. every append is retried with its client id until acked; at the end each conversation's log
   in SQL must hold exactly the acked messages, at their acked seqs, gapless.

Every observation is one JSON line on stdout, ``{"t": <unix time>, "event": ...}``. Exit status
0 when every phase finished within its bound, 1 otherwise (with an "error" event).

A separate process because the pytest process may already hold the session's local
``ray.init()`` (tests/conftest.py), and one process joins one Ray cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from actors import cluster
from actors.autoscale import controller_status, ensure_controller
from actors.cluster import HOST_RESOURCE
from actors.directory import ShardMap
from actors.directory_store import DirectoryStore
from actors.messages import Append, CreateGroup, MessageEvent
from actors.names import NEW_CONVERSATION_KEY, conv_key
from actors.runtime import Runtime
from storage import Database, Keys, MessageStore, UserStore, connect_redis
from warbler.config import Settings

POLL_S = 0.1
GROUPS = 40
# 40 conversations against 20 per host: one host is at 2x its target, two are at ~1x.
POLICY = {
    "target_entities_per_host": 20,
    "scale_down_below": 0.5,
    "up_sustain_s": 1.0,
    "down_sustain_s": 3.0,
    "up_cooldown_s": 2.0,
    "down_cooldown_s": 2.0,
    "max_step_up": 1,
    "action_timeout_s": 240.0,
}
ROUND_S = 0.25  # one append per busy conversation per round
PAGE = 1000  # the message store's page maximum
PROBES = 5  # conversations of the removed host appended to after the removal


def emit(event: str, **fields: Any) -> None:
    """One timeline line on stdout (the test parses these; not a log)."""
    sys.stdout.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")
    sys.stdout.flush()


class PhaseTimeout(Exception):
    """A phase did not finish within its bound."""


def host_nodes() -> dict[str, float]:
    """Alive nodes that carry the host resource: node id -> how much."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return {
        n["NodeID"]: n["Resources"][HOST_RESOURCE]
        for n in nodes
        if n["Alive"] and n["Resources"].get(HOST_RESOURCE, 0) > 0
    }


class Traffic:
    """Appends to a set of conversations, one per conversation per round; an append that fails
    (a shard on the move, a host starting) is retried with the same client id until acked, so
    the idempotent log must hold it exactly once."""

    def __init__(self, rt: Runtime, sender: int, run_id: str) -> None:
        self._rt = rt
        self._sender = sender
        self._run_id = run_id
        self._counter = 0
        self.busy: list[str] = []
        self.pending: dict[str, tuple[str, float]] = {}  # client id -> (key, first sent)
        self.acked: dict[str, dict[str, int]] = {}  # key -> client id -> seq
        self.acks: list[tuple[float, str, float]] = []  # (acked at, key, ms since first sent)
        self.retries = 0

    async def round(self) -> None:
        now = time.time()
        for key in self.busy:
            self._counter += 1
            self.pending[f"{self._run_id}-{self._counter}"] = (key, now)
        batch = list(self.pending.items())
        calls: list[tuple[str, object]] = [
            (key, Append(self._sender, cmid, "text", {"n": cmid})) for cmid, (key, _) in batch
        ]
        results = await self._rt.call_many(calls)
        done = time.time()
        for (cmid, (key, sent)), result in zip(batch, results, strict=True):
            if isinstance(result, MessageEvent):
                self.acked.setdefault(key, {})[cmid] = result.seq
                self.acks.append((done, key, (done - sent) * 1000))
                del self.pending[cmid]
            else:
                self.retries += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await self.round()
            await asyncio.sleep(max(0.0, ROUND_S - (time.monotonic() - started)))

    async def drain(self, timeout_s: float) -> None:
        """Retry what is still unacked until it is acked (bounded)."""
        self.busy = []
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await self.round()
            await asyncio.sleep(ROUND_S)
        if self.pending:
            raise PhaseTimeout(f"{len(self.pending)} appends never acked")


async def wait_for(
    what: str, check: Callable[[], Awaitable[bool]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(POLL_S)
    raise PhaseTimeout(f"{what}: not within {timeout_s}s")


class Watch:
    """Polls the directory (pending and committed maps) and the nodes; emits each change."""

    def __init__(self, store: DirectoryStore) -> None:
        self._store = store
        self.current: ShardMap | None = None
        self.pending_epoch: int | None = None
        self.nodes: dict[str, float] = {}
        self.marks: dict[str, float] = {}  # event name -> unix time first seen

    async def poll(self) -> None:
        current, pending = await self._store.load()
        if pending is not None and pending.epoch != self.pending_epoch:
            self.pending_epoch = pending.epoch
            self.marks[f"move_started:{pending.epoch}"] = time.time()
            emit("move_started", epoch=pending.epoch, hosts=sorted(pending.hosts))
        if current is not None and (self.current is None or current.epoch != self.current.epoch):
            self.marks[f"map_committed:{current.epoch}"] = time.time()
            counts = {h: list(current.shards).count(h) for h in current.hosts}
            emit("map_committed", epoch=current.epoch, shards_per_host=counts)
            self.current = current
        nodes = await asyncio.to_thread(host_nodes)
        for node in sorted(set(nodes) - set(self.nodes)):
            self.marks[f"node_joined:{node}"] = time.time()
            emit("node_joined", node_id=node, warbler_host=nodes[node])
        for node in sorted(set(self.nodes) - set(nodes)):
            self.marks[f"node_removed:{node}"] = time.time()
            emit("node_removed", node_id=node)
        self.nodes = nodes

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll()
            await asyncio.sleep(POLL_S)


async def envelopes(settings: Settings, name: str) -> int:
    stats = await cluster.get_host(settings, name).stats.remote()
    return int(stats["envelopes"])


async def scenario(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    db = Database.from_settings(settings)
    await db.migrate()
    redis = connect_redis(str(settings.redis_url))
    store = DirectoryStore(redis, Keys(settings.namespace))
    users = UserStore(db)
    run_id = uuid.uuid4().hex[:8]
    owner = (await users.create_user(f"mn-{run_id}-a", "x", "a")).id
    peer = (await users.create_user(f"mn-{run_id}-b", "x", "b")).id

    await cluster.start_hosts(settings, 1)
    head_host = await cluster.get_host(settings, "host-0").ping.remote()
    emit("hosts_started", hosts=["host-0"], node_id=head_host["node_id"])
    rt = await Runtime.connect(settings, call_timeout_s=30.0)
    created = await rt.call_many(
        [(NEW_CONVERSATION_KEY, CreateGroup(owner, f"g{i}", (peer,))) for i in range(GROUPS)]
    )
    keys = [conv_key(e.conversation_id) for e in created if isinstance(e, MessageEvent)]
    if len(keys) != GROUPS:
        raise RuntimeError(f"group creation failed: {created!r}")
    emit("conversations_created", count=len(keys))

    watch = Watch(store)
    watch.nodes = await asyncio.to_thread(host_nodes)  # the head: no event for it
    await watch.poll()
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(watch.run(stop_watch))
    traffic = Traffic(rt, owner, run_id)
    stop_traffic = asyncio.Event()
    sender = asyncio.create_task(traffic.run(stop_traffic))
    out: dict[str, Any] = {}
    try:
        # --- 2. load: every conversation busy; the controller must add a host -------------
        traffic.busy = list(keys)
        emit("load_started", conversations=len(keys), per_s=len(keys) / ROUND_S)
        ensure_controller(settings)
        emit("controller_started", policy=POLICY)

        async def two_hosts() -> bool:
            return watch.current is not None and len(watch.current.hosts) == 2

        await wait_for("the controller adding host-1", two_hosts, args.scale_up_timeout)
        assert watch.current is not None
        added_epoch = watch.current.epoch
        placed = await cluster.get_host(settings, "host-1").ping.remote()
        emit("host_placed", host="host-1", node_id=placed["node_id"])
        committed_at = watch.marks[f"map_committed:{added_epoch}"]
        base = await envelopes(settings, "host-1")

        async def took_traffic() -> bool:
            return await envelopes(settings, "host-1") > base

        await wait_for("host-1 handling an append", took_traffic, 30.0)
        first_at = time.time()
        emit("host_took_traffic", host="host-1", after_commit_s=round(first_at - committed_at, 3))
        # Its share: over one second, at least half of what an even split would give it.
        fair = sum(1 for k in keys if watch.current.owner(k) == "host-1") / len(keys)
        share = 0.0
        while time.time() - committed_at < 30.0:
            before = {h: await envelopes(settings, h) for h in ("host-0", "host-1")}
            await asyncio.sleep(1.0)
            after = {h: await envelopes(settings, h) for h in ("host-0", "host-1")}
            total = sum(after.values()) - sum(before.values())
            share = (after["host-1"] - before["host-1"]) / total if total else 0.0
            if share >= fair / 2:
                break
        share_at = time.time()
        emit(
            "host_took_share",
            host="host-1",
            share=round(share, 3),
            expected=round(fair, 3),
            after_commit_s=round(share_at - committed_at, 3),
        )
        # A move quicker than the watcher's poll is never seen pending: it counts as 0.
        moved_from = watch.marks.get(f"move_started:{added_epoch}", committed_at)
        out["add_move_s"] = round(committed_at - moved_from, 3)
        out["add_first_append_s"] = round(first_at - committed_at, 3)
        out["add_share_s"] = round(share_at - committed_at, 3)
        out["add_share"] = round(share, 3)
        await asyncio.sleep(args.hold)

        # --- 3. load removed: one conversation of host-0 stays busy ------------------------
        current = watch.current
        quiet = [k for k in keys if current.owner(k) == "host-0"][:1]
        probes = [k for k in keys if current.owner(k) == "host-1"][:PROBES]
        traffic.busy = quiet
        emit("load_removed", busy=quiet)

        async def one_host() -> bool:
            return watch.current is not None and list(watch.current.hosts) == ["host-0"]

        await wait_for("the controller removing host-1", one_host, args.scale_down_timeout)
        removed_epoch = watch.current.epoch
        removed_at = watch.marks[f"map_committed:{removed_epoch}"]
        started_at = watch.marks.get(f"move_started:{removed_epoch}", removed_at)
        # One append each, through the traffic loop (retried until acked, then verified).
        for i, key in enumerate(probes):
            traffic.pending[f"{run_id}-probe-{i}"] = (key, time.time())
        await wait_for("probes served by host-0", _drained(traffic, probes), 30.0)
        served_at = time.time()
        emit(
            "removed_shards_served",
            probes=len(probes),
            after_move_started_s=round(served_at - started_at, 3),
        )
        out["remove_move_s"] = round(removed_at - started_at, 3)
        out["remove_served_s"] = round(served_at - started_at, 3)
        node_id = placed["node_id"]

        async def node_gone() -> bool:
            return node_id not in watch.nodes

        await wait_for("the idle node's removal", node_gone, args.scale_down_timeout)
        out["node_removed_after_host_s"] = round(
            watch.marks[f"node_removed:{node_id}"] - removed_at, 3
        )
    finally:
        stop_traffic.set()
        await sender
        stop_watch.set()
        await watcher

    # --- 4. nothing lost, nothing duplicated -----------------------------------------------
    await traffic.drain(60.0)
    messages = MessageStore(db)
    lost = duplicated = gaps = stored_total = 0
    for key, sent in traffic.acked.items():
        rows = await whole_log(messages, int(key.split(":")[1]))
        ours = [m for m in rows if m.client_msg_id and m.client_msg_id.startswith(run_id)]
        stored = {m.client_msg_id: m.seq for m in ours}
        stored_total += len(ours)
        lost += sum(1 for cmid, seq in sent.items() if stored.get(cmid) != seq)
        duplicated += len(ours) - len(stored) + len(set(stored) - set(sent))
        gaps += int([m.seq for m in rows] != list(range(1, len(rows) + 1)))
    acked = sum(len(v) for v in traffic.acked.values())
    latencies = [ms for _, _, ms in traffic.acks]
    out.update(
        acked=acked,
        stored=stored_total,
        lost=lost,
        duplicated=duplicated,
        conversations_with_gaps=gaps,
        retried_attempts=traffic.retries,
        ack_ms_p50=round(statistics.median(latencies), 1),
        ack_ms_max=round(max(latencies), 1),
    )
    emit("verified", **out)
    status = await asyncio.to_thread(controller_status, settings)
    for entry in (status or {}).get("history", []):
        if entry["action"] != "hold":
            emit(
                f"controller_{entry['action']}",
                at=entry["t"],
                took_s=entry["took_s"],
                added=entry["added"],
                removed=entry["removed"],
                reason=entry["reason"],
                error=entry["error"],
            )
    await rt.close()
    await cluster.shutdown_hosts(settings)
    await redis.aclose()
    await db.close()
    return out


async def whole_log(messages: MessageStore, conversation_id: int) -> list[Any]:
    """Every stored message of a conversation, in seq order (pages of the store's maximum)."""
    rows: list[Any] = []
    while True:
        after = rows[-1].seq if rows else 0
        page = await messages.page_messages(conversation_id, after_seq=after, limit=PAGE)
        rows += page
        if len(page) < PAGE:
            return rows


def _drained(traffic: Traffic, keys: list[str]) -> Callable[[], Awaitable[bool]]:
    """True once none of ``keys`` has an unacked append (the traffic loop retries them)."""

    async def check() -> bool:
        return not any(key in keys for key, _ in traffic.pending.values())

    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--scale-up-timeout", type=float, default=150.0)
    parser.add_argument("--hold", type=float, default=3.0)
    parser.add_argument("--scale-down-timeout", type=float, default=150.0)
    args = parser.parse_args(argv)

    settings = Settings(
        namespace=args.namespace,
        num_hosts=1,
        min_hosts=1,
        max_hosts=2,
        idle_passivate_s=2.0,
        host_autoscale=True,
        host_autoscale_interval_s=0.5,
        host_autoscale_policy=POLICY,
    )
    ray.init(log_to_driver=False, namespace=settings.namespace)
    try:
        emit(
            "connected",
            head_node_id=ray.get_runtime_context().get_node_id(),
            host_nodes=host_nodes(),
            database=settings.async_database_url.split(":", 1)[0],
        )
        asyncio.run(scenario(settings, args))
        emit("done")
        return 0
    except PhaseTimeout as exc:
        emit("error", message=str(exc))
        return 1
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
