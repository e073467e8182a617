"""Concept dissection in the report (``dissection`` records; Network Dissection, Bau et al. 2017).

- :func:`dissection_section`: the run-level section before the layers: unique detectors per
  layer by concept category beside the randomised control (what chance gives), the totals, and
  the share of detector units over training.
- :func:`layer_dissection`: inside a layer's section: its units with their labels, IoU and
  runner-up (detectors first), each beside its top dataset patches when the layer has them,
  and when each concept's first detector appeared.

A ``dissection`` record with ``control`` set (``reinit``/``permute``) is the same dissection of
a randomised copy of the model, written once at the end of the fit (``cnnviz inspect``: labelled
``randomised control``); the others are the model's, one per event.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnnviz.figures.dissection import (
    category_order,
    detectors_figure,
    detectors_over_time_figure,
)
from cnnviz.figures.topk import topk_panel
from cnnviz.report.data import RunData, pick_events
from cnnviz.report.gallery import panel_html
from cnnviz.report.groups import strip_prefix
from cnnviz.report.html import Page, esc, table
from cnnviz.report.layers import read_label, topk_inside
from cnnviz.report.sections import _array, fmt, guarded, layer_table_rows
from cnnviz.store.records import BudgetRecord, DissectionRecord, TopkRecord

__all__ = [
    "LayerDissection",
    "dissection_section",
    "layer_dissection",
    "split_records",
    "unit_order",
]

#: Layers with at most this many units list every unit; larger ones list the detectors (up to
#: :data:`MAX_DETECTOR_ROWS`) and the best :data:`MAX_OTHER_ROWS` of the others.
LIST_ALL = 24
MAX_DETECTOR_ROWS = 48
MAX_OTHER_ROWS = 6
#: Height of the top patches drawn beside a unit (screen pixels).
PATCH_ROW_PX = 40

_CONTROL_WORDS = {
    "reinit": "re-initialised weights",
    "permute": "each layer's weights permuted",
}


@dataclasses.dataclass
class LayerDissection:
    """One layer's dissection records, split into the model's and the control's.

    Attributes:
        layer: The layer.
        model: The model's records, in event order.
        control: The randomised control's records.
    """

    layer: str
    model: list[DissectionRecord]
    control: list[DissectionRecord]

    @property
    def latest(self) -> DissectionRecord | None:
        """The model's newest record."""
        return self.model[-1] if self.model else None

    @property
    def latest_control(self) -> DissectionRecord | None:
        """The control's newest record."""
        return self.control[-1] if self.control else None


def split_records(data: RunData, layer: str) -> LayerDissection:
    """The readable ``dissection`` records of ``layer``, the model's and the control's."""
    recs = data.loadable(data.read(DissectionRecord, layer), "best_iou")
    recs = [r for r in recs if _units(r) > 0]
    return LayerDissection(
        layer,
        [r for r in recs if not r.control],
        [r for r in recs if r.control],
    )


def _units(rec: DissectionRecord) -> int:
    try:
        return int(np.asarray(rec.best_iou).shape[0])
    except Exception:  # a damaged array: the record is left out
        return 0


def _labelled(rec: DissectionRecord) -> np.ndarray:
    """Which units are detectors (``labelled``, else ``best_iou >= iou_threshold``)."""
    n = _units(rec)
    lab = _array(rec, "labelled")
    if lab is not None and lab.shape == (n,):
        return lab.astype(bool)
    iou = np.asarray(rec.best_iou, dtype=np.float64)
    return np.nan_to_num(iou, nan=-1.0) >= rec.iou_threshold


def _concepts(rec: DissectionRecord) -> list[tuple[str, str]]:
    return [(str(c.name), str(c.category)) for c in rec.concepts]


def _concept(rec: DissectionRecord, index: Any) -> tuple[str, str]:
    """``(name, category)`` of concept ``index`` (``("?", "")`` when out of range)."""
    cs = _concepts(rec)
    try:
        i = int(index)
    except (TypeError, ValueError):
        return "?", ""
    return cs[i] if 0 <= i < len(cs) else ("?", "")


def _detector_sets(rec: DissectionRecord) -> dict[str, list[str]]:
    """Category to the concepts with a detector: from the record's ``detectors``, else counted."""
    if rec.detectors:
        return {str(k): [str(v) for v in vs] for k, vs in rec.detectors.items()}
    out: dict[str, list[str]] = {}
    best = _array(rec, "best")
    if best is None:
        return out
    for u in np.flatnonzero(_labelled(rec)):
        name, cat = _concept(rec, best[u])
        if name not in out.setdefault(cat, []):
            out[cat].append(name)
    return out


def _counts(rec: DissectionRecord) -> dict[str, int]:
    """Category to its number of unique detectors."""
    if rec.detector_counts:
        return {str(k): int(v) for k, v in rec.detector_counts.items()}
    return {k: len(v) for k, v in _detector_sets(rec).items()}


def _detector_units(rec: DissectionRecord) -> int:
    return int(_labelled(rec).sum())


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _control_words(rec: DissectionRecord) -> str:
    return _CONTROL_WORDS.get(rec.control, rec.control)


def unit_order(best_iou: np.ndarray, labelled: np.ndarray) -> list[int]:
    """Units in the order the report lists them: detectors first, then by IoU, highest first.

    Example:
        >>> unit_order(np.array([0.02, 0.09, 0.05]), np.array([False, True, True]))
        [1, 2, 0]
    """
    iou = np.nan_to_num(np.asarray(best_iou, dtype=np.float64), nan=-1.0)
    lab = np.asarray(labelled, dtype=bool)
    return sorted(range(len(iou)), key=lambda u: (not lab[u], -iou[u], u))


def _what_it_is(rec: DissectionRecord) -> str:
    """The one- or two-sentence definition, with this run's numbers."""
    images = f"the {rec.images} dissection images" if rec.images else "the dissection images"
    masks = f" ({fmt(list(rec.mask_size))} concept masks)" if rec.mask_size else ""
    return (
        "Network Dissection (Bau et al., 2017) names what each unit detects: the unit's map, "
        f"upsampled to the mask size, is thresholded at its top {rec.quantile:.1%} over "
        f"{images}{masks}, and the unit is labelled with the concept whose masks overlap that "
        f"region best (intersection over union); a unit whose IoU reaches "
        f"{rec.iou_threshold:g} counts as a detector of that concept."
    )


def _coarse(rec: DissectionRecord) -> bool:
    """Whether the unit maps are too coarse to say *where* (at most 2 positions per side)."""
    size = [int(v) for v in rec.map_size if isinstance(v, (int, float))]
    return bool(size) and max(size) <= 2


# -- the run-level section -----------------------------------------------------------------------
def _conv_layers(data: RunData) -> list[str]:
    rows = layer_table_rows(data)
    out = [n for n, r in rows.items() if (r.kind or "") == "conv"]
    if not out:
        out = [
            f.name
            for f in data.layer_facts()
            if f.kind == "conv" or (f.kind is None and (f.type or "").startswith("Conv"))
        ]
    return out


def _short(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _what_detected(rec: DissectionRecord) -> str:
    sets = _detector_sets(rec)
    parts = []
    for cat in category_order(sets):
        names = sets.get(cat) or []
        if names:
            parts.append(f"{cat}: {_short(names, 6)}")
    return "; ".join(parts) or "—"


def dissection_section(data: RunData, page: Page, anchors: dict[str, str]) -> None:
    """The run-level concept dissection section (nothing when the run has no dissection)."""
    layers = [d for d in (split_records(data, n) for n in data.layers()) if d.model or d.control]
    if not layers:
        return
    body = ["<h2>Concept dissection</h2>"]
    ref = next(r for d in layers for r in (d.latest, d.latest_control) if r is not None)
    body.append(
        f"<p class=note>{esc(_what_it_is(ref))} The randomised control is the same dissection "
        "of a copy of the model with random weights: what a layer's units detect by chance, "
        "through the architecture alone. Each layer's units and their labels are in its "
        "section.</p>"
    )
    with_model = [d for d in layers if d.model]
    with_control = [d for d in layers if d.control]
    body += _left_out(data, layers)
    if not with_model:
        body.append(
            "<p class=left-out>only the randomised control was recorded: the model's own "
            "dissection records are missing or could not be read.</p>"
        )
    body.append(_totals_line(layers))
    body.append(_totals_table(layers, anchors))
    coarse = [d.layer for d in layers if any(_coarse(r) for r in (*d.model[-1:], *d.control))]
    if coarse:
        body.append(
            '<p class=note><span class="chip warn">coarse maps</span> '
            f"{esc(_short(coarse, 4))}: at most 2×2 positions per unit map, so a unit's region "
            "is (nearly) the whole image whenever it fires: its IoU says on which images it "
            "fires, not where in them; chance detectors are common there (compare the "
            "control).</p>"
        )
    body += guarded(data, "concept detectors", lambda: _detectors_chart(page, layers))
    if any(len(d.model) > 1 for d in with_model):
        body += guarded(data, "detectors over training", lambda: _over_time_chart(page, with_model))
    elif with_model:
        body.append(
            "<p class=note>One dissection of the model was recorded, so there is no history "
            "over training.</p>"
        )
    if with_model and not with_control:
        body.append(
            "<p class=note>No randomised control was recorded (it runs at the end of the fit: "
            '<code>ConceptDissection(control="reinit")</code>).</p>'
        )
    page.nav("dissection", "Concept dissection")
    page.add_section("dissection", "".join(body))


def _left_out(data: RunData, layers: list[LayerDissection]) -> list[str]:
    out = []
    done = {d.layer for d in layers}
    missing = [n for n in _conv_layers(data) if n not in done]
    if missing:
        out.append(
            f"<p class=left-out>{_count(len(missing), 'conv layer')} "
            f"{'was' if len(missing) == 1 else 'were'} not dissected: "
            f"{esc(_short(missing))} (<code>ConceptDissection(layers=...)</code> chooses "
            "them).</p>"
        )
    cuts: list[str] = []
    for b in data.read(BudgetRecord):
        if b.callback == "ConceptDissection":
            cuts += [c for c in b.decisions if c not in cuts]
    if cuts:
        out.append(
            f"<p class=left-out>to stay within its time budget, ConceptDissection "
            f'{esc("; ".join(cuts))} (see <a href="#left-out">what cnnviz left out</a>).</p>'
        )
    return out


def _totals_line(layers: list[LayerDissection]) -> str:
    model = [d for d in layers if d.latest is not None]
    if not model:
        ctrl = [d.latest_control for d in layers if d.latest_control is not None]
        units = sum(_units(r) for r in ctrl)
        found = sum(_detector_units(r) for r in ctrl)
        return (
            f"<p><b>Randomised control</b>: {found} of {units} units over "
            f"{_count(len(ctrl), 'layer')} are detectors.</p>"
        )
    recs = [d.latest for d in model if d.latest is not None]
    labels = list(dict.fromkeys(r.label for r in recs))
    when = f"At {labels[0]}" if len(labels) == 1 else "At the newest dissection of each layer"
    line = (
        f"<b>{esc(when)}</b>: {sum(_detector_units(r) for r in recs)} of "
        f"{sum(_units(r) for r in recs)} units over {_count(len(recs), 'layer')} are detectors"
    )
    ctrl = [d.latest_control for d in model if d.latest_control is not None]
    if ctrl:
        line += (
            f"; randomised control: {sum(_detector_units(r) for r in ctrl)} of "
            f"{sum(_units(r) for r in ctrl)}"
        )
    return f"<p>{line}.</p>"


def _totals_table(layers: list[LayerDissection], anchors: dict[str, str]) -> str:
    rows = []
    has_control = any(d.control for d in layers)
    for d in layers:
        rec, ctrl = d.latest, d.latest_control
        link = (
            f'<a href="#{esc(anchors[d.layer])}">{esc(d.layer)}</a>'
            if d.layer in anchors
            else esc(d.layer)
        )
        n = _units(rec or ctrl)  # type: ignore[arg-type]
        if rec is not None:
            unique = sum(_counts(rec).values())
            model = f"{_detector_units(rec)} of {n}"
            cells = [link, esc(model), esc(str(unique)), esc(_what_detected(rec))]
        else:
            cells = [link, "—", "—", "—"]
        if has_control:
            cells.append(
                esc(f"{_detector_units(ctrl)} of {_units(ctrl)} ({sum(_counts(ctrl).values())})")
                if ctrl is not None
                else "—"
            )
        rows.append(cells)
    head = ["layer", "detector units", "unique detectors", "what they detect"]
    if has_control:
        head.append("control: units (unique)")
    labels = sorted({d.latest.label for d in layers if d.latest is not None})
    when = f"At {', '.join(labels)} (each layer's newest dissection); a" if len(labels) > 1 else "A"
    caption = f"<p class=note>{esc(when)} layer's name links to its units.</p>"
    return caption + table(head, rows, raw=range(len(head)), wrap=[3])


def _detectors_chart(page: Page, layers: list[LayerDissection]) -> list[str]:
    names = [d.layer for d in layers]
    short = _strip(names)
    model = [d.latest for d in layers]
    ctrl = [d.latest_control for d in layers]
    cats = category_order(
        {c for r in [*model, *ctrl] if r is not None for _, c in _concepts(r)}
        | {c for r in [*model, *ctrl] if r is not None for c in _counts(r)}
    )

    def counts(recs: list[DissectionRecord | None]) -> dict[str, list[int | None]] | None:
        if all(r is None for r in recs):
            return None
        return {cat: [None if r is None else _counts(r).get(cat, 0) for r in recs] for cat in cats}

    label = next((r.label for r in model if r is not None), "the model")
    control = next((r for r in ctrl if r is not None), None)
    fig = detectors_figure(
        short,
        counts(model),
        counts(ctrl),
        names=[_detector_sets(r) if r is not None else {} for r in model],
        control_names=[_detector_sets(r) if r is not None else {} for r in ctrl],
        label=f"the model at {label}",
        control_label="randomised control"
        + (f" ({_control_words(control)})" if control is not None else ""),
    )
    return [page.figure(fig)]


def _strip(names: list[str]) -> list[str]:
    """Names without their shared prefix (``c1``, ``c3``), unless that leaves bare numbers."""
    short = strip_prefix(names, names) if len(names) > 1 else names
    return names if any(s.isdigit() for s in short) else short


def _over_time_chart(page: Page, layers: list[LayerDissection]) -> list[str]:
    events: dict[tuple[int, int, str], None] = {}
    for d in layers:
        for r in d.model:
            events[(r.step or 0, r.epoch or 0, r.label)] = None
    order = sorted(events)
    labels = list(dict.fromkeys(k[2] for k in order))
    short = dict(zip([d.layer for d in layers], _strip([d.layer for d in layers]), strict=True))
    series: dict[str, list[int | None]] = {}
    units: dict[str, int] = {}
    control: dict[str, int | None] = {}
    for d in layers:
        by_label = {r.label: _detector_units(r) for r in d.model}
        series[short[d.layer]] = [by_label.get(lab) for lab in labels]
        units[short[d.layer]] = _units(d.model[-1])
        if d.latest_control is not None:
            control[short[d.layer]] = _detector_units(d.latest_control)
    ref = layers[0].model[-1]
    fig = detectors_over_time_figure(
        labels,
        series,
        units,
        control=control or None,
        threshold=ref.iou_threshold,
    )
    return [
        "<h3>Over training</h3><p class=note>The share of each layer's units that are "
        "detectors at each event; the open markers on the right are the randomised control "
        "(chance). A layer that learns detectors rises above its control.</p>",
        page.figure(fig),
    ]


# -- the layer's part ----------------------------------------------------------------------------
def _patch_rows(data: RunData, layer: str) -> tuple[dict[int, Any], TopkRecord | None]:
    """Channel to the inputs of a one-row top-k panel, from the layer's newest ``topk``."""
    recs = data.loadable(data.read(TopkRecord, layer), "values")
    rec = recs[-1] if recs else None
    patches = _array(rec, "patches")
    if rec is None or patches is None or patches.ndim not in (4, 5):
        return {}, None
    channels = list(rec.channels) or list(range(patches.shape[0]))
    if len(channels) != patches.shape[0]:
        return {}, None
    values, samples = _array(rec, "values"), _array(rec, "samples")
    padding = _array(rec, "padding")
    inside = topk_inside(data, layer, rec, patches)

    def part(a: np.ndarray | None, i: int) -> np.ndarray | None:
        return None if a is None or a.shape[0] != patches.shape[0] else a[i : i + 1]

    rows = {
        int(c): {
            "patches": patches[i : i + 1],
            "values": part(values, i),
            "samples": part(samples, i),
            "padding": part(padding, i),
            "inside": part(inside, i),
        }
        for i, c in enumerate(channels)
    }
    return rows, rec


def _patch_cell(layer: str, unit: int, row: dict[str, Any], patch_size: int) -> str:
    panel = topk_panel(
        row["patches"],
        row["values"],
        layer=layer,
        channels=[unit],
        samples=row["samples"],
        padding=row["padding"],
        inside=row["inside"],
        max_size=patch_size,
    )
    h = panel.size[0]
    panel = dataclasses.replace(panel, caption="", scale=PATCH_ROW_PX / max(h, 1))
    return panel_html(panel)


def _iou_cell(value: float, top: float, threshold: float) -> str:
    if not np.isfinite(value):
        return "<span class=muted>n/a</span>"
    width = 0 if top <= 0 else max(0.0, min(1.0, value / top)) * 60
    mark = 0 if top <= 0 else min(1.0, threshold / top) * 60
    css = "ok" if value >= threshold else ""
    return (
        f'<span class="iou {css}"><span class="bar" style="width:{width:.0f}px"></span>'
        f'<span class="thr" style="left:{mark:.0f}px"></span></span> {value:.3f}'
    )


def _concept_html(name: str, category: str) -> str:
    cat = f' <span class="cat cat-{esc(category)}">{esc(category)}</span>' if category else ""
    return f"{esc(name)}{cat}"


def _units_table(
    data: RunData, layer: str, rec: DissectionRecord, patch_size: int
) -> tuple[list[str], int]:
    """The unit table's HTML and how many units it lists."""
    n = _units(rec)
    lab = _labelled(rec)
    best_iou = np.asarray(rec.best_iou, dtype=np.float64)
    best, runner, runner_iou = (_array(rec, k) for k in ("best", "runner_up", "runner_up_iou"))
    order = unit_order(best_iou, lab)
    if n > LIST_ALL:
        detectors = [u for u in order if lab[u]][:MAX_DETECTOR_ROWS]
        others = [u for u in order if not lab[u]][:MAX_OTHER_ROWS]
        order = detectors + others
    rows_of, topk = ({}, None) if rec.control else _patch_rows(data, layer)
    finite = best_iou[np.isfinite(best_iou)]
    top = float(max(finite.max(initial=0.0), rec.iou_threshold * 1.5))
    rows = []
    for u in order:
        name, cat = _concept(rec, best[u]) if best is not None else ("?", "")
        label = _concept_html(name, cat) if lab[u] else f"<span class=muted>({esc(name)})</span>"
        second = ""
        if runner is not None and runner_iou is not None and np.isfinite(runner_iou[u]):
            r_name, _ = _concept(rec, runner[u])
            second = f"{esc(r_name)} <span class=muted>{float(runner_iou[u]):.3f}</span>"
        cells = [
            f"<b>{u}</b>",
            label,
            _iou_cell(float(best_iou[u]), top, rec.iou_threshold),
            second,
        ]
        if rows_of:
            row = rows_of.get(u)
            cells.append(
                _patch_cell(layer, u, row, patch_size) if row else "<span class=muted>—</span>"
            )
        rows.append(cells)
    head = ["unit", "label", "IoU", "runner-up (IoU)"]
    if rows_of:
        head.append(f"top dataset patches ({topk.label if topk is not None else ''})")
    html = table(head, rows, raw=range(len(head)))
    if rows_of and topk is not None and len(rows_of) < n:
        html = (
            f"<p class=note>Top dataset patches exist for {len(rows_of)} of the {n} channels "
            "(TopActivations' <code>max_channels</code>).</p>" + html
        )
    return [f'<div class="dissect">{html}</div>'], len(order)


def _timeline(
    model: list[DissectionRecord], control: DissectionRecord | None, max_events: int
) -> str:
    """Concept × event table: units labelled with each concept, and when it first happened."""
    shown = pick_events(model, max_events)
    first: dict[str, str] = {}
    cats: dict[str, str] = {}

    def count(r: DissectionRecord) -> dict[str, int]:
        best = _array(r, "best")
        out: dict[str, int] = {}
        if best is None:
            return out
        for u in np.flatnonzero(_labelled(r)):
            name, cat = _concept(r, best[u])
            out[name] = out.get(name, 0) + 1
            cats.setdefault(name, cat)
        return out

    for r in model:
        c = count(r)
        for name in c:
            first.setdefault(name, r.label)
    per_rec = [count(r) for r in shown]
    ctrl = count(control) if control is not None else None
    names = [*first, *[n for n in (ctrl or {}) if n not in first]]
    if not names:
        return (
            "<p class=note>No unit of this layer reached the IoU threshold at any of the "
            f"{len(model)} events"
            + (" nor in the control" if control is not None else "")
            + ".</p>"
        )
    latest = count(model[-1])
    order = category_order(set(cats.values()))

    def rank(name: str) -> tuple[int, int, str]:
        cat = cats.get(name, "")
        return (order.index(cat) if cat in order else len(order), -latest.get(name, 0), name)

    names.sort(key=rank)
    top = max([max(c.values(), default=0) for c in per_rec] + [1])
    head = ["concept", "first labelled", *[r.label for r in shown]]
    if ctrl is not None:
        head.append("control")
    rows = []
    for n in names:
        when = esc(first[n]) if n in first else "<span class=muted>never (control only)</span>"
        cells = [_concept_html(n, cats.get(n, "")), when]
        for c in per_rec:
            v = c.get(n, 0)
            alpha = 0.12 + 0.6 * v / top if v else 0
            style = f' style="background:rgba(37,99,235,{alpha:.2f})"' if v else ""
            cells.append(f'<span class="cnt"{style}>{v if v else ""}</span>')
        if ctrl is not None:  # a zero is shown here: the control was measured
            v = ctrl.get(n, 0)
            cells.append(
                f'<span class="cnt ctrl">{v}</span>' if v else "<span class=muted>0</span>"
            )
        rows.append(cells)
    note = ""
    if len(shown) < len(model):
        note = (
            f"<p class=left-out>{len(model) - len(shown)} of {len(model)} events are not shown "
            "as columns (first labelled counts them all).</p>"
        )
    return note + table(head, rows, raw=range(len(head)))


def layer_dissection(
    data: RunData, page: Page, layer: str, *, patch_size: int = 32, max_events: int = 12
) -> list[str]:
    """A layer's dissection: its units with labels and top patches, and detectors over training."""
    d = split_records(data, layer)
    rec = d.latest or d.latest_control
    if rec is None:
        return []
    ctrl = d.latest_control
    out = ['<div class="layer-dissection"><h3>Concept dissection</h3>']
    chips = []
    n = _units(rec)
    if d.latest is not None:
        chips.append(
            f'<span class="chip ok">{_detector_units(d.latest)} of {n} units are detectors at '
            f"{esc(d.latest.label)}</span>"
        )
        counts = _counts(d.latest)
        found = [f"{c} {counts[c]}" for c in category_order(counts) if counts.get(c)]
        if found:
            chips.append(f'<span class="chip">unique detectors: {esc(", ".join(found))}</span>')
    if ctrl is not None:
        chips.append(
            f'<span class="chip">randomised control ({esc(_control_words(ctrl))}): '
            f"{_detector_units(ctrl)} of {_units(ctrl)}</span>"
        )
    _, read_chip, post = read_label(rec, layer)
    if read_chip:
        chips.append(f'<span class="chip {"" if post else "pre"}">{esc(read_chip)}</span>')
    if _coarse(rec):
        chips.append(
            f'<span class="chip warn">{esc(fmt(list(rec.map_size)))} maps: a region is the '
            "whole image</span>"
        )
    out.append(f'<div class="chips">{"".join(chips)}</div>')
    text = (
        f"Each unit's map ({esc(fmt(list(rec.map_size)) or '?')}) is thresholded at its top "
        f"{rec.quantile:.1%} over {rec.images or '?'} images and labelled with the concept of "
        f"best IoU; detectors (IoU ≥ {rec.iou_threshold:g}) come first, the others follow with "
        "their best concept in brackets. The bar marks the threshold."
        ' <a href="#dissection">What dissection is</a>.'
    )
    if d.latest is None:
        text = (
            "Only the randomised control was recorded for this layer (the model's dissection "
            f"is missing); its units are listed. {text}"
        )
    out.append(f"<p class=note>{text}</p>")
    table_html, listed = _units_table(data, layer, rec, patch_size)
    if listed < n:
        detectors = int(_labelled(rec).sum())
        shown = min(detectors, MAX_DETECTOR_ROWS)
        out.append(
            f"<p class=left-out>{n - listed} of {n} units are not listed: "
            + (
                f"{shown} of the {detectors} detectors"
                if shown < detectors
                else f"all {detectors} detectors"
            )
            + f" and the {listed - shown} best of the other units are.</p>"
        )
    out += table_html
    if len(d.model) > 1:
        out.append(
            "<h4>Detectors over training</h4><p class=note>Units labelled with each concept at "
            "each event; first labelled: the first event at which a unit of this layer passes "
            "the threshold for it"
            + ("; the last column is the randomised control" if ctrl is not None else "")
            + ".</p>"
        )
        out.append(_timeline(d.model, ctrl, max_events))
    out.append("</div>")
    return out
