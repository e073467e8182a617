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
from cnnviz.figures.featvis import featvis_panel
from cnnviz.figures.panels import Cell, Panel, panel_figure
from cnnviz.figures.predictions import CORRECT, OTHER, predictions_figure, top_classes
from cnnviz.figures.receptive_field import erf_figure, receptive_field_panel, rf_growth_figure
from cnnviz.figures.topk import patch_inside, topk_figure, topk_panel


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


def test_receptive_field_panel_box() -> None:
    panel = receptive_field_panel(np.zeros((8, 8, 3)), (1, 6, 2, 5), unit=(1, 1))
    box = [c for c in panel.cells if c.kind == "box"]
    assert len(box) == 1 and (box[0].x, box[0].y, box[0].w, box[0].h) == (2, 1, 3, 5)
    assert panel.caption == "the input region unit (1, 1) sees: rows 1..5, columns 2..4"
    assert panel.size == (8, 8) and not [c for c in panel.cells if c.kind == "pad"]
    with pytest.raises(ValueError, match="`region`"):
        receptive_field_panel(np.zeros((4, 4)), (0, 1))


def test_receptive_field_panel_draws_the_padding_around_the_image() -> None:
    # a 5 px field at the top-left corner of an 8 px image: 2 px of it in the zero padding
    panel = receptive_field_panel(
        np.zeros((8, 8)), (0, 3, 0, 3), unit=(0, 0), region_unclipped=(-2, 3, -2, 3)
    )
    assert panel.size == (10, 10) and panel.offset == (2, 2)  # a 2 px margin top and left
    assert panel.image.shape == (8, 8, 3)  # the image itself, placed at the offset
    pads = [c for c in panel.cells if c.kind == "pad"]
    assert {(c.x, c.y, c.w, c.h) for c in pads} == {(0, 0, 10, 2), (0, 2, 2, 8)}
    box = next(c for c in panel.cells if c.kind == "box")
    assert (box.x, box.y, box.w, box.h) == (0, 0, 5, 5)  # the whole field, padding included
    edge = next(c for c in panel.cells if c.kind == "edge")
    assert (edge.x, edge.y, edge.w, edge.h) == (2, 2, 8, 8)  # the image border
    assert "64% of it lies in the zero padding" in panel.caption  # 1 - 9/25


def test_receptive_field_panel_local_field_of_a_global_context_layer() -> None:
    panel = receptive_field_panel(
        np.zeros((16, 16)),
        (0, 16, 0, 16),
        unit=(2, 2),
        region_unclipped=(-40, 56, -40, 56),
        local_region=(4, 11, 4, 11),
        local_unclipped=(4, 11, 4, 11),
        global_at=["se.conv_expand"],
    )
    local = [c for c in panel.cells if c.kind == "local"]
    assert [(c.x, c.y, c.w, c.h) for c in local] == [(4, 4, 7, 7)]
    assert panel.size == (16, 16)  # the local field is inside the image: no margin
    assert "local field of unit (2, 2)" in panel.caption
    assert "also sees the whole image through global context joining at se.conv_expand" in (
        panel.caption
    )


def test_far_fields_have_capped_margins() -> None:
    panel = receptive_field_panel(
        np.zeros((10, 10)), (0, 10, 0, 10), region_unclipped=(-100, 110, -100, 110)
    )
    assert panel.size == (30, 30) and panel.offset == (10, 10)
    assert "the field goes further" in panel.caption


def test_erf_slider_updates_the_radius_circle() -> None:
    maps = [np.ones((9, 9)), np.pad(np.ones((1, 1)) * 4, 4)]
    fig = erf_figure(
        maps,
        ["start", "epoch 1"],
        layer="c",
        radius=[3.0, 1.0],
        region=(0, 9, 0, 9),
        local_region=(2, 7, 2, 7),
    )
    assert np.nanmax(np.asarray(fig.data[1].z)) == 1.0  # each map scaled to its peak
    steps = fig.layout.sliders[0].steps
    circle = steps[0].args[1]["shapes"][2]
    assert circle["type"] == "circle" and circle["x1"] - circle["x0"] == 6.0
    assert steps[1].args[1]["shapes"][2]["x1"] - steps[1].args[1]["shapes"][2]["x0"] == 2.0
    assert steps[0].args[1]["shapes"][1]["line"]["color"] == "#ffd400"  # the local field
    assert "90% of the gradient mass" in fig.layout.title.text
    nan = erf_figure([np.full((3, 3), np.nan)], ["a"], layer="c", radius=[float("nan")])
    assert not nan.layout.shapes  # no circle for an undefined radius
    with pytest.raises(ValueError, match="`radius`"):
        erf_figure(maps, ["a", "b"], layer="c", radius=[1.0])


def test_patch_inside_fractions() -> None:
    # a 5 px field with jump 2 starting at -2 on a 10 px image: unit 0 reads rows -2..2
    pos = np.array([[[0, 0], [1, 4]], [[-1, -1], [4, 0]]])
    inside = patch_inside(pos, size=(5, 5), jump=(2, 2), start=(-2, -2), image_size=(10, 10))
    assert inside[0, 0].tolist() == pytest.approx([0.4, 1.0, 0.4, 1.0])
    # rows 0..4 inside; columns 6..10, of which column 10 is padding
    assert inside[0, 1].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.8])
    assert inside[1, 1].tolist() == pytest.approx([0.0, 0.8, 0.4, 1.0])  # bottom-left corner
    assert np.isnan(inside[1, 0]).all()  # no entry
    with pytest.raises(ValueError, match="two-axis"):
        patch_inside(pos[..., :1], size=(5,), jump=(2,), start=(0,), image_size=(10,))


def test_topk_panel_marks_padding_in_the_picture() -> None:
    patches = np.full((2, 3, 10, 10, 3), 0.5)
    padding = np.array([[0.4, 0.0, 0.0], [0.0, np.nan, 0.2]])
    values = np.array([[3.0, 2.0, 1.0], [5.0, np.nan, 1.0]])
    samples = np.array([[1, 2, 3], [4, -1, 5]])
    inside = np.full((2, 3, 4), np.nan)
    inside[0, 0] = [0.4, 1, 0, 1]  # the top 4 rows of entry (0, 0) are padding
    panel = topk_panel(
        patches,
        values,
        layer="c",
        channels=[4, 9],
        samples=samples,
        padding=padding,
        inside=inside,
    )
    tags = [c for c in panel.cells if c.kind == "tag"]
    assert len(tags) == 6 and tags[0].label == "ch 4" and tags[3].label == "ch 9"
    assert tags[0].title == "ch 4 #1: activation 3, sample 1; 40% of its field is zero padding"
    assert tags[4].title == "no entry"
    img = panel.image.astype(int)
    red = img[1, 1]  # entry (0, 0), a padding row: tinted red
    assert red[0] > red[1] + 60 and red[0] > red[2] + 60
    assert img[3, 1].tolist() == [255, 255, 255]  # the image border, drawn white
    assert abs(img[6, 5] - 128).max() <= 3  # inside the image: untouched grey
    assert abs(img[1, 12] - 128).max() <= 3  # entry (0, 1): no padding, untouched
    # entry (1, 2) has padding but no geometry: an orange frame
    frame = img[11, 22]
    assert frame[0] > 240 and 120 < frame[1] < 160 and frame[2] < 20
    assert "2 of them reach into the zero padding" in panel.caption


def test_topk_and_featvis_panels_and_their_figures() -> None:
    fig = topk_figure(
        np.zeros((2, 3, 4, 4, 3)),
        np.arange(6).reshape(2, 3),
        layer="c",
        channels=[4, 9],
        samples=np.arange(6).reshape(2, 3),
    )
    hover = fig.data[1]
    assert len(hover.x) == 6 and hover.text[3] == "ch 9 #1: activation 3, sample 3"
    assert fig.data[0].source.startswith("data:image/jpeg")
    assert list(fig.data[2].text[:2]) == ["ch 4", "ch 9"]
    fv = featvis_panel(
        np.zeros((3, 6, 6, 3)), np.array([1.0, 2.0, 3.0]), layer="c", channels=[1, 2, 3], columns=2
    )
    assert [c.label for c in fv.cells] == ["ch 1", "ch 2", "ch 3"]
    assert "activation 3" in fv.cells[2].title and (fv.cells[2].x, fv.cells[2].y) == (0, 8)
    with pytest.raises(ValueError, match="`channels`"):
        featvis_panel(np.zeros((3, 6, 6)), layer="c", channels=[1])
    with pytest.raises(ValueError, match="`patches`"):
        topk_panel(np.zeros((2, 3)), layer="c")


def test_panel_figure_draws_boxes_and_padding() -> None:
    panel = Panel(
        image=np.zeros((4, 4, 3), np.uint8),
        cells=(Cell(0, 0, 2, 2, title="t", kind="box"), Cell(2, 2, 2, 2, kind="pad")),
        caption="cap",
    )
    fig = panel_figure(panel)
    kinds = [s.line.color for s in fig.layout.shapes]
    assert kinds[0] == "#ff2d2d" and fig.layout.shapes[1].fillcolor.startswith("rgba(220")
    assert fig.layout.title.text == "cap"


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


def test_rf_growth_figure_plots_sizes_and_jumps() -> None:
    fig = rf_growth_figure(["c1", "s2", "c3"], [5, 6, 14], [1, 2, 4], input_size=32)
    assert list(fig.data[0].y) == [5, 6, 14]
    assert list(fig.data[1].y) == [1, 2, 4]
    assert fig.data[1].yaxis == "y2"
    axis = fig.layout.yaxis2
    # integer ticks, one per value at most: no repeated labels (1 1 2 2 ...)
    assert axis.tickmode == "linear" and axis.dtick == 1 and axis.tickformat == "d"
    assert fig.layout.margin.r >= 60  # room for the right axis' title beside its ticks
    wide = rf_growth_figure(["c"] * 3, [5, 6, 14], [8, 64, 512])
    assert wide.layout.yaxis2.dtick == 100 and wide.layout.yaxis2.range[1] > 512
    with pytest.raises(ValueError, match="same length"):
        rf_growth_figure(["c1"], [5, 6], [1])
