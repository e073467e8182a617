"""Feature visualisation in a layer's section: what was read, which units, shared images."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from report_helpers import parse

from cnnviz.report import build_report
from cnnviz.report.layers import featvis_units
from cnnviz.store import ActivationsRecord, FeatvisRecord, RunStore

AT = {"epoch": 1, "step": 20, "event": "epoch", "label": "epoch 2"}


def _text(html: str) -> str:
    return " ".join("".join(parse(html).text).split())


def _part(html: str, anchor: str) -> str:
    m = re.search(rf'<section class="card" id="{re.escape(anchor)}">(.*?)</section>', html, re.S)
    assert m is not None, anchor
    body = m.group(1)
    assert '<div class="featvis-part">' in body, anchor
    return body[body.index('<div class="featvis-part">') :]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """features.0 (a conv, stopped early) and features.1, a pool that shares its images."""
    run = tmp_path_factory.mktemp("featvis") / "run"
    store = RunStore(run / "cnnviz")
    store.update_run(
        status="finished",
        layers=[{"name": "features.0", "kind": "conv"}, {"name": "features.1", "kind": "pool"}],
    )
    rng = np.random.default_rng(0)
    store.put(
        ActivationsRecord(
            maps=rng.random((2, 3, 14, 14)), channels=np.arange(3), shape=(2, 3, 14, 14)
        ),
        writer="ActivationMaps{}",
        layer="features.0",
        **AT,
    )
    images = rng.random((3, 16, 16, 3))
    store.put(
        FeatvisRecord(
            images=images,
            activations=np.array([1.0, 2.0, 3.0]),
            channels=(0, 1, 2),
            objective="mean",
            param="fourier",
            steps=256,
            seconds=3.5,
            stage="activation",
            read_path=("features.0b", "features.0r"),
            units=(2, 12, 2, 12),
            units_reason="interior units: receptive field inside the image",
            stopped_at=40,
        ),
        writer="FeatureVisualization{}",
        layer="features.0",
        **AT,
    )
    store.put(
        FeatvisRecord(
            images=images,
            activations=np.array([0.5, 1.0, 1.5]),
            channels=(0, 1, 2),
            objective="mean",
            steps=256,
            units=(0, 7, 0, 7),
            units_reason="all units: every receptive field lies inside the image",
            same_as="features.0",
        ),
        writer="FeatureVisualization{}",
        layer="features.1",
        **AT,
    )
    return build_report(run, progress=False).read_text(encoding="utf-8")


def test_what_the_objective_read_and_which_units(page: str) -> None:
    text = _text(_part(page, "layer-features-0"))
    assert "objective read after 0b → 0r" in text
    assert "averages output rows 2–11, columns 2–11 (10×10 of 14×14 positions)" in text
    assert "Why these units: receptive field inside the image." in text
    assert "256 steps, fourier parametrisation, 3.5 s" in text
    assert "stopped after 40 of 256 steps (SIGTERM): the images are unfinished" in text
    assert "same images as" not in text


def test_a_layer_with_another_layers_images_says_so_and_links_it(page: str) -> None:
    part = _part(page, "layer-features-1")
    text = _text(part)
    assert "same images as features.0" in text
    assert "were not optimised again" in text and "measured on this layer" in text
    assert '<a href="#layer-features-0">features.0</a>' in part
    assert "stopped after" not in text
    # the picture is in the page once, drawn in both sections
    own = re.findall(r'class="pic (pic-\d+)"', _part(page, "layer-features-0"))
    shared = re.findall(r'class="pic (pic-\d+)"', part)
    assert own == shared and len(own) == 1
    assert page.count(f".{own[0]}{{background-image") == 1


@pytest.mark.parametrize(
    ("units", "size", "text"),
    [
        ((2, 12, 2, 12), (14, 14), "output rows 2–11, columns 2–11 (10×10 of 14×14 positions)"),
        ((0, 14, 0, 14), (14, 14), "all 14×14 output positions"),
        ((6, 7, 6, 7), (14, 14), "the single output position (6, 6)"),
        ((0, 5, 0, 5), None, "output rows 0–4, columns 0–4 (5×5 positions)"),
        (None, (4, 4), ""),
    ],
)
def test_featvis_units(
    units: tuple[int, ...] | None, size: tuple[int, int] | None, text: str
) -> None:
    assert featvis_units(units, size) == text


def test_a_record_of_an_older_writer_still_draws(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run" / "cnnviz")
    store.put(
        FeatvisRecord(images=np.zeros((2, 8, 8))),
        writer="FeatureVisualization{}",
        layer="c",
        **AT,
    )
    html = build_report(tmp_path / "run", progress=False).read_text(encoding="utf-8")
    text = _text(_part(html, "layer-c"))
    assert "Inputs optimised to excite each channel, at epoch 2." in text
    assert "averages" not in text and "stopped" not in text
