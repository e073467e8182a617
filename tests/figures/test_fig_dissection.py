"""Concept dissection and faithfulness figures; top-k patches with padding."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from cnnviz.figures.dissection import (
    CATEGORY_COLOURS,
    category_order,
    detectors_figure,
    detectors_over_time_figure,
)
from cnnviz.figures.faithfulness import DELETION, INSERTION, RANDOM, faithfulness_figure
from cnnviz.figures.topk import topk_figure


def test_category_order_follows_the_paper_then_the_rest() -> None:
    assert category_order(["colour", "zz", "part", "object", "aa", "scene"]) == [
        "object",
        "scene",
        "part",
        "colour",
        "aa",
        "zz",
    ]


def test_detectors_figure_stacks_categories_beside_the_control() -> None:
    fig = detectors_figure(
        ["c1", "c3", "<b>c5</b>"],
        {"object": [0, 3, 4], "colour": [1, 0, None]},
        {"object": [0, 0, 5], "colour": [0, 0, 3]},
        names=[{"colour": ["red"]}, {"object": ["bars", "ring", "cross"]}, {}],
        label="the model at epoch 2",
    )
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert [(b.name, b.xaxis) for b in bars] == [
        ("object", "x"),
        ("colour", "x"),
        ("object", "x2"),
        ("colour", "x2"),
    ]
    assert fig.layout.barmode == "stack"
    assert list(bars[0].y) == [0, 3, 4] and list(bars[1].y) == [1, 0, 0]  # None: no bar
    assert bars[0].marker.color == CATEGORY_COLOURS["object"]
    assert [b.showlegend for b in bars] == [True, True, False, False]  # one legend entry each
    assert bars[1].customdata[2] == "no record"
    assert "bars, ring, cross" in bars[0].customdata[1]
    assert list(bars[0].x)[2] == "&lt;b&gt;c5&lt;/b&gt;"
    totals = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert [list(t.text) for t in totals] == [["1", "3", "4"], ["0", "0", "8"]]
    # one y scale for both panels: the control's 8 fits the model's panel too
    assert fig.layout.yaxis.range[1] > 8 and fig.layout.yaxis2.matches == "y"
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["the model at epoch 2", "randomised control"]


def test_detectors_figure_with_only_the_control() -> None:
    fig = detectors_figure(["c1"], None, {"object": [2]})
    assert {t.xaxis for t in fig.data} == {"x"}
    assert [a.text for a in fig.layout.annotations] == ["randomised control"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"counts": None, "control": None}, "give `counts`"),
        ({"counts": {"object": [1]}}, "has 1 counts for 2 layers"),
        ({"counts": {"object": [1, 2]}, "control": {"part": [1]}}, "'part' has 1 counts"),
    ],
)
def test_detectors_figure_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        detectors_figure(["a", "b"], **kwargs)


def test_detectors_over_time_draws_shares_and_the_control() -> None:
    fig = detectors_over_time_figure(
        ["start", "epoch 1", "epoch 2"],
        {"c3": [0, 8, 10], "c5": [31, None, 51]},
        {"c3": 16, "c5": 120},
        control={"c3": 0, "c5": 31},
        threshold=0.04,
    )
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    marks = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in lines] == ["c3", "c5"]
    assert list(lines[0].y) == [0.0, 0.5, 0.625]
    assert lines[1].y[1] is None and lines[1].customdata[1] == "no record"
    assert [list(t.y) for t in marks] == [[0.0], [31 / 120]]
    assert list(fig.layout.xaxis.categoryarray) == [
        "start",
        "epoch 1",
        "epoch 2",
        "randomised control",
    ]
    assert "IoU ≥ 0.04" in fig.layout.title.text
    with pytest.raises(ValueError, match="2 counts for 3 events"):
        detectors_over_time_figure(["a", "b", "c"], {"c": [1, 2]}, {"c": 4})


def test_faithfulness_figure_one_panel_per_method_against_random() -> None:
    x = [0.0, 0.5, 1.0]
    fig = faithfulness_figure(
        x,
        {
            "integrated_gradients": ([0.9, 0.2, 0.1], [0.1, 0.8, 0.9]),
            "saliency": ([0.9, 0.4, 0.1], [0.1, 0.6, 0.9]),
            "<i>m</i>": ([0.9, 0.5, 0.1], [0.1, 0.5, float("nan")]),
        },
        ([0.9, 0.5, 0.1], [0.1, 0.5, 0.9]),
        scores={"integrated_gradients": 0.5, "saliency": 0.2, "<i>m</i>": None},
    )
    assert len(fig.data) == 3 * 4
    first = fig.data[:4]
    assert [t.name for t in first] == [
        "deletion",
        "insertion",
        "random deletion",
        "random insertion",
    ]
    assert [t.line.color for t in first] == [DELETION, INSERTION, RANDOM, RANDOM]
    assert [t.showlegend for t in fig.data[4:8]] == [False] * 4
    assert fig.data[9].y[2] is None  # NaN is a gap
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [
        "1. integrated_gradients · +0.500",
        "2. saliency · +0.200",
        "3. &lt;i&gt;m&lt;/i&gt;",
    ]
    assert list(fig.layout.yaxis.range) == [0.0, pytest.approx(0.954)]  # probability: from 0
    assert fig.data[4].xaxis == "x2" and fig.layout.xaxis2.matches == "x"


def test_faithfulness_figure_balances_rows_and_rejects_bad_curves() -> None:
    curves = {f"m{i}": ([1.0, 0.0], [0.0, 1.0]) for i in range(5)}
    fig = faithfulness_figure([0, 1], curves, columns=4)
    assert fig.data[-1].xaxis == "x5" and fig.layout.xaxis4.domain[0] < 0.1  # 3 + 2
    with pytest.raises(ValueError, match="at least one method"):
        faithfulness_figure([0, 1], {})
    with pytest.raises(ValueError, match="3 points for 2 fractions"):
        faithfulness_figure([0, 1], {"m": ([1, 0, 0], [0, 1])})


def test_topk_figure_uses_padding_when_given() -> None:
    patches = np.full((2, 3, 6, 6, 3), 0.5, dtype=np.float32)
    padding = np.array([[0.0, 0.4, 0.0], [0.0, 0.0, 0.0]])
    plain = topk_figure(patches, np.ones((2, 3)), layer="c1")
    marked = topk_figure(patches, np.ones((2, 3)), layer="c1", padding=padding)
    hover = list(marked.data[1].text)
    assert "40% of its field is zero padding" in hover[1]
    assert sum("zero padding" in t for t in hover) == 1
    assert marked.data[0].source != plain.data[0].source  # the padded patch is framed
    inside = np.zeros((2, 3, 4))
    inside[...] = [0, 1, 0, 1]
    inside[0, 1] = [0.5, 1, 0, 1]  # the top half is padding
    tinted = topk_figure(patches, None, layer="c1", padding=padding, inside=inside)
    assert tinted.data[0].source != marked.data[0].source
    assert "tinted red" in tinted.layout.title.subtitle.text
    assert "orange frame" in marked.layout.title.subtitle.text
    assert plain.layout.title.subtitle.text is None
