"""The benchmark scenarios: each measures one target and turns figures into a ScenarioResult."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loadtest.report import Figures, ScenarioResult
from loadtest.scenarios import connections, direct, group, recovery, sync
from loadtest.scenarios.common import BenchOptions
from loadtest.servers import Target

Measure = Callable[[Target, BenchOptions], tuple[Figures, list[str]]]
Result = Callable[[Figures | None, Figures | None, list[str], BenchOptions], ScenarioResult]


@dataclass(frozen=True)
class Scenario:
    """How to measure one target, and how to turn both targets' figures into a result."""

    measure: Measure
    result: Result
    # False when the relay cannot do it (it has nothing to recover).
    baseline: bool = True


# In the order `all` runs them.
SCENARIOS: dict[str, Scenario] = {
    "direct": Scenario(direct.measure, direct.result),
    "group": Scenario(group.measure, group.result),
    "connections": Scenario(connections.measure, connections.result),
    "sync": Scenario(sync.measure, sync.result),
    "recovery": Scenario(recovery.measure, recovery.result, baseline=False),
}

__all__ = ["SCENARIOS", "BenchOptions", "Scenario"]
