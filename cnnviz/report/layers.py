"""The per-layer sections of the report, ConvNetJS-style.

Each section has a header with the layer's facts, then whatever the run recorded for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

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
    attribution_labels,
    attribution_maps,
    fmt,
    grad_cam_layer,
    layer_table_rows,
    probe_info,
)
from cnnviz.store import Record

__all__ = ["layer_section", "param_formula"]


def param_formula(full_shape: list[int], bias: bool | None) -> str:
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
    records: list[Record],
    build: Callable[[list[Record]], go.Figure],
    *,
    max_events: int,
    bits: int,
    budget: int = FIGURE_BUDGET,
    scale_toggle: bool = False,
) -> tuple[str, list[Record]]:
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


def _thinned(shown: list[Record], total: list[Record]) -> str:
    if len(shown) == len(total):
        return ""
    return (
        f"<p class=note>Showing {len(shown)} of {len(total)} logged events (evenly spaced, "
        "to keep the page small); the run store holds them all.</p>"
    )


def _label(r: Record) -> str:
    return str(r.meta.get("label") or (f"epoch {r.epoch + 1}" if r.epoch is not None else r.id))


def _same_shape(data: RunData, recs: list[Record], key: str) -> list[Record]:
    if not recs:
        return recs
    want = data.arrays(recs[-1]).get(key)
    if want is None:
        return []
    return [r for r in recs if getattr(data.arrays(r).get(key), "shape", None) == want.shape]


def _chip(text: str, css: str = "") -> str:
    return f'<span class="chip {css}">{esc(text)}</span>'


def _short(values: list[Any], limit: int = 16) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _layer_type(data: RunData, layer: str, row: dict[str, Any] | None) -> str | None:
    for kind in ("filters", "activations"):
        rec = data.latest(kind, layer)
        if rec is not None and rec.meta.get("layer_type"):
            return str(rec.meta["layer_type"])
    if row and row.get("type"):
        return str(row["type"])
    desc = data.describe(layer)
    return desc.split("(")[0] if desc else None


def _header(data: RunData, layer: str, row: dict[str, Any] | None) -> tuple[str, str | None]:
    kind = _layer_type(data, layer, row)
    chips = []
    act = data.latest("activations", layer)
    out_shape = None
    if act is not None and act.meta.get("shape"):
        out_shape = list(act.meta["shape"])[1:]
    elif row and row.get("output_shape"):
        out_shape = row["output_shape"]
    if out_shape:
        chips.append(_chip(f"output {fmt(out_shape)}"))
    if row and row.get("kernel") is not None:
        geo = f"filter {fmt(row.get('kernel'))}, stride {fmt(row.get('stride'))}"
        if row.get("padding") is not None:
            geo += f", padding {fmt(row.get('padding'))}"
        chips.append(_chip(geo))
    else:
        desc = data.describe(layer) or ""
        m = re.search(r"k=([^,]+), s=([^,]+), p=([^)]+)", desc)
        if m:
            chips.append(_chip(f"filter {m.group(1)}, stride {m.group(2)}, padding {m.group(3)}"))
    if act is not None:
        arr = data.arrays(act)
        if "min" in arr and "max" in arr and arr["min"].size:
            lo, hi = float(np.nanmin(arr["min"])), float(np.nanmax(arr["max"]))
            chips.append(_chip(f"activations {lo:.3g} … {hi:.3g} (at {_label(act)})"))
        if "zero_fraction" in arr and arr["zero_fraction"].size:
            dead = int((arr["zero_fraction"] >= 1.0).sum())
            if dead:
                chips.append(_chip(f"{dead} channels all zero on the probe", "warn"))
    filt = data.latest("filters", layer)
    if row and row.get("weights_arithmetic"):
        text = str(row["weights_arithmetic"])
        if row.get("params") is not None and "=" not in text and text != str(row["params"]):
            text += f" = {fmt(row['params'])}"
        chips.append(_chip(f"parameters: {text}"))
    elif filt is not None and filt.meta.get("full_shape"):
        chips.append(
            _chip("parameters: " + param_formula(filt.meta["full_shape"], filt.meta.get("bias")))
        )
    if row and row.get("rf_size") is not None:
        chips.append(
            _chip(f"receptive field {fmt(row['rf_size'])}, jump {fmt(row.get('rf_jump'))}")
        )
    title = f"<h2>{esc(layer)} <span class=muted>{esc(kind or '')}</span></h2>"
    return title + f'<div class="chips">{"".join(chips)}</div>', kind


def _filters(data: RunData, page: Page, layer: str, max_events: int) -> list[str]:
    allrecs = _same_shape(data, data.of("filters", layer), "weight")
    if not allrecs:
        return []
    last = allrecs[-1]
    slot, shown_recs = fit_events(
        page,
        allrecs,
        lambda recs: filter_history_figure(
            [data.arrays(r)["weight"] for r in recs],
            [_label(r) for r in recs],
            layer=layer,
            channels=last.meta.get("channels"),
            rgb=bool(last.meta.get("rgb")),
        ),
        max_events=max_events,
        bits=8,
    )
    out = ["<h3>Filters</h3>", _thinned(shown_recs, allrecs)]
    full = last.meta.get("full_shape")
    shown = data.arrays(last)["weight"].shape
    if full and tuple(full[:2]) != tuple(shown[:2]):
        out.append(
            f"<p class=note>Showing {shown[0]} of {full[0]} filters and {shown[1]} of "
            f"{full[1]} input channels (the run's <code>max_channels</code> settings).</p>"
        )
    flags = []
    for key, css in (("dead", "bad"), ("unchanged", "warn")):
        vals = list(last.meta.get(key) or [])
        if vals:
            flags.append(_chip(f"{key} at {_label(last)}: {_short(vals)}", css))
    if last.meta.get("nonfinite"):
        flags.append(_chip(f"{last.meta['nonfinite']} NaN/Inf weights (drawn blank)", "bad"))
    if flags:
        out.append(f'<div class="chips">{"".join(flags)}</div>')
    out.append(slot)
    norms = [data.arrays(r).get("norms") for r in allrecs]
    if all(n is not None for n in norms) and len({n.shape for n in norms}) == 1:
        nfig = filter_norms_figure(
            np.stack(norms), [_label(r) for r in allrecs], layer=plotly_text(layer)
        )
        nfig.update_layout(height=min(520, 160 + 4 * norms[0].shape[0]))
        nfig.update_xaxes(type="category")
        nfig.update_layout(margin={"l": 60})
        out.append(
            '<details class="more"><summary>Filter norms at every event (dead and unchanged '
            f"filters)</summary>{page.figure(nfig)}</details>"
        )
    return out


def _activations(data: RunData, page: Page, layer: str, max_events: int) -> list[str]:
    allrecs = _same_shape(data, data.of("activations", layer), "maps")
    if not allrecs:
        return []
    last = allrecs[-1]
    shape = data.arrays(last)["maps"].shape
    n = shape[0]
    probe = probe_info(data, n)
    channels = data.arrays(last).get("channels")
    slot, recs = fit_events(
        page,
        allrecs,
        lambda recs: activation_history_figure(
            [data.arrays(r)["maps"] for r in recs],
            [_label(r) for r in recs],
            layer=layer,
            channels=None if channels is None else [int(c) for c in channels],
            probe_labels=probe.labels if len(probe.labels) == n else None,
        ),
        max_events=max_events,
        bits=8,
        scale_toggle=True,
    )
    out = ["<h3>Activation maps</h3>", _thinned(recs, allrecs)]
    note = (
        "Rows: probe images; column blocks: channels. One colour scale for the layer compares "
        "channels; stretching each channel to its own range shows what weak channels see."
    )
    src = last.meta.get("read_from")
    if src and src != layer:
        note += f" Read after <code>{esc(src)}</code> (what the layer fires)."
    full = last.meta.get("shape")
    if full and len(full) > 1 and shape[1] < full[1]:
        note += f" Showing {shape[1]} of {full[1]} channels."
    out.append(f"<p class=note>{note}</p>")
    out.append(slot)
    stats = []
    for r in recs:
        a = data.arrays(r)
        if all(k in a for k in ("mean", "max", "zero_fraction")):
            stats.append({k: a[k] for k in ("mean", "max", "zero_fraction")})
    if len(stats) == len(recs) and len({s["mean"].shape for s in stats}) == 1:
        fig = activation_stats_figure(stats, [_label(r) for r in recs], layer=plotly_text(layer))
        # Secondary: drawn only when opened (a closed <details> is never "in view").
        out.append(
            '<details class="more"><summary>Per-channel statistics (all '
            f"{stats[0]['mean'].shape[0]} channels: mean, max, fraction of zeros)</summary>"
            f"{page.figure(fig)}</details>"
        )
    return out


def _receptive(data: RunData, page: Page, layer: str, max_events: int) -> list[str]:
    out: list[str] = []
    rf = data.latest("receptive_field", layer)
    if rf is not None:
        meta = rf.meta
        chips = [_chip(f"size {fmt(meta.get('size'))}"), _chip(f"jump {fmt(meta.get('jump'))}")]
        if meta.get("start") is not None:
            chips.append(_chip(f"start {fmt(meta.get('start'))}"))
        if meta.get("misaligned"):
            chips.append(_chip("paths with different geometry merge here", "warn"))
        out += ["<h3>Receptive field</h3>", f'<div class="chips">{"".join(chips)}</div>']
        img = data.arrays(rf).get("region_image")
        region = meta.get("region")
        if img is not None and region and len(region) >= 4 and np.asarray(img).ndim in (2, 3):
            out.append(receptive_field_panel(img, region, unit=meta.get("unit")))
    erfs = _same_shape(data, data.of("erf", layer), "map")
    if erfs:
        recs = pick_events(erfs, max_events)
        last = recs[-1].meta
        region = last.get("region")
        if (
            region is None
            and isinstance(last.get("theoretical"), (list, tuple))
            and len(last["theoretical"]) == 4
        ):
            region = last["theoretical"]
        radius = [r.meta.get("radius") for r in recs]
        fig = erf_figure(
            [data.arrays(r)["map"] for r in recs],
            [_label(r) for r in recs],
            layer=layer,
            radius=[float(v) if isinstance(v, (int, float)) else None for v in radius],
            centre=last.get("centroid"),
            region=region,
        )
        chips = []
        if last.get("ratio") is not None:
            chips.append(
                _chip(
                    f"effective / theoretical size {float(last['ratio']):.2f} at {_label(recs[-1])}"
                )
            )
        if last.get("radius") is not None:
            chips.append(_chip(f"effective radius {float(last['radius']):.1f} px"))
        out += [
            "<h3>Effective receptive field</h3>",
            "<p class=note>Mean absolute input gradient of the layer's centre unit over the "
            "probe images (Luo et al., 2016): usually a Gaussian much smaller than the "
            "theoretical field, growing with training.</p>",
            f'<div class="chips">{"".join(chips)}</div>',
            page.figure(fig, bits=8),
        ]
    return out


def _topk(data: RunData, page: Page, layer: str) -> list[str]:
    rec = data.latest("topk", layer)
    if rec is None:
        return []
    a = data.arrays(rec)
    if "patches" not in a:
        return []
    panel = topk_panel(
        a["patches"],
        a.get("values"),
        layer=layer,
        channels=rec.meta.get("channels"),
        samples=a.get("samples"),
    )
    return [
        "<h3>Top dataset patches</h3>",
        f"<p class=note>The input patches (each unit's receptive field) that excite each "
        f"channel most, at {esc(_label(rec))}; hover for the activation and sample.</p>",
        panel,
    ]


def _featvis(data: RunData, page: Page, layer: str) -> list[str]:
    rec = data.latest("featvis", layer)
    if rec is None:
        return []
    a = data.arrays(rec)
    if "images" not in a:
        return []
    panel = featvis_panel(
        a["images"], a.get("activations"), layer=layer, channels=rec.meta.get("channels")
    )
    what = rec.meta.get("objective")
    return [
        "<h3>Feature visualization</h3>",
        f"<p class=note>Inputs optimised to excite each channel"
        f"{' (' + esc(what) + ')' if what else ''}, at {esc(_label(rec))}.</p>",
        panel,
    ]


def _grad_cam(data: RunData, page: Page, layer: str) -> list[str]:
    maps, rec = attribution_maps(data, ["grad_cam", "guided_grad_cam"])
    if not maps or grad_cam_layer(rec) != layer:
        return []
    n = next(iter(maps.values())).shape[0]
    probe = probe_info(data, n)
    images = probe.images if probe.images is not None and len(probe.images) == n else None
    fig = attributions_figure(
        maps,
        images=images,
        probe_labels=attribution_labels(probe, rec.meta.get("targets"), n),
        title=f"{plotly_text(layer)} — Grad-CAM",
    )
    return [
        "<h3>Grad-CAM</h3>",
        "<p class=note>Grad-CAM uses this layer: where its "
        "channels, weighted by the class gradient, are active.</p>",
        page.figure(fig, bits=8),
    ]


def layer_section(
    data: RunData, page: Page, layer: str, anchor: str, *, max_events: int = 12
) -> str | None:
    """Write the section of ``layer`` to ``page``; returns the layer type (for the TOC)."""
    row = layer_table_rows(data).get(layer)
    header, kind = _header(data, layer, row)
    parts = [header]
    parts += _filters(data, page, layer, max_events)
    parts += _activations(data, page, layer, max_events)
    parts += _receptive(data, page, layer, max_events)
    parts += _topk(data, page, layer)
    parts += _grad_cam(data, page, layer)
    parts += _featvis(data, page, layer)
    if len(parts) == 1:
        parts.append("<p class=note>Nothing drawable was recorded for this layer.</p>")
    page.add_section(anchor, "".join(parts))
    return kind
