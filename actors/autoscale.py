"""Autoscaling of the host pool: how many ``ActorHost`` actors the cluster runs.

Ray's autoscaler adds and removes *nodes* for resource demand; it never decides how many hosts
Warbler wants. This controller does. It reads each pool host's load (active entities, mailbox
backlog, event-loop lag), decides with hysteresis, bounds and cooldowns, and calls
``add_host`` / ``remove_host``. The two layers then meet through the ``warbler_host`` resource:
a new host that no node can hold makes Ray's autoscaler launch a host node; a removed host
leaves its node idle, and Ray's autoscaler removes the node after its idle timeout.

``decide`` is pure (loads, memory, policy, now -> decision, memory): unit-tested with no Ray and
no clock. ``HostAutoscaler`` applies decisions through callables passed in; ``for_cluster``
wires it to ``actors.cluster``; ``HostPoolController`` runs that as one detached Ray actor per
cluster, which ``ensure_controller`` starts from ``warbler up`` and from every gateway replica
(the RayService path), whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

import ray

from actors import cluster
from actors.failover import FailoverWatcher
from actors.names import AUTOSCALER_NAME
from warbler import metrics
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)


class HostLoad(Protocol):
    """What the controller needs to know about one host."""

    @property
    def active_entities(self) -> int:
        """Entities activated on the host (memory: each costs state and a mailbox)."""
        ...

    @property
    def mailbox_backlog(self) -> int:
        """Messages accepted and not yet handled, summed over the host's mailboxes."""
        ...

    @property
    def loop_lag_ms(self) -> float:
        """How late the host's event loop runs a callback scheduled on time (CPU saturation)."""
        ...


@dataclass(frozen=True)
class HostLoadSample:
    """One reading of a host's load (a ``HostLoad``)."""

    active_entities: int = 0
    mailbox_backlog: int = 0
    loop_lag_ms: float = 0.0

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> HostLoadSample:
        """From ``ActorHost.stats()``: ``active``, ``backlog``, ``loop_lag_ms`` (absent: 0)."""
        return cls(
            active_entities=int(stats.get("active") or 0),
            mailbox_backlog=int(stats.get("backlog") or 0),
            loop_lag_ms=float(stats.get("loop_lag_ms") or 0.0),
        )


# A host's load, or None when it did not answer (restarting, or its node is gone).
PoolLoads = Mapping[str, HostLoad | None]


@dataclass(frozen=True)
class AutoscalePolicy:
    """Bounds, targets and timing of host-pool scaling.

    Utilization is load over target for each signal, averaged over the pool; the pool grows when
    the highest of them stays above 1.0 for ``up_sustain_s``, and shrinks by one host when,
    with one host fewer, all would stay below ``scale_down_below`` for ``down_sustain_s``. The
    gap between the two thresholds is the hysteresis that keeps a shrink from causing a grow.
    """

    min_hosts: int = 1
    max_hosts: int = 8
    target_entities_per_host: int = 100_000
    target_backlog_per_host: float = 500.0
    target_loop_lag_ms: float = 50.0
    scale_down_below: float = 0.5
    up_sustain_s: float = 30.0
    down_sustain_s: float = 300.0
    # Time since the last action (its end) before the next one: a shard move needs time to
    # settle, and metrics read during it are not the new pool's.
    up_cooldown_s: float = 60.0
    down_cooldown_s: float = 600.0
    max_step_up: int = 2
    action_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        problems = []
        if self.min_hosts < 1:
            problems.append("min_hosts must be at least 1 (no host serves no entity)")
        if self.max_hosts < self.min_hosts:
            problems.append("max_hosts must be at least min_hosts")
        targets = (self.target_entities_per_host, self.target_backlog_per_host)
        if min(*targets, self.target_loop_lag_ms) <= 0:
            problems.append("targets must be positive")
        if not 0 < self.scale_down_below < 1:
            problems.append("scale_down_below must be between 0 and 1 (exclusive)")
        timings = (self.up_sustain_s, self.down_sustain_s, self.up_cooldown_s)
        if min(*timings, self.down_cooldown_s) < 0:
            problems.append("sustain and cooldown times must not be negative")
        if self.max_step_up < 1 or self.action_timeout_s <= 0:
            problems.append("max_step_up and action_timeout_s must be positive")
        if problems:
            raise WarblerError(ErrorCode.CONFIG, "autoscale policy: " + "; ".join(problems))

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> AutoscalePolicy:
        """Bounds from settings; aim at half the per-host entity cap, so a host scales out well
        before it starts evicting (``max_active_entities``)."""
        values: dict[str, Any] = {
            "min_hosts": settings.min_hosts,
            "max_hosts": settings.max_hosts,
            "target_entities_per_host": max(1, settings.max_active_entities // 2),
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class Utilization:
    """Pool load over target, per signal (1.0 = at target)."""

    entities: float
    backlog: float
    loop_lag: float

    @property
    def peak(self) -> float:
        """The signal closest to (or furthest past) its target."""
        return max(self.entities, self.backlog, self.loop_lag)


def utilization(loads: list[HostLoad], policy: AutoscalePolicy) -> Utilization:
    """The pool's utilization: each signal's mean per host over its per-host target."""
    n = len(loads)
    if n == 0:
        return Utilization(0.0, 0.0, 0.0)
    return Utilization(
        entities=sum(h.active_entities for h in loads) / (n * policy.target_entities_per_host),
        backlog=sum(h.mailbox_backlog for h in loads) / (n * policy.target_backlog_per_host),
        loop_lag=sum(h.loop_lag_ms for h in loads) / (n * policy.target_loop_lag_ms),
    )


class Action(StrEnum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True)
class Decision:
    """What to do now: add ``add`` hosts, remove the hosts named, or nothing; and why."""

    action: Action
    reason: str
    add: int = 0
    remove: tuple[str, ...] = ()
    utilization: Utilization | None = None


@dataclass(frozen=True)
class ScalerMemory:
    """What ``decide`` carries from one call to the next (times from the same clock)."""

    pressure_since: float | None = None  # utilization above target continuously since
    slack_since: float | None = None  # room to remove a host continuously since
    last_action_at: float | None = None  # end of the last add/remove


def _hold(
    reason: str, memory: ScalerMemory, u: Utilization | None = None
) -> tuple[Decision, ScalerMemory]:
    return Decision(Action.HOLD, reason, utilization=u), memory


def _natural(name: str) -> tuple[Any, ...]:
    # "host-10" after "host-9".
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _removal_order(loads: Mapping[str, HostLoad]) -> list[str]:
    """Cheapest host to remove first: fewest entities to move, then the newest name."""
    newest_first = sorted(loads, key=_natural, reverse=True)
    # A stable sort: among equal loads the newest stays first.
    return sorted(
        newest_first, key=lambda name: (loads[name].active_entities, loads[name].mailbox_backlog)
    )


def _since(started: float | None, holds: bool, now: float) -> float | None:
    """When a condition that ``holds`` now began: kept while it holds, cleared when it breaks."""
    if not holds:
        return None
    return now if started is None else started


def decide(
    loads: PoolLoads, memory: ScalerMemory, policy: AutoscalePolicy, now: float
) -> tuple[Decision, ScalerMemory]:
    """The next scaling decision for a pool whose hosts report ``loads`` at time ``now``.

    Bounds first (outside ``[min_hosts, max_hosts]`` is fixed at once, no sustain, no
    cooldown); then nothing while any host's load is unknown; then up or down by utilization.
    The returned memory assumes the decision is carried out.
    """
    n = len(loads)
    acted = replace(memory, pressure_since=None, slack_since=None, last_action_at=now)
    if n < policy.min_hosts:
        add = policy.min_hosts - n
        return Decision(Action.UP, f"{n} hosts, below min_hosts {policy.min_hosts}", add=add), acted
    known = {name: load for name, load in loads.items() if load is not None}
    if n > policy.max_hosts:
        # Unknown loads sort last: remove hosts we know to be light before guessing.
        order = _removal_order(known) + sorted(set(loads) - set(known), key=_natural)
        remove = tuple(order[: n - policy.max_hosts])
        return Decision(
            Action.DOWN, f"{n} hosts, above max_hosts {policy.max_hosts}", remove=remove
        ), acted
    missing = sorted(set(loads) - set(known), key=_natural)
    if missing:
        return _hold(f"no load from {', '.join(missing)}", memory)

    u = utilization(list(known.values()), policy)
    overloaded = u.peak > 1.0
    # With one host fewer, the same load spreads over n - 1 hosts.
    underloaded = n > policy.min_hosts and u.peak * n / (n - 1) < policy.scale_down_below
    memory = replace(
        memory,
        pressure_since=_since(memory.pressure_since, overloaded, now),
        slack_since=_since(memory.slack_since, underloaded, now),
    )
    since_action = math.inf if memory.last_action_at is None else now - memory.last_action_at

    if overloaded:
        assert memory.pressure_since is not None
        if n >= policy.max_hosts:
            return _hold(f"utilization {u.peak:.2f} but at max_hosts {policy.max_hosts}", memory, u)
        if now - memory.pressure_since < policy.up_sustain_s:
            return _hold(
                f"utilization {u.peak:.2f} for {now - memory.pressure_since:.0f}s", memory, u
            )
        if since_action < policy.up_cooldown_s:
            return _hold(f"utilization {u.peak:.2f}; cooling down after the last action", memory, u)
        # Enough hosts to bring the busiest signal back to target, in steps of max_step_up.
        wanted = max(1, math.ceil(n * u.peak) - n)
        add = min(wanted, policy.max_step_up, policy.max_hosts - n)
        return Decision(Action.UP, f"utilization {u.peak:.2f} > 1.0", add=add, utilization=u), acted

    if underloaded:
        assert memory.slack_since is not None
        if now - memory.slack_since < policy.down_sustain_s:
            return _hold(
                f"utilization {u.peak:.2f}, low for {now - memory.slack_since:.0f}s", memory, u
            )
        if since_action < policy.down_cooldown_s:
            return _hold(f"utilization {u.peak:.2f}; cooling down after the last action", memory, u)
        victim = _removal_order(known)[0]
        reason = f"utilization {u.peak:.2f}: {n - 1} hosts suffice"
        return Decision(Action.DOWN, reason, remove=(victim,), utilization=u), acted

    return _hold(f"utilization {u.peak:.2f} within band", memory, u)


LoadSource = Callable[[], Awaitable[PoolLoads]]
AddHost = Callable[[], Awaitable[str]]
RemoveHost = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class StepResult:
    """One controller step: the decision, what was done, and the error that stopped it."""

    decision: Decision
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    error: str | None = None


class HostAutoscaler:
    """Applies ``decide`` every ``interval_s``: reads loads, adds or removes hosts.

    Actions run one at a time (each is a shard move) and each is bounded by
    ``policy.action_timeout_s``: an added host waits for Ray to find it a node, which on a cloud
    can take minutes. A failed or timed-out action still starts the cooldown, so a pool that
    cannot grow (no capacity, quota) is retried at the cooldown's pace, not every tick.
    """

    def __init__(
        self,
        policy: AutoscalePolicy,
        load_source: LoadSource,
        add_host: AddHost,
        remove_host: RemoveHost,
        *,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise WarblerError(ErrorCode.CONFIG, "autoscaler interval_s must be positive")
        self.policy = policy
        self.memory = ScalerMemory()
        self._load_source = load_source
        self._add_host = add_host
        self._remove_host = remove_host
        self._interval_s = interval_s
        self._clock = clock

    async def step(self) -> StepResult:
        """Read the loads, decide, and carry the decision out."""
        try:
            loads = await asyncio.wait_for(self._load_source(), timeout=self._interval_s)
        except Exception as exc:  # a metrics hiccup must not stop the controller
            logger.exception("autoscaler: reading host loads failed")
            return StepResult(Decision(Action.HOLD, "no loads"), error=repr(exc))
        decision, self.memory = decide(loads, self.memory, self.policy, self._clock())
        if decision.action is Action.HOLD:
            logger.debug("autoscaler: hold (%s)", decision.reason)
            return StepResult(decision)
        logger.info(
            "autoscaler: %s %s (%s)",
            decision.action.value,
            decision.add or ", ".join(decision.remove),
            decision.reason,
        )
        added: list[str] = []
        removed: list[str] = []
        error = None
        timeout = self.policy.action_timeout_s
        try:
            for _ in range(decision.add):
                added.append(await asyncio.wait_for(self._add_host(), timeout=timeout))
                logger.info("autoscaler: added host %s", added[-1])
            for name in decision.remove:
                await asyncio.wait_for(self._remove_host(name), timeout=timeout)
                removed.append(name)
                logger.info("autoscaler: removed host %s", name)
        except Exception as exc:
            logger.exception("autoscaler: %s failed", decision.action.value)
            error = repr(exc)
        finally:
            # Cooldowns count from the end of the action: its shard moves are done by then.
            self.memory = replace(self.memory, last_action_at=self._clock())
        return StepResult(decision, tuple(added), tuple(removed), error)

    async def run(self, stop: asyncio.Event) -> None:
        """Step every ``interval_s`` until ``stop`` is set (or the task is cancelled)."""
        while not stop.is_set():
            await self.step()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
            except TimeoutError:
                pass


async def pool_loads(settings: Settings, *, timeout_s: float = 5.0) -> dict[str, HostLoad | None]:
    """The load of every pool host in the committed shard map (dedicated hosts are not part of
    the pool) and of failed-over ones; None for a host that does not answer within
    ``timeout_s`` (or is failed over)."""
    shard_map, failed_over = await cluster.pool_view(settings)
    if shard_map is None:
        # Not started yet, or shut down: not "zero hosts", which decide() would grow.
        raise WarblerError(ErrorCode.UNAVAILABLE, "no shard map: the hosts are not started")

    async def read(name: str) -> HostLoad | None:
        try:
            stats = await asyncio.wait_for(
                cluster.get_host(settings, name).stats.remote(), timeout=timeout_s
            )
        except Exception:  # dead, restarting or unreachable: "unknown", decide() holds
            logger.warning("autoscaler: no load from host %s", name, exc_info=True)
            return None
        return HostLoadSample.from_stats(stats)

    names = list(shard_map.hosts)
    samples = await asyncio.gather(*(read(name) for name in names))
    loads = dict(zip(names, samples, strict=True))
    # A failed-over host is still the pool's (it is readmitted once Ray has restarted it):
    # count it, load unknown, so a failover neither looks like a pool below min_hosts nor
    # lets a decision be made on the hosts that are covering for it.
    for name in failed_over:
        loads.setdefault(name, None)
    return loads


def for_cluster(
    settings: Settings, policy: AutoscalePolicy | None = None, *, interval_s: float = 10.0
) -> HostAutoscaler:
    """A controller over this cluster's host pool (``actors.cluster``), inside a Ray driver."""

    async def add() -> str:
        return await cluster.add_host(settings)

    async def remove(name: str) -> None:
        await cluster.remove_host(settings, name)

    return HostAutoscaler(
        policy or AutoscalePolicy.from_settings(settings),
        load_source=partial(pool_loads, settings),
        add_host=add,
        remove_host=remove,
        interval_s=interval_s,
    )


# Actions (and the latest hold) a controller keeps for `status()`.
_HISTORY = 200


class HostPoolController:
    """The host autoscaler and the failover watcher (``actors.failover``) of one cluster, as a
    detached Ray actor (``AUTOSCALER_NAME``); each runs when its setting is on.

    It starts its loops in ``__init__`` (an async actor's constructor runs in its event loop),
    so a restart after a crash (``max_restarts=-1``) resumes with nobody calling in. A move the
    previous incarnation left half done is finished by ``actors.cluster`` first.
    """

    def __init__(self, settings: Settings) -> None:
        self._policy = AutoscalePolicy.from_settings(settings, **settings.host_autoscale_policy)
        self._scaler = for_cluster(
            settings, self._policy, interval_s=settings.host_autoscale_interval_s
        )
        self._interval_s = settings.host_autoscale_interval_s
        self._history: deque[dict[str, Any]] = deque(maxlen=_HISTORY)
        self._steps = 0
        metrics.configure(settings)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run()) if settings.host_autoscale else None
        # Failover runs in the same actor: one controller per cluster, on the head node.
        self._failover = FailoverWatcher(settings) if settings.host_failover else None
        self._failover_task = (
            loop.create_task(self._failover.run()) if self._failover is not None else None
        )

    async def _run(self) -> None:
        while True:
            began = time.time()
            result = await self._scaler.step()
            self._steps += 1
            self._record(result, began)
            await asyncio.sleep(self._interval_s)

    def _record(self, result: StepResult, began: float) -> None:
        decision = result.decision
        metrics.DECISIONS.child(decision.action.value).inc()
        entry = {
            "t": began,  # when it read the loads and decided
            "took_s": round(time.time() - began, 3),  # the action: node launch, shard move
            "action": decision.action.value,
            "reason": decision.reason,
            "added": list(result.added),
            "removed": list(result.removed),
            "error": result.error,
            "utilization": asdict(decision.utilization) if decision.utilization else None,
        }
        last = self._history[-1] if self._history else None
        # Consecutive holds collapse into the newest: the history keeps every action, and what
        # the controller thinks now.
        if last is not None and decision.action is Action.HOLD and last["action"] == "hold":
            self._history[-1] = entry
        else:
            self._history.append(entry)

    async def status(self) -> dict[str, Any]:
        """The policy, how many steps ran, and the recent decisions (newest last)."""
        return {
            "running": self._task is not None and not self._task.done(),
            "steps": self._steps,
            "policy": asdict(self._policy),
            "history": list(self._history),
            "failover": {
                "running": self._failover_task is not None and not self._failover_task.done(),
                "history": list(self._failover.history) if self._failover is not None else [],
            },
        }


def ensure_controller(settings: Settings) -> Any | None:
    """Start this cluster's controller actor (the autoscaler and the failover watcher) unless it
    runs, or both ``settings.host_autoscale`` and ``settings.host_failover`` are off; returns
    its handle. Safe to call from many processes at once (``get_if_exists``)."""
    if not settings.host_autoscale and not settings.host_failover:
        return None
    # Validate here, in the caller, so a bad WARBLER_HOST_AUTOSCALE_POLICY fails `warbler up`
    # with a clear error instead of crash-looping a detached actor.
    AutoscalePolicy.from_settings(settings, **settings.host_autoscale_policy)
    options: dict[str, Any] = {
        "name": AUTOSCALER_NAME,
        "namespace": settings.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
        # On the head, which never scales down: on a host node it would keep that node from
        # ever being idle (Serve's controller is placed the same way).
        "resources": {"node:__internal_head__": 0.001},
    }
    if settings.extra_ray_env:
        options["runtime_env"] = {"env_vars": dict(settings.extra_ray_env)}
    return ray.remote(HostPoolController).options(**options).remote(settings)


def controller_status(settings: Settings, *, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """The running autoscaler's ``status()``, or None if it does not run (a Ray driver call)."""
    try:
        handle = ray.get_actor(AUTOSCALER_NAME, namespace=settings.namespace)
    except ValueError:
        return None
    status: Any = ray.get(handle.status.remote(), timeout=timeout_s)
    return dict(status)
