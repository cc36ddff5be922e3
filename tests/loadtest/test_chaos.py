"""`warbler bench chaos` without a cluster: its options, which faults a target can take, the
bench's own Redis server (killed and restarted for real), and the per-fault report."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from loadtest.bench import options_from, parser
from loadtest.report import Figures, json_line, render_table
from loadtest.scenarios import SCENARIOS, chaos
from loadtest.servers import Target
from warbler.errors import WarblerError


def _options(*argv: str) -> chaos.ChaosOptions:
    options = options_from(parser().parse_args(["chaos", *argv]))
    assert isinstance(options, chaos.ChaosOptions)
    return options


def test_chaos_is_a_named_scenario_without_a_baseline() -> None:
    scenario = SCENARIOS["chaos"]
    assert not scenario.baseline and not scenario.in_all


def test_options() -> None:
    options = _options("--faults", "host, redis", "--redis-down-s", "2.5",
                       "--cluster-env", "WARBLER_DATABASE_URL=postgresql://u@h:5432/chaos")
    assert options.faults == ["host", "redis"]
    assert options.redis_down_s == 2.5
    assert options.database_url == "postgresql://u@h:5432/chaos"
    assert _options().faults == list(chaos.FAULTS)
    with pytest.raises(WarblerError):
        _options("--redis-down-s", "-1")


def test_faults_a_target_cannot_take_are_skipped_with_a_note(tmp_path: Path) -> None:
    target = Target("warbler", "http://127.0.0.1:1", lambda: [],
                    role_pids={"host": lambda: [], "gateway replica": lambda: []},
                    data_dir=tmp_path)
    run, notes = chaos.applicable(target, _options("--cluster-env", "WARBLER_DATABASE_URL="))
    assert run == ["host", "redis", "replica"]
    assert [n.split(":")[0] for n in notes] == ["redis-restart", "sql-cut"]
    with pytest.raises(WarblerError):
        chaos.applicable(target, _options("--faults", "meteor"))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_the_bench_redis_server_restarts_empty(tmp_path: Path) -> None:
    import redis

    target = Target("warbler", "http://127.0.0.1:1", lambda: [], data_dir=tmp_path)
    options = _options("--chaos-redis", "server", "--redis-down-s", "0.2")
    with chaos.redis_server() as url:
        assert "redis-restart" in chaos.applicable(target, options)[0]  # sql-cut follows on PG
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.set("k", b"v")
        did = chaos.INJECT["redis-restart"](target, options)
        assert "restarted empty" in did
        deadline = time.monotonic() + 20
        while True:
            try:
                assert client.get("k") is None  # back, and empty
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        client.close()


def test_the_report_has_a_row_and_targets_per_fault() -> None:
    faults = [
        {"fault": "host", "did": "kill -9", "recovery_s": 1.2, "readyz_back_s": 0.4,
         "acked": 900, "lost": 0, "duplicated": 0, "unacked": 0, "delivered_late": 12},
        {"fault": "redis", "did": "kill -9", "recovery_s": 4.0, "readyz_back_s": 0.3,
         "acked": 880, "lost": 1, "duplicated": 0, "unacked": 0, "delivered_late": 30},
    ]
    figures = Figures(delivered_per_s=100.0, lost=1, duplicated=0,
                      extra={"faults": faults, "recovery_s": 4.0})
    result = chaos.result(figures, None, [], _options())
    table = render_table(result)
    assert "host: recovery" in table and "redis: recovery" in table
    failed = {c.name for c in result.checks if not c.met}
    assert failed == {"redis recovery_s", "redis lost"}
    assert not result.target_met
    line = json.loads(json_line(result))
    assert line["scenario"] == "chaos" and line["faults"][1]["lost"] == 1
