"""Picture panels drawn with plain HTML."""

from __future__ import annotations

import re

import numpy as np

from cnnviz.figures.featvis import featvis_panel
from cnnviz.figures.panels import Cell
from cnnviz.figures.receptive_field import receptive_field_panel
from cnnviz.figures.topk import topk_panel
from cnnviz.report.gallery import image_panel, panel_html


def test_image_panel_positions_cells_in_percent_and_escapes() -> None:
    html = image_panel(
        "data:image/png;base64,AAAA",
        (10, 20),
        scale=3,
        cells=[Cell(5, 2, 10, 4, title='a "<b>"', label="<i>", kind="box")],
        caption="<cap>",
    )
    assert 'style="width:60px"' in html
    assert 'style="left:25.00%;top:20.00%;width:50.00%;height:40.00%"' in html
    assert 'class="cell box"' in html
    assert 'title="a &quot;&lt;b&gt;&quot;"' in html and "<span>&lt;i&gt;</span>" in html
    assert "<figcaption>&lt;cap&gt;</figcaption>" in html


def test_topk_panel_shrinks_large_patches() -> None:
    patches = np.random.default_rng(0).random((2, 3, 64, 64, 3))
    html = panel_html(
        topk_panel(
            patches,
            np.arange(6.0).reshape(2, 3),
            layer="l",
            channels=[4, 9],
            samples=np.arange(6).reshape(2, 3),
            max_size=32,
        )
    )
    assert html.count('class="cell tag"') == 6
    assert 'title="ch 9 #3: activation 5, sample 5"' in html
    assert "data:image/jpeg;base64," in html
    # cells are laid out for 32 px patches: the second column starts at 33 / 98 of the width
    assert re.search(r"left:33\.67%;top:0\.00%", html)


def test_padding_around_a_receptive_field_is_hatched_and_the_image_shared() -> None:
    pictures: dict[str, str] = {}
    panel = receptive_field_panel(
        np.zeros((8, 8)), (0, 3, 0, 3), unit=(0, 0), region_unclipped=(-2, 3, -2, 3)
    )
    html = panel_html(panel, pictures)
    again = panel_html(panel, pictures)  # a second layer on the same probe image
    assert len(pictures) == 1 and html == again
    assert 'class="pic pic-0"' in html and "data:image" not in html  # drawn from the CSS
    assert html.count('class="cell pad"') == 2 and 'class="cell edge"' in html
    assert "aspect-ratio:10/10" in html
    assert "left:20.00%;top:20.00%;width:80.00%;height:80.00%" in html  # the image's place
    from cnnviz.report.gallery import pictures_css

    assert pictures_css(pictures).startswith('.pic-0{background-image:url("data:image/png')


def test_featvis_and_receptive_field_panels() -> None:
    html = panel_html(
        featvis_panel(
            np.zeros((3, 8, 8, 3)),
            np.array([1.0, 2.0, 3.0]),
            layer="c",
            channels=[7, 8, 9],
            columns=2,
        )
    )
    assert html.count("<span>ch ") == 3 and 'title="c channel 9: activation 3"' in html
    rf = panel_html(receptive_field_panel(np.zeros((16, 16, 3)), (0, 5, 2, 7), unit=(1, 1)))
    assert 'class="cell box"' in rf and "unit (1, 1)" in rf
    assert 'title="rows 0..4, columns 2..6"' in rf
