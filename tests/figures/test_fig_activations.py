"""Activation maps (cnnviz.figures.activations): one layout for report and loggers."""

from __future__ import annotations

import numpy as np
import pytest

from cnnviz.figures.activations import (
    activation_mosaic,
    activation_stats_figure,
    activations_figure,
    stretch_channels,
)


def test_activation_mosaic_rows_are_probes_columns_channels() -> None:
    maps = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    img, probe, chan = activation_mosaic(maps)
    assert img.shape == (2 * 3 - 1, 3 * 3 - 1)
    assert np.array_equal(img[3:5, 3:5], maps[1, 1])  # probe 1 (row block), channel 1 (column)
    assert probe[3, 3] == 1 and chan[3, 6] == 2 and probe[2, 0] == -1
    assert np.isnan(img[2]).all() and np.isnan(img[:, 2]).all()
    seq, sp, sc = activation_mosaic(np.ones((2, 3, 7)))
    assert seq.shape == (2, 23) and sp[1, 0] == 1 and sc[0, 8] == 1  # one row per probe input


def test_channel_scale_stretches_each_channel() -> None:
    maps = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 10.0)])[None].repeat(2, axis=0)
    maps[1] *= 2
    scaled, _, _ = activation_mosaic(maps, scale="channel")
    assert np.nanmax(scaled) == 1.0 and scaled[3, 3] == 1.0 and scaled[0, 3] == 0.0
    g, _, _ = activation_mosaic(np.arange(24.0).reshape(2, 3, 2, 2))
    s = stretch_channels(g, 2)
    for c in range(3):
        block = s[:, c * 3 : c * 3 + 2]
        assert np.nanmin(block) == 0 and np.nanmax(block) == 1
    with pytest.raises(ValueError, match="`scale`"):
        activation_mosaic(maps, scale="pixel")  # type: ignore[arg-type]


def test_activations_figure_one_trace_per_event() -> None:
    rng = np.random.default_rng(0)
    hist = [rng.random((3, 4, 5, 5)), rng.random((3, 4, 5, 5)) * 10]
    fig = activations_figure(
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
    stretched = activations_figure(hist, ["a", "b"], layer="l", scale="channel")
    zs = np.asarray(stretched.data[1].z, dtype=float)
    assert np.nanmax(zs[:, 6:11]) == 1 and np.nanmin(zs[:, 6:11]) == 0


def test_pre_activation_maps_are_labelled() -> None:
    fig = activations_figure([-np.ones((1, 2, 3, 3))], ["a"], layer="l", value="pre-activation")
    assert "pre-activation %{z" in fig.data[0].hovertemplate
    assert fig.data[0].colorbar.title.text == "pre-activation"


def test_stats_figure() -> None:
    s = {"mean": np.ones(3), "max": np.ones(3), "zero_fraction": np.array([0, 0.5, np.nan])}
    st = activation_stats_figure([s, s], ["a", "b"], layer="l", zeros="exact zeros")
    assert len(st.data) == 6 and list(st.data[5].y) == [0.0, 0.5, 0.0]
    assert [t.visible for t in st.data] == [False] * 3 + [True] * 3
    assert st.layout.annotations[2].text == "exact zeros"


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: activations_figure([np.ones((2, 2))], ["a"], layer="l"), "must be"),
        (
            lambda: activations_figure(
                [np.ones((2, 2, 3, 3)), np.ones((2, 1, 3, 3))], ["a", "b"], layer="l"
            ),
            "every event",
        ),
        (
            lambda: activations_figure(
                [np.ones((2, 2, 3, 3))], ["a"], layer="l", probe_labels=["x"]
            ),
            "`probe_labels`",
        ),
        (lambda: activations_figure([], [], layer="l"), "at least one event"),
        (lambda: activation_mosaic(np.ones((2, 2))), "`maps` must be"),
    ],
)
def test_errors(call: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()  # type: ignore[operator]
