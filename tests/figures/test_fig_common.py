"""The slider helper, Plotly text escaping and sizes (cnnviz.figures._common)."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from cnnviz.figures._common import event_slider, fig_height, plotly_text, step_slider


def _fig(n: int) -> go.Figure:
    return go.Figure([go.Scatter(y=[i]) for i in range(n)])


def test_groups_and_static_traces() -> None:
    fig = _fig(5)
    step_slider(fig, ["a", "b"], [[1, 2], [3, 4]], static=[0], prefix="at ")
    assert [t.visible for t in fig.data] == [True, False, False, True, True]
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["a", "b"]
    assert steps[0].args[0]["visible"] == [True, True, True, False, False]
    assert fig.layout.sliders[0].active == 1


def test_layout_updates_per_step() -> None:
    fig = _fig(2)
    step_slider(fig, ["a", "b"], [[0], [1]], layouts=[{"title": "A"}, {"title": "B"}], active=0)
    assert fig.layout.title.text == "A"
    assert fig.layout.sliders[0].steps[1].method == "update"
    assert fig.layout.sliders[0].steps[1].args[1] == {"title": "B"}


def test_single_step_has_no_slider() -> None:
    fig = _fig(1)
    step_slider(fig, ["only"], [[0]])
    assert fig.data[0].visible is True and not fig.layout.sliders


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match="`groups` and `labels`"):
        step_slider(_fig(2), ["a"], [[0], [1]])


def test_plotly_text_escapes_markup_and_placeholders() -> None:
    assert plotly_text("<b>x</b> & %{y}") == "&lt;b&gt;x&lt;/b&gt; &amp; %&#123;y}"


def test_fig_height_is_clamped() -> None:
    assert fig_height(10) == 220
    assert fig_height(5000) == 900
    assert fig_height(300, slider=True) == 300 + 80 + 90


def test_event_slider_groups_consecutive_traces() -> None:
    fig = _fig(6)
    event_slider(fig, ["a", "b", "c"], per_step=2, prefix="at ")
    assert [t.visible for t in fig.data] == [False, False, False, False, True, True]
    assert fig.layout.sliders[0].steps[0].args[0]["visible"] == [True, True] + [False] * 4
