"""Statistics of repeated measurements: median with min and max, and ratios measured in pairs.

The lab machine is noisy, so a figure is never one run: it is the median of several, shown
with its range. A comparison (ours / Ansible, time(N) / time(1)) is computed run by run from
measurements taken side by side in the same run, then summarised the same way.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Summary:
    """Median, min and max of ``n`` measurements."""

    median: float
    min: float
    max: float
    n: int

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        return {
            "median": round(self.median, digits),
            "min": round(self.min, digits),
            "max": round(self.max, digits),
            "n": self.n,
        }

    def text(self, unit: str = "", digits: int = 2) -> str:
        """``1.23 s (1.10–1.40, n=5)``; a single value without its range."""
        value = f"{self.median:.{digits}f}{unit}"
        if self.n < 2:
            return value
        return f"{value} ({self.min:.{digits}f}–{self.max:.{digits}f}, n={self.n})"


def summarize(values: Sequence[float]) -> Summary:
    """The summary of ``values`` (at least one)."""
    if not values:
        raise ValueError("no measurements to summarise")
    floats = [float(v) for v in values]
    return Summary(statistics.median(floats), min(floats), max(floats), len(floats))


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """``a_i / b_i`` for measurements taken side by side (same repetition of the same run)."""
    if len(numerators) != len(denominators):
        raise ValueError(
            f"paired ratios need as many numerators as denominators "
            f"({len(numerators)} != {len(denominators)})"
        )
    if any(b <= 0 for b in denominators):
        raise ValueError("a denominator is zero or negative")
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> Summary:
    """Summary of :func:`paired_ratios`."""
    return summarize(paired_ratios(numerators, denominators))


def versus_target(
    value: float, target: float, *, below: bool = True, strict: bool = False
) -> dict[str, Any]:
    """Whether ``value`` meets ``target`` (``below``: value <= target, or < with ``strict``;
    else value >= target), and by how much it misses: the factor and the percent over it."""
    if below:
        met = value < target if strict else value <= target
    else:
        met = value > target if strict else value >= target
    result: dict[str, Any] = {"target": target, "value": value, "met": met}
    if not met and target:
        factor = value / target if below else target / value if value else float("inf")
        result["miss_factor"] = round(factor, 3)
        result["miss_percent"] = round((factor - 1) * 100, 1)
    return result
