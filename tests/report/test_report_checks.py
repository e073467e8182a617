"""The attribution checks: the faithfulness ranking, and mask texts only where masks existed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from report_helpers import faithfulness, figures, parse

from cnnviz.report import build_report
from cnnviz.store import AttributionChecksRecord, AttributionsRecord, ProbeRecord, RunStore
from cnnviz.store.records import Randomisation

WRITER = "Attributions{}"


def _text(html: str) -> str:
    return " ".join("".join(parse(html).text).split())


def _section(html: str) -> str:
    m = re.search(r'<section class="card" id="attributions">(.*?)</section>', html, re.S)
    assert m is not None
    return m.group(1)


def _run(
    root: Path,
    *,
    masks: bool,
    scores: list[dict[str, float]] | None,
    randomisation: bool = True,
) -> str:
    """Probe, attributions and one checks record per event (``scores``: one per event)."""
    store = RunStore(root / "cnnviz")
    store.update_run(status="finished", model="tiny")
    rng = np.random.default_rng(0)
    probe = {"x": rng.random((2, 3, 8, 8)), "y": np.array([0, 1])}
    if masks:
        probe["masks"] = rng.random((2, 8, 8)) > 0.5
    store.put(ProbeRecord(**probe, class_names=("a", "b")), writer=WRITER, event="start")
    events = scores or [{}]
    for e, methods in enumerate(events):
        at = {"epoch": e, "step": e + 1, "event": "epoch", "label": f"epoch {e + 1}"}
        store.put(
            AttributionsRecord(
                maps={"saliency": rng.random((2, 8, 8))}, methods=("saliency",), targets=(0, 1)
            ),
            writer=WRITER,
            **at,
        )
        store.put(
            AttributionChecksRecord(
                mask_share={"saliency": (0.6, 0.3)} if masks else None,
                masks=masks,
                faithfulness=faithfulness(methods) if scores else None,
            ),
            writer=WRITER,
            **at,
        )
    if randomisation:
        store.put(
            AttributionChecksRecord(
                randomisation=Randomisation("saliency", ("fc", "conv"), (0.5, 0.1))
            ),
            writer=WRITER,
            epoch=len(events) - 1,
            step=len(events),
            event="epoch",
            label=f"epoch {len(events)}",
        )
    return build_report(root, progress=False).read_text(encoding="utf-8")


SCORES = {"integrated_gradients": 0.3, "saliency": 0.12, "<b>gbp</b>": 0.03, "random_ish": -0.1}


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _run(tmp_path_factory.mktemp("faith") / "run", masks=True, scores=[SCORES, SCORES])


def test_the_methods_are_ranked_against_random(ranked: str) -> None:
    body = _section(ranked)
    text = _text(body)
    assert "Sanity and faithfulness checks" in text
    assert "Which method is faithful to this model" in text
    assert "Petsiuk et al., 2018" in text and "at epoch 2" in text
    assert "set to zero" in text and "into a blurred copy of the image" in text
    table = body[body.index("deletion AUC (lower is better)") :]
    rows = re.findall(r"<tr><td>(\d*)</td><td>(.*?)</td><td class=num>(.*?)</td>", table)
    assert [(r, m) for r, m, _ in rows] == [
        ("1", "integrated_gradients"),
        ("2", "saliency"),
        ("3", "&lt;b&gt;gbp&lt;/b&gt;"),
        ("4", "random_ish"),
        ("", "<i>random ordering</i>"),
    ]
    assert rows[0][2] == "0.300" and rows[-1][2] == "0.450 ± 0.050"  # deletion AUCs
    assert "insertion AUC (higher is better)" in text
    chip = '{}</td><td><span class="chip {}">{}</span>'
    assert chip.format("+0.030", "warn", "below the random spread") in body  # < spread 0.05
    assert chip.format("-0.100", "bad", "no better than random") in body
    assert text.count("below the random spread") == 1 and "<b>gbp</b>" not in body


def test_the_curves_figure_draws_each_method_against_random(ranked: str) -> None:
    fig = next(
        f
        for f in figures(ranked).values()
        if "Deletion and insertion" in f["layout"]["title"]["text"]
    )
    assert len(fig["data"]) == 4 * 4
    heads = [a["text"] for a in fig["layout"]["annotations"]]
    assert heads[0] == "1. integrated_gradients · +0.300"
    assert heads[2] == "3. &lt;b&gt;gbp&lt;/b&gt; · +0.030"
    assert fig["layout"]["title"]["text"].startswith("Deletion and insertion curves at epoch 2")


def test_masks_are_described_where_they_existed(ranked: str) -> None:
    text = _text(_section(ranked))
    assert "Mask share: the part of the attribution that falls on the object" in text
    assert "inside the mask" in text


def test_nothing_about_masks_without_them(tmp_path: Path) -> None:
    html = _run(tmp_path / "run", masks=False, scores=[SCORES])
    text = _text(_section(html)).lower()
    assert "mask" not in text
    assert "which method is faithful" in text
    check = next(
        f for f in figures(html).values() if f["layout"]["title"]["text"] == "Attribution checks"
    )
    assert [a["text"] for a in check["layout"]["annotations"]] == [
        "model randomisation:<br>rank correlation (should fall)"
    ]


def test_without_faithfulness_the_checks_are_sanity_checks(tmp_path: Path) -> None:
    html = _run(tmp_path / "run", masks=False, scores=None)
    text = _text(_section(html))
    assert "Sanity checks" in text and "faithful" not in text


def test_the_ranking_over_events_is_shown_when_it_changes(tmp_path: Path) -> None:
    early = {"saliency": 0.3, "integrated_gradients": 0.1}
    late = {"saliency": 0.1, "integrated_gradients": 0.3}
    html = _run(tmp_path / "a", masks=False, scores=[early, early, late], randomisation=False)
    body = _section(html)
    assert "Ranking over training" in body
    history = body[body.index("Ranking over training") :]
    rows = re.findall(r"<tr><td>(epoch \d)</td><td>(\w+)</td><td>(\w+)</td></tr>", history)
    assert rows == [
        ("epoch 1", "saliency", "integrated_gradients"),
        ("epoch 2", "saliency", "integrated_gradients"),
        ("epoch 3", "integrated_gradients", "saliency"),
    ]
    same = _run(tmp_path / "b", masks=False, scores=[early, early], randomisation=False)
    assert "Ranking over training" not in same
    assert "has not recorded it" in _text(_section(same))  # no randomisation check yet
