"""Summing up py-spy's raw stacks: shares by package, own time, time on the stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.profiling import summarize

RAW = """\
run (uvicorn/server.py:60);handle (serve/websocket.py:120);validate (pydantic/main.py:10) 6
run (uvicorn/server.py:60);handle (serve/websocket.py:121) 3
run (uvicorn/server.py:60);poll (asyncio/base_events.py:1900) 1
not a stack line
"""


def test_shares_by_package_own_time_and_stack(tmp_path: Path) -> None:
    path = tmp_path / "raw.txt"
    path.write_text(RAW)
    profile = summarize(path, "replica", 42)
    assert profile.samples == 10
    shares = {"pydantic": 0.6, "serve": 0.3, "asyncio": 0.1}
    assert dict(profile.by_package) == pytest.approx(shares)
    assert profile.top_self[0] == ("validate (pydantic/main.py)", pytest.approx(0.6))
    inclusive = dict(profile.top_inclusive)
    assert inclusive["run (uvicorn/server.py)"] == pytest.approx(1.0)
    assert inclusive["handle (serve/websocket.py)"] == pytest.approx(0.9)  # two lines, one frame
    assert "replica (pid 42, 10 samples)" in profile.lines()[0]
