"""CPU and memory of the processes under test, and finding them (psutil).

A figure means little without knowing what limited it: each phase records the CPU seconds of
the server's processes, of the load generator's, and of the whole machine (the rest is other
work on this shared host). Memory per socket is the growth of the server processes' RSS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

logger = logging.getLogger(__name__)

RAYLET = "raylet"
GCS = "gcs_server"


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class ProcessGroup:
    """A set of processes measured together; processes that exit are skipped."""

    def __init__(self, pids: Iterable[int]) -> None:
        self._procs: dict[int, psutil.Process] = {}
        for pid in pids:
            try:
                self._procs[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue

    @property
    def pids(self) -> list[int]:
        """The processes of the group."""
        return list(self._procs)

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU seconds per live process."""
        out: dict[int, float] = {}
        for pid, proc in self._procs.items():
            try:
                out[pid] = _cpu_s(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def rss_bytes(self) -> int:
        """Sum of resident set sizes (shared pages count once per process)."""
        total = 0
        for proc in self._procs.values():
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return int(total)

    def rss_by_title(self) -> dict[str, int]:
        """Resident memory summed per process title (``ray::ActorHost``, ``haproxy``, ...)."""
        out: dict[str, int] = {}
        for proc in self._procs.values():
            try:
                title = process_title(proc).split(".", 1)[0]  # ray::X.method -> ray::X
                out[title] = out.get(title, 0) + int(proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def names(self) -> dict[int, str]:
        """A short title per process (its command line's first word, e.g. ``ray::ActorHost``)."""
        out: dict[int, str] = {}
        for pid, proc in self._procs.items():
            try:
                out[pid] = process_title(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out


def process_title(proc: psutil.Process) -> str:
    """What a process calls itself (Ray workers rename themselves ``ray::<Actor>``)."""
    cmdline = proc.cmdline()
    first = str(cmdline[0]) if cmdline else str(proc.name())
    return first.rsplit("/", 1)[-1].strip()


@dataclass
class CpuUsage:
    """Cores used during a window: by the server, by the generator, by the whole machine."""

    wall_s: float
    server_cores: float
    generator_cores: float
    machine_cores: float
    top_server: list[tuple[str, float]]

    @property
    def other_cores(self) -> float:
        """Cores busy with anything else on the machine (other engineers' work included)."""
        return max(0.0, self.machine_cores - self.server_cores - self.generator_cores)


class CpuWindow:
    """Measures CPU between ``start()`` and ``stop()`` for the server and generator groups."""

    def __init__(self, server: ProcessGroup, generator: ProcessGroup) -> None:
        self._server = server
        self._generator = generator
        self._t0 = 0.0
        self._s0: dict[int, float] = {}
        self._g0: dict[int, float] = {}
        self._m0 = 0.0

    @staticmethod
    def _machine_busy_s() -> float:
        times = psutil.cpu_times()
        return float(times.user + times.system + times.nice + getattr(times, "softirq", 0.0)
                     + getattr(times, "irq", 0.0))

    def start(self) -> None:
        """Take the first sample."""
        self._t0 = time.perf_counter()
        self._s0 = self._server.cpu_seconds()
        self._g0 = self._generator.cpu_seconds()
        self._m0 = self._machine_busy_s()

    def stop(self) -> CpuUsage:
        """Take the second sample and return the cores used in between."""
        wall = max(1e-9, time.perf_counter() - self._t0)
        s1 = self._server.cpu_seconds()
        g1 = self._generator.cpu_seconds()
        per_server = {pid: s1[pid] - self._s0.get(pid, 0.0) for pid in s1}
        names = self._server.names()
        top: dict[str, float] = {}
        for pid, used in per_server.items():
            title = names.get(pid, str(pid))
            top[title] = top.get(title, 0.0) + used / wall
        return CpuUsage(
            wall_s=wall,
            server_cores=sum(per_server.values()) / wall,
            generator_cores=sum(g1[p] - self._g0.get(p, 0.0) for p in g1) / wall,
            machine_cores=(self._machine_busy_s() - self._m0) / wall,
            top_server=sorted(top.items(), key=lambda kv: -kv[1])[:5],
        )


def listener_pid(port: int, host: str = "127.0.0.1") -> int | None:
    """The process listening on ``host:port`` (needs to see other processes' sockets: root)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            if conn.laddr.ip in (host, "0.0.0.0", "::", "::1") and conn.pid is not None:
                return int(conn.pid)
    return None


def ray_node_pids(port: int) -> list[int]:
    """Every process of the Ray node serving ``port``: its raylet, all of the raylet's
    descendants (workers, actors, agents, haproxy) and the GCS next to it. Empty when not
    found."""
    pid = listener_pid(port)
    if pid is None:
        return []
    try:
        proc: psutil.Process | None = psutil.Process(pid)
        while proc is not None and process_title(proc) != RAYLET:
            proc = proc.parent()
        if proc is None:
            return []
        pids = [proc.pid, *(c.pid for c in proc.children(recursive=True))]
        parent = proc.parent()  # `ray start`, or the driver that called ray.init()
        if parent is not None:
            pids += [c.pid for c in parent.children() if process_title(c) == GCS]
        return pids
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def tree_pids(root: int) -> list[int]:
    """A process and all its descendants."""
    try:
        proc = psutil.Process(root)
        return [root, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def pids_titled(pids: Iterable[int], prefix: str) -> list[int]:
    """The processes among ``pids`` whose title starts with ``prefix`` (e.g. ``ray::ActorHost``)."""
    out = []
    for pid in pids:
        try:
            if process_title(psutil.Process(pid)).startswith(prefix):
                out.append(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out
