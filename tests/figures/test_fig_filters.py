"""Filters and their gradients (cnnviz.figures.filters): one layout for report and loggers."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from cnnviz.figures.filters import filter_mosaic, filter_norms_figure, filters_figure


def test_filter_mosaic_columns_are_filters_rows_inputs() -> None:
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    img, filt, chan = filter_mosaic(w, rgb=False)
    assert img.shape == (3 * 3 - 1, 2 * 3 - 1)
    assert np.array_equal(img[3:5, 3:5], w[1, 1])  # filter 1 (column block 1), input 1 (row 1)
    assert filt[3, 3] == 1 and chan[3, 3] == 1 and filt[2, 0] == -1
    assert np.isnan(img[2]).all() and np.isnan(img[:, 2]).all()
    one_d, f1, c1 = filter_mosaic(np.arange(24.0).reshape(2, 3, 4), rgb=False)
    assert one_d.shape == (3, 9)  # rows: input channels, no row gaps
    assert one_d[2, 5:9].tolist() == [20.0, 21.0, 22.0, 23.0] and f1[2, 5] == 1 and c1[2, 5] == 2
    with pytest.raises(ValueError, match="`weight`"):
        filter_mosaic(np.ones(3), rgb=False)


def test_rgb_filters_are_colour_tiles_around_grey() -> None:
    w = np.zeros((2, 3, 3, 3))
    w[0, 0] = 1.0  # filter 0: pure positive red
    img, filt, _ = filter_mosaic(w, rgb=True)
    assert img.shape == (3, 7, 3) and filt[0, 4] == 1
    assert img[0, 0].tolist() == [1.0, 0.5, 0.5]  # red up, green and blue at grey
    assert img[0, 3].tolist() == [1.0, 1.0, 1.0]  # the white gap
    fig = filters_figure([w, -w], ["start", "epoch 1"], layer="c", rgb=True, channels=[4, 9])
    assert len(fig.data) == 2 and all(isinstance(t, go.Image) for t in fig.data)
    assert fig.data[1].z.dtype == np.uint8 and fig.data[1].z.shape == (3, 7, 3)
    assert np.asarray(fig.data[1].customdata)[0, 4] == 9  # hover: the real filter index
    assert [t.visible for t in fig.data] == [False, True]


def test_filters_figure_slider_diverging_scale_and_hover_categories() -> None:
    rng = np.random.default_rng(0)
    hist = [rng.standard_normal((4, 2, 3, 3)) * s for s in (1, 2, 3)]
    hist[2][1, 0, 0, 0] = np.inf  # drawn blank, not in the colour range
    fig = filters_figure(
        hist, ["start", "epoch 1", "epoch 2"], layer="conv<1>", channels=[0, 5, 6, 7]
    )
    assert len(fig.data) == 3 and all(isinstance(t, go.Heatmap) for t in fig.data)
    assert [t.visible for t in fig.data] == [False, False, True]
    assert [s.label for s in fig.layout.sliders[0].steps] == ["start", "epoch 1", "epoch 2"]
    last = fig.data[-1]
    finite = hist[-1][np.isfinite(hist[-1])]
    m = np.abs(finite).max()
    assert last.zmin == pytest.approx(-m) and last.zmax == pytest.approx(m) and last.zmid == 0
    assert last.colorscale[0][1] == "rgb(5,48,97)"  # RdBu reversed: blue for negative
    assert last.x[4] == "filter 5 · 0" and last.y[4] == "input 1 · 0"
    assert len(set(last.x)) == len(last.x)  # categories are unique
    assert "conv&lt;1&gt;" in fig.layout.title.text


def test_gradient_figure_says_what_it_shows() -> None:
    g = np.full((2, 1, 3, 3), 1e-3)
    fig = filters_figure([g], ["epoch 1"], layer="c", what="gradient")
    assert "gradients" in fig.layout.title.text
    assert fig.data[0].colorbar.title.text == "gradient" and not fig.layout.sliders


def test_filter_norms_figure() -> None:
    fig = filter_norms_figure(
        np.array([[1.0, 2.0], [3.0, np.nan]]),
        ["a", "b"],
        layer="c",
        flagged={"dead": [1], "unchanged": []},
        what="‖∇w‖",
    )
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z[0].tolist() == [1.0, 3.0] and z[1, 0] == 2.0 and np.isnan(z[1, 1])
    assert "dead: [1]" in fig.layout.title.text and "unchanged" not in fig.layout.title.text
    assert fig.data[0].colorbar.title.text == "‖∇w‖"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: filters_figure([], [], layer="l"), "at least one event"),
        (lambda: filters_figure([np.ones((2, 1, 3, 3))], ["a", "b"], layer="l"), "same length"),
        (
            lambda: filters_figure([np.ones((2, 1, 3, 3))], ["a"], layer="l", channels=[1]),
            "`channels` has 1 entries for 2 filters",
        ),
    ],
)
def test_errors(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
