"""Where the server's time goes: py-spy records processes during a phase; this sums it up.

Only samples of a thread holding the GIL are kept (``--gil``): a Python server's throughput is
bounded by its GIL-holding time, and threads parked in C (Ray's core worker loop, a thread pool
waiting for work) would otherwise fill the profile with waiting.

``py-spy record --format raw`` writes one line per distinct stack: ``frame;frame;...;leaf N``,
each frame ``function (path/file.py:line)``. From it: the share of samples whose innermost
frame is in each package (``serve``, ``actors``, ``ray``, ``starlette``, ``pydantic``, ...),
the functions with the most samples of their own, and the functions with the most samples
anywhere on the stack.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^():]+)(?::\d+)?\)$")
TOP = 8


@dataclass(frozen=True)
class Profile:
    """A summary of one process's samples."""

    title: str
    pid: int
    samples: int
    by_package: list[tuple[str, float]]
    top_self: list[tuple[str, float]]
    top_inclusive: list[tuple[str, float]]

    def lines(self) -> list[str]:
        """A few human lines for the report."""
        def share(items: list[tuple[str, float]]) -> str:
            return ", ".join(f"{name} {100 * s:.0f}%" for name, s in items)

        return [
            f"{self.title} (pid {self.pid}, {self.samples} samples): by package: "
            f"{share(self.by_package)}",
            f"  own time: {share(self.top_self)}",
            f"  on the stack: {share(self.top_inclusive)}",
        ]


def _split(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "?"
    return match["func"], match["path"]


def _package(path: str) -> str:
    # py-spy prints paths relative to sys.path entries: the first part is the package.
    head = path.replace("\\", "/").lstrip("/").split("/", 1)[0]
    return head.removesuffix(".py") or "?"


def summarize(path: Path, title: str, pid: int) -> Profile:
    """Summarize one ``--format raw`` file."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_split(f) for f in stack.split(";")]
        func, file = frames[-1]
        own[f"{func} ({file})"] += count
        packages[_package(file)] += count
        for name in {f"{f} ({p})" for f, p in frames}:
            anywhere[name] += count
    denom = max(total, 1)
    return Profile(
        title=title,
        pid=pid,
        samples=total,
        by_package=[(k, v / denom) for k, v in packages.most_common(TOP)],
        top_self=[(k, v / denom) for k, v in own.most_common(TOP)],
        top_inclusive=[(k, v / denom) for k, v in anywhere.most_common(TOP)],
    )


def py_spy() -> str | None:
    """The py-spy executable next to this Python, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Recording:
    """py-spy recording some processes for a fixed time (non-blocking: the targets run on)."""

    def __init__(self, out_dir: Path, label: str, pids: dict[int, str], duration_s: float) -> None:
        self._out: list[tuple[Path, str, int, subprocess.Popen[bytes]]] = []
        exe = py_spy()
        if exe is None:
            logger.warning("py-spy is not installed: no profile")
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        for pid, title in pids.items():
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", title)
            path = out_dir / f"{label}-{safe}-{pid}.txt"
            cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s))),
                   "--rate", "100", "--format", "raw", "--nonblocking", "--gil",
                   "--output", str(path)]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self._out.append((path, title, pid, proc))

    def finish(self, timeout_s: float = 60.0) -> list[Profile]:
        """Wait for every recording (bounded) and summarize those that worked."""
        profiles = []
        for path, title, pid, proc in self._out:
            try:
                _, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                logger.warning("py-spy on %s did not finish; killed", pid)
                continue
            if proc.returncode != 0 or not path.exists():
                logger.warning("py-spy on %s failed: %s", pid, err.decode(errors="replace")[-300:])
                continue
            profiles.append(summarize(path, title, pid))
        return profiles
