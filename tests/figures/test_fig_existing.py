"""The first figure builders: filters, activations and mosaics (used by the callbacks)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from cnnviz.figures.activations import (
    activation_mosaic,
    activation_stats_figure,
    activations_figure,
)
from cnnviz.figures.filters import filter_mosaic, filter_norms_figure, filters_figure
from cnnviz.figures.mosaic import grid_shape, normalise, tile, to_uint8_rgb


def test_grid_shape_and_tile() -> None:
    assert grid_shape(0) == (0, 0) and grid_shape(5) == (2, 3) and grid_shape(5, 2) == (3, 2)
    img, idx = tile(np.arange(8.0).reshape(2, 2, 2), columns=2, gap=1)
    assert img.shape == (2, 5) and np.isnan(img[:, 2]).all()
    assert idx.tolist() == [[0, 0, -1, 1, 1], [0, 0, -1, 1, 1]]


def test_normalise() -> None:
    v = np.array([[1.0, 3.0], [-2.0, np.nan]])
    n = normalise(v)
    assert n[0, 0] == pytest.approx(0.6) and n[1, 0] == 0 and np.isnan(n[1, 1])
    assert normalise(v, symmetric=True)[0, 1] == 1.0
    assert normalise(np.array([[1.0, 2.0], [5.0, 5.0]]), axis=(1,))[1].tolist() == [0.0, 0.0]


def test_to_uint8_rgb() -> None:
    out = to_uint8_rgb(np.array([[0.0, np.nan]]))
    assert out.shape == (1, 2, 3) and out[0, 1].tolist() == [255, 255, 255]


def test_filter_mosaic_rows_are_filters() -> None:
    w = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    img, filt, chan = filter_mosaic(w, rgb=False)
    assert img.shape == (5, 8)
    assert np.array_equal(img[3:5, 3:5], w[1, 1]) and filt[3, 3] == 1 and chan[3, 3] == 1
    rgb, _, _ = filter_mosaic(w[:, :3], rgb=True)
    assert rgb.ndim == 3 and rgb.shape[2] == 3
    with pytest.raises(ValueError, match="`weight`"):
        filter_mosaic(np.ones(3), rgb=False)


def test_filters_figure_diverging_around_zero() -> None:
    hist = [np.ones((2, 2, 3, 3)), -2 * np.ones((2, 2, 3, 3))]
    fig = filters_figure(hist, ["a", "b"], layer="c")
    assert [t.visible for t in fig.data] == [False, True]
    assert fig.data[1].zmid == 0 and fig.data[1].zmax == 2.0
    assert isinstance(
        filters_figure([np.ones((2, 3, 3, 3))], ["a"], layer="c", rgb=True).data[0], go.Image
    )
    with pytest.raises(ValueError, match="same length"):
        filters_figure(hist, ["a"], layer="c")


def test_filter_norms_figure() -> None:
    fig = filter_norms_figure(
        np.array([[1.0, 2.0], [3.0, 4.0]]),
        ["a", "b"],
        layer="c",
        flagged={"dead": [1], "unchanged": []},
    )
    assert np.asarray(fig.data[0].z).tolist() == [[1.0, 3.0], [2.0, 4.0]]
    assert "dead: [1]" in fig.layout.title.text and "unchanged" not in fig.layout.title.text


def test_activation_mosaic_scales() -> None:
    maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 10.0)])[None].repeat(2, axis=0)
    maps[1] *= 2
    img, probe, chan = activation_mosaic(maps, scale="layer")
    assert img.shape == (5, 5) and probe[4, 4] == 1 and chan[4, 4] == 1
    scaled, _, _ = activation_mosaic(maps, scale="channel")
    assert np.nanmax(scaled) == 1.0 and scaled[3, 3] == 1.0 and scaled[0, 3] == 0.0
    seq, _, _ = activation_mosaic(np.ones((2, 3, 4)))
    assert seq.shape == (2 * 4 - 1, 4)
    with pytest.raises(ValueError, match="`scale`"):
        activation_mosaic(maps, scale="pixel")  # type: ignore[arg-type]


def test_activations_and_stats_figures() -> None:
    rng = np.random.default_rng(0)
    fig = activations_figure(
        [rng.random((2, 3, 4, 4))] * 2, ["a", "b"], layer="l", channels=[3, 4, 5]
    )
    assert len(fig.data) == 2 and fig.layout.sliders[0].active == 1
    assert np.asarray(fig.data[0].customdata)[0, 5].tolist() == [0, 4]
    s = {"mean": np.ones(3), "max": np.ones(3), "zero_fraction": np.array([0, 0.5, np.nan])}
    st = activation_stats_figure([s, s], ["a", "b"], layer="l")
    assert len(st.data) == 6 and list(st.data[2].y) == [0.0, 0.5, 0.0]
