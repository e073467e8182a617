"""Concept dissection in the report: the run-level section and each layer's units."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from report_helpers import (
    EVIL,
    dissection_record,
    figures,
    parse,
    titles,
    write_dissection,
)

from cnnviz.report import build_report
from cnnviz.report.dissection import unit_order
from cnnviz.store import BudgetRecord, ConceptInfo, RunStore, TopkRecord

LAYERS = [
    {"name": "features.0", "type": "Conv2d", "kind": "conv"},
    {"name": "features.1", "type": "ReLU", "kind": None},
    {"name": "features.2", "type": "Conv2d", "kind": "conv"},
]


def _text(html: str) -> str:
    return " ".join("".join(parse(html).text).split())


def _section(html: str, anchor: str) -> str:
    m = re.search(rf'<section class="card" id="{re.escape(anchor)}">(.*?)</section>', html, re.S)
    assert m is not None, anchor
    return m.group(1)


def _part(html: str, anchor: str) -> str:
    """A layer section's concept dissection part (to the end of the section)."""
    body = _section(html, anchor)
    assert '<div class="layer-dissection">' in body
    return body[body.index('<div class="layer-dissection">') :]


def _store(run: Path) -> RunStore:
    store = RunStore(run / "cnnviz")
    store.update_run(status="finished", model="tiny", layers=LAYERS, input_shape=[3, 16, 16])
    return store


def _topk(store: RunStore, channels: list[int]) -> None:
    rng = np.random.default_rng(1)
    c = len(channels)
    store.put(
        TopkRecord(
            values=rng.random((c, 3)),
            samples=rng.integers(0, 50, (c, 3)),
            positions=rng.integers(0, 8, (c, 3, 2)),
            patches=rng.random((c, 3, 5, 5, 3)),
            channels=tuple(channels),
            k=3,
            num_channels=6,
        ),
        writer="TopActivations{}",
        layer="features.0",
        epoch=2,
        step=20,
        event="epoch",
        label="epoch 3",
    )


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three events of features.0 (units 0, 3, 5 become detectors), its control, top patches."""
    run = tmp_path_factory.mktemp("dissect") / "run"
    store = _store(run)
    write_dissection(store, control={2: 0})
    _topk(store, [0, 3])
    store.put(
        BudgetRecord(callback="ConceptDissection", decisions=("dissects over 128 of 512 images",)),
        writer="ConceptDissection{}",
    )
    return build_report(run, progress=False).read_text(encoding="utf-8")


def test_the_summary_states_totals_against_the_control(full: str) -> None:
    page = parse(full)
    assert "dissection" in page.ids and "#dissection" in page.hrefs
    text = _text(_section(full, "dissection"))
    assert "Network Dissection (Bau et al., 2017)" in text
    assert "top 0.5% over the 64 dissection images" in text and "reaches 0.04" in text
    assert (
        "At epoch 3: 3 of 6 units over 1 layer are detectors; randomised control: 1 of 6." in text
    )
    # what was left out: the conv layer not dissected, the budget's cut
    assert "1 conv layer was not dissected: features.2" in text
    assert "ConceptDissection dissects over 128 of 512 images" in text
    assert "object: bars; part: edge" in text  # what the detectors detect
    # the section comes before the layers, after the attributions' place in the flow
    assert full.index('id="dissection"') < full.index('id="layers"')


def test_the_chart_counts_unique_detectors_beside_the_control(full: str) -> None:
    figs = figures(full)
    chart = next(f for f in figs.values() if "Unique detectors" in f["layout"]["title"]["text"])
    bars = {(t["name"], t.get("xaxis", "x")): t["y"] for t in chart["data"] if t["type"] == "bar"}
    assert list(bars[("object", "x")]) == [1] and list(bars[("part", "x")]) == [1]
    assert list(bars[("object", "x2")]) == [1] and list(bars[("part", "x2")]) == [0]
    notes = [a["text"] for a in chart["layout"]["annotations"]]
    assert notes == ["the model at epoch 3", "randomised control (re-initialised weights)"]
    over = next(f for f in figs.values() if "over training" in f["layout"]["title"]["text"])
    line = next(t for t in over["data"] if t["mode"] == "lines+markers")
    assert np.allclose(np.asarray(line["y"], dtype=float), [0, 1 / 6, 3 / 6], atol=1e-3)
    assert "randomised control" in list(over["layout"]["xaxis"]["categoryarray"])


def test_the_layer_lists_detectors_first_with_their_patches(full: str) -> None:
    part = _part(full, "layer-features-0")
    text = _text(part)
    assert "3 of 6 units are detectors at epoch 3" in text
    assert "unique detectors: object 1, part 1" in text
    assert "randomised control (re-initialised weights): 1 of 6" in text
    assert "read after 1" in text  # features.1, named relative to the layer's parent
    units = re.findall(r"<tr><td><b>(\d+)</b></td>", part)
    assert units[:3] == ["5", "3", "0"]  # detectors, highest IoU first
    assert sorted(units) == [str(u) for u in range(6)]  # 6 units: all listed
    rows = re.findall(r"<tr><td><b>(\d+)</b></td>(.*?)</tr>", part)
    with_patches = [u for u, row in rows if "<figure" in row]
    assert with_patches == ["3", "0"]  # TopActivations kept channels 0 and 3
    assert "Top dataset patches exist for 2 of the 6 channels" in text
    assert "0.100" in dict(rows)["5"]  # unit 5's IoU (0.05 + 0.01·5)


def test_the_layer_says_when_each_detector_first_appeared(full: str) -> None:
    part = _part(full, "layer-features-0")
    timeline = part[part.index("Detectors over training") :]
    rows = dict(
        re.findall(
            r"<tr><td>([a-z]+) <span class=\"cat[^>]*>[a-z]+</span></td><td>(.*?)</td>", timeline
        )
    )
    assert rows["bars"] == "epoch 2" and rows["edge"] == "epoch 3"
    assert rows["circle"].endswith("never (control only)</span>")  # only the control has it
    heads = re.findall(r"<th>(.*?)</th>", timeline)
    assert heads == ["concept", "first labelled", "epoch 1", "epoch 2", "epoch 3", "control"]


def test_a_store_without_topk_has_no_patch_column(tmp_path: Path) -> None:
    store = _store(tmp_path / "run")
    write_dissection(store)
    html = build_report(tmp_path / "run", progress=False).read_text(encoding="utf-8")
    part = _part(html, "layer-features-0")
    assert "<figure" not in part and "top dataset patches" not in part
    text = _text(_section(html, "dissection"))
    assert "No randomised control was recorded" in text
    assert "randomised control:" not in text


def test_a_control_without_the_model_records(tmp_path: Path) -> None:
    store = _store(tmp_path / "run")
    write_dissection(store, model=False, control={1: 4, 2: 0})
    html = build_report(tmp_path / "run", progress=False).read_text(encoding="utf-8")
    text = _text(_section(html, "dissection"))
    assert "only the randomised control was recorded" in text
    assert "Randomised control: 2 of 6 units over 1 layer are detectors." in text
    chart = next(
        f for f in figures(html).values() if "Unique detectors" in f["layout"]["title"]["text"]
    )
    assert {t.get("xaxis", "x") for t in chart["data"]} == {"x"}  # one panel: the control
    part = _text(_part(html, "layer-features-0"))
    assert "Only the randomised control was recorded for this layer" in part
    assert "Detectors over training" not in part


def test_no_dissection_no_section(tmp_path: Path) -> None:
    store = _store(tmp_path / "run")
    _topk(store, [0])
    html = build_report(tmp_path / "run", progress=False).read_text(encoding="utf-8")
    assert 'id="dissection"' not in html and "layer-dissection" not in html


def test_a_large_layer_lists_its_detectors_and_says_what_it_leaves_out(tmp_path: Path) -> None:
    store = _store(tmp_path / "run")
    detectors = {u: u % 5 for u in range(50)}  # 50 of 80 units are detectors
    write_dissection(store, units=80, history=[detectors])
    html = build_report(tmp_path / "run", progress=False).read_text(encoding="utf-8")
    part = _part(html, "layer-features-0")
    assert len(re.findall(r"<tr><td><b>\d+</b></td>", part)) == 48 + 6
    left = "26 of 80 units are not listed: 48 of the 50 detectors and the 6 best of the other"
    assert left + " units are." in _text(part)
    assert "no history over training" in _text(_section(html, "dissection"))


def test_coarse_maps_and_hostile_concept_names(tmp_path: Path) -> None:
    store = _store(tmp_path / "run")
    rec = dissection_record(4, {0: 0, 1: 0})
    concepts = (ConceptInfo(EVIL, "<object>"), *rec.concepts[1:])
    store.put(
        dataclasses.replace(
            rec, map_size=(1, 1), concepts=concepts, detectors={}, detector_counts={}
        ),
        writer="ConceptDissection{}",
        layer="features.0",
        epoch=0,
        step=1,
        event="epoch",
        label="epoch 1",
    )
    html = build_report(tmp_path / "run", progress=False).read_text(encoding="utf-8")
    assert EVIL not in html and "&lt;script&gt;" in html
    assert "coarse maps" in _text(_section(html, "dissection"))
    assert "1×1 maps: a region is the whole image" in _text(_part(html, "layer-features-0"))
    # detectors counted from the arrays when the record's counts are empty
    assert "unique detectors: &lt;object&gt; 1" in _part(html, "layer-features-0")
    assert "Unique detectors per layer, by concept category" in " ".join(titles(figures(html)))


def test_unit_order() -> None:
    iou = np.array([0.02, 0.09, np.nan, 0.05, 0.03])
    assert unit_order(iou, iou >= 0.04) == [1, 3, 4, 0, 2]
