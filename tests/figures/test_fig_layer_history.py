"""Compact filter and activation histories (cnnviz.figures.layer_history)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from cnnviz.figures.layer_history import (
    activation_grid,
    activation_history_figure,
    filter_grid,
    filter_history_figure,
    stretch_channels,
)


def test_filter_grid_places_filters_in_columns_and_inputs_in_rows() -> None:
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    g = filter_grid(w)
    assert g.shape == (3 * 3 - 1, 2 * 3 - 1)
    assert np.array_equal(g[3:5, 3:5], w[1, 1])  # filter 1 (column block 1), input 1 (row 1)
    assert np.isnan(g[2]).all() and np.isnan(g[:, 2]).all()
    one_d = filter_grid(np.ones((2, 3, 4)))
    assert one_d.shape == (3, 9)  # rows: input channels, no row gaps


def test_filter_history_slider_and_hover_categories() -> None:
    rng = np.random.default_rng(0)
    hist = [rng.standard_normal((4, 2, 3, 3)) * s for s in (1, 2, 3)]
    fig = filter_history_figure(
        hist, ["start", "epoch 1", "epoch 2"], layer="conv<1>", channels=[0, 5, 6, 7]
    )
    assert len(fig.data) == 3 and all(isinstance(t, go.Heatmap) for t in fig.data)
    assert [t.visible for t in fig.data] == [False, False, True]
    last = fig.data[-1]
    m = np.abs(hist[-1]).max()
    assert last.zmin == pytest.approx(-m) and last.zmax == pytest.approx(m) and last.zmid == 0
    assert last.colorscale[0][1] == "rgb(5,48,97)"  # RdBu reversed: blue for negative
    assert last.x[4] == "filter 5 · 0" and last.y[4] == "input 1 · 0"
    assert len(set(last.x)) == len(last.x)  # categories are unique
    assert "conv&lt;1&gt;" in fig.layout.title.text


def test_rgb_filters_are_colour_tiles() -> None:
    w = np.zeros((2, 3, 3, 3))
    w[0, 0] = 1.0  # filter 0: pure positive red
    fig = filter_history_figure([w], ["start"], layer="c", rgb=True)
    assert isinstance(fig.data[0], go.Image) and fig.data[0].source.startswith("data:image/png")
    assert fig.data[1].text == ("c filter 0", "c filter 1")


def test_activation_grid_and_stretch() -> None:
    maps = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    g = activation_grid(maps)
    assert g.shape == (2 * 3 - 1, 3 * 3 - 1)
    assert np.array_equal(g[3:5, 3:5], maps[1, 1])  # probe 1 (row block), channel 1 (column)
    assert np.isnan(g[2]).all() and np.isnan(g[:, 2]).all()
    s = stretch_channels(g, 2)
    for c in range(3):
        block = s[:, c * 3 : c * 3 + 2]
        assert np.nanmin(block) == 0 and np.nanmax(block) == 1
    assert activation_grid(np.ones((2, 3, 7))).shape == (2, 23)  # sequences: no row gaps


def test_activation_history_has_one_trace_per_event() -> None:
    rng = np.random.default_rng(0)
    hist = [rng.random((3, 4, 5, 5)), rng.random((3, 4, 5, 5)) * 10]
    fig = activation_history_figure(
        hist, ["a", "b"], layer="l", channels=[1, 3, 5, 7], probe_labels=["#0 cat", "#1", "#2"]
    )
    assert len(fig.data) == 2 and [t.visible for t in fig.data] == [False, True]
    t = fig.data[1]
    z = np.asarray(t.z, dtype=float)
    assert z.shape == (3 * 6 - 1, 4 * 6 - 1)
    assert np.allclose(z[6:11, 6:11], hist[1][1, 1])
    assert t.x[6] == "channel 3 · 0" and t.y[6] == "#1 · row 0"
    assert t.zmin == pytest.approx(hist[1].min()) and t.zmax == pytest.approx(hist[1].max())
    assert fig.layout.meta["cnnviz_mosaic"] == {"width": 5, "channels": 4, "scale": "layer"}
    stretched = activation_history_figure(hist, ["a", "b"], layer="l", scale="channel")
    zs = np.asarray(stretched.data[1].z, dtype=float)
    assert np.nanmax(zs[:, 6:11]) == 1 and np.nanmin(zs[:, 6:11]) == 0
    with pytest.raises(ValueError, match="`scale`"):
        activation_history_figure(hist, ["a", "b"], layer="l", scale="pixel")  # type: ignore[arg-type]


def test_sequence_activations() -> None:
    fig = activation_history_figure([np.ones((2, 3, 7))], ["a"], layer="conv1d")
    assert len(fig.data) == 1 and np.asarray(fig.data[0].z).shape == (2, 23)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: filter_history_figure([], [], layer="l"), "at least one event"),
        (
            lambda: filter_history_figure([np.ones((2, 1, 3, 3))], ["a", "b"], layer="l"),
            "same length",
        ),
        (
            lambda: filter_history_figure([np.ones((2, 1, 3, 3))], ["a"], layer="l", channels=[1]),
            "`channels` has 1 entries for 2 filters",
        ),
        (lambda: filter_grid(np.ones((2, 2))), "`weight` must be"),
        (lambda: activation_history_figure([np.ones((2, 2))], ["a"], layer="l"), "must be"),
        (
            lambda: activation_history_figure(
                [np.ones((2, 2, 3, 3)), np.ones((2, 1, 3, 3))], ["a", "b"], layer="l"
            ),
            "every event",
        ),
        (
            lambda: activation_history_figure(
                [np.ones((2, 2, 3, 3))], ["a"], layer="l", probe_labels=["x"]
            ),
            "`probe_labels`",
        ),
    ],
)
def test_errors(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
