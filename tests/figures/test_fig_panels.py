"""Curves, predictions, receptive fields, top-k patches, featvis and attributions figures."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from cnnviz.figures.attributions import (
    attribution_checks_figure,
    attributions_figure,
    relative_maps,
)
from cnnviz.figures.curves import metric_groups, training_curves_figure
from cnnviz.figures.featvis import featvis_figure
from cnnviz.figures.predictions import CORRECT, OTHER, predictions_figure, top_classes
from cnnviz.figures.receptive_field import erf_figure, receptive_field_figure
from cnnviz.figures.topk import topk_figure


def test_metric_groups() -> None:
    names = ["train/loss_step", "train/loss_epoch", "train/loss", "val/loss", "val/acc", "lr"]
    assert metric_groups(names) == {
        "loss": ["train/loss_epoch", "val/loss"],
        "acc": ["val/acc"],
        "lr": ["lr"],
    }


def test_training_curves() -> None:
    fig = training_curves_figure(
        [1, 2, 3], {"train/loss": [1.0, None, 0.5], "val/acc": [0.1, 0.2, 0.3]}
    )
    assert [t.name for t in fig.data] == ["train/loss", "val/acc"]
    assert np.isnan(fig.data[0].y[1]) and fig.data[0].line.color == "#1f77b4"
    assert fig.data[1].line.color == "#d62728" and fig.data[1].xaxis == "x2"
    with pytest.raises(ValueError, match="has 2 values for 3 epochs"):
        training_curves_figure([1, 2, 3], {"x": [1, 2]})


def test_top_classes() -> None:
    idx, p = top_classes(np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]), 2)
    assert idx.tolist() == [[1, 2], [0, 2]] and p[0].tolist() == [0.6, 0.3]
    with pytest.raises(ValueError, match="`probs`"):
        top_classes(np.ones(3))


def test_predictions_mark_the_true_class_and_keep_images_visible() -> None:
    probs = [np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]), np.array([[0.1, 0.1, 0.8]] * 2)]
    fig = predictions_figure(
        probs,
        ["start", "epoch 1"],
        class_names=["a", "b", "<c>"],
        targets=[1, 2],
        images=np.zeros((2, 4, 4, 3)),
    )
    images = [t for t in fig.data if isinstance(t, go.Image)]
    assert len(images) == 2 and all(t.visible for t in images)
    first_bars = fig.data[2]  # event 0, probe 0: b (true), a, c
    assert list(first_bars.x) == [0.7, 0.2, 0.1]
    assert list(first_bars.marker.color) == [CORRECT, OTHER, OTHER]
    assert fig.data[3].text[0] == "b 70%"
    assert fig.data[-1].text[0] == "&lt;c&gt; 80%"
    steps = fig.layout.sliders[0].steps
    assert steps[0].args[0]["visible"][:2] == [True, True]  # images at every step
    assert [a.text for a in fig.layout.annotations] == ["#0 true: b", "#1 true: &lt;c&gt;"]
    with pytest.raises(ValueError, match="`targets`"):
        predictions_figure(probs, ["a", "b"], targets=[1])


def test_receptive_field_box() -> None:
    fig = receptive_field_figure(np.zeros((8, 8, 3)), (1, 6, 2, 5), layer="c", size=5, unit=(1, 1))
    box = fig.layout.shapes[0]
    assert (box.x0, box.x1, box.y0, box.y1) == (1.5, 4.5, 0.5, 5.5)
    assert "unit (1, 1): 5 px" in fig.layout.title.text
    with pytest.raises(ValueError, match="`region`"):
        receptive_field_figure(np.zeros((4, 4)), (0, 1), layer="c")


def test_erf_slider_updates_the_radius_circle() -> None:
    maps = [np.ones((9, 9)), np.pad(np.ones((1, 1)) * 4, 4)]
    fig = erf_figure(maps, ["start", "epoch 1"], layer="c", radius=[3.0, 1.0], region=(0, 9, 0, 9))
    assert np.nanmax(np.asarray(fig.data[1].z)) == 1.0  # each map scaled to its peak
    steps = fig.layout.sliders[0].steps
    circle = steps[0].args[1]["shapes"][1]
    assert circle["type"] == "circle" and circle["x1"] - circle["x0"] == 6.0
    assert steps[1].args[1]["shapes"][1]["x1"] - steps[1].args[1]["shapes"][1]["x0"] == 2.0
    with pytest.raises(ValueError, match="`radius`"):
        erf_figure(maps, ["a", "b"], layer="c", radius=[1.0])


def test_topk_and_featvis_hover_points() -> None:
    fig = topk_figure(
        np.zeros((2, 3, 4, 4, 3)),
        np.arange(6).reshape(2, 3),
        layer="c",
        channels=[4, 9],
        samples=np.arange(6).reshape(2, 3),
    )
    hover = fig.data[1]
    assert len(hover.x) == 6 and "channel 9, #1<br>activation 3<br>sample 3" in hover.text[3]
    assert fig.layout.yaxis.ticktext == ("ch 4", "ch 9")
    fv = featvis_figure(
        np.zeros((3, 6, 6, 3)), np.array([1.0, 2.0, 3.0]), layer="c", channels=[1, 2, 3], columns=2
    )
    assert fv.data[1].text == ("ch 1", "ch 2", "ch 3")
    assert "activation 3" in fv.data[1].hovertext[2]
    with pytest.raises(ValueError, match="`channels`"):
        featvis_figure(np.zeros((3, 6, 6)), layer="c", channels=[1])
    with pytest.raises(ValueError, match="`patches`"):
        topk_figure(np.zeros((2, 3)), layer="c")


def test_relative_maps() -> None:
    m = relative_maps(np.array([[[2.0, -4.0]], [[0.0, 0.0]], [[np.nan, 1.0]]]))
    assert m[0].tolist() == [[0.5, -1.0]] and m[1].tolist() == [[0.0, 0.0]]
    assert np.isnan(m[2, 0, 0]) and m[2, 0, 1] == 1.0


def test_attributions_grid() -> None:
    maps = {"saliency": np.ones((2, 5, 5)), "grad_cam": np.zeros((2, 5, 5))}
    fig = attributions_figure(maps, images=np.zeros((2, 5, 5, 3)), probe_labels=["#0", "#1"])
    assert isinstance(fig.data[0], go.Image)
    assert [t.name for t in fig.data[1:]] == ["saliency", "grad_cam"]
    assert fig.data[1].x0 == 6 and fig.data[2].x0 == 12  # one column per method after the input
    assert fig.data[1].zmin == -1 and fig.data[1].zmax == 1
    assert fig.layout.xaxis.ticktext == ("input", "saliency", "grad_cam")
    with pytest.raises(ValueError, match="expected"):
        attributions_figure({"a": np.ones((2, 5, 5)), "b": np.ones((2, 4, 4))})
    with pytest.raises(ValueError, match="at least one"):
        attributions_figure({})


def test_attribution_checks() -> None:
    fig = attribution_checks_figure(
        {"method": "saliency", "layers": ["fc", "conv2"], "spearman": [0.9, [0.1, 0.3]]},
        {"saliency": [0.7, 0.2]},
    )
    assert list(fig.data[0].y) == [0.9, pytest.approx(0.2)]
    assert list(fig.data[1].y) == [0.7] and list(fig.data[2].y) == [0.2]
    only = attribution_checks_figure(mask_share={"m": [0.5, 0.5]})
    assert len(only.data) == 2
    with pytest.raises(ValueError, match="give `randomisation`"):
        attribution_checks_figure()


def test_rf_growth_figure_plots_sizes_and_jumps():
    from cnnviz.figures.receptive_field import rf_growth_figure

    fig = rf_growth_figure(["c1", "s2", "c3"], [5, 6, 14], [1, 2, 2], input_size=32)
    assert list(fig.data[0].y) == [5, 6, 14]
    assert list(fig.data[1].y) == [1, 2, 2]
    assert fig.data[1].yaxis == "y2"
    with pytest.raises(ValueError, match="same length"):
        rf_growth_figure(["c1"], [5, 6], [1])
