"""Shared by the report tests: a hand-written store with every record kind of
docs/store-format.md (so the rendering of each kind is tested without the callbacks that will
write them), and readers for a report (element ids, links, figures decoded like the page does).
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.store import RunStore

EVIL = "<script>alert(1)</script>"
CLASSES = ["circle", "square", "<b>tri</b>"]
LAYERS = ["features.0", "features.2", EVIL]


def _event(epoch: int | None) -> dict[str, Any]:
    if epoch is None:
        return {"event": "start", "label": "start"}
    return {"event": "epoch", "label": f"epoch {epoch + 1}"}


def write_full_run(run_dir: Path, *, epochs: int = 3, seed: int = 0) -> RunStore:
    """Every record kind, for two conv layers and one pooling layer with a hostile name."""
    rng = np.random.default_rng(seed)
    store = RunStore(run_dir / "cnnviz")
    store.update_run(
        status="finished",
        model="tiny<net>",
        module="CaseStudyModule",
        data="Shapes & co",
        input_shape=[3, 16, 16],
        num_parameters=1234,
        class_names=CLASSES,
        epochs=epochs,
        max_epochs=epochs,
        layers=[
            "features.0  Conv2d(3→4, k=(3, 3), s=(1, 1), p=(1, 1))",
            "features.2  Conv2d(4→6, k=(3, 3), s=(2, 2), p=(0, 0))",
            f"{EVIL}  MaxPool2d(k=2, s=2, p=0)",
        ],
        settings={"FilterWeights": {"max_channels": 64, "note": "</script><script>x()</script>"}},
    )
    n = 4
    display = rng.random((n, 16, 16, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    store.write(
        "probe",
        {
            "x": rng.standard_normal((n, 3, 16, 16)),
            "y": y,
            "display": display,
            "masks": rng.random((n, 16, 16)) > 0.5,
        },
        source="a",
        epoch=0,
        step=0,
        meta={**_event(None), "class_names": CLASSES, "shape": [n, 3, 16, 16]},
    )
    shapes = {"features.0": (4, 3, 3, 3), "features.2": (6, 4, 3, 3)}
    act_shapes = {"features.0": (4, 16, 16), "features.2": (6, 7, 7), EVIL: (6, 3, 3)}
    for e in [None, *range(epochs)]:
        epoch, step = (0, 0) if e is None else (e, 10 * (e + 1))
        meta = _event(e)
        if e is not None:
            store.write(
                "metrics",
                None,
                source="cnnviz",
                epoch=epoch,
                step=step,
                meta={
                    **meta,
                    "values": {
                        "train/loss": 2.0 / (e + 1),
                        "val/loss": 2.2 / (e + 1),
                        "train/acc": 0.3 + 0.1 * e,
                        "val/acc": 0.25 + 0.1 * e,
                    },
                },
            )
        store.write(
            "predictions",
            {"probs": rng.dirichlet(np.ones(3), n)},
            source="a",
            epoch=epoch,
            step=step,
            meta={**meta, "class_names": CLASSES},
        )
        for layer, shape in shapes.items():
            w = rng.standard_normal(shape).astype(np.float32) * (1 + (e or 0))
            store.write(
                "filters",
                {"weight": w, "norms": np.linalg.norm(w.reshape(shape[0], -1), axis=1)},
                source="f",
                layer=layer,
                epoch=epoch,
                step=step,
                meta={
                    **meta,
                    "channels": list(range(shape[0])),
                    "full_shape": list(shape),
                    "rgb": layer == "features.0",
                    "dead": [1] if layer != "features.0" else [],
                    "unchanged": [2],
                    "nonfinite": 0,
                    "layer_type": "Conv2d",
                },
            )
        for layer, (c, h, w_) in act_shapes.items():
            maps = np.maximum(rng.standard_normal((n, c, h, w_)), 0).astype(np.float16)
            store.write(
                "activations",
                {
                    "maps": maps,
                    "channels": np.arange(c),
                    "mean": maps.mean((0, 2, 3)),
                    "max": maps.max((0, 2, 3)),
                    "min": maps.min((0, 2, 3)),
                    "zero_fraction": (maps == 0).mean((0, 2, 3)),
                },
                source="a",
                layer=layer,
                epoch=epoch,
                step=step,
                meta={
                    **meta,
                    "shape": [n, c, h, w_],
                    "read_from": layer,
                    "nonfinite": 0,
                    "layer_type": "MaxPool2d" if layer == EVIL else "Conv2d",
                },
            )
        for layer in LAYERS:
            store.write(
                "erf",
                {"map": rng.random((16, 16))},
                source="r",
                layer=layer,
                epoch=epoch,
                step=step,
                meta={
                    **meta,
                    "radius": 2.0 + (e or 0),
                    "sigma": [1.0, 1.0],
                    "ratio": 0.5,
                    "theoretical": [3, 3],
                },
            )
    store.write(
        "layer_table",
        None,
        source="r",
        epoch=0,
        step=0,
        meta={
            **_event(None),
            "rows": [
                {
                    "name": "features.0",
                    "type": "Conv2d",
                    "input_shape": [3, 16, 16],
                    "output_shape": [4, 16, 16],
                    "kernel": [3, 3],
                    "stride": [1, 1],
                    "padding": [1, 1],
                    "output_arithmetic": "(16 - 3 + 2·1)/1 + 1 = 16",
                    "weights_arithmetic": "3×3×3×4 + 4",
                    "params": 112,
                    "rf_size": [3, 3],
                    "rf_jump": [1, 1],
                },
                {
                    "name": EVIL,
                    "type": "MaxPool2d",
                    "input_shape": [6, 7, 7],
                    "output_shape": [6, 3, 3],
                    "kernel": 2,
                    "stride": 2,
                    "padding": 0,
                    "output_arithmetic": "(7 - 2)/2 + 1 = 3",
                    "weights_arithmetic": "0",
                    "params": 0,
                    "rf_size": [9, 9],
                    "rf_jump": [4, 4],
                },
            ],
        },
    )
    for layer in LAYERS:
        store.write(
            "receptive_field",
            {"region_image": display[0]},
            source="r",
            layer=layer,
            epoch=0,
            step=0,
            meta={
                **_event(None),
                "size": [5, 5],
                "jump": [2, 2],
                "start": [0, 0],
                "unit": [1, 1],
                "region": [0, 5, 2, 7],
                "misaligned": False,
            },
        )
        store.write(
            "topk",
            {
                "patches": rng.random((3, 4, 5, 5, 3)),
                "values": rng.random((3, 4)),
                "samples": rng.integers(0, 100, (3, 4)),
                "positions": rng.integers(0, 10, (3, 4, 2)),
            },
            source="t",
            layer=layer,
            epoch=epochs - 1,
            step=10 * epochs,
            meta={**_event(epochs - 1), "channels": [0, 2, 5], "k": 4},
        )
        store.write(
            "featvis",
            {"images": rng.random((3, 16, 16, 3)), "activations": rng.random(3)},
            source="v",
            layer=layer,
            epoch=epochs - 1,
            step=10 * epochs,
            meta={**_event(epochs - 1), "channels": [0, 1, 2], "objective": "mean", "param": "fft"},
        )
    store.write(
        "attributions",
        {
            "saliency": rng.random((n, 16, 16)),
            "grad_cam": rng.random((n, 16, 16)),
            "integrated_gradients": rng.standard_normal((n, 16, 16)),
        },
        source="at",
        epoch=epochs - 1,
        step=10 * epochs,
        meta={
            **_event(epochs - 1),
            "methods": ["saliency", "integrated_gradients", "grad_cam"],
            "targets": [0, 1, 1, 2],
            "notes": {"saliency": "absolute <values>"},
            "unavailable": {"deeplift": "reused <module>"},
            "layers": {"grad_cam": "features.2"},
        },
    )
    store.write(
        "attribution_checks",
        None,
        source="at",
        epoch=epochs - 1,
        step=10 * epochs,
        meta={
            **_event(epochs - 1),
            "randomisation": {
                "method": "saliency",
                "layers": ["head", "features.2", "features.0"],
                "spearman": [0.8, 0.4, 0.1],
            },
            "mask_share": {"saliency": [0.7, 0.3], "grad_cam": [0.6, 0.3]},
        },
    )
    return store


def densenet_like() -> list[str]:
    """The layer names DenseNet-121 records (conv and pooling, 124)."""
    names = ["features.conv0", "features.pool0"]
    for b, n in enumerate([6, 12, 24, 16], start=1):
        for i in range(1, n + 1):
            names += [f"features.denseblock{b}.denselayer{i}.conv{c}" for c in (1, 2)]
        if b < 4:
            names += [f"features.transition{b}.conv", f"features.transition{b}.pool"]
    return names


def write_deep(run: Path, names: list[str], events: int = 4) -> None:
    """Activation maps of every layer of ``names`` at ``events`` events."""
    rng = np.random.default_rng(0)
    store = RunStore(run / "cnnviz")
    store.update_run(status="finished", model="deep", layers=[{"name": n} for n in names])
    for e in range(events):
        meta = {"event": "epoch", "label": f"epoch {e + 1}"}
        for n in names:
            maps = np.maximum(rng.standard_normal((4, 8, 16, 16)), 0).astype(np.float32)
            store.write(
                "activations",
                {"maps": maps, "channels": np.arange(8)},
                source="a",
                layer=n,
                epoch=e,
                step=e,
                meta={**meta, "shape": [4, 8, 16, 16], "stage": "activation"},
            )


class PageParser(HTMLParser):
    """Collects ids, ``href``s, script blocks and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.text: list[str] = []
        self._script: dict[str, str | None] | None = None
        self._buf: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "a" and a.get("href"):
            self.hrefs.append(str(a["href"]))
        if tag == "script":
            self._script, self._buf = a, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script, "".join(self._buf)))
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._buf.append(data)
        else:
            self.text.append(data)


def parse(html_text: str) -> PageParser:
    p = PageParser()
    p.feed(html_text)
    return p


def _dequantise(q: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(q["b"])
    if q.get("z"):
        raw = zlib.decompress(raw)
    codes = np.frombuffer(raw, dtype="<u2" if q["_q"] == 16 else np.uint8)
    top = (1 << q["_q"]) - 1
    step = (q["hi"] - q["lo"]) / (top - 1)
    out = np.where(codes == top, np.nan, q["lo"] + codes * step)
    return out.reshape(q["shape"])


def decode(value: Any, shared: list[Any]) -> Any:
    """Python twin of the page's decoder."""
    if isinstance(value, list):
        return [decode(v, shared) for v in value]
    if isinstance(value, dict):
        if "_q" in value and "b" in value:
            return _dequantise(value)
        if set(value) == {"_ref"}:
            return list(shared[value["_ref"]])
        return {k: decode(v, shared) for k, v in value.items()}
    return value


def figures(html_text: str) -> dict[str, dict[str, Any]]:
    """Every embedded figure, decoded, by element id."""
    out = {}
    for attrs, body in parse(html_text).scripts:
        fid = attrs.get("id") or ""
        if attrs.get("type") == "application/json" and fid.startswith("fig-"):
            spec = json.loads(body)
            out[fid] = {
                "data": decode(spec["data"], spec.get("_shared", [])),
                "layout": decode(spec["layout"], spec.get("_shared", [])),
            }
    return out


def titles(figs: dict[str, dict[str, Any]]) -> list[str]:
    return [str((f["layout"].get("title") or {}).get("text", "")) for f in figs.values()]


def config(html_text: str) -> dict[str, Any]:
    m = re.search(
        r'<script type="application/json" id="cnnviz-config">(.*?)</script>', html_text, re.S
    )
    assert m is not None
    return json.loads(m.group(1))


# -- dissection, faithfulness and feature visualisation records (typed, via RunStore.put) -------
DISSECT_WRITER = "ConceptDissection{}"
CONCEPTS = [
    ("circle", "object"),
    ("bars", "object"),
    ("edge", "part"),
    ("background", "scene"),
    ("red", "colour"),
]


def dissection_record(
    units: int, detectors: dict[int, int], *, control: str = "", seed: int = 0
) -> Any:
    """A ``DissectionRecord`` of ``units`` units; ``detectors`` maps a unit to its concept.

    Detector units get an IoU of 0.05 + 0.01·unit (over the 0.04 threshold); the others a best
    IoU under it.
    """
    from cnnviz.store import ConceptInfo, DissectionRecord

    rng = np.random.default_rng(seed)
    k = len(CONCEPTS)
    iou = rng.uniform(0.0, 0.03, (units, k)).astype(np.float32)
    for u, c in detectors.items():
        iou[u, c] = 0.05 + 0.01 * u
    order = np.argsort(-iou, axis=1)
    best, runner = order[:, 0], order[:, 1]
    rows = np.arange(units)
    labelled = iou[rows, best] >= 0.04
    found: dict[str, list[str]] = {}
    for u in np.flatnonzero(labelled):
        name, cat = CONCEPTS[best[u]]
        if name not in found.setdefault(cat, []):
            found[cat].append(name)
    cats = {cat for _, cat in CONCEPTS}
    return DissectionRecord(
        threshold=rng.random(units),
        top_fraction=np.full(units, 0.005),
        iou=iou,
        intersection=np.zeros((units, k), dtype=np.int64),
        region=np.full(units, 100),
        concept_area=np.full(k, 1000),
        best=best,
        best_iou=iou[rows, best],
        runner_up=runner,
        runner_up_iou=iou[rows, runner],
        labelled=labelled,
        concepts=tuple(ConceptInfo(n, c) for n, c in CONCEPTS),
        images=64,
        mask_size=(16, 16),
        map_size=(8, 8),
        stage="activation",
        read_path=("features.1",),
        control=control,
        labelled_units=int(labelled.sum()),
        detectors={c: tuple(found.get(c, ())) for c in cats},
        detector_counts={c: len(found.get(c, ())) for c in cats},
    )


def write_dissection(
    store: RunStore,
    *,
    layer: str = "features.0",
    units: int = 6,
    history: list[dict[int, int]] | None = None,
    control: dict[int, int] | None = None,
    model: bool = True,
) -> None:
    """One ``dissection`` record per event of ``history`` and, with ``control``, the control's.

    The control is written with the last event's label, as the callback does.
    """
    history = history if history is not None else [{}, {0: 1}, {0: 1, 3: 2, 5: 1}]
    last = len(history) - 1
    if model:
        for e, detectors in enumerate(history):
            store.put(
                dissection_record(units, detectors, seed=e),
                writer=DISSECT_WRITER,
                layer=layer,
                epoch=e,
                step=10 * e,
                event="epoch",
                label=f"epoch {e + 1}",
            )
    if control is not None:
        store.put(
            dissection_record(units, control, control="reinit", seed=99),
            writer=DISSECT_WRITER,
            layer=layer,
            epoch=last,
            step=10 * last,
            event="epoch",
            label=f"epoch {last + 1}",
        )


def faithfulness(methods: dict[str, float], *, steps: int = 4) -> Any:
    """A ``Faithfulness`` whose methods have the given scores (ranked by them)."""
    from cnnviz.store.records import Faithfulness, FaithfulnessCurves

    x = np.linspace(0, 1, steps + 1)

    def curves(s: float) -> FaithfulnessCurves:
        deletion = tuple(float(v) for v in 0.9 * (1 - x) ** (1 + 4 * s))
        insertion = tuple(float(v) for v in 0.1 + 0.8 * x ** (1 / (1 + 4 * s)))
        return FaithfulnessCurves(
            deletion=deletion,
            insertion=insertion,
            deletion_auc=0.45 - s / 2,
            insertion_auc=0.5 + s / 2,
            score=s,
        )

    return Faithfulness(
        fractions=tuple(float(v) for v in x),
        methods={m: curves(s) for m, s in methods.items()},
        random=FaithfulnessCurves(
            deletion=tuple(float(v) for v in 0.9 * (1 - x)),
            insertion=tuple(float(v) for v in 0.1 + 0.8 * x),
            deletion_auc=0.45,
            insertion_auc=0.5,
            score=0.0,
        ),
        random_spread=0.05,
        ranking=tuple(sorted(methods, key=lambda m: -methods[m])),
        deletion_baseline="zeros",
        insertion_baseline="blur",
    )
