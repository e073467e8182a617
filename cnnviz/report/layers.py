"""The per-layer sections of the report, ConvNetJS-style.

Each section has a header with the layer's facts, then whatever the run recorded for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._steps import plotly_text
from cnnviz.figures.activations import activation_stats_figure
from cnnviz.figures.attributions import attributions_figure
from cnnviz.figures.filters import filter_norms_figure
from cnnviz.figures.layer_history import activation_history_figure, filter_history_figure
from cnnviz.figures.receptive_field import erf_figure
from cnnviz.report.data import RunData, pick_events
from cnnviz.report.gallery import featvis_panel, receptive_field_panel, topk_panel
from cnnviz.report.html import Page, esc
from cnnviz.report.sections import (
    _array,
    attribution_labels,
    attribution_maps,
    fmt,
    grad_cam_layer,
    guarded,
    layer_table_rows,
    nonfinite_note,
    probe_info,
    row_values,
)
from cnnviz.store.records import (
    ActivationsRecord,
    ErfRecord,
    ErrorRecord,
    FeatvisRecord,
    FiltersRecord,
    ReceptiveFieldRecord,
    StoreRecord,
    TableRow,
    TopkRecord,
)

R = TypeVar("R", bound=StoreRecord)

__all__ = ["layer_section", "param_formula"]


def param_formula(full_shape: Sequence[int], bias: bool | None) -> str:
    """The weight count written out as in the lecture: ``5×5×3×6 + 6 = 456``.

    Args:
        full_shape: Conv weight shape ``[K, C, kh, kw]`` (or ``[K, C, k]``).
        bias: Whether the layer has a bias; ``None`` when unknown.
    """
    k, c, *kernel = (int(v) for v in full_shape)
    weights = int(np.prod([*kernel, c, k]))
    expr = "×".join(str(v) for v in [*kernel, c, k])
    if bias:
        return f"{expr} + {k} = {weights + k:,}".replace(",", " ")
    if bias is None:
        return f"{expr} = {weights:,} weights (+ {k} biases if the layer has them)".replace(
            ",", " "
        )
    return f"{expr} = {weights:,}".replace(",", " ")


#: Bytes one history figure may take in the page before older events are thinned out.
FIGURE_BUDGET = 1_200_000


def fit_events(
    page: Page,
    records: list[R],
    build: Callable[[list[R]], go.Figure],
    *,
    max_events: int,
    bits: int,
    budget: int = FIGURE_BUDGET,
    scale_toggle: bool = False,
) -> tuple[str, list[R]]:
    """Build a history figure over at most ``max_events`` events, within a size budget.

    Evenly spaced events are dropped (never the first or last) until the encoded figure
    fits ``budget`` bytes.

    Returns:
        The figure's HTML slot and the records shown.
    """
    chosen = pick_events(records, max_events)
    while True:
        fig = build(chosen)
        payload = page.encode(fig, bits=bits)
        if len(payload) <= budget or len(chosen) <= 2:
            slot = page.figure(fig, bits=bits, payload=payload, scale_toggle=scale_toggle)
            return slot, chosen
        fewer = max(2, min(len(chosen) - 1, int(len(chosen) * budget / len(payload))))
        chosen = pick_events(records, fewer)


def _thinned(shown: Sequence[Any], total: Sequence[Any]) -> str:
    if len(shown) == len(total):
        return ""
    return (
        f"<p class=note>Showing {len(shown)} of {len(total)} logged events (evenly spaced, "
        "to keep the page small); the run store holds them all.</p>"
    )


def _chip(text: str, css: str = "") -> str:
    return f'<span class="chip {css}">{esc(text)}</span>'


def _short(values: Sequence[Any], limit: int = 16) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _layer_type(data: RunData, layer: str, row: TableRow | None) -> str | None:
    for kind in (FiltersRecord, ActivationsRecord):
        rec = data.latest(kind, layer)
        if rec is not None and rec.layer_type:
            return str(rec.layer_type)
    if row is not None and row.type:
        return str(row.type)
    facts = data.facts_of(layer)
    if facts is not None and facts.type:
        return facts.type
    return None


def _header(data: RunData, layer: str, row: TableRow | None) -> tuple[str, str | None]:
    kind = _layer_type(data, layer, row)
    chips = []
    act = data.latest(ActivationsRecord, layer)
    values = row_values(row) if row is not None else {}
    out_shape = None
    if act is not None and act.shape:
        out_shape = list(act.shape)[1:]
    elif row is not None and row.output_shape:
        out_shape = list(row.output_shape)
    if out_shape:
        chips.append(_chip(f"output {fmt(out_shape)}"))
    if row is not None and row.kernel is not None:
        geo = f"filter {fmt(row.kernel)}, stride {fmt(row.stride)}"
        if row.padding is not None:
            geo += f", padding {fmt(values.get('padding'))}"
        chips.append(_chip(geo))
    else:
        desc = data.describe(layer) or ""
        m = re.search(r"k=([^,]+), s=([^,]+), p=([^)]+)", desc)
        if m:
            chips.append(_chip(f"filter {m.group(1)}, stride {m.group(2)}, padding {m.group(3)}"))
    if act is not None:
        lo_a, hi_a, zf = _array(act, "min"), _array(act, "max"), _array(act, "zero_fraction")
        lo = hi = None
        if lo_a is not None and hi_a is not None and np.isfinite(lo_a).any():
            lo, hi = float(np.nanmin(lo_a[np.isfinite(lo_a)])), float(np.nanmax(hi_a))
        if lo is not None and hi is not None and math.isfinite(hi):
            chips.append(_chip(f"activations {lo:.3g} … {hi:.3g} (at {act.label})"))
        if zf is not None and zf.size:
            dead = int((zf >= 1.0).sum())
            if dead:
                chips.append(_chip(f"{dead} channels all zero on the probe", "warn"))
        if act.nonfinite:
            chips.append(_chip(f"{act.nonfinite} NaN/Inf outputs at {act.label}", "bad"))
    filt = data.latest(FiltersRecord, layer)
    if row is not None and row.weights_arithmetic:
        text = str(row.weights_arithmetic)
        if row.params is not None and "=" not in text and text != str(row.params):
            text += f" = {fmt(row.params)}"
        chips.append(_chip(f"parameters: {text}"))
    elif filt is not None and len(filt.full_shape) >= 3:
        chips.append(_chip("parameters: " + param_formula(filt.full_shape, filt.bias)))
    if row is not None and row.rf_size is not None:
        chips.append(_chip(f"receptive field {fmt(row.rf_size)}, jump {fmt(row.rf_jump)}"))
    title = f"<h2>{esc(layer)} <span class=muted>{esc(kind or '')}</span></h2>"
    return title + f'<div class="chips">{"".join(chips)}</div>', kind


def _filters(data: RunData, page: Page, layer: str, max_events: int) -> list[str]:
    allrecs = data.same_shape(data.read(FiltersRecord, layer), "weight", f"{layer} filters")
    if not allrecs:
        return []
    last = allrecs[-1]
    out = ["<h3>Filters</h3>"]
    shown_recs: list[FiltersRecord] = []

    def history() -> list[str]:
        slot, chosen = fit_events(
            page,
            allrecs,
            lambda recs: filter_history_figure(
                [r.weight for r in recs],
                [r.label for r in recs],
                layer=layer,
                channels=list(last.channels) or None,
                rgb=bool(last.rgb),
            ),
            max_events=max_events,
            bits=8,
        )
        shown_recs[:] = chosen
        return [slot]

    slot = guarded(data, f"{layer}: filters", history)
    out.append(_thinned(shown_recs, allrecs) if shown_recs else "")
    full = last.full_shape
    shown = np.shape(last.weight)
    if full and tuple(full[:2]) != tuple(shown[:2]):
        out.append(
            f"<p class=note>Showing {shown[0]} of {full[0]} filters and {shown[1]} of "
            f"{full[1]} input channels (the run's <code>max_channels</code> settings).</p>"
        )
    flags = []
    for key, css in (("dead", "bad"), ("unchanged", "warn")):
        vals = list(getattr(last, key) or ())
        if vals:
            flags.append(_chip(f"{key} at {last.label}: {_short(vals)}", css))
    chosen = shown_recs or allrecs
    nan_chip = nonfinite_note([r.weight for r in chosen], [r.label for r in chosen])
    if nan_chip:
        flags.append(nan_chip)
    if flags:
        out.append(f'<div class="chips">{"".join(flags)}</div>')
    out += slot

    def norms() -> list[str]:
        recs = data.same_shape(allrecs, "norms", f"{layer} filter norms")
        if len(recs) != len(allrecs) or not recs:
            return []
        arrays = [np.asarray(r.norms) for r in recs]
        nfig = filter_norms_figure(
            np.stack(arrays), [r.label for r in recs], layer=plotly_text(layer)
        )
        nfig.update_layout(height=min(520, 160 + 4 * arrays[0].shape[0]))
        nfig.update_xaxes(type="category")
        nfig.update_layout(margin={"l": 60})
        return [
            '<details class="more"><summary>Filter norms at every event (dead and unchanged '
            f"filters)</summary>{page.figure(nfig)}</details>"
        ]

    out += guarded(data, f"{layer}: filter norms", norms)
    return out


def _activations(data: RunData, page: Page, layer: str, max_events: int) -> list[str]:
    allrecs = data.same_shape(
        data.read(ActivationsRecord, layer), "maps", f"{layer} activation maps"
    )
    if not allrecs:
        return []
    last = allrecs[-1]
    shape = np.shape(last.maps)
    n = shape[0]
    probe = probe_info(data, n)
    channels = _array(last, "channels")
    shown_recs: list[ActivationsRecord] = []

    def history() -> list[str]:
        slot, chosen = fit_events(
            page,
            allrecs,
            lambda recs: activation_history_figure(
                [r.maps for r in recs],
                [r.label for r in recs],
                layer=layer,
                channels=None if channels is None else [int(c) for c in channels],
                probe_labels=probe.labels if len(probe.labels) == n else None,
            ),
            max_events=max_events,
            bits=8,
            scale_toggle=True,
        )
        shown_recs[:] = chosen
        return [slot]

    slot = guarded(data, f"{layer}: activation maps", history)
    recs = shown_recs or pick_events(allrecs, max_events)
    out = ["<h3>Activation maps</h3>", _thinned(recs, allrecs)]
    note = (
        "Rows: probe images; column blocks: channels. One colour scale for the layer compares "
        "channels; stretching each channel to its own range shows what weak channels see."
    )
    src = last.read_from
    if src and src != layer:
        note += f" Read after <code>{esc(src)}</code> (what the layer fires)."
    full = last.shape
    if full and len(full) > 1 and shape[1] < full[1]:
        note += f" Showing {shape[1]} of {full[1]} channels."
    out.append(f"<p class=note>{note}</p>")
    nan_chip = nonfinite_note([r.maps for r in recs], [r.label for r in recs])
    if nan_chip:
        out.append(f'<div class="chips">{nan_chip}</div>')
    out += slot

    def stats() -> list[str]:
        rows = []
        for r in recs:
            a = {k: _array(r, k) for k in ("mean", "max", "zero_fraction")}
            if all(v is not None for v in a.values()):
                rows.append(a)
        if len(rows) != len(recs) or len({s["mean"].shape for s in rows}) != 1:
            return []
        fig = activation_stats_figure(rows, [r.label for r in recs], layer=plotly_text(layer))
        # Secondary: drawn only when opened (a closed <details> is never "in view").
        return [
            '<details class="more"><summary>Per-channel statistics (all '
            f"{rows[0]['mean'].shape[0]} channels: mean, max, fraction of zeros)</summary>"
            f"{page.figure(fig)}</details>"
        ]

    out += guarded(data, f"{layer}: activation statistics", stats)
    return out


def _region(value: Sequence[int] | None) -> list[int] | None:
    return list(value) if value is not None and len(value) == 4 else None


def _receptive(data: RunData, page: Page, layer: str, max_events: int) -> list[str]:
    out: list[str] = []
    rf = data.latest(ReceptiveFieldRecord, layer)
    if rf is not None:
        chips = [_chip(f"size {fmt(rf.size)}"), _chip(f"jump {fmt(rf.jump)}")]
        if rf.start is not None:
            chips.append(_chip(f"start {fmt(rf.start)}"))
        if rf.misaligned:
            chips.append(_chip("paths with different geometry merge here", "warn"))
        out += ["<h3>Receptive field</h3>", f'<div class="chips">{"".join(chips)}</div>']
        img = _array(rf, "region_image")
        region = _region(rf.region)
        if img is not None and region and img.ndim in (2, 3):
            out += guarded(
                data,
                f"{layer}: receptive field",
                lambda: [receptive_field_panel(img, region, unit=rf.unit)],
            )
    erfs = data.same_shape(data.read(ErfRecord, layer), "map", f"{layer} effective field")
    if erfs:
        recs = pick_events(erfs, max_events)
        last = recs[-1]
        region = _region(last.region) or _region(last.theoretical)
        centre = last.centroid
        if centre is None or len(centre) != 2 or not all(_finite(c) is not None for c in centre):
            centre = None
        chips = []
        ratio = _finite(last.ratio)
        if ratio is not None:
            chips.append(_chip(f"effective / theoretical size {ratio:.2f} at {last.label}"))
        radius = _finite(last.radius)
        if radius is not None:
            chips.append(_chip(f"effective radius {radius:.1f} px"))
        nan_chip = nonfinite_note([r.map for r in recs], [r.label for r in recs])
        if nan_chip:
            chips.append(nan_chip)
        out += [
            "<h3>Effective receptive field</h3>",
            "<p class=note>Mean absolute input gradient of the layer's centre unit over the "
            "probe images (Luo et al., 2016): usually a Gaussian much smaller than the "
            "theoretical field, growing with training.</p>",
            f'<div class="chips">{"".join(chips)}</div>',
        ]
        out += guarded(
            data,
            f"{layer}: effective receptive field",
            lambda: [
                page.figure(
                    erf_figure(
                        [r.map for r in recs],
                        [r.label for r in recs],
                        layer=layer,
                        radius=[_finite(r.radius) for r in recs],
                        centre=centre,
                        region=region,
                    ),
                    bits=8,
                )
            ],
        )
    return out


def _topk(data: RunData, page: Page, layer: str) -> list[str]:
    recs = data.loadable(data.read(TopkRecord, layer), "values")
    rec = recs[-1] if recs else None
    patches = _array(rec, "patches")
    if rec is None or patches is None:
        return []
    body = guarded(
        data,
        f"{layer}: top dataset patches",
        lambda: [
            topk_panel(
                patches,
                _array(rec, "values"),
                layer=layer,
                channels=list(rec.channels) or None,
                samples=_array(rec, "samples"),
            )
        ],
    )
    return [
        "<h3>Top dataset patches</h3>",
        f"<p class=note>The input patches (each unit's receptive field) that excite each "
        f"channel most, at {esc(rec.label)}; hover for the activation and sample.</p>",
        *body,
    ]


def _featvis(data: RunData, page: Page, layer: str) -> list[str]:
    recs = data.loadable(data.read(FeatvisRecord, layer), "images")
    if not recs:
        return []
    rec = recs[-1]
    body = guarded(
        data,
        f"{layer}: feature visualization",
        lambda: [
            featvis_panel(
                np.nan_to_num(np.asarray(rec.images), nan=0.0),
                _array(rec, "activations"),
                layer=layer,
                channels=list(rec.channels) or None,
            )
        ],
    )
    what = rec.objective
    return [
        "<h3>Feature visualization</h3>",
        f"<p class=note>Inputs optimised to excite each channel"
        f"{' (' + esc(what) + ')' if what else ''}, at {esc(rec.label)}.</p>",
        *body,
    ]


def _grad_cam(data: RunData, page: Page, layer: str) -> list[str]:
    maps, rec = attribution_maps(data, ["grad_cam", "guided_grad_cam"])
    if not maps or rec is None or grad_cam_layer(rec) != layer:
        return []
    n = next(iter(maps.values())).shape[0]
    probe = probe_info(data, n)
    images = probe.images if probe.images is not None and len(probe.images) == n else None
    body = guarded(
        data,
        f"{layer}: Grad-CAM",
        lambda: [
            page.figure(
                attributions_figure(
                    maps,
                    images=images,
                    probe_labels=attribution_labels(probe, rec.targets, n),
                    title=f"{plotly_text(layer)} — Grad-CAM",
                ),
                bits=8,
            )
        ],
    )
    return [
        "<h3>Grad-CAM</h3>",
        "<p class=note>Grad-CAM uses this layer: where its "
        "channels, weighted by the class gradient, are active.</p>",
        *body,
    ]


def _errors(data: RunData, layer: str) -> list[str]:
    errors = data.read(ErrorRecord, layer)
    if not errors:
        return []
    items = "".join(
        f"<li><b>{esc(e.callback)}</b> at {esc(e.at or e.label)}: {esc(e.exception)}: "
        f"{esc(e.message)}</li>"
        for e in errors[-10:]
    )
    return [f'<ul class="note fig-error">{items}</ul>']


def layer_section(
    data: RunData, page: Page, layer: str, anchor: str, *, max_events: int = 12
) -> str | None:
    """Write the section of ``layer`` to ``page``; returns the layer type (for the TOC).

    Each part (filters, activation maps, fields, patches, Grad-CAM, feature visualisation) is
    built on its own: one that fails becomes a note in the section, the others are drawn.
    """
    row = layer_table_rows(data).get(layer)
    kind: str | None = None
    try:
        header, kind = _header(data, layer, row)
    except Exception:  # the header's facts are a nicety: the figures below still count
        header = f"<h2>{esc(layer)}</h2>"
        header += "".join(guarded(data, f"{layer}: header", lambda: _header(data, layer, row)[:1]))
    parts = [header]
    parts += guarded(data, f"{layer}: errors", lambda: _errors(data, layer))
    for name, build in (
        ("filters", lambda: _filters(data, page, layer, max_events)),
        ("activation maps", lambda: _activations(data, page, layer, max_events)),
        ("receptive fields", lambda: _receptive(data, page, layer, max_events)),
        ("top dataset patches", lambda: _topk(data, page, layer)),
        ("Grad-CAM", lambda: _grad_cam(data, page, layer)),
        ("feature visualization", lambda: _featvis(data, page, layer)),
    ):
        parts += guarded(data, f"{layer}: {name}", build)
    if len(parts) == 1:
        parts.append("<p class=note>Nothing drawable was recorded for this layer.</p>")
    page.add_section(anchor, "".join(parts))
    return kind
