"""The benchmark scenarios: each measures one target and turns figures into a ScenarioResult."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from loadtest.report import Figures, ScenarioResult
from loadtest.scenarios import chaos, connections, direct, group, recovery, scale, sync
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
    # False: only run when named (`all` skips it: it needs a cluster shaped for it).
    in_all: bool = True
    # Environment a cluster the bench starts for this scenario needs (--cluster-env wins).
    cluster_env: dict[str, str] = field(default_factory=dict)


# In the order `all` runs them (those with in_all).
SCENARIOS: dict[str, Scenario] = {
    "direct": Scenario(direct.measure, direct.result),
    "group": Scenario(group.measure, group.result),
    "connections": Scenario(connections.measure, connections.result),
    "sync": Scenario(sync.measure, sync.result),
    "recovery": Scenario(recovery.measure, recovery.result, baseline=False),
    "scale": Scenario(scale.measure, scale.result, in_all=False, cluster_env=scale.CLUSTER_ENV),
    "chaos": Scenario(chaos.measure, chaos.result, baseline=False, in_all=False),
}

__all__ = ["SCENARIOS", "BenchOptions", "Scenario"]
