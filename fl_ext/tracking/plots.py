"""Accuracy plots (vs round, vs MB uploaded) rendered to PNG bytes (Agg backend, no display)."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
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


def draw_lines(
    ax: Any, lines: Mapping[str, Sequence[tuple[float, float]]], *, xlabel: str, ylabel: str
) -> None:
    """One styled line per named ``[(x, y), ...]``, grid, legend below the axes when several.

    An empty line is not drawn but keeps its style slot, so a run has the same colour and marker
    on every plot of one comparison, whether or not it logged what this plot shows.
    """
    for i, (label, points) in enumerate(lines.items()):
        if not points:
            continue
        ax.plot(
            [x for x, _ in points],
            [y for _, y in points],
            markersize=4,
            linewidth=1.2,
            fillstyle="none",
            label=label,
            **line_style(i),
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if sum(1 for points in lines.values() if points) > 1:  # below: run names are long, many
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False)


def draw_curves(ax: Any, curves: Mapping[str, Mapping[int, float]], *, ylabel: str) -> None:
    """One line per named curve ``{label: {round: value}}`` on ``ax``, integer round ticks."""
    from matplotlib.ticker import MaxNLocator

    lines = {label: [(r, points[r]) for r in sorted(points)] for label, points in curves.items()}
    draw_lines(ax, lines, xlabel="round", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(draw: Callable[[Any], None], title: str) -> bytes:
    """Render ``draw(ax)`` on one titled figure to PNG bytes; the figure is always closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        draw(ax)
        ax.set_title(title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def accuracy_plot_png(
    curves: Mapping[str, Mapping[int, float]], *, title: str, ylabel: str = "test accuracy"
) -> bytes:
    """One line per named curve ``{label: {round: value}}``; returns PNG bytes."""
    return _png(lambda ax: draw_curves(ax, curves, ylabel=ylabel), title)


def accuracy_vs_mb_png(
    points: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str = "MB uploaded (cumulative)",
    ylabel: str = "test accuracy",
) -> bytes:
    """One line per run ``{label: [(MB, accuracy), ...]}``: accuracy bought per byte sent.

    Runs with different codecs or client counts reach an accuracy at different upload costs;
    per round they look alike, per MB they do not.
    """
    return _png(lambda ax: draw_lines(ax, points, xlabel=xlabel, ylabel=ylabel), title)
