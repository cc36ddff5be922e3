"""The load generator: devices spread over worker processes, each one asyncio loop (uvloop).

The parent (a benchmark scenario) builds one `WorkerPlan` per process: its devices and its flows
(who sends where). A `GeneratorPool` starts the processes, which connect their devices and report
ready; then each `Phase` runs in every worker at once (from a common wall-clock start), and each
worker answers with a `WorkerResult`: its ledger share, its CPU time (so we can tell when the
generator, not the server, is the limit) and its counters. Several phases reuse the same sockets.

Flow control:
- closed loop (``Phase.rate_per_flow is None``): every flow keeps ``window`` messages in flight and
  sends the next one on each ack: the highest rate the server sustains, with a bounded backlog;
- open loop (``rate_per_flow`` set): every flow sends at that rate, whatever the server does, so
  latency reflects queueing; the backlog per flow is capped at ``max_in_flight``.

Every loop is bounded in count and in time; every phase ends with a drain of bounded length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loadtest.accounting import Ledger
from loadtest.device import Device, DeviceStats
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    """One device to connect: whose, with which token, under which key in the ledger."""

    key: str
    user_id: int
    token: str
    device_id: str
    sender_index: int = 0
    # Connect with these cursors (and wait for sync_done) instead of a bare hello.
    cursors: dict[int, int] | None = None
    # Connect only when a phase asks for it (the sync scenario's device that was away).
    deferred: bool = False


@dataclass(frozen=True)
class FlowSpec:
    """A stream of messages from one device into one conversation (or to one user)."""

    sender: str
    expected: int
    conversation_id: int | None = None
    to_user_id: int | None = None


@dataclass(frozen=True)
class WorkerPlan:
    """Everything one worker process does."""

    index: int
    ws_url: str
    run_id: str
    devices: list[DeviceSpec]
    flows: list[FlowSpec] = field(default_factory=list)
    resume: bool = False
    connect_concurrency: int = 64
    connect_timeout_s: float = 15.0
    # Connecting stops early after this many failures (say, the server hit its socket cap),
    # or when this many seconds have passed.
    max_connect_failures: int = 50
    connect_budget_s: float = 120.0


@dataclass(frozen=True)
class Phase:
    """One timed run of the flows (or of a deferred connect, or of nothing: idle)."""

    duration_s: float
    rate_per_flow: float | None = None  # messages per second per flow; None = closed loop
    window: int = 4
    max_in_flight: int = 1000
    body_bytes: int = 64
    # After sending stops: end when every send is acked and no frame came for quiet_s,
    # or at drain_s at the latest.
    quiet_s: float = 0.5
    drain_s: float = 10.0
    # Connect the deferred devices at the start of the phase (and time it).
    connect_deferred: bool = False
    # Stop sending after this many messages per flow (None: only the duration bounds it).
    max_messages_per_flow: int | None = None
    # False: keep recording into the previous phase's ledger (sends of one phase, deliveries
    # of the next: the sync scenario).
    reset_ledger: bool = True
    # Record (sent, delivered) times of every delivery (the recovery scenario).
    timeline: bool = False


@dataclass
class WorkerResult:
    """What one worker measured in one phase."""

    index: int
    ledger: Ledger
    cpu_s: float
    wall_s: float
    connected: int
    connect_failures: int
    connect_errors: dict[str, int]
    stats: DeviceStats
    # Deferred devices: seconds from the start of connect to sync_done.
    connect_s: dict[str, float] = field(default_factory=dict)


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


# ---- the worker process ------------------------------------------------------------------------


class _Worker:
    """The state of one worker process (runs inside its event loop)."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.ledger = Ledger()
        self.devices: dict[str, Device] = {}
        self.flows = [f for f in plan.flows if f.sender in {d.key for d in plan.devices}]
        self.connect_failures = 0
        self.connect_errors: dict[str, int] = {}
        self.sending = False
        self.phase: Phase | None = None
        self.sent_per_flow: dict[int, int] = {}
        self.flow_of: dict[str, list[int]] = {}
        for i, flow in enumerate(self.flows):
            self.flow_of.setdefault(flow.sender, []).append(i)
        self.last_frame_ns = 0

    def make_device(self, spec: DeviceSpec) -> Device:
        device = Device(
            ws_url=self.plan.ws_url,
            key=spec.key,
            user_id=spec.user_id,
            token=spec.token,
            device_id=spec.device_id,
            run_id=self.plan.run_id,
            sender_index=spec.sender_index,
            ledger=self.ledger,
            resume=self.plan.resume,
            on_ack=self._on_ack,
        )
        self.devices[spec.key] = device
        return device

    async def connect(self, specs: list[DeviceSpec]) -> dict[str, float]:
        """Connect devices with bounded concurrency; stop after too many failures."""
        gate = asyncio.Semaphore(self.plan.connect_concurrency)
        timings: dict[str, float] = {}
        give_up_at = time.perf_counter() + self.plan.connect_budget_s

        def stopped() -> bool:
            return (
                self.connect_failures >= self.plan.max_connect_failures
                or time.perf_counter() > give_up_at
            )

        async def one(spec: DeviceSpec) -> None:
            if stopped():
                return
            async with gate:
                if stopped():
                    return
                device = self.make_device(spec)
                start = time.perf_counter()
                try:
                    await device.connect(spec.cursors, timeout_s=self.plan.connect_timeout_s)
                except (WarblerError, OSError) as exc:
                    self.connect_failures += 1
                    name = getattr(exc, "code", type(exc).__name__)
                    reason = f"{name}: {str(exc)[:120]}"
                    self.connect_errors[reason] = self.connect_errors.get(reason, 0) + 1
                    del self.devices[spec.key]
                    return
                timings[spec.key] = time.perf_counter() - start

        await asyncio.gather(*(one(s) for s in specs))
        return timings

    def _on_ack(self, device: Device) -> None:
        phase = self.phase
        if not self.sending or phase is None or phase.rate_per_flow is not None:
            return
        # Closed loop: refill this device's flows up to the window.
        for i in self.flow_of.get(device.key, ()):
            self._send(i, phase, limit=phase.window)

    def _send(self, i: int, phase: Phase, limit: int) -> bool:
        flow = self.flows[i]
        device = self.devices.get(flow.sender)
        if device is None or device.in_flight >= limit:
            return False
        cap = phase.max_messages_per_flow
        if cap is not None and self.sent_per_flow.get(i, 0) >= cap:
            return False
        self.sent_per_flow[i] = self.sent_per_flow.get(i, 0) + 1
        device.send(
            expected=flow.expected,
            body_bytes=phase.body_bytes,
            conversation_id=flow.conversation_id,
            to_user_id=flow.to_user_id,
        )
        return True

    async def run_phase(
        self, phase: Phase, start_at: float, sent: Callable[[], Awaitable[None]]
    ) -> WorkerResult:
        """Run one phase from ``start_at`` (wall clock) and return its measurements.

        ``sent`` is awaited once this worker's sending is over; it returns when every worker's
        is (receivers must keep listening until the last sender is done), then the drain runs.
        """
        if phase.reset_ledger:
            self.ledger = Ledger()
        if phase.timeline and self.ledger.timeline is None:
            self.ledger.timeline = []
        for device in self.devices.values():
            device.ledger = self.ledger
            device.stats = DeviceStats()
        self.sent_per_flow = {}
        self.phase = phase
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        connect_s: dict[str, float] = {}
        if phase.connect_deferred:
            deferred = [d for d in self.plan.devices if d.deferred and d.key not in self.devices]
            connect_s = await self.connect(deferred)
        end = time.perf_counter() + phase.duration_s
        if self.flows:
            self.sending = True
            if phase.rate_per_flow is None:
                for i in range(len(self.flows)):
                    for _ in range(phase.window):
                        self._send(i, phase, limit=phase.window)
                # Until the time is up, or every flow sent its quota and got its acks.
                while time.perf_counter() < end and not self._quota_done(phase):
                    await asyncio.sleep(min(0.05, max(0.0, end - time.perf_counter())))
            else:
                await self._paced(phase, end)
            self.sending = False
        await sent()
        await self._drain(phase)
        self.phase = None
        return WorkerResult(
            index=self.plan.index,
            ledger=self.ledger,
            cpu_s=time.process_time() - cpu0,
            wall_s=time.perf_counter() - wall0,
            connected=sum(1 for d in self.devices.values() if d.connected),
            connect_failures=self.connect_failures,
            connect_errors=dict(self.connect_errors),
            stats=_sum_stats(self.devices.values()),
            connect_s=connect_s,
        )

    def _quota_done(self, phase: Phase) -> bool:
        cap = phase.max_messages_per_flow
        if cap is None:
            return False
        quota = all(self.sent_per_flow.get(i, 0) >= cap for i in range(len(self.flows)))
        return quota and all(d.in_flight == 0 for d in self.devices.values())

    async def _paced(self, phase: Phase, end: float) -> None:
        assert phase.rate_per_flow is not None
        start = time.perf_counter()
        scheduled = 0
        cursor = 0
        n = len(self.flows)
        rate = phase.rate_per_flow * n
        while (now := time.perf_counter()) < end:
            due = int((now - start) * rate) - scheduled
            # Round-robin over the flows; a flow at its backlog cap is skipped (bounded).
            for _ in range(min(due, n * 4)):
                for _ in range(n):
                    cursor = (cursor + 1) % n
                    if self._send(cursor, phase, limit=phase.max_in_flight):
                        break
                scheduled += 1  # even when every flow is at its cap: the backlog stays bounded
            await asyncio.sleep(0.002)

    async def _drain(self, phase: Phase) -> None:
        deadline = time.perf_counter() + phase.drain_s
        while time.perf_counter() < deadline:
            frames = sum(d.stats.frames_in for d in self.devices.values())
            await asyncio.sleep(phase.quiet_s)
            settled = all(d.in_flight == 0 for d in self.devices.values())
            if settled and frames == sum(d.stats.frames_in for d in self.devices.values()):
                return

    async def ping_all(self, sample: int) -> tuple[int, int]:
        """Ping up to ``sample`` devices; returns (answered, asked)."""
        devices = list(self.devices.values())[:sample]
        results = await asyncio.gather(*(d.ping() for d in devices), return_exceptions=True)
        return sum(1 for r in results if r is None), len(devices)

    async def close(self) -> None:
        await asyncio.gather(*(d.close() for d in self.devices.values()), return_exceptions=True)


def _sum_stats(devices: Any) -> DeviceStats:
    total = DeviceStats()
    for device in devices:
        total.frames_in += device.stats.frames_in
        total.reconnects += device.stats.reconnects
        total.outages.extend(device.stats.outages)
    return total


async def _worker_main(plan: WorkerPlan, pipe: multiprocessing.connection.Connection) -> None:
    worker = _Worker(plan)
    try:
        await worker.connect([d for d in plan.devices if not d.deferred])
        pipe.send(("ready", len(worker.devices), worker.connect_failures, worker.connect_errors))
        while True:
            # A thread waits on the pipe: the fd stays blocking (an event-loop reader would make
            # it non-blocking, and a large result would then fail to send).
            try:
                command, *args = await asyncio.to_thread(pipe.recv)
            except EOFError:  # the parent is gone
                break
            if command == "phase":
                phase, start_at = args

                async def sent() -> None:
                    pipe.send(("sent",))
                    answer = await asyncio.to_thread(pipe.recv)
                    if answer[0] != "drain":
                        raise WarblerError(ErrorCode.INTERNAL, f"expected drain, got {answer!r}")

                pipe.send(("result", await worker.run_phase(phase, start_at, sent)))
            elif command == "ping":
                pipe.send(("pinged", *(await worker.ping_all(args[0]))))
            elif command == "stop":
                break
    finally:
        await worker.close()


def _worker_entry(plan: WorkerPlan, pipe: multiprocessing.connection.Connection) -> None:
    logging.basicConfig(level=logging.WARNING)
    raise_fd_limit()
    try:
        import uvloop

        uvloop.run(_worker_main(plan, pipe))
    except ImportError:  # uvloop is optional (uvicorn[standard] brings it)
        asyncio.run(_worker_main(plan, pipe))


# ---- the parent side ---------------------------------------------------------------------------


@dataclass
class ReadyReport:
    """How the connect of one worker went."""

    index: int
    connected: int
    failures: int
    errors: dict[str, int]


class GeneratorPool:
    """Worker processes driven in lockstep by the benchmark (the parent).

    Example::

        with GeneratorPool(plans) as pool:
            ready = pool.wait_ready(timeout_s=60)
            results = pool.run(Phase(duration_s=5))
    """

    def __init__(self, plans: list[WorkerPlan]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        for plan in plans:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=_worker_entry, args=(plan, child_end), name=f"loadgen-{plan.index}"
            )
            self._pipes.append(parent_end)
            self._procs.append(proc)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (for CPU accounting)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def __enter__(self) -> GeneratorPool:
        for proc in self._procs:
            proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _recv(self, pipe: multiprocessing.connection.Connection, deadline: float) -> Any:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WarblerError(ErrorCode.UNAVAILABLE, "a load generator did not answer in time")
            try:
                if pipe.poll(min(left, 1.0)):
                    return pipe.recv()
            except (EOFError, OSError):
                raise WarblerError(ErrorCode.INTERNAL, "a load generator process died") from None
            if not any(p.is_alive() for p in self._procs):
                raise WarblerError(ErrorCode.INTERNAL, "the load generator processes died")

    def _gather(self, expect: str, timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        answers = []
        for pipe in self._pipes:
            message = self._recv(pipe, deadline)
            if message[0] != expect:
                raise WarblerError(ErrorCode.INTERNAL, f"load generator said {message[0]!r}")
            answers.append(message)
        return answers

    def wait_ready(self, timeout_s: float) -> list[ReadyReport]:
        """Wait until every worker has connected its devices (or given up on some)."""
        return [
            ReadyReport(i, connected, failures, errors)
            for i, (_, connected, failures, errors) in enumerate(
                self._gather("ready", timeout_s)
            )
        ]

    def start_phase(self, phase: Phase, lead_s: float = 0.3) -> float:
        """Tell every worker to start ``phase`` at a common instant; returns it (wall clock)."""
        start_at = time.time() + lead_s
        for pipe in self._pipes:
            pipe.send(("phase", phase, start_at))
        return start_at

    def collect(self, phase: Phase, extra_s: float = 30.0) -> list[WorkerResult]:
        """The results of the phase started last (bounded waits).

        Workers report when their sending is over; once all have, they all drain together.
        """
        self._gather("sent", phase.duration_s + extra_s + (120.0 if phase.connect_deferred else 0))
        for pipe in self._pipes:
            pipe.send(("drain",))
        return [message[1] for message in self._gather("result", phase.drain_s + extra_s)]

    def run(self, phase: Phase) -> list[WorkerResult]:
        """Run one phase in every worker and return their results."""
        self.start_phase(phase)
        return self.collect(phase)

    def ping(self, sample_per_worker: int, timeout_s: float = 60.0) -> tuple[int, int]:
        """Ping a sample of each worker's devices; returns (answered, asked)."""
        for pipe in self._pipes:
            pipe.send(("ping", sample_per_worker))
        answers = self._gather("pinged", timeout_s)
        return sum(a[1] for a in answers), sum(a[2] for a in answers)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Close every device and end the workers (kill what does not end in time)."""
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    pipe.send(("stop",))
        deadline = time.monotonic() + timeout_s
        for proc in self._procs:
            if proc.pid is None:
                continue
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                logger.warning("load generator %s did not stop; killing %s", proc.name, proc.pid)
                proc.kill()
                proc.join(5)
        for pipe in self._pipes:
            pipe.close()


def split_round_robin(items: list[Any], n: int) -> list[list[Any]]:
    """``items`` dealt into ``n`` lists one at a time (their lengths differ by one at most)."""
    buckets: list[list[Any]] = [[] for _ in range(n)]
    for i, item in enumerate(items):
        buckets[i % n].append(item)
    return buckets

