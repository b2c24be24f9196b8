"""Comparison plots: integer round ticks, overlapping runs told apart, accuracy vs MB."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt

from fl_ext.tracking.plots import (
    accuracy_plot_png,
    accuracy_vs_mb_png,
    draw_curves,
    draw_lines,
    line_style,
)


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


def test_accuracy_vs_mb_plots_the_given_points_and_is_png():
    points = {"int8": [(0.0, 0.1), (0.3, 0.5), (0.6, 0.7)], "float32": [(0.0, 0.1), (1.2, 0.55)]}
    png = accuracy_vs_mb_png(points, title="t")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(io.BytesIO(png))
    assert image.shape[0] > 100 and image.shape[1] > 100
    # no run logged bytes: still a (blank) plot, not an error
    assert accuracy_vs_mb_png({}, title="nothing")[:8] == b"\x89PNG\r\n\x1a\n"


def test_round_curves_still_plot_sorted_rounds():
    fig, ax = plt.subplots()
    try:
        draw_curves(ax, {"a": {2: 0.7, 0: 0.1, 1: 0.5}}, ylabel="test accuracy")
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [0, 1, 2] and list(line.get_ydata()) == [0.1, 0.5, 0.7]
        assert ax.get_xlabel() == "round" and ax.get_legend() is None
    finally:
        plt.close(fig)


def test_a_run_without_points_keeps_its_style_slot():
    fig, ax = plt.subplots()
    try:
        lines = {"a": [(0.0, 0.1)], "no bytes": [], "c": [(0.0, 0.2), (1.5, 0.6)]}
        draw_lines(ax, lines, xlabel="MB", ylabel="test accuracy")
        drawn = {ln.get_label(): ln for ln in ax.get_lines()}
        assert list(drawn) == ["a", "c"]
        assert drawn["c"].get_marker() == line_style(2)["marker"]
        assert drawn["c"].get_color() == line_style(2)["color"]
    finally:
        plt.close(fig)
