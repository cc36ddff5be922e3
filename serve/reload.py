"""Announced, staggered reconnects when the set of gateway replicas changes.

With Serve's HAProxy ingress every change of the replica set (scale out, scale in, redeploy)
reloads haproxy: a new process takes the new connections and the old one keeps the sockets it
had until ``hard-stop-after`` (``ingress.HARD_STOP_AFTER_S``), then drops them all at once.
So every replica announces on Redis when it becomes ready and when it starts draining
(``Keys.gateways_channel``), and every replica, on such an event, tells each socket it accepted
before it to reconnect (a ``reconnect`` frame, reason ``rebalance``, then close 1012), one by one
over ``settings.reload_reconnect_window_s``: small resumes spread out instead of a cliff. As
haproxy balances by least connections, the reconnects also move sockets onto a new replica.

A draining replica spreads its own sockets too (reason ``draining``), over the time Serve keeps
it reachable after the drain starts (``serve_drain_probe``), rather than at ``__del__``: by
then, behind HAProxy, uvicorn has already closed every socket with a bare 1012.

``ReconnectSchedule`` is the pure part (which sockets, which instants); ``ReloadCoordinator``
runs it on a replica's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import random
import time
import weakref
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from redis.exceptions import RedisError

from serve.delivery.connection import Connection
from serve.ingress import HARD_STOP_AFTER_S
from storage import ChannelListener, EventBus, Keys
from warbler.protocol import CloseCode, ReconnectFrame, dump_frame

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
EventKind = Literal["ready", "draining"]

# An event covers the sockets accepted up to this long after it arrives: haproxy reloads a bit
# after a replica announces "ready" (the controller must see it ready, then the proxy rewrites
# the config and starts a new process; measured 0.8 s later), and at about the time a drain is
# announced (measured 0.05 s before). Sockets accepted in that gap still belong to the old
# process; one that was in fact on the new process just reconnects once more.
RELOAD_SETTLE_S: Mapping[str, float] = {"ready": 3.0, "draining": 1.0}
# Time for a `reconnect` frame to leave before its socket is closed with 1012.
FLUSH_S = 0.5
# How often a replica looks whether Serve started draining it.
DRAIN_POLL_S = 0.25
# A draining replica's last reconnect goes this long before Serve closes the sockets itself:
# the poll's lateness, the flush, and a margin.
DRAIN_MARGIN_S = DRAIN_POLL_S + FLUSH_S + 0.5
# ... and its first one this long after it saw the drain: past the other replicas' cutoff (or
# its sockets would be moved twice) and past haproxy's reload (or they could come right back).
DRAIN_HOLD_S = RELOAD_SETTLE_S["draining"] + 0.5
# The last reconnect must come before the old haproxy process hard-stops.
MAX_WINDOW_S = HARD_STOP_AFTER_S - max(RELOAD_SETTLE_S.values()) - FLUSH_S - 5.0


@dataclass(frozen=True)
class TopologyEvent:
    """A gateway replica became ready, or started draining."""

    kind: EventKind
    replica_id: str
    at: float  # the announcer's wall clock (for logs; scheduling uses the receiver's clock)

    def encode(self) -> bytes:
        """The pub/sub payload."""
        return json.dumps({"kind": self.kind, "replica": self.replica_id, "at": self.at}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> TopologyEvent | None:
        """The event in a payload, or None when it is not one (a newer or broken announcer)."""
        try:
            raw = json.loads(payload)
            kind = raw["kind"]
            if kind not in ("ready", "draining"):
                return None
            return cls(kind=kind, replica_id=str(raw["replica"]), at=float(raw["at"]))
        except (ValueError, KeyError, TypeError):
            return None


def spread(n: int, start: float, window_s: float, rng: random.Random) -> list[float]:
    """``n`` instants spread evenly over ``[start, start + window_s)``, each jittered within its
    own equal share of the window (so no two land together, and no pattern repeats)."""
    if n <= 0:
        return []
    step = max(0.0, window_s) / n
    return [start + (i + rng.random()) * step for i in range(n)]


class ReconnectSchedule(Generic[K]):
    """Which socket is told to reconnect at which instant (times on one monotonic clock).

    A socket keeps the slot it was given first: a second event does not move it (only a drain
    pulls a slot earlier, to before the replica goes away).
    """

    def __init__(self, window_s: float, rng: random.Random | None = None) -> None:
        self.window_s = window_s
        self._rng = rng or random.Random()
        self._slots: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._slots)

    def slot(self, key: K) -> float | None:
        """The instant ``key`` is due, if it is scheduled."""
        return self._slots.get(key)

    def plan_rebalance(
        self, now: float, cutoff: float, sockets: Iterable[tuple[K, float]]
    ) -> dict[K, float]:
        """After a change of the replica set: every socket accepted before ``cutoff`` and not yet
        scheduled gets a slot over ``[now, now + window_s)``. ``sockets`` are ``(key, accepted
        at)``. Returns the new slots."""
        fresh = [k for k, accepted in sockets if accepted < cutoff and k not in self._slots]
        # Random order: the slot must not depend on who connected first (or on user ids).
        self._rng.shuffle(fresh)
        return self._assign(fresh, spread(len(fresh), now, self.window_s, self._rng))

    def plan_drain(
        self, now: float, deadline: float, sockets: Iterable[K], *, start: float | None = None
    ) -> dict[K, float]:
        """This replica is going away at ``deadline``: every socket gets a slot before it. Slots
        already before it stay; the others are spread over ``[start, deadline)`` (``start``
        defaults to ``now``; all at ``start`` once it is past the deadline). Returns the new or
        moved slots."""
        begin = now if start is None else max(now, min(start, deadline))
        late = [k for k in sockets if self._late(k, now, deadline)]
        self._rng.shuffle(late)
        return self._assign(late, spread(len(late), begin, max(0.0, deadline - begin), self._rng))

    def _late(self, key: K, now: float, deadline: float) -> bool:
        at = self._slots.get(key)
        # Already due counts as on time: a slot is never pushed later.
        return at is None or (at >= deadline and at > now)

    def _assign(self, keys: list[K], instants: list[float]) -> dict[K, float]:
        planned = dict(zip(keys, instants, strict=True))
        for key, at in planned.items():
            self._slots[key] = at
            heapq.heappush(self._heap, (at, next(self._order), key))
        return planned

    def next_due(self) -> float | None:
        """The earliest slot, if any."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """The sockets whose slot has come (in slot order); they leave the schedule."""
        due: list[K] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return due
            _at, _n, key = heapq.heappop(self._heap)
            del self._slots[key]
            due.append(key)

    def forget(self, key: K) -> None:
        """The socket is gone: drop its slot."""
        self._slots.pop(key, None)

    def _drop_stale(self) -> None:
        # Heap entries of moved or forgotten slots are dropped lazily.
        heap = self._heap
        while heap and self._slots.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)


@dataclass(frozen=True)
class DrainProbe:
    """Whether Serve has started stopping this replica, and how long its sockets then last."""

    is_draining: Callable[[], bool]
    window_s: float


def serve_drain_probe() -> DrainProbe | None:
    """A probe of this Serve replica's drain, or None outside Serve (or on a Ray that differs).

    Ray 2.60 tells user code nothing when a replica starts draining: ``__del__`` runs only after
    the drain (``Replica._perform_graceful_shutdown``, serve/_private/replica.py). Its first step
    sets ``ReplicaBase._shutting_down`` (the flag Serve's own data-plane health check reads to
    answer "DRAINING"), so this reads that flag, guarded: any surprise means no probe, and the
    replica keeps the all-at-once drain at ``__del__``. Behind HAProxy the sockets last
    ``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`` (then uvicorn closes them all with 1012,
    ``_drain_behind_haproxy``); otherwise until ``graceful_shutdown_timeout_s``.
    """
    try:
        from ray._private.worker import global_worker
        from ray.serve._private import constants

        actor = global_worker.actors.get(global_worker.actor_id)
        impl = getattr(actor, "_replica_impl", None)
        if impl is None or not isinstance(getattr(impl, "_shutting_down", None), bool):
            return None
        direct = bool(constants.RAY_SERVE_ENABLE_DIRECT_INGRESS) and bool(impl._ingress)
        if direct:
            window = float(constants.RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S)
        else:
            window = float(impl._deployment_config.graceful_shutdown_timeout_s)
    except Exception:
        logger.info("no drain probe for this replica; it drains at shutdown", exc_info=True)
        return None
    return DrainProbe(lambda: bool(getattr(impl, "_shutting_down", False)), window)


class ReloadCoordinator:
    """Announces this replica's changes and reconnects its sockets in turn (see the module).

    ``rebalance``: react to other replicas' events (HAProxy only, and a window above 0).
    """

    def __init__(
        self,
        bus: EventBus,
        keys: Keys,
        replica_id: str,
        connections: Callable[[], list[Connection]],
        *,
        window_s: float,
        announce: bool,
        rebalance: bool,
        drain_probe: DrainProbe | None,
        settle_s: Mapping[str, float] | None = None,
    ) -> None:
        self._bus = bus
        self._channel = keys.gateways_channel()
        self.replica_id = replica_id
        self._connections = connections
        self._announce_changes = announce
        self._rebalance = rebalance and window_s > 0
        self._probe = drain_probe
        self._settle_s = RELOAD_SETTLE_S if settle_s is None else settle_s
        if window_s > MAX_WINDOW_S:
            logger.warning(
                "reload_reconnect_window_s %.0f would outlast haproxy's hard stop; using %.0f",
                window_s,
                MAX_WINDOW_S,
            )
            window_s = MAX_WINDOW_S
        self._schedule: ReconnectSchedule[Connection] = ReconnectSchedule(window_s)
        # Sockets already told: they are closing (the flush, the close handshake) and must not
        # be scheduled again meanwhile. Weak: a closed socket leaves by itself.
        self._told: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._wake = asyncio.Event()
        self._listener = ChannelListener(bus, self._channel, self._on_event)
        self._tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        # Sockets told to reconnect, by reason (for logs, metrics and tests).
        self.told: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen for other replicas' events, watch for a drain, then announce "ready"."""
        if self._rebalance:
            await self._listener.start()
        self._spawn(self._fire())
        if self._probe is not None:
            self._spawn(self._watch_drain(self._probe))
        await self._announce("ready")

    async def close(self) -> None:
        """Stop (the replica is shutting down); announce the drain if nobody has yet."""
        if not self.draining:
            self.draining = True
            await self._announce("draining")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._listener.close()

    async def begin_drain(self, window_s: float) -> None:
        """This replica goes away in ``window_s``: announce it, and tell every socket to leave,
        spread over that time (sockets that arrive meanwhile too) until closed."""
        if self.draining:
            return
        self.draining = True
        seen = time.monotonic()
        deadline = seen + max(0.0, window_s - DRAIN_MARGIN_S)
        start = seen + DRAIN_HOLD_S
        await self._announce("draining")
        first = True
        while True:
            conns = self._open_connections()
            planned = self._schedule.plan_drain(time.monotonic(), deadline, conns, start=start)
            if first or planned:
                logger.info(
                    "replica %s draining: %d sockets told to reconnect within %.1fs",
                    self.replica_id,
                    len(planned),
                    max(0.0, deadline - time.monotonic()),
                )
                first = False
            if planned:
                self._wake.set()
            await asyncio.sleep(DRAIN_POLL_S)

    # -- internals --------------------------------------------------------------------------

    async def _announce(self, kind: EventKind) -> None:
        if not self._announce_changes:
            return
        event = TopologyEvent(kind=kind, replica_id=self.replica_id, at=time.time())
        try:
            await self._bus.publish(self._channel, event.encode())
        except (RedisError, OSError):
            # Other replicas then miss one rebalance: their old sockets meet haproxy's hard stop
            # and resume from their cursors, as without this module.
            logger.warning("cannot announce %s of replica %s", kind, self.replica_id)

    def _on_event(self, payload: bytes) -> None:
        event = TopologyEvent.decode(payload)
        if event is None or event.replica_id == self.replica_id or self.draining:
            return
        logger.info("replica %s saw %s of %s", self.replica_id, event.kind, event.replica_id)
        self._spawn(self._rebalance_after(time.monotonic() + self._settle_s[event.kind]))

    async def _rebalance_after(self, cutoff: float) -> None:
        await asyncio.sleep(max(0.0, cutoff - time.monotonic()))
        if self.draining:
            return
        conns = [(c, c.opened_at) for c in self._open_connections()]
        planned = self._schedule.plan_rebalance(time.monotonic(), cutoff, conns)
        if planned:
            logger.info(
                "replica %s: %d sockets told to reconnect over the next %.0fs",
                self.replica_id,
                len(planned),
                self._schedule.window_s,
            )
            self._wake.set()

    async def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for conn in self._schedule.pop_due(time.monotonic()):
                self._tell(conn, loop)
            self._wake.clear()
            due = self._schedule.next_due()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _open_connections(self) -> list[Connection]:
        return [c for c in self._connections() if not c.closed and c not in self._told]

    def _tell(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        if conn.closed or conn in self._told:
            return
        self._told.add(conn)
        reason = "draining" if self.draining else "rebalance"
        conn.send(dump_frame(ReconnectFrame(reason=reason)))
        loop.call_later(FLUSH_S, conn.request_close, CloseCode.SERVICE_RESTART)
        self.told[reason] = self.told.get(reason, 0) + 1

    async def _watch_drain(self, probe: DrainProbe) -> None:
        while not probe.is_draining():
            await asyncio.sleep(DRAIN_POLL_S)
        await self.begin_drain(probe.window_s)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("reload task failed", exc_info=task.exception())
