"""`warbler up | tee up.log`, then Ctrl-C (which kills tee too): the launcher finds its stdout
gone and may get a second signal while it stops; it must still stop everything it started.

While it starts, `/healthz` is polled as a user (or a load balancer) would: it may refuse or fail,
but it must never answer 200 before the app itself answers it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve.ingress import free_port
from serve.raycluster import pids_with_arg
from storage.redis import process_alive

pytestmark = pytest.mark.slow

WARBLER = str(Path(sys.executable).with_name("warbler"))
BANNER_END = "Press Ctrl-C to stop."


def session_of(pid: int) -> int | None:
    """The session id of ``pid`` (field 6 of /proc/<pid>/stat), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; it ends at the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[3])


def processes_in_sessions(sids: set[int]) -> list[int]:
    """Live PIDs in any of these sessions (zombies included: they are not reaped yet)."""
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and session_of(int(e.name)) in sids
    ]


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out.append(f"{pid}: {cmd[:160]}")
    return out


class HealthProbe(threading.Thread):
    """Polls /healthz until told to stop; remembers every distinct (status, body) answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                r = httpx.get(self.url, timeout=3.0)
            except httpx.HTTPError:
                pass
            else:
                answer = (r.status_code, r.text[:200])
                if answer not in self.answers:
                    self.answers.append(answer)
            time.sleep(0.2)


def test_ctrl_c_with_stdout_gone_and_a_second_signal_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "w"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WARBLER_", "RAY_"))}
    env.update({"WARBLER_DATA_DIR": str(data_dir), "WARBLER_NAMESPACE": "ctrlc"})
    stderr_path = tmp_path / "up.stderr"
    probe = HealthProbe(f"http://127.0.0.1:{port}/healthz")
    probe.start()
    with open(stderr_path, "wb") as stderr:
        # Its own session, as a shell job is its own process group: the "Ctrl-C" below goes
        # to this group only, and every process the launcher leaves is found by session.
        up = subprocess.Popen(
            [WARBLER, "up", "--port", str(port), "--num-cpus", "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    assert up.stdout is not None
    sessions = {up.pid}
    state: dict[str, object] = {}
    try:
        shown = ""
        deadline = time.monotonic() + 400
        while BANNER_END not in shown and time.monotonic() < deadline:
            line = up.stdout.readline().decode()
            if not line:
                break
            shown += line
        probe.done.set()
        assert BANNER_END in shown, shown + stderr_path.read_text()[-3000:]
        state = json.loads((data_dir / "up.json").read_text())
        head = int(str(state["ray_head_pid"]))
        redis_pid = int(str(state["redis_pid"]))
        sessions.add(head)  # `ray start` runs in a session of its own: the whole node
        assert process_alive(head) and process_alive(redis_pid)
        assert pids_with_arg(str(state["haproxy_dir"])), "haproxy fronts the gateway"
        started = processes_in_sessions(sessions)
        assert len(started) > 5, describe(started)  # head, gcs, raylet, hosts, replicas, ...
        # The app answers /healthz itself now.
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()["status"] == "ok"

        # tee dies with the Ctrl-C: nobody reads the launcher's stdout any more.
        up.stdout.close()
        os.killpg(up.pid, signal.SIGINT)
        time.sleep(2.0)
        os.killpg(up.pid, signal.SIGINT)  # an impatient second Ctrl-C
        up.wait(timeout=300)

        errors = stderr_path.read_text()
        assert "still stopping" in errors, errors[-3000:]
        assert "Traceback" not in errors, errors[-3000:]
        left = processes_in_sessions(sessions)
        assert left == [], describe(left)
        assert not process_alive(redis_pid)
        assert not pids_with_arg(str(state["haproxy_dir"]))
        assert not pids_with_arg(str(data_dir))
        assert not (data_dir / "up.json").exists()
        assert up.returncode == 0, errors[-3000:]
    finally:
        probe.done.set()
        if up.poll() is None:
            up.kill()
            up.wait()
        if (data_dir / "up.json").exists():
            subprocess.run([WARBLER, "down"], env=env, capture_output=True, timeout=300)
        for pid in processes_in_sessions(sessions):  # only what this test started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # Start-up: /healthz may refuse, time out or say 404/503 while Serve comes up, but a 200
    # is only ever the app's own answer.
    for status, body in probe.answers:
        if status == 200:
            assert json.loads(body)["status"] == "ok", probe.answers
    assert f"Ray:        {state['ray_address']}" in shown
