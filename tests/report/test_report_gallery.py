"""Image panels drawn with plain HTML."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cnnviz.report.gallery import (
    Cell,
    featvis_panel,
    image_panel,
    receptive_field_panel,
    topk_panel,
)


def test_image_panel_positions_cells_in_percent_and_escapes() -> None:
    html = image_panel(
        "data:image/png;base64,AAAA",
        (10, 20),
        scale=3,
        cells=[Cell(5, 2, 10, 4, title='a "<b>"', label="<i>", css="box")],
        caption="<cap>",
    )
    assert 'style="width:60px"' in html
    assert 'style="left:25.000%;top:20.000%;width:50.000%;height:40.000%"' in html
    assert 'title="a &quot;&lt;b&gt;&quot;"' in html and "<span>&lt;i&gt;</span>" in html
    assert "<figcaption>&lt;cap&gt;</figcaption>" in html


def test_topk_panel_shrinks_large_patches() -> None:
    patches = np.random.default_rng(0).random((2, 3, 64, 64, 3))
    html = topk_panel(
        patches,
        np.arange(6.0).reshape(2, 3),
        layer="l",
        channels=[4, 9],
        samples=np.arange(6).reshape(2, 3),
        max_size=32,
    )
    assert html.count('class="cell tag"') == 6
    assert 'title="l channel 9, #3, activation 5, sample 5"' in html
    assert "data:image/jpeg;base64," in html
    # cells are laid out for 32 px patches: the second column starts at 33 / 98 of the width
    assert re.search(r"left:33\.673%;top:0\.000%", html)
    with pytest.raises(ValueError, match="`patches`"):
        topk_panel(np.zeros((2, 3)), None, layer="l")


def test_featvis_and_receptive_field_panels() -> None:
    html = featvis_panel(
        np.zeros((3, 8, 8, 3)), np.array([1.0, 2.0, 3.0]), layer="c", channels=[7, 8, 9], columns=2
    )
    assert html.count("<span>ch ") == 3 and 'title="c channel 9: activation 3"' in html
    rf = receptive_field_panel(np.zeros((16, 16, 3)), (0, 5, 2, 7), unit=(1, 1))
    assert 'class="cell box"' in rf and "unit (1, 1)" in rf
    assert 'title="rows 0..4, columns 2..6"' in rf
    with pytest.raises(ValueError, match="`images`"):
        featvis_panel(np.zeros((2, 2)), None, layer="c")
