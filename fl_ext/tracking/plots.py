"""Accuracy-vs-round plots rendered to PNG bytes (Agg backend, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping


def accuracy_plot_png(
    curves: Mapping[str, Mapping[int, float]], *, title: str, ylabel: str = "test accuracy"
) -> bytes:
    """One line per named curve ``{label: {round: value}}``; returns PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        for label, points in curves.items():
            rounds = sorted(points)
            ax.plot(rounds, [points[r] for r in rounds], marker="o", markersize=3, label=label)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=7)
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)
