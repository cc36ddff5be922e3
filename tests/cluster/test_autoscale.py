"""Host-pool autoscaling (actors/autoscale.py): the pure decision, the controller loop over an
in-memory pool, and the wiring to real hosts on the session Ray cluster.

Time is always injected (``now`` / a fake clock): no test waits for or measures wall time.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from actors import cluster
from actors.autoscale import (
    Action,
    AutoscalePolicy,
    HostAutoscaler,
    HostLoad,
    HostLoadSample,
    PoolLoads,
    ScalerMemory,
    decide,
    for_cluster,
    pool_loads,
)
from storage import Database
from warbler.config import Settings
from warbler.errors import ErrorCode, WarblerError

POLICY = AutoscalePolicy(
    min_hosts=2,
    max_hosts=6,
    target_entities_per_host=1000,
    target_backlog_per_host=100,
    target_loop_lag_ms=50,
    scale_down_below=0.5,
    up_sustain_s=30,
    down_sustain_s=300,
    up_cooldown_s=60,
    down_cooldown_s=600,
    max_step_up=2,
)


def pool(*entities: int, backlog: int = 0, lag: float = 0.0) -> dict[str, HostLoad | None]:
    """host-0..host-n with the given active entities each."""
    return {
        f"host-{i}": HostLoadSample(active_entities=e, mailbox_backlog=backlog, loop_lag_ms=lag)
        for i, e in enumerate(entities)
    }


def run(
    loads: PoolLoads, times: list[float], memory: ScalerMemory | None = None
) -> tuple[list[Action], ScalerMemory]:
    """decide() at each time with the same loads, carrying memory; the actions taken."""
    memory = memory or ScalerMemory()
    actions = []
    for now in times:
        decision, memory = decide(loads, memory, POLICY, now)
        actions.append(decision.action)
    return actions, memory


# --- decide ------------------------------------------------------------------------------------


def test_below_min_hosts_scales_up_at_once_despite_cooldown() -> None:
    memory = ScalerMemory(last_action_at=100.0)  # inside every cooldown
    decision, after = decide(pool(0), memory, POLICY, now=101.0)
    assert decision.action is Action.UP and decision.add == 1
    assert after.last_action_at == 101.0
    decision, _ = decide({}, ScalerMemory(), POLICY, now=0.0)
    assert decision.add == POLICY.min_hosts


def test_above_max_hosts_removes_the_lightest_known_hosts_first() -> None:
    loads = pool(500, 10, 900, 10, 800, 700, 600)  # 7 hosts, max 6
    loads["host-7"] = None  # unknown load: only removed if nothing known is left to remove
    decision, _ = decide(loads, ScalerMemory(last_action_at=0.0), POLICY, now=1.0)
    assert decision.action is Action.DOWN
    # Two of 8 to go; the two lightest tie on load, the newer name goes first.
    assert decision.remove == ("host-3", "host-1")


def test_unknown_load_holds_and_keeps_memory() -> None:
    loads = pool(5000, 5000)
    _, memory = decide(loads, ScalerMemory(), POLICY, now=0.0)
    assert memory.pressure_since == 0.0
    loads["host-1"] = None
    decision, after = decide(loads, memory, POLICY, now=40.0)
    assert decision.action is Action.HOLD and "host-1" in decision.reason
    assert after == memory


def test_overload_must_last_up_sustain_s() -> None:
    loads = pool(1500, 1500)  # utilization 1.5
    actions, memory = run(loads, [0.0, 10.0, 29.0])
    assert actions == [Action.HOLD] * 3
    assert memory.pressure_since == 0.0
    decision, after = decide(loads, memory, POLICY, now=30.0)
    assert decision.action is Action.UP
    assert after.pressure_since is None and after.last_action_at == 30.0


def test_a_break_in_the_overload_restarts_the_sustain_clock() -> None:
    _, memory = run(pool(1500, 1500), [0.0, 20.0])
    _, memory = run(pool(900, 900), [25.0], memory)  # back under target
    assert memory.pressure_since is None
    actions, memory = run(pool(1500, 1500), [26.0, 50.0], memory)
    assert actions == [Action.HOLD, Action.HOLD]
    assert memory.pressure_since == 26.0


def test_up_waits_for_the_cooldown_after_the_last_action() -> None:
    memory = ScalerMemory(last_action_at=0.0)
    actions, memory = run(pool(1500, 1500), [1.0, 31.0, 59.0], memory)
    assert actions == [Action.HOLD] * 3  # sustained since 1.0, but cooling down until 60
    decision, _ = decide(pool(1500, 1500), memory, POLICY, now=60.0)
    assert decision.action is Action.UP


@pytest.mark.parametrize(
    ("loads", "add"),
    [
        (pool(1100, 1100), 1),  # 2.2 hosts' worth: one more
        (pool(3000, 3000), 2),  # 6 hosts' worth: capped at max_step_up
        (pool(1500, 1500, 1500, 1500, 1500), 1),  # 5 hosts, max 6
    ],
)
def test_step_up_size(loads: PoolLoads, add: int) -> None:
    _, memory = run(loads, [0.0])
    decision, _ = decide(loads, memory, POLICY, now=30.0)
    assert (decision.action, decision.add) == (Action.UP, add)


@pytest.mark.parametrize(
    "loads",
    [
        pool(10, 10, backlog=150),  # mailboxes falling behind
        pool(10, 10, lag=80.0),  # event loops saturated
        pool(1200, 1200),  # too many entities
    ],
)
def test_each_signal_alone_scales_up(loads: PoolLoads) -> None:
    actions, _ = run(loads, [0.0, 30.0])
    assert actions == [Action.HOLD, Action.UP]


def test_no_up_at_max_and_no_down_at_min() -> None:
    actions, _ = run(pool(*[5000] * 6), [0.0, 1000.0])
    assert actions == [Action.HOLD, Action.HOLD]
    actions, _ = run(pool(0, 0), [0.0, 1000.0, 5000.0])
    assert actions == [Action.HOLD] * 3


def test_down_needs_room_for_one_host_fewer() -> None:
    # 3 hosts at 0.4: on 2 hosts that is 0.6, above scale_down_below 0.5: stay.
    actions, _ = run(pool(400, 400, 400), [0.0, 1000.0])
    assert actions == [Action.HOLD, Action.HOLD]
    # 3 hosts at 0.3: on 2 hosts 0.45: remove one, after down_sustain_s.
    actions, memory = run(pool(300, 300, 300), [0.0, 299.0])
    assert actions == [Action.HOLD, Action.HOLD]
    decision, _ = decide(pool(300, 300, 300), memory, POLICY, now=300.0)
    assert decision.action is Action.DOWN and len(decision.remove) == 1


def test_down_picks_the_host_with_fewest_entities() -> None:
    loads = pool(300, 100, 300)
    _, memory = run(loads, [0.0])
    decision, _ = decide(loads, memory, POLICY, now=300.0)
    assert decision.remove == ("host-1",)


def test_removing_a_host_never_makes_the_pool_want_it_back() -> None:
    # Hysteresis: whatever load makes decide() remove a host, the same load on the smaller pool
    # is inside the band (no up), for every pool size and load on a grid.
    for n in range(POLICY.min_hosts + 1, POLICY.max_hosts + 1):
        for per_host in range(0, 1500, 10):
            loads = pool(*[per_host] * n)
            _, memory = run(loads, [0.0])
            decision, _ = decide(loads, memory, POLICY, now=10_000.0)
            if decision.action is not Action.DOWN:
                continue
            total = per_host * n
            smaller = pool(*[total // (n - 1)] * (n - 1))
            _, memory = run(smaller, [0.0])
            after, _ = decide(smaller, memory, POLICY, now=10_000.0)
            assert after.action is not Action.UP, (n, per_host)


@pytest.mark.parametrize(
    "bad",
    [
        {"min_hosts": 0},
        {"min_hosts": 5, "max_hosts": 4},
        {"scale_down_below": 1.0},
        {"scale_down_below": 0.0},
        {"target_loop_lag_ms": 0},
        {"up_cooldown_s": -1},
        {"max_step_up": 0},
    ],
)
def test_bad_policy_is_a_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(WarblerError) as info:
        AutoscalePolicy(**bad)
    assert info.value.code is ErrorCode.CONFIG


def test_policy_from_settings() -> None:
    settings = Settings(min_hosts=3, max_hosts=9, max_active_entities=10_000)
    policy = AutoscalePolicy.from_settings(settings, up_sustain_s=5)
    assert (policy.min_hosts, policy.max_hosts) == (3, 9)
    assert policy.target_entities_per_host == 5_000
    assert policy.up_sustain_s == 5


def test_load_from_host_stats() -> None:
    # ActorHost.stats() today has "active"; backlog and loop lag default to 0 until it has them.
    sample = HostLoadSample.from_stats({"name": "host-0", "active": 42, "batches": 7})
    assert sample == HostLoadSample(active_entities=42, mailbox_backlog=0, loop_lag_ms=0.0)
    full = {"active": 1, "backlog": 2, "loop_lag_ms": 3.5}
    assert HostLoadSample.from_stats(full) == HostLoadSample(1, 2, 3.5)


# --- HostAutoscaler over an in-memory pool -----------------------------------------------------


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Pool:
    """Hosts as names; a fixed total of entities spread evenly (as the shard map spreads keys)."""

    total_entities: int
    hosts: list[str] = field(default_factory=lambda: ["host-0", "host-1"])
    next_index: int = 2
    fail_adds: int = 0
    hang_adds: bool = False

    async def loads(self) -> PoolLoads:
        share = self.total_entities // max(1, len(self.hosts))
        return {name: HostLoadSample(active_entities=share) for name in self.hosts}

    async def add(self) -> str:
        if self.hang_adds:
            await asyncio.Event().wait()  # a node that never comes
        if self.fail_adds:
            self.fail_adds -= 1
            raise WarblerError(ErrorCode.UNAVAILABLE, "no capacity")
        name = f"host-{self.next_index}"
        self.next_index += 1
        self.hosts.append(name)
        return name

    async def remove(self, name: str) -> None:
        self.hosts.remove(name)


def controller(pool_: Pool, clock: FakeClock, **policy: Any) -> HostAutoscaler:
    return HostAutoscaler(
        replace(POLICY, **policy), pool_.loads, pool_.add, pool_.remove, clock=clock
    )


async def test_controller_follows_load_up_and_down_without_flapping() -> None:
    clock = FakeClock()
    hosts = Pool(total_entities=100)
    scaler = controller(hosts, clock)
    counts = []
    # Load rises to 5 hosts' worth, stays, then falls back; one step every 10 s for 2 hours.
    for tick in range(720):
        clock.now = tick * 10.0
        hosts.total_entities = 5000 if 600 <= clock.now < 3600 else 100
        result = await scaler.step()
        assert result.error is None
        counts.append(len(hosts.hosts))
    changes = [b - a for a, b in zip(counts, counts[1:], strict=False) if b != a]
    # Grew to 5 hosts' worth (6 at most with rounding), came back to min_hosts, and never
    # reversed direction while the load held steady.
    assert max(counts) in (5, 6) and counts[-1] == POLICY.min_hosts
    ups = [c for c in changes if c > 0]
    downs = [c for c in changes if c < 0]
    assert changes == ups + downs, changes
    assert all(c <= POLICY.max_step_up for c in ups) and all(c == -1 for c in downs)


async def test_failed_add_is_reported_and_starts_the_cooldown() -> None:
    clock = FakeClock()
    hosts = Pool(total_entities=5000, fail_adds=1)
    scaler = controller(hosts, clock)
    await scaler.step()  # pressure starts
    clock.now = 30.0
    result = await scaler.step()
    assert result.decision.action is Action.UP
    assert result.error is not None and "no capacity" in result.error
    assert hosts.hosts == ["host-0", "host-1"]
    # The failure counts as an action: the pressure must be sustained again (from 40 s) and
    # the cooldown runs from the failure's end (30 s).
    clock.now = 40.0
    await scaler.step()
    clock.now = 40.0 + POLICY.up_sustain_s
    held = await scaler.step()
    assert held.decision.action is Action.HOLD and "cooling down" in held.decision.reason
    clock.now = 30.0 + POLICY.up_cooldown_s
    result = await scaler.step()
    assert result.error is None and len(result.added) == 2
    assert len(hosts.hosts) == 4


async def test_an_add_that_never_finishes_is_bounded() -> None:
    clock = FakeClock()
    hosts = Pool(total_entities=5000, hang_adds=True)
    scaler = controller(hosts, clock, up_sustain_s=0, action_timeout_s=0.05)
    result = await scaler.step()
    assert result.decision.action is Action.UP
    assert result.added == () and result.error is not None and "Timeout" in result.error


async def test_metrics_failure_holds() -> None:
    async def broken() -> PoolLoads:
        raise ConnectionError("redis down")

    hosts = Pool(total_entities=0)
    scaler = HostAutoscaler(POLICY, broken, hosts.add, hosts.remove, clock=FakeClock())
    result = await scaler.step()
    assert result.decision.action is Action.HOLD
    assert result.error is not None and "redis down" in result.error


async def test_run_stops_when_asked() -> None:
    hosts = Pool(total_entities=100)
    stop = asyncio.Event()
    steps = 0

    async def counting_loads() -> PoolLoads:
        nonlocal steps
        steps += 1
        if steps == 3:
            stop.set()
        return await hosts.loads()

    scaler = HostAutoscaler(
        POLICY, counting_loads, hosts.add, hosts.remove, interval_s=0.01, clock=FakeClock()
    )
    await asyncio.wait_for(scaler.run(stop), timeout=30)
    assert steps == 3


def test_bad_interval_is_a_config_error() -> None:
    hosts = Pool(total_entities=0)
    with pytest.raises(WarblerError):
        HostAutoscaler(POLICY, hosts.loads, hosts.add, hosts.remove, interval_s=0)


# --- wired to real hosts (session Ray cluster, real Redis and SQL) ------------------------------


@pytest.fixture
async def pool_settings(
    ray_cluster: Any, db: Database, settings: Settings
) -> AsyncIterator[Settings]:
    """One pool host in a namespace of this test's own; every host stopped afterwards."""
    own = settings.model_copy(
        update={"namespace": f"{settings.namespace}-as{uuid.uuid4().hex[:8]}"}
    )
    await cluster.start_hosts(own, 1)
    yield own
    await cluster.shutdown_hosts(own)


@pytest.mark.ray
async def test_controller_adds_and_removes_real_hosts(pool_settings: Settings) -> None:
    loads = await pool_loads(pool_settings)
    assert list(loads) == ["host-0"]
    assert isinstance(loads["host-0"], HostLoadSample)

    # min_hosts 2 with one host: the controller adds one through actors.cluster.add_host.
    grow = for_cluster(pool_settings, AutoscalePolicy(min_hosts=2, max_hosts=2))
    result = await grow.step()
    assert result.error is None and result.added == ("host-1",)
    shard_map = await cluster.current_map(pool_settings)
    assert shard_map is not None and list(shard_map.hosts) == ["host-0", "host-1"]
    assert all(load is not None for load in (await pool_loads(pool_settings)).values())

    # max_hosts 1: it removes one (drained, shards moved) through remove_host.
    shrink = for_cluster(pool_settings, AutoscalePolicy(min_hosts=1, max_hosts=1))
    result = await shrink.step()
    assert result.error is None and len(result.removed) == 1
    shard_map = await cluster.current_map(pool_settings)
    assert shard_map is not None and len(shard_map.hosts) == 1
    assert set(shard_map.shards) == set(shard_map.hosts)


@pytest.mark.ray
async def test_controller_actor_scales_the_pool_and_stops_with_the_hosts(
    pool_settings: Settings,
) -> None:
    import ray

    from actors.autoscale import controller_status, ensure_controller
    from actors.names import AUTOSCALER_NAME

    # What `warbler up` and every gateway replica do; min_hosts 2 over a one-host pool.
    own = pool_settings.model_copy(
        update={"host_autoscale": True, "min_hosts": 2, "host_autoscale_interval_s": 0.2}
    )
    handle = ensure_controller(own)
    assert handle is not None
    # A second caller (another replica) finds the same actor instead of starting a rival.
    again = ensure_controller(own)
    assert again is not None and again._actor_id == handle._actor_id

    shard_map = None
    for _ in range(600):  # bounded wait for the actor's loop, not a timing assertion
        shard_map = await cluster.current_map(own)
        if shard_map is not None and len(shard_map.hosts) == 2:
            break
        await asyncio.sleep(0.1)
    assert shard_map is not None and sorted(shard_map.hosts) == ["host-0", "host-1"]
    # The map is committed before the step that moved it returns and is recorded: wait for it.
    for _ in range(600):
        status = await asyncio.to_thread(controller_status, own)
        assert status is not None and status["running"] and status["policy"]["min_hosts"] == 2
        ups = [entry for entry in status["history"] if entry["action"] == "up"]
        if ups:
            break
        await asyncio.sleep(0.1)
    assert ups and ups[0]["added"] == ["host-1"] and ups[0]["error"] is None, status

    # shutdown_hosts stops the controller first, so it cannot grow the pool back.
    await cluster.shutdown_hosts(own)
    with pytest.raises(ValueError):
        ray.get_actor(AUTOSCALER_NAME, namespace=own.namespace)
    assert await asyncio.to_thread(controller_status, own) is None


def test_controller_refuses_a_bad_policy_before_starting(settings: Settings) -> None:
    from actors.autoscale import ensure_controller

    bad = settings.model_copy(
        update={"host_autoscale": True, "host_autoscale_policy": {"scale_down_below": 2.0}}
    )
    # It validates before it touches Ray: this test has no cluster.
    with pytest.raises(WarblerError) as info:
        ensure_controller(bad)
    assert info.value.code is ErrorCode.CONFIG


def test_controller_is_off_when_disabled(settings: Settings) -> None:
    from actors.autoscale import ensure_controller

    off = {"host_autoscale": False, "host_failover": False}
    assert ensure_controller(settings.model_copy(update=off)) is None
