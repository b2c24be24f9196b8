"""Comparison plots: integer round ticks, overlapping runs told apart."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fl_ext.tracking.plots import accuracy_plot_png, draw_curves, line_style


def test_identical_curves_get_distinct_styles_and_round_ticks_are_integers():
    same = {r: 0.5 + 0.1 * r for r in range(3)}
    curves = {f"run {i}": dict(same) for i in range(16)}
    fig, ax = plt.subplots()
    try:
        draw_curves(ax, curves, ylabel="test accuracy")
        fig.canvas.draw()
        lines = ax.get_lines()
        assert len(lines) == 16
        assert len({(ln.get_linestyle(), ln.get_marker()) for ln in lines}) == 16
        ticks = [t for t in ax.get_xticks() if 0 <= t <= 2]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(curves)
    finally:
        plt.close(fig)


def test_first_32_styles_are_pairwise_distinct():
    pairs = {(line_style(i)["linestyle"], line_style(i)["marker"]) for i in range(32)}
    assert len(pairs) == 32


def test_plot_is_png():
    png = accuracy_plot_png({"a": {0: 0.1, 1: 0.5}, "b": {0: 0.2, 1: 0.6}}, title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
