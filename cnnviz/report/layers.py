"""The per-layer sections of the report, ConvNetJS-style.

Each section has a header with the layer's facts, then whatever the run recorded for it:
filters (and their gradients), activation maps (saying which tensor was read), the receptive
field (local and global), the effective receptive field, top dataset patches (padding marked),
Grad-CAM and feature visualisation. What a section leaves out, it says, and why.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import plotly_text
from cnnviz.figures.activations import activation_stats_figure, activations_figure
from cnnviz.figures.attributions import attributions_figure
from cnnviz.figures.featvis import featvis_panel
from cnnviz.figures.filters import filter_norms_figure, filters_figure
from cnnviz.figures.receptive_field import erf_figure, receptive_field_panel
from cnnviz.figures.topk import patch_inside, topk_panel
from cnnviz.report.data import RunData, pick_events
from cnnviz.report.gallery import panel_html
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
    ProbeRecord,
    ReceptiveFieldRecord,
    StoreRecord,
    TableRow,
    TopkRecord,
)

R = TypeVar("R", bound=StoreRecord)

__all__ = [
    "FIGURE_BUDGET",
    "LayerBudget",
    "layer_section",
    "param_formula",
    "read_label",
    "topk_inside",
]


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


@dataclass(frozen=True)
class LayerBudget:
    """How many bytes a layer's section may take in the page.

    Attributes:
        figure: Bytes per history figure (filters, activations, ERF); older events are
            thinned out to fit, down to the newest one.
        patch_size: Largest side of a top-k patch (pixels) drawn in the page.
        secondary: Bytes per figure in a closed box (weight gradients).
    """

    figure: int = FIGURE_BUDGET
    patch_size: int = 32
    secondary: int = FIGURE_BUDGET


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

    Evenly spaced events are dropped (the first and the last kept while there are two) until
    the encoded figure fits ``budget`` bytes; a single event (the newest) is the least shown.

    Returns:
        The figure's HTML slot and the records shown.
    """
    chosen = pick_events(records, max_events)
    while True:
        fig = build(chosen)
        payload = page.encode(fig, bits=bits)
        if len(payload) <= budget or len(chosen) <= 1:
            slot = page.figure(fig, bits=bits, payload=payload, scale_toggle=scale_toggle)
            return slot, chosen
        fewer = max(1, min(len(chosen) - 1, int(len(chosen) * budget / len(payload))))
        chosen = [records[-1]] if fewer == 1 else pick_events(records, fewer)


def _thinned(shown: Sequence[Any], total: Sequence[Any]) -> str:
    if len(shown) == len(total):
        return ""
    which = (
        f"only the newest, {esc(shown[-1].label)}, is"
        if len(shown) == 1
        else f"{len(shown)} evenly spaced ones are"
    )
    return (
        f"<p class=left-out>{len(total) - len(shown)} of {len(total)} logged events are not "
        f"shown here ({which}, to keep the page within its size); the run store holds them "
        "all.</p>"
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


def _axes(value: Any, n: int = 2) -> tuple[int, ...] | None:
    """A per-axis value (an int or a list) as ``n`` ints, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return (int(value),) * n
    if (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return tuple(int(v) for v in value)
    return None


def _short_name(module: str, layer: str) -> str:
    """``module`` relative to the layer's parent (``layer1.0.bn1`` -> ``bn1``)."""
    parent = layer.rsplit(".", 1)[0] + "." if "." in layer else ""
    return module[len(parent) :] if parent and module.startswith(parent) else module


def read_label(rec: Any, layer: str) -> tuple[str, str, bool]:
    """What tensor a record read: ``(note, chip, post_activation)``.

    ``rec`` is any record with ``stage``/``read_path`` (and ``read_from``) fields:
    activations, top-k, feature visualisation, dissection.

    ``post_activation`` is ``False`` for conv maps read before any activation (``norm``,
    ``raw``): their zeros are not dead units.
    """
    stage = getattr(rec, "stage", None)
    path = [str(p) for p in getattr(rec, "read_path", ()) or ()]
    src = getattr(rec, "read_from", None)
    steps = " → ".join(_short_name(p, layer) for p in path)
    if stage == "norm":
        where = f" (read after {steps})" if steps else ""
        return (
            f"Pre-activation: no activation follows this conv, so its maps are read after its "
            f"normalisation{where}. Values are signed and a zero is not a dead unit.",
            "pre-activation (after the norm)",
            False,
        )
    if stage == "raw":
        return (
            "Raw conv output: neither a normalisation nor an activation follows this conv, so "
            "its own output is shown (signed; a zero is not a dead unit).",
            "raw conv output",
            False,
        )
    if stage == "activation":
        if steps:
            return f"Read after {steps}: what the unit fires.", f"read after {steps}", True
        if src and src != layer:
            short = _short_name(src, layer)
            return f"Read after {short}: what the unit fires.", f"read after {short}", True
        return "Read after its activation: what the unit fires.", "post-activation", True
    if src and src != layer:
        short = _short_name(src, layer)
        return f"Read after {short} (what the layer fires).", f"read after {short}", True
    return "", "", True


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
        _, read_chip, post = read_label(act, layer)
        if read_chip:
            chips.append(_chip(read_chip, "" if post else "pre"))
        lo_a, hi_a, zf = _array(act, "min"), _array(act, "max"), _array(act, "zero_fraction")
        lo = hi = None
        if lo_a is not None and hi_a is not None and np.isfinite(lo_a).any():
            lo, hi = float(np.nanmin(lo_a[np.isfinite(lo_a)])), float(np.nanmax(hi_a))
        if lo is not None and hi is not None and math.isfinite(hi):
            chips.append(_chip(f"values {lo:.3g} … {hi:.3g} (at {act.label})"))
        if zf is not None and zf.size and post:
            dead = int((zf >= 1.0).sum())
            if dead:
                chips.append(_chip(f"{dead} channels all zero on the probe (dead units?)", "warn"))
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


def _filters(
    data: RunData, page: Page, layer: str, max_events: int, budget: LayerBudget
) -> list[str]:
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
            lambda recs: filters_figure(
                [r.weight for r in recs],
                [r.label for r in recs],
                layer=layer,
                channels=list(last.channels) or None,
                rgb=bool(last.rgb),
            ),
            max_events=max_events,
            bits=8,
            budget=budget.figure * (3 if last.rgb else 1),  # a first layer's colour filters
        )
        shown_recs[:] = chosen
        return [slot]

    slot = guarded(data, f"{layer}: filters", history)
    out.append(_thinned(shown_recs, allrecs) if shown_recs else "")
    full = last.full_shape
    shown = np.shape(last.weight)
    if full and tuple(full[:2]) != tuple(shown[:2]):
        out.append(
            f"<p class=left-out>{full[0] - shown[0]} of {full[0]} filters and "
            f"{full[1] - shown[1]} of {full[1]} input channels are not drawn (the first "
            f"{shown[0]} × {shown[1]} are: FilterWeights' <code>max_channels</code> and "
            "<code>max_in_channels</code>); the norms below cover every filter.</p>"
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
        nfig = filter_norms_figure(np.stack(arrays), [r.label for r in recs], layer=layer)
        nfig.update_layout(height=min(520, 160 + 4 * arrays[0].shape[0]), margin={"l": 60})
        return [
            '<details class="more"><summary>Filter norms at every event (dead and unchanged '
            f"filters)</summary>{page.figure(nfig)}</details>"
        ]

    out += guarded(data, f"{layer}: filter norms", norms)
    out += guarded(
        data, f"{layer}: weight gradients", lambda: _gradients(data, page, layer, allrecs, budget)
    )
    return out


def _gradients(
    data: RunData,
    page: Page,
    layer: str,
    allrecs: list[FiltersRecord],
    budget: LayerBudget,
) -> list[str]:
    """The weight gradients of the logged steps (``grad``, ``grad_norms``), in a closed box."""
    with_grad = data.same_shape(
        [r for r in allrecs if "grad" in r.array_names()], "grad", f"{layer} weight gradients"
    )
    if not with_grad:
        return []
    last = with_grad[-1]
    slot, chosen = fit_events(
        page,
        with_grad,
        lambda recs: filters_figure(
            [r.grad for r in recs],
            [r.label for r in recs],
            layer=layer,
            channels=list(last.channels) or None,
            title=f"{plotly_text(layer)} — weight gradients of the logged step "
            "(columns: filters, rows: input channels)",
            what="gradient",
        ),
        max_events=len(with_grad),
        bits=8,
        budget=budget.secondary,
    )
    parts = [slot, _thinned(chosen, with_grad)]
    norm_recs = data.same_shape(with_grad, "grad_norms", f"{layer} gradient norms")
    if norm_recs:
        gfig = filter_norms_figure(
            np.stack([np.asarray(r.grad_norms) for r in norm_recs]),
            [r.label for r in norm_recs],
            layer=layer,
            what="‖∇w‖",
            title=f"{plotly_text(layer)} — gradient norm per filter",
        )
        size = np.asarray(norm_recs[-1].grad_norms).shape[0]
        gfig.update_layout(height=min(520, 160 + 4 * size), margin={"l": 60})
        parts.append(page.figure(gfig))
    missing = len(allrecs) - len(with_grad)
    note = (
        f" {missing} events have none (at the start, before the first optimizer step)."
        if missing
        else ""
    )
    return [
        '<details class="more"><summary>Weight gradients of the logged steps (what the '
        f"optimizer pushed the filters towards; {len(with_grad)} events)</summary>"
        "<p class=note>The gradient of the loss with respect to each weight at the optimizer "
        "step of each event (the same slices as the filters), and its norm per filter: a "
        f"filter whose gradient stays at zero no longer learns.{note}</p>"
        + "".join(parts)
        + "</details>"
    ]


def _activations(
    data: RunData, page: Page, layer: str, max_events: int, budget: LayerBudget
) -> list[str]:
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
    note, _, post = read_label(last, layer)
    value = "activation" if post else "pre-activation"
    shown_recs: list[ActivationsRecord] = []

    def history() -> list[str]:
        slot, chosen = fit_events(
            page,
            allrecs,
            lambda recs: activations_figure(
                [r.maps for r in recs],
                [r.label for r in recs],
                layer=layer,
                channels=None if channels is None else [int(c) for c in channels],
                probe_labels=probe.labels if len(probe.labels) == n else None,
                value=value,
                title=None
                if post
                else f"{plotly_text(layer)} — pre-activation maps (rows: probe inputs, "
                "columns: channels)",
            ),
            max_events=max_events,
            bits=8,
            budget=budget.figure,
            scale_toggle=True,
        )
        shown_recs[:] = chosen
        return [slot]

    slot = guarded(data, f"{layer}: activation maps", history)
    recs = shown_recs or pick_events(allrecs, max_events)
    title = "Activation maps" if post else "Pre-activation maps"
    out = [f"<h3>{title}</h3>", _thinned(recs, allrecs)]
    text = (
        "Rows: probe inputs; column blocks: channels. One colour scale for the layer compares "
        "channels; stretching each channel to its own range shows what weak channels see."
    )
    if note:
        text = f"{esc(note)} {text}"
    out.append(f"<p class=note>{text}</p>")
    full = last.shape
    if full and len(full) > 1 and shape[1] < full[1]:
        out.append(
            f"<p class=left-out>{full[1] - shape[1]} of {full[1]} channels are not drawn "
            f"(ActivationMaps keeps {shape[1]}: <code>max_channels</code>); the statistics "
            "below cover every channel.</p>"
        )
    if full and len(full) > 2 and tuple(full[2:]) != tuple(shape[2:]):
        out.append(
            f"<p class=note>Maps of {fmt(list(full[2:]))} are shown averaged down to "
            f"{fmt(list(shape[2:]))} (<code>max_size</code>).</p>"
        )
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
        fig = activation_stats_figure(
            rows,
            [r.label for r in recs],
            layer=layer,
            zeros="fraction of zeros" if post else "fraction of exact zeros (not dead units)",
        )
        zeros = "fraction of zeros" if post else "fraction of exact zeros"
        return [  # drawn only when opened (a closed <details> is never "in view")
            '<details class="more"><summary>Per-channel statistics (all '
            f"{rows[0]['mean'].shape[0]} channels: mean, max, {zeros})</summary>"
            f"{page.figure(fig)}</details>"
        ]

    out += guarded(data, f"{layer}: activation statistics", stats)
    return out


def _region(value: Sequence[int] | None) -> list[int] | None:
    return [int(v) for v in value] if value is not None and len(value) == 4 else None


def _pct(value: Any) -> str | None:
    v = _finite(value)
    return None if v is None else f"{v:.0%}"


def _erf_layers(data: RunData) -> list[str]:
    return list(dict.fromkeys(r.layer for r in data.read(ErfRecord) if r.layer))


def _receptive(
    data: RunData, page: Page, layer: str, max_events: int, budget: LayerBudget
) -> list[str]:
    out: list[str] = []
    rf = data.latest(ReceptiveFieldRecord, layer)
    local_box = None
    if rf is not None:
        chips = []
        if rf.global_context and rf.local_size is not None:
            chips.append(_chip(f"local field {fmt(rf.local_size)} px"))
            if rf.local_jump is not None:
                chips.append(_chip(f"local jump {fmt(rf.local_jump)}"))
            chips.append(_chip("+ global context: sees the whole input", "warn"))
            local_box = _region(rf.local_region)
        else:
            chips += [_chip(f"size {fmt(rf.size)} px"), _chip(f"jump {fmt(rf.jump)}")]
            if rf.start is not None:
                chips.append(_chip(f"start {fmt(rf.start)}"))
        if rf.misaligned:
            where = f" ({_short(list(rf.misaligned_at), 3)})" if rf.misaligned_at else ""
            chips.append(_chip(f"paths with different geometry merge here{where}", "warn"))
        if not rf.exact:
            chips.append(_chip("geometry is a conservative bound", "warn"))
        out += ["<h3>Receptive field</h3>", f'<div class="chips">{"".join(chips)}</div>']
        if rf.global_context:
            joins = _short([_short_name(j, layer) for j in rf.global_context_at], 4)
            out.append(
                "<p class=note>A global-context path (a squeeze-and-excitation gate, a global "
                "pool broadcast back, attention) joins this layer's input"
                + (f" at <code>{esc(joins)}</code>" if joins else "")
                + f": every unit also sees the whole input through it. The local field "
                f"({esc(fmt(rf.local_size))} px, drawn below) is what its position on the "
                f"image decides; the unclipped field of all paths is {esc(fmt(rf.size))} px."
                "</p>"
            )
        img = _array(rf, "region_image")
        region = _region(rf.region)
        if img is not None and region and img.ndim in (2, 3):
            out += guarded(
                data,
                f"{layer}: receptive field",
                lambda: [
                    panel_html(
                        pictures=page.pictures,
                        panel=receptive_field_panel(
                            img,
                            region,
                            unit=rf.unit,
                            region_unclipped=rf.region_unclipped,
                            local_region=rf.local_region if rf.global_context else None,
                            local_unclipped=rf.local_region_unclipped
                            if rf.global_context
                            else None,
                            global_at=[_short_name(j, layer) for j in rf.global_context_at],
                        ),
                    )
                ],
            )
    erfs = data.same_shape(data.read(ErfRecord, layer), "map", f"{layer} effective field")
    if erfs:
        out += _erf(data, page, layer, erfs, max_events, budget, local_box)
    elif rf is not None or data.read(ActivationsRecord, layer):
        measured = _erf_layers(data)
        if measured:
            out.append(
                "<h3>Effective receptive field</h3><p class=left-out>no effective field "
                f"recorded for this layer: the ERF is measured on {len(measured)} evenly spaced "
                "layers (ReceptiveFields' <code>erf_layers=</code> chooses others; "
                f"this run measured {esc(_short(measured, 6))}).</p>"
            )
    return out


def _erf(
    data: RunData,
    page: Page,
    layer: str,
    erfs: list[ErfRecord],
    max_events: int,
    budget: LayerBudget,
    local_box: list[int] | None,
) -> list[str]:
    recs = pick_events(erfs, max_events)
    last = recs[-1]
    region = _region(last.region) or _region(last.theoretical)
    centre = last.centroid
    if centre is None or len(centre) != 2 or not all(_finite(c) is not None for c in centre):
        centre = None
    share = round(100 * (_finite(last.mass_fraction) or 0.9))
    reason = f" (reason: {last.note})" if last.note else ""
    chips = []
    ratio = _finite(last.ratio)
    if ratio is not None:
        chips.append(
            _chip(f"{share}% of the gradient mass in {ratio:.0%} of the theoretical field")
        )
    else:
        chips.append(_chip(f"share of the theoretical field: n/a{reason}", "warn"))
    size = _finite(last.effective_size)
    if size is not None:
        chips.append(_chip(f"effective size {size:.1f} px"))
    elif last.effective_size is not None:
        chips.append(_chip(f"effective size: n/a{reason}", "warn"))
    inside = _pct(last.inside_fraction)
    if inside is not None:
        chips.append(_chip(f"{inside} of all gradient mass inside the theoretical field"))
    local = _pct(last.local_fraction)
    if local is not None:
        chips.append(_chip(f"{local} inside the local field"))
    theo = last.theoretical_size
    if theo:
        chips.append(_chip(f"theoretical field {fmt(list(theo))} px"))
    nan_chip = nonfinite_note([r.map for r in recs], [r.label for r in recs])
    if nan_chip:
        chips.append(nan_chip)
    images = f" over {last.num_images} probe images" if last.num_images else ""
    out = [
        "<h3>Effective receptive field</h3>",
        f"<p class=note>Mean absolute input gradient of the layer's centre unit{images} "
        "(Luo et al., 2016), at each event. Share: the smallest part of the unit's theoretical "
        f"field (clipped to the image) that holds {share}% of the gradient mass inside it — at "
        "most 100%, small when the field is used unevenly. Effective size: the side of a "
        "square with the area of that part.</p>",
        f'<div class="chips">{"".join(chips)}</div>',
        _thinned(recs, erfs),
    ]

    def figure() -> list[str]:
        slot, _ = fit_events(
            page,
            recs,
            lambda rs: erf_figure(
                [r.map for r in rs],
                [r.label for r in rs],
                layer=layer,
                radius=[_finite(r.radius) for r in rs],
                centre=centre,
                region=region,
                local_region=local_box,
                zoom=True,
            ),
            max_events=len(recs),
            bits=8,
            budget=budget.figure,
        )
        return [slot]

    out += guarded(data, f"{layer}: effective receptive field", figure)
    return out


def _geometry(
    data: RunData, layer: str, rec: TopkRecord
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """``(size, jump, start, image size)`` of the patches' field, when the store tells."""
    rf = data.latest(ReceptiveFieldRecord, layer)
    image = None
    shape = data.shape_fact("input_shape")
    if shape and len(shape) == 3:
        image = (int(shape[1]), int(shape[2]))
    if image is None:
        probe = data.latest(ProbeRecord)
        if probe is not None and len(probe.shape) == 4:
            image = (int(probe.shape[2]), int(probe.shape[3]))
    if image is None and rf is not None:
        img = _array(rf, "region_image")
        image = (int(img.shape[0]), int(img.shape[1])) if img is not None else None
    if image is None:
        return None
    found = None
    if rf is not None and rf.global_context:
        size, jump = _axes(rf.local_size), _axes(rf.local_jump)
        box, unit = _region(rf.local_region_unclipped), rf.unit
        if size and jump and box and unit and len(unit) == 2:
            found = (size, jump, (box[0] - unit[0] * jump[0], box[2] - unit[1] * jump[1]))
    elif rf is not None:
        size, jump, start = _axes(rf.size), _axes(rf.jump), _axes(rf.start)
        if size and jump and start:
            found = (size, jump, start)
    if found is None:
        row = layer_table_rows(data).get(layer)
        if row is not None:
            size, jump, start = _axes(row.rf_size), _axes(row.rf_jump), _axes(row.rf_start)
            if size and jump and start:
                found = (size, jump, start)
    if found is None or (rec.rf_size and tuple(rec.rf_size) != tuple(found[0])):
        return None
    return (*found, image)


def topk_inside(
    data: RunData, layer: str, rec: TopkRecord, patches: np.ndarray
) -> np.ndarray | None:
    """The part of each top-k patch inside the image (``[C, k, 4]``), when the store tells."""
    positions = _array(rec, "positions")
    geometry = _geometry(data, layer, rec)
    if (
        geometry is None
        or positions is None
        or positions.ndim != 3
        or positions.shape[-1] != 2
        or positions.shape[:2] != patches.shape[:2]
    ):
        return None
    size, jump, start, image = geometry
    return patch_inside(positions, size=size, jump=jump, start=start, image_size=image)


def _topk(data: RunData, page: Page, layer: str, budget: LayerBudget) -> list[str]:
    recs = data.loadable(data.read(TopkRecord, layer), "values")
    rec = recs[-1] if recs else None
    patches = _array(rec, "patches")
    if rec is None or patches is None:
        return []
    padding = _array(rec, "padding")
    inside = topk_inside(data, layer, rec, patches)
    body = guarded(
        data,
        f"{layer}: top dataset patches",
        lambda: [
            panel_html(
                topk_panel(
                    patches,
                    _array(rec, "values"),
                    layer=layer,
                    channels=list(rec.channels) or None,
                    samples=_array(rec, "samples"),
                    padding=padding,
                    inside=inside,
                    max_size=budget.patch_size,
                )
            )
        ],
    )
    text = (
        "The input patches (each unit's receptive field) that excite each channel most over "
        f"the validation data, at {esc(rec.label)}; hover for the activation and sample."
    )
    note, _, _ = read_label(rec, layer)
    if note:
        text += f" {esc(note)}"
    if rec.interior_only:
        text += " Only units whose field lies inside the image were ranked (interior_only)."
    elif padding is not None and np.isfinite(padding).any():
        frac = float(np.nanmean(padding > 0.005))
        text += (
            f" {frac:.0%} of these patches reach into the zero padding: a unit near the "
            "border also responds to the padding's edge (TopActivations(interior_only=True) "
            "ranks only units that see the image alone)."
        )
    out = ["<h3>Top dataset patches</h3>", f"<p class=note>{text}</p>"]
    shown, total = len(rec.channels) or patches.shape[0], rec.num_channels
    if total and shown < total:
        out.append(
            f"<p class=left-out>{total - shown} of {total} channels have no patches here "
            f"(TopActivations keeps {shown}: <code>max_channels</code>).</p>"
        )
    side = max(patches.shape[2:4])
    if side > budget.patch_size:
        out.append(
            f"<p class=note>Patches of {side} px are shown averaged down to at most "
            f"{budget.patch_size} px.</p>"
        )
    return [*out, *body]


def _output_hw(data: RunData, layer: str) -> tuple[int, ...] | None:
    """The layer's output spatial size, from its activations or the layer table."""
    act = data.latest(ActivationsRecord, layer)
    if act is not None and len(act.shape) > 2:
        return tuple(int(v) for v in act.shape[2:])
    row = layer_table_rows(data).get(layer)
    if row is not None and row.output_shape and len(row.output_shape) > 1:
        return tuple(int(v) for v in row.output_shape[1:])
    return None


def featvis_units(units: Sequence[int] | None, size: Sequence[int] | None) -> str:
    """The output positions a feature visualisation averaged, in words.

    Example:
        >>> featvis_units([2, 12, 2, 12], [14, 14])
        'output rows 2–11, columns 2–11 (10×10 of 14×14 positions)'
    """
    if units is None or len(units) != 4:
        return ""
    top, bottom, left, right = (int(v) for v in units)
    h, w = bottom - top, right - left
    if size is not None and len(size) == 2 and (top, left) == (0, 0) and (h, w) == tuple(size):
        return f"all {h}×{w} output positions"
    if h == 1 and w == 1:
        return f"the single output position ({top}, {left})"
    of = f" of {size[0]}×{size[1]}" if size is not None and len(size) == 2 else ""
    return f"output rows {top}–{bottom - 1}, columns {left}–{right - 1} ({h}×{w}{of} positions)"


def _featvis(
    data: RunData, page: Page, layer: str, anchors: dict[str, str] | None = None
) -> list[str]:
    recs = data.loadable(data.read(FeatvisRecord, layer), "images")
    if not recs:
        return []
    rec = recs[-1]
    # a picture that two layers show (same_as) is held in the page once; the others stay
    # lazily loaded <img>s (a page-wide picture is inlined in the page's style sheet)
    shared = bool(rec.same_as) or any(r.same_as == layer for r in data.read(FeatvisRecord))
    body = guarded(
        data,
        f"{layer}: feature visualization",
        lambda: [
            panel_html(
                featvis_panel(
                    np.nan_to_num(np.asarray(rec.images), nan=0.0),
                    _array(rec, "activations"),
                    layer=layer,
                    channels=list(rec.channels) or None,
                ),
                pictures=page.pictures if shared else None,
            )
        ],
    )
    chips = []
    note, read_chip, post = read_label(rec, layer)
    if read_chip:
        chips.append(_chip(f"objective {read_chip}", "" if post else "pre"))
    where = featvis_units(rec.units, _output_hw(data, layer))
    if where:
        chips.append(_chip(f"averages {where}"))
    run = []
    if rec.steps is not None:
        run.append(f"{rec.steps} steps")
    if rec.param:
        run.append(f"{rec.param} parametrisation")
    if _finite(rec.seconds) is not None and not rec.same_as:
        run.append(f"{rec.seconds:.1f} s")
    if run:
        chips.append(_chip(", ".join(run)))
    if rec.stopped_at is not None:
        total = f" of {rec.steps}" if rec.steps is not None else ""
        chips.append(
            _chip(
                f"stopped after {rec.stopped_at}{total} steps (SIGTERM): the images are unfinished",
                "warn",
            )
        )
    what = f" ({esc(rec.objective)} of the channel's map)" if rec.objective else ""
    text = f"Inputs optimised to excite each channel{what}, at {esc(rec.label)}."
    if note:
        text += f" {esc(note)}"
    if rec.units_reason:  # "interior units: receptive field inside the image"
        why = rec.units_reason.split(": ", 1)[-1]
        text += f" Why these units: {esc(why)}."
    out = [
        '<div class="featvis-part"><h3>Feature visualization</h3>',
        f'<div class="chips">{"".join(chips)}</div>',
        f"<p class=note>{text}</p>",
    ]
    if rec.same_as:
        anchor = (anchors or {}).get(rec.same_as)
        other = (
            f'<a href="#{esc(anchor)}">{esc(rec.same_as)}</a>'
            if anchor
            else f"<code>{esc(rec.same_as)}</code>"
        )
        out.append(
            f"<p class=note><span class=chip>same images as {esc(rec.same_as)}</span> These "
            f"are {other}'s images: this layer passes that layer's map on unchanged or pools "
            "it (globally, or in windows that cover exactly its averaged units), so "
            "maximising its channels is the same objective and they were not optimised again. "
            "The activations in the hover text are measured on this layer.</p>"
        )
    return [*out, *body, "</div>"]


def _grad_cam(data: RunData, page: Page, layer: str) -> list[str]:
    maps, rec = attribution_maps(data, ["grad_cam", "guided_grad_cam"])
    maps = {m: a for m, a in maps.items() if a.ndim == 3}
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
    return [
        f'<ul class="note fig-error">{items}</ul><p class=note>What these callbacks would have '
        'recorded at those events is missing below (see <a href="#errors">Callback errors</a>).'
        "</p>"
    ]


def layer_section(
    data: RunData,
    page: Page,
    layer: str,
    anchor: str,
    *,
    max_events: int = 12,
    budget: LayerBudget | None = None,
    anchors: dict[str, str] | None = None,
) -> str | None:
    """Write the section of ``layer`` to ``page``; returns the layer type (for the navigation).

    Each part (filters, activation maps, fields, patches, concept dissection, Grad-CAM,
    feature visualisation) is built on its own: one that fails becomes a note in the section,
    the others are drawn. ``anchors`` (layer to section id) links a layer that shares another
    layer's feature visualisation to it.
    """
    from cnnviz.report.dissection import layer_dissection  # it reads this module's helpers

    budget = budget or LayerBudget()
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
        ("filters", lambda: _filters(data, page, layer, max_events, budget)),
        ("activation maps", lambda: _activations(data, page, layer, max_events, budget)),
        ("receptive fields", lambda: _receptive(data, page, layer, max_events, budget)),
        ("top dataset patches", lambda: _topk(data, page, layer, budget)),
        (
            "concept dissection",
            lambda: layer_dissection(
                data, page, layer, patch_size=budget.patch_size, max_events=max_events
            ),
        ),
        ("Grad-CAM", lambda: _grad_cam(data, page, layer)),
        ("feature visualization", lambda: _featvis(data, page, layer, anchors)),
    ):
        parts += guarded(data, f"{layer}: {name}", build)
    if len(parts) == 1:
        parts.append("<p class=note>Nothing drawable was recorded for this layer.</p>")
    page.add_section(anchor, "".join(parts))
    return kind
