"""A scenario's outcome: figures for Warbler and the baseline, the targets, a table, a JSON line.

Every scenario prints a human table and then exactly one JSON line with the fixed keys
``scenario``, ``delivered_per_s``, ``p50_ms``, ``p99_ms``, ``lost``, ``duplicated`` (Warbler's),
``baseline`` (the same keys for the relay), ``ratio`` (Warbler / baseline of ``ratio_of``),
``targets`` and ``target_met``, plus scenario-specific keys and what limited the figures.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import psutil


@dataclass
class Figures:
    """What one system (Warbler or the relay) achieved in a scenario."""

    delivered_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    lost: int | None = None
    duplicated: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The fixed keys, then the scenario's own."""
        out: dict[str, Any] = {
            "delivered_per_s": _round(self.delivered_per_s),
            "p50_ms": _round(self.p50_ms),
            "p99_ms": _round(self.p99_ms),
            "lost": self.lost,
            "duplicated": self.duplicated,
        }
        out.update({k: _clean(v) for k, v in self.extra.items()})
        return out


@dataclass(frozen=True)
class Check:
    """One target: ``value op threshold``; a missing value does not meet it."""

    name: str
    value: float | None
    op: Literal[">=", "<", "=="]
    threshold: float

    @property
    def met(self) -> bool:
        """True when the value is known and meets the threshold."""
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False
        if self.op == ">=":
            return self.value >= self.threshold
        if self.op == "<":
            return self.value < self.threshold
        return self.value == self.threshold

    def to_json(self) -> dict[str, Any]:
        """The check as a JSON object."""
        return {
            "name": self.name,
            "value": self.value if isinstance(self.value, int) else _round(self.value),
            "op": self.op,
            "threshold": self.threshold,
            "met": self.met,
        }


@dataclass
class ScenarioResult:
    """Everything a scenario reports."""

    scenario: str
    warbler: Figures | None
    baseline: Figures | None
    checks: list[Check] = field(default_factory=list)
    # Table rows: (what, Warbler's value, the relay's value), already formatted.
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    ratio_of: str = "delivered_per_s"
    params: dict[str, Any] = field(default_factory=dict)
    # Preformatted lines printed under the table (the scale scenario's timeline); the JSON
    # carries the same data in the figures.
    sections: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """Warbler's ``ratio_of`` figure divided by the baseline's (None when either is missing)."""
        if self.warbler is None or self.baseline is None:
            return None
        ours = _figure(self.warbler, self.ratio_of)
        theirs = _figure(self.baseline, self.ratio_of)
        if ours is None or theirs is None or theirs == 0:
            return None
        return float(ours) / float(theirs)

    @property
    def target_met(self) -> bool:
        """True when Warbler was measured and meets every target."""
        return self.warbler is not None and bool(self.checks) and all(c.met for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """The one JSON object of the scenario."""
        out: dict[str, Any] = {"scenario": self.scenario}
        out.update((self.warbler or Figures()).to_json())
        out["baseline"] = self.baseline.to_json() if self.baseline is not None else None
        out["ratio"] = _round(self.ratio, 3)
        out["ratio_of"] = self.ratio_of
        out["targets"] = [c.to_json() for c in self.checks]
        out["target_met"] = self.target_met
        out["limits"] = self.limits
        out["params"] = {k: _clean(v) for k, v in self.params.items()}
        out["date"] = datetime.now(UTC).isoformat(timespec="seconds")
        out["machine"] = machine()
        return out


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def fmt(value: float | int | None, unit: str = "", digits: int = 1) -> str:
    """A table cell: the number with its unit, or a dash."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value:,.{digits}f}{unit}"


def render_table(result: ScenarioResult) -> str:
    """The human-readable table of a scenario (with its targets and limits)."""
    header = ("", "warbler", "baseline relay")
    rows = [header, *result.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"== {result.scenario}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    ratio = result.ratio
    if ratio is not None:
        lines.append(f"ratio warbler/baseline ({result.ratio_of}): {ratio:.3f}")
    for check in result.checks:
        mark = "met" if check.met else "NOT met"
        lines.append(f"target {check.name} {check.op} {check.threshold:g}: {mark}")
    for note in result.limits:
        lines.append(f"limit: {note}")
    for side, figures in (("warbler", result.warbler), ("baseline", result.baseline)):
        for line in (figures.extra.get("profile") or []) if figures is not None else []:
            lines.append(f"profile ({side}): {line}")
    lines.extend(result.sections)
    return "\n".join(lines)


def json_line(result: ScenarioResult) -> str:
    """The scenario's JSON on one line."""
    return json.dumps(result.to_json(), separators=(",", ":"), allow_nan=False)


def _figure(figures: Figures, name: str) -> float | None:
    value = getattr(figures, name, None) if hasattr(figures, name) else figures.extra.get(name)
    return float(value) if isinstance(value, int | float) else None


def _round(value: float | None, digits: int = 2) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


def _clean(value: Any) -> Any:
    # JSON has no NaN or infinity: those become null; floats get two decimals.
    if isinstance(value, float):
        return _round(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
