"""The fleet-scaling chart of a benchmark report, drawn with matplotlib.

matplotlib is an optional dependency of the bench (``pip install -e '.[bench]'``; the ``dev``
extra has it too): without it the report is written without its chart (:data:`AVAILABLE`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    from matplotlib import pyplot

    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    AVAILABLE = False

#: Why a report has no chart, when it has none.
MISSING = "no chart: matplotlib is not installed (pip install -e '.[bench]')"


@dataclass(frozen=True)
class Series:
    """One line: ``points`` are (x, median, min, max)."""

    name: str
    points: Sequence[tuple[float, float, float, float]]


def write_chart(
    path: Path, series: Sequence[Series], *, title: str, x_label: str, y_label: str
) -> Path:
    """Write a PNG line chart of ``series`` to ``path``: medians joined, min–max as error
    bars, both axes from zero. Raises RuntimeError without matplotlib."""
    if not AVAILABLE:
        raise RuntimeError(MISSING)
    figure, axes = pyplot.subplots(figsize=(7.2, 4.8), dpi=100)
    try:
        for one in series:
            points = sorted(one.points)
            xs = [p[0] for p in points]
            medians = [p[1] for p in points]
            below = [p[1] - p[2] for p in points]
            above = [p[3] - p[1] for p in points]
            axes.errorbar(xs, medians, yerr=[below, above], marker="o", capsize=4, label=one.name)
        axes.set(title=title, xlabel=x_label, ylabel=y_label)
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        if series:
            axes.legend(loc="upper left")
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
    return path
