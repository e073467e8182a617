"""Every picture and number the report shows says what it is (issues 10 and 13)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from report_helpers import parse, write_full_run

from cnnviz.report import build_report
from cnnviz.report.tokens import token_colour, token_text, tokens_html
from cnnviz.store import RunStore

START = {"event": "start", "label": "start"}
EPOCH = {"event": "epoch", "label": "epoch 2"}


def _text(html: str) -> str:
    return " ".join("".join(parse(html).text).split())


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A run with what issues 10 and 13 added to the store, and its report."""
    rng = np.random.default_rng(0)
    run = tmp_path_factory.mktemp("trust") / "run"
    store = write_full_run(run, epochs=2)
    store.update_run(
        budget={
            "share": 0.1,
            "train_seconds": 100.0,
            "spent": {"FilterWeights{'layers': None}": 4.0, "TopActivations{}": 2500.0},
            "total_spent": 2504.0,
        }
    )
    # a conv read after its norm only (no activation follows it)
    maps = rng.standard_normal((4, 6, 7, 7)).astype(np.float32)
    store.write(
        "activations",
        {
            "maps": maps,
            "channels": np.arange(6),
            "mean": maps.mean((0, 2, 3)),
            "max": maps.max((0, 2, 3)),
            "zero_fraction": np.ones(6),  # all exact zeros: still not "dead" before an activation
        },
        source="a",
        layer="features.2",
        epoch=1,
        step=20,
        meta={
            **EPOCH,
            "shape": [4, 6, 7, 7],
            "stage": "norm",
            "read_path": ["features.3"],
            "read_from": "features.3",
        },
    )
    # a layer that also sees global context (a squeeze-and-excitation gate)
    store.write(
        "receptive_field",
        {"region_image": rng.random((16, 16, 3))},
        source="r",
        layer="features.2",
        epoch=0,
        step=0,
        meta={
            **START,
            "size": [16, 16],
            "jump": [2, 2],
            "start": [0, 0],
            "unit": [3, 3],
            "region": [0, 16, 0, 16],
            "region_unclipped": [-20, 36, -20, 36],
            "global_context": True,
            "global_context_at": ["features.se:mul"],
            "local_size": [7, 7],
            "local_jump": [2, 2],
            "local_region": [3, 10, 3, 10],
            "local_region_unclipped": [3, 10, 3, 10],
        },
    )
    # an effective field that could not be summarised
    store.write(
        "erf",
        {"map": np.zeros((16, 16))},
        source="r",
        layer="features.2",
        epoch=1,
        step=20,
        meta={**EPOCH, "ratio": None, "effective_size": None, "note": "the map has no mass"},
    )
    # an effective field with the new numbers
    store.write(
        "erf",
        {"map": rng.random((16, 16))},
        source="r",
        layer="features.0",
        epoch=1,
        step=20,
        meta={
            **EPOCH,
            "ratio": 0.42,
            "effective_size": 5.5,
            "effective_area": 30.25,
            "inside_fraction": 0.97,
            "theoretical": [0, 9, 0, 9],
            "theoretical_size": [9, 9],
            "mass_fraction": 0.9,
        },
    )
    # top patches, one of which reaches into the padding
    padding = np.zeros((3, 4), dtype=np.float32)
    padding[0, 0] = 0.44
    store.write(
        "topk",
        {
            "patches": rng.random((3, 4, 5, 5, 3)),
            "values": rng.random((3, 4)),
            "samples": rng.integers(0, 9, (3, 4)),
            "positions": np.zeros((3, 4, 2), dtype=int),
            "padding": padding,
        },
        source="t",
        layer="features.0",
        epoch=1,
        step=20,
        meta={**EPOCH, "channels": [0, 1, 2], "k": 4, "num_channels": 8, "rf_size": [5, 5]},
    )
    # weight gradients of the logged steps
    for e in range(2):
        w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
        store.write(
            "filters",
            {
                "weight": w,
                "norms": np.ones(6),
                "grad": w * 1e-3,
                "grad_norms": np.full(6, 1e-3),
            },
            source="f",
            layer="features.2",
            epoch=e + 2,
            step=40 + e,
            meta={"event": "epoch", "label": f"epoch {e + 3}", "layer_type": "Conv2d"},
        )
    # a callback that failed at an event, and one that turned itself off
    store.write(
        "error",
        None,
        source="x",
        epoch=1,
        step=20,
        meta={
            **EPOCH,
            "callback": "ActivationMaps",
            "exception": "RuntimeError",
            "message": "CUDA <oom>",
            "at": "epoch 2",
            "traceback": "Traceback (most recent call last):\n  boom",
        },
    )
    store.write(
        "error",
        None,
        source="y",
        epoch=0,
        step=0,
        meta={
            **START,
            "callback": "Attributions",
            "exception": "Disabled",
            "message": "the model's output holds no class scores; pass `scores=`",
            "at": "start",
        },
    )
    store.write(
        "budget",
        None,
        source="t",
        epoch=0,
        step=0,
        meta={
            **START,
            "callback": "TopActivations",
            "decisions": ["8 of 16 channels", "every 2 epochs"],
            "settings": {"budget": None, "share": 0.1},
        },
    )
    out = build_report(run, progress=False)
    return out.read_text(), _text(out.read_text())


def test_erf_numbers_and_their_definition(trust: tuple[str, str]) -> None:
    _, text = trust
    assert "90% of the gradient mass in 42% of the theoretical field" in text
    assert "effective size 5.5 px" in text and "97% of all gradient mass inside" in text
    assert "the smallest part of the unit's theoretical field" in text  # the definition
    assert "n/a (reason: the map has no mass)" in text  # NaN is said, with its reason
    assert "1.31" not in text and not re.search(r"in 1\d\d% of the theoretical", text)


def test_local_field_and_global_context(trust: tuple[str, str]) -> None:
    html, text = trust
    assert "local field 7×7 px" in text and "sees the whole input" in text
    assert "joins this layer's input at se:mul" in text
    assert "the local field of unit (3, 3) (dashed)" in text
    assert 'class="cell local"' in html
    assert 'sees the whole image"' not in html  # never the old claim on its own


def test_pre_activation_maps_are_labelled_and_zeros_not_called_dead(trust: tuple[str, str]) -> None:
    html, text = trust
    assert "Pre-activation: no activation follows this conv" in text
    assert "pre-activation maps (rows: probe inputs" in html
    section = html.split('id="layer-features-2"')[1].split("</section>")[0]
    assert "dead units" not in section.replace("not a dead unit", "")
    assert "fraction of exact zeros" in section
    assert "read after features.3" in text or "read after 3" in text


def test_topk_padding_share_is_shown(trust: tuple[str, str]) -> None:
    html, text = trust
    assert "44% of its field is zero padding" in html
    assert "1 of them reach into the zero padding" in text
    assert "5 of 8 channels have no patches here" in text  # what is left out, and why


def test_weight_gradients_are_shown(trust: tuple[str, str]) -> None:
    html, text = trust
    assert "Weight gradients of the logged steps" in text
    assert "weight gradients of the logged step" in html and "gradient norm per filter" in html


def test_error_cards_and_navigation_mark(trust: tuple[str, str]) -> None:
    html, text = trust
    assert '<section class="card" id="errors">' in html
    assert "ActivationMaps: 1 error (training went on)" in text
    assert "CUDA &lt;oom&gt;" in html and "<oom>" not in html
    assert "Attributions turned itself off" in text and "pass `scores=`" in text
    assert re.search(r'<a href="#errors">Callback errors <span class="mark">⚠ 2</span>', html)
    assert "<details><summary>traceback</summary><pre>Traceback" in html


def test_left_out_card_and_ledger(trust: tuple[str, str]) -> None:
    html, text = trust
    assert "What cnnviz left out" in text
    assert "TopActivations: 8 of 16 channels; every 2 epochs" in text
    assert "To record everything: TopActivations(budget=None)" in text
    cell = "<td>{}</td><td class=num>{}</td><td class=num>{}</td>"
    assert cell.format("FilterWeights", "4.00 s", "4.0%") in html  # against training time
    assert cell.format("TopActivations", "2500.00 s", "25× the training time") in html


def test_mask_note_adapts_to_the_data(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_full_run(run)
    with_masks = _text(build_report(run, tmp_path / "a.html", progress=False).read_text())
    assert "the probe's foreground masks" in with_masks
    other = RunStore(tmp_path / "other" / "cnnviz")  # data without masks (MNIST, CIFAR...)
    other.update_run(status="finished")
    other.write("probe", {"x": np.zeros((2, 3, 8, 8)), "y": np.array([0, 1])}, meta=START)
    other.write(
        "attributions",
        {"saliency": np.ones((2, 8, 8))},
        epoch=0,
        step=1,
        meta={**EPOCH, "methods": ["saliency"], "targets": [0, 1]},
    )
    other.write(
        "attribution_checks",
        None,
        epoch=0,
        step=1,
        meta={**EPOCH, "randomisation": {"method": "saliency", "layers": ["fc"], "spearman": [0]}},
    )
    html = build_report(other.root, progress=False).read_text()
    section = re.search(r'<section class="card" id="attributions">(.*?)</section>', html, re.S)
    assert section is not None
    text = _text(section.group(1))
    assert "mask" not in text.lower()  # without masks, nothing is said about them
    assert "Model randomisation (Adebayo et al., 2018)" in text


def test_tokens_are_coloured_words() -> None:
    ids = np.array([[1, 2, 3, 0, 0], [3, 3, 1, 2, 0]])
    maps = {"saliency": np.array([[0.5, -1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, 1.0, 0.0]])}
    html = tokens_html(maps, ids, vocabulary=["<pad>", "good", "<b>bad</b>", "film"])
    assert "&lt;b&gt;bad&lt;/b&gt;" in html and "<b>bad</b>" not in html
    assert html.count('class="tok"') == 7  # trailing padding tokens dropped
    assert "… 2 padding tokens" in html
    assert token_colour(1.0) == "rgba(178,24,43,0.85)" and token_colour(-0.5).startswith(
        "rgba(33,102,172,0.42"
    )
    assert token_colour(float("nan")) == "transparent"
    assert token_text([1, 9], None) == ["#1", "#9"]
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        tokens_html({"m": np.zeros((2, 3, 4))}, None)


def test_token_attributions_in_the_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = RunStore(run / "cnnviz")
    store.update_run(status="finished", model="kim_cnn", class_names=["neg", "pos"])
    ids = np.array([[5, 6, 7, 0], [7, 5, 0, 0]])
    store.write(
        "probe",
        {"x": ids, "y": np.array([1, 0])},
        source="a",
        meta={**START, "vocabulary": ["<pad>", "a", "b", "c", "d", "great", "dull", "plot"]},
    )
    store.write(
        "attributions",
        {"saliency": np.array([[1.0, -0.5, 0.2, 0.0], [0.1, 0.9, 0.0, 0.0]])},
        source="at",
        epoch=0,
        step=5,
        meta={**EPOCH, "methods": ["saliency"], "targets": [1, 0], "input_kind": "tokens"},
    )
    html = build_report(run, progress=False).read_text()
    text = _text(html)
    assert "Which tokens drive the prediction" in text and "shown on the words" in text
    assert re.search(r'title="great: 1 \(\+100% of the sentence', html)
    assert "#0 pos → pos" in text and "#1 neg → neg" in text


def test_an_inspection_is_not_called_a_training_run(tmp_path: Path) -> None:
    run = tmp_path / "insp"
    store = RunStore(run / "cnnviz")
    store.update_run(
        status="finished",
        model="lenet5",
        epochs=1,
        settings={"inspect": {"checkpoint": "m.ckpt"}},
        heartbeat=time.time(),
    )
    header = {"event": "start", "label": "checkpoint (epoch 2)"}
    w = np.ones((2, 1, 3, 3), dtype=np.float32)
    store.write(
        "filters", {"weight": w, "norms": np.ones(2)}, source="inspect", layer="c", meta=header
    )
    html = build_report(run, progress=False).read_text()
    text = _text(html)
    assert "inspection of a model (cnnviz inspect)" in text
    assert "<dt>weights</dt><dd>checkpoint (epoch 2)</dd>" in html
    assert "epochs 1" not in text and "No metrics were recorded" not in text
    assert "not a training run" in text


def test_curves_say_which_metrics_they_leave_out(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run" / "cnnviz")
    store.update_run(status="finished")
    names = ["train/loss", "val/acc", "lr", "grad_norm", "val/f1", "val/auc", "val/ece"]
    for e in range(2):
        store.write(
            "metrics",
            None,
            epoch=e,
            step=e,
            meta={**EPOCH, "values": {n: 0.1 * (e + 1) for n in names}},
        )
    text = _text(build_report(store.root, progress=False).read_text())
    assert "3 more metrics are not drawn (at most 4 panels" in text
