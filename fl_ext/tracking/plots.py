"""Accuracy-vs-round plots rendered to PNG bytes (Agg backend, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "x", "P", "*")


def line_style(index: int) -> dict[str, str]:
    """Colour, line style and marker of the ``index``-th line.

    No two of the first ``len(LINESTYLES) * len(MARKERS)`` (32) lines share the (line style,
    marker) pair, so runs with identical curves stay visible on top of each other.
    """
    return {
        "color": f"C{index % 10}",
        "linestyle": LINESTYLES[index % len(LINESTYLES)],
        "marker": MARKERS[(index // len(LINESTYLES) + index) % len(MARKERS)],
    }


def draw_curves(ax: Any, curves: Mapping[str, Mapping[int, float]], *, ylabel: str) -> None:
    """One line per named curve ``{label: {round: value}}`` on ``ax``, integer round ticks."""
    from matplotlib.ticker import MaxNLocator

    for i, (label, points) in enumerate(curves.items()):
        rounds = sorted(points)
        ax.plot(
            rounds,
            [points[r] for r in rounds],
            markersize=4,
            linewidth=1.2,
            fillstyle="none",
            label=label,
            **line_style(i),
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:  # below the axes: run names are long and many
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False)


def accuracy_plot_png(
    curves: Mapping[str, Mapping[int, float]], *, title: str, ylabel: str = "test accuracy"
) -> bytes:
    """One line per named curve ``{label: {round: value}}``; returns PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        draw_curves(ax, curves, ylabel=ylabel)
        ax.set_title(title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
    finally:
        plt.close(fig)
