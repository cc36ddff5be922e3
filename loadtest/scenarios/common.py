"""What every scenario shares: options, bench users, running a phase while measuring CPU, and
telling what limited a figure."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.accounting import Ledger, Summary, merge_all
from loadtest.accounts import Account, provision
from loadtest.generator import GeneratorPool, Phase, ReadyReport, WorkerPlan, WorkerResult
from loadtest.procstats import CpuUsage, CpuWindow, ProcessGroup
from loadtest.profiling import Profile, Recording
from loadtest.servers import Target
from warbler.errors import ErrorCode, WarblerError

logger = logging.getLogger(__name__)

# A generator process above this share of one core is close to being the bottleneck.
GENERATOR_SATURATED = 0.85


@dataclass
class BenchOptions:
    """Knobs shared by the scenarios (the CLI fills them)."""

    workers: int = 2
    duration_s: float = 6.0
    warmup_s: float = 1.5
    body_bytes: int = 64
    pairs: int = 100
    window: int = 8
    members: list[int] = field(default_factory=lambda: [100, 1000])
    group_window: int = 16
    sockets: int = 20_000
    sockets_per_worker: int = 9_000
    idle_users: int = 50
    connect_budget_s: float = 150.0
    missed: int = 10_000
    recovery_pairs: int = 50
    recovery_rate: float = 500.0
    recovery_after_s: float = 15.0
    provision_concurrency: int = 8
    # Record the server's hosts and gateway replicas with py-spy during throughput phases.
    profile_dir: Path | None = None


def new_run_id() -> str:
    """A short id that marks this run's messages."""
    return uuid.uuid4().hex[:8]


def bench_accounts(target: Target, names: list[str], options: BenchOptions) -> list[Account]:
    """Log in (registering first when needed) the named bench users on a target."""
    logger.info("%s: logging in %d bench users", target.name, len(names))
    return asyncio.run(
        provision(
            target.base_url, names, cache=target.cache, concurrency=options.provision_concurrency
        )
    )


def user_names(prefix: str, count: int) -> list[str]:
    """Fixed bench usernames (reused across runs, so registering is paid once)."""
    return [f"{prefix}{i:05d}" for i in range(count)]


@dataclass
class PhaseOutcome:
    """One phase across every worker."""

    summary: Summary
    ledger: Ledger
    results: list[WorkerResult]
    cpu: CpuUsage
    profiles: list[Profile] = field(default_factory=list)

    def profile_lines(self) -> list[str]:
        """The py-spy summaries of this phase, as report lines."""
        return [line for p in self.profiles for line in p.lines()]

    def generator_peak(self) -> float:
        """The busiest generator process's share of one core."""
        return max((r.cpu_s / r.wall_s for r in self.results if r.wall_s > 0), default=0.0)


@contextmanager
def generator(
    target: Target, plans: list[WorkerPlan], ready_s: float, profile_dir: Path | None = None
) -> Iterator[Pool]:
    """Start the worker processes and wait until their devices are connected."""
    with GeneratorPool(plans) as pool:
        ready = pool.wait_ready(ready_s)
        yield Pool(target, pool, ready, profile_dir)


class Pool:
    """A started generator plus the target: runs phases and measures CPU around them."""

    def __init__(
        self,
        target: Target,
        pool: GeneratorPool,
        ready: list[ReadyReport],
        profile_dir: Path | None = None,
    ) -> None:
        self.target = target
        self.pool = pool
        self.ready = ready
        self.profile_dir = profile_dir

    @property
    def connected(self) -> int:
        """Devices connected at start."""
        return sum(r.connected for r in self.ready)

    @property
    def connect_failures(self) -> int:
        """Devices that failed to connect at start."""
        return sum(r.failures for r in self.ready)

    def require_all_connected(self, expected: int) -> None:
        """Refuse to measure with devices missing (the figures would be wrong)."""
        if self.connected < expected:
            errors: dict[str, int] = {}
            for report in self.ready:
                for reason, n in report.errors.items():
                    errors[reason] = errors.get(reason, 0) + n
            raise WarblerError(
                ErrorCode.UNAVAILABLE,
                f"{self.target.name}: only {self.connected} of {expected} devices connected",
                details={"errors": errors},
            )

    def cpu_window(self) -> CpuWindow:
        """A CPU window over the target's server processes and this generator."""
        return CpuWindow(ProcessGroup(self.target.server_pids()), ProcessGroup(self.pool.pids))

    def run(self, phase: Phase, profile: str | None = None) -> PhaseOutcome:
        """Run a phase in every worker and merge what they measured; with ``profile`` (a
        label) and a profile dir, py-spy records the target's hosts and replicas meanwhile."""
        recording = None
        if profile is not None and self.profile_dir is not None:
            pids = {
                pid: role
                for role, find in self.target.role_pids.items()
                for pid in find()
            }
            recording = Recording(self.profile_dir, profile, pids, phase.duration_s)
        window = self.cpu_window()
        window.start()
        results = self.pool.run(phase)
        out = outcome(results, window.stop())
        if recording is not None:
            out.profiles = recording.finish()
        return out


def outcome(results: list[WorkerResult], cpu: CpuUsage) -> PhaseOutcome:
    """Merge the workers' results of one phase."""
    ledger = merge_all(r.ledger for r in results)
    return PhaseOutcome(ledger.summary(), ledger, results, cpu)


def limit_note(label: str, phase: PhaseOutcome, cores: int) -> str:
    """One line on what limited a phase, from where the CPU went."""
    cpu = phase.cpu
    peak = phase.generator_peak()
    top = ", ".join(f"{name} {used:.2f}" for name, used in cpu.top_server[:3])
    facts = (
        f"server {cpu.server_cores:.2f} cores ({top}), generator {cpu.generator_cores:.2f} "
        f"(busiest process {peak:.2f}), other work on the machine {cpu.other_cores:.2f}, "
        f"of {cores}"
    )
    if peak >= GENERATOR_SATURATED:
        verdict = "the load generator (a process near one full core)"
    elif cpu.machine_cores >= cores * 0.9:
        verdict = "CPU: the machine's cores are all busy"
    elif cpu.server_cores >= 0.9:
        verdict = "the server's CPU (a process near one full core)"
    else:
        verdict = "latency, not CPU (the cores have slack: waits inside the server)"
    return f"{label}: {verdict}; {facts}"
