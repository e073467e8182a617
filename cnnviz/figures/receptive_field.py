"""Receptive fields: the region one unit sees, the effective field, and growth with depth.

:func:`receptive_field_panel` draws the region on a probe image (with the zero padding around
it when the field leaves the image, and the local field of a layer that also sees global
context); :func:`erf_figure` the effective receptive field at each event; and
:func:`rf_growth_figure` the field size and jump per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import ERF_SCALE, base_layout, fig_height, plotly_text, step_slider
from cnnviz.figures.mosaic import to_uint8_rgb
from cnnviz.figures.panels import Cell, Panel

__all__ = ["erf_figure", "receptive_field_panel", "rf_growth_figure"]


def _box(region: Sequence[float], colour: str, dash: str = "solid") -> dict[str, Any]:
    top, bottom, left, right = (float(v) for v in region[:4])
    return {
        "type": "rect",
        "xref": "x",
        "yref": "y",
        "x0": left - 0.5,
        "x1": right - 0.5,
        "y0": top - 0.5,
        "y1": bottom - 0.5,
        "line": {"color": colour, "width": 2, "dash": dash},
    }


def _region(value: Sequence[int] | None) -> list[int] | None:
    return [int(v) for v in value] if value is not None and len(value) == 4 else None


def receptive_field_panel(
    image: np.ndarray,
    region: Sequence[int],
    *,
    unit: Sequence[int] | None = None,
    region_unclipped: Sequence[int] | None = None,
    local_region: Sequence[int] | None = None,
    local_unclipped: Sequence[int] | None = None,
    global_at: Sequence[str] = (),
    max_margin: float = 1.0,
) -> Panel:
    """A probe image with the input region ``(top, bottom, left, right)`` one unit sees.

    Where the (unclipped) field leaves the image, the image is drawn inside a grey margin of
    zero padding (hatched; the panel's ``canvas`` is larger than the image, which sits at
    ``offset``) and the box covers the whole field; margins are capped at
    ``max_margin`` image sizes per side (the caption says when the field goes further). For a
    layer that also sees global context (``local_region`` given), the box is the local field.

    Args:
        image: ``[H, W, C]`` or ``[H, W]`` in [0, 1].
        region: The field, clipped to the image (half-open).
        unit: The output unit described.
        region_unclipped: The field, unclipped.
        local_region: The local field, clipped (layers that see global context).
        local_unclipped: The local field, unclipped.
        global_at: Where global-context paths join (for the caption).
        max_margin: Largest margin drawn, in image sizes.

    Returns:
        The panel.

    Raises:
        ValueError: If ``region`` does not have four values.
    """
    clipped = _region(region)
    if clipped is None:
        raise ValueError(f"`region` must be (top, bottom, left, right); got {region!r}")
    img = to_uint8_rgb(np.asarray(image))
    h, w = img.shape[:2]
    local = _region(local_unclipped) or _region(local_region)
    field = local or _region(region_unclipped) or clipped
    top, bottom, left, right = field
    cap_y, cap_x = math.ceil(max_margin * h), math.ceil(max_margin * w)
    mt, mb = min(cap_y, max(0, -top)), min(cap_y, max(0, bottom - h))
    ml, mr = min(cap_x, max(0, -left)), min(cap_x, max(0, right - w))
    ch, cw = h + mt + mb, w + ml + mr
    what = f"unit {tuple(int(u) for u in unit)}" if unit is not None else "one unit"
    pad_title = "zero padding: the field reaches beyond the image"
    cells: list[Cell] = []
    if mt:
        cells.append(Cell(0, 0, cw, mt, title=pad_title, kind="pad"))
    if mb:
        cells.append(Cell(0, mt + h, cw, mb, title=pad_title, kind="pad"))
    if ml:
        cells.append(Cell(0, mt, ml, h, title=pad_title, kind="pad"))
    if mr:
        cells.append(Cell(ml + w, mt, mr, h, title=pad_title, kind="pad"))
    if mt or mb or ml or mr:
        cells.append(Cell(ml, mt, w, h, kind="edge"))
    by0, by1 = max(-mt, top) + mt, min(h + mb, bottom) + mt
    bx0, bx1 = max(-ml, left) + ml, min(w + mr, right) + ml
    rows = f"rows {top}..{bottom - 1}, columns {left}..{right - 1}"
    cells.append(Cell(bx0, by0, bx1 - bx0, by1 - by0, title=rows, kind="local" if local else "box"))
    area = max(1, (bottom - top) * (right - left))
    inside = max(0, min(h, bottom) - max(0, top)) * max(0, min(w, right) - max(0, left))
    caption = f"the input region {what} sees"
    if local:
        caption = f"the local field of {what} (dashed)"
    caption += f": {rows}"
    if inside < area:
        caption += f"; {1 - inside / area:.0%} of it lies in the zero padding (hatched)"
    if (mt, mb, ml, mr) != (max(0, -top), max(0, bottom - h), max(0, -left), max(0, right - w)):
        caption += f" (margins drawn up to {max_margin:g} image size; the field goes further)"
    if local:
        joins = ", ".join(global_at[:3]) + (" …" if len(global_at) > 3 else "")
        caption += "; the unit also sees the whole image through global context" + (
            f" joining at {joins}" if joins else ""
        )
    return Panel(
        image=img,
        cells=tuple(cells),
        caption=caption,
        scale=max(1.0, 240 / max(ch, cw)),
        max_width=480,
        photo=False,
        title=caption,
        canvas=(ch, cw),
        offset=(mt, ml),
    )


def erf_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    radius: Sequence[float | None] | None = None,
    centre: Sequence[float] | None = None,
    region: Sequence[int] | None = None,
    local_region: Sequence[int] | None = None,
    zoom: bool = False,
) -> go.Figure:
    """The effective receptive field (mean ``|d unit / d input|``) at each event, with a slider.

    A dashed box marks the theoretical field (``region``), a yellow dashed box the local field
    of a layer that also sees global context, and a circle the disc around the centroid that
    holds most (90%) of the gradient mass at each event.

    Args:
        history: Maps ``[H, W]`` (or ``[L]``) per event.
        labels: Slider label per event.
        layer: Layer name.
        radius: Radius of that disc per event (``None`` entries are skipped).
        centre: ``(row, column)`` the circle is centred on (default: the map's centre).
        region: Theoretical region ``(top, bottom, left, right)``, half-open.
        local_region: The local field, when the layer sees global context.
        zoom: Show the theoretical region and a margin of half its size, not the whole input,
            when it covers less than half of it (no gradient reaches beyond it).

    Returns:
        The figure.

    Raises:
        ValueError: For mismatched lengths.

    Example:
        >>> fig = erf_figure([m0, m1], ["start", "epoch 1"], layer="features.3", radius=[3, 5])
    """
    if len(history) != len(labels) or not len(history):
        raise ValueError("`history` and `labels` must have the same, non-zero length")
    if radius is not None and len(radius) != len(history):
        raise ValueError("`radius` needs one entry per event")
    name = plotly_text(layer)
    fig = go.Figure()
    last = np.atleast_2d(np.asarray(history[-1], dtype=np.float32))
    h, w = last.shape
    cy, cx = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
    layouts = []
    for e, (m, label) in enumerate(zip(history, labels, strict=True)):
        a = np.atleast_2d(np.asarray(m, dtype=np.float32))
        a = np.where(np.isfinite(a), a, np.nan)
        peak = np.nanmax(a) if np.isfinite(a).any() else 1.0
        fig.add_trace(
            go.Heatmap(
                z=a / (peak if peak > 0 else 1.0),
                colorscale=ERF_SCALE,
                zmin=0,
                zmax=1,
                hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}<br>relative gradient %{{z:.3f}}"
                f"<extra>{plotly_text(label)}</extra>",
                colorbar={"title": {"text": "|grad| / max"}, "thickness": 12},
            )
        )
        shapes = [] if region is None else [_box(region, "#4fc3f7", "dash")]
        if local_region is not None:
            shapes.append(_box(local_region, "#ffd400", "dash"))
        r = None if radius is None else radius[e]
        if r is not None and math.isfinite(r) and h > 1:
            shapes.append(
                {
                    "type": "circle",
                    "xref": "x",
                    "yref": "y",
                    "x0": cx - r,
                    "x1": cx + r,
                    "y0": cy - r,
                    "y1": cy + r,
                    "line": {"color": "#ffffff", "width": 2},
                }
            )
        layouts.append({"shapes": shapes})
    step_slider(
        fig,
        [str(s) for s in labels],
        [[i] for i in range(len(history))],
        prefix="ERF at ",
        layouts=layouts,
    )
    boxes = "dashed blue: theoretical field" + (
        "; dashed yellow: local field" if local_region is not None else ""
    )
    base_layout(
        fig,
        f"{name} — effective receptive field<br><sup>{boxes}; circle: 90% of the gradient mass"
        "</sup>",
        height=fig_height(360, slider=len(history) > 1),
    )
    fig.update_layout(margin={"t": 64})
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(
        showticklabels=False,
        showgrid=False,
        zeroline=False,
        autorange="reversed",
        scaleanchor="x" if h > 1 else None,
    )
    box = _region(region)
    if zoom and box is not None and h > 1:
        top, bottom, left, right = box
        if (bottom - top) * (right - left) < 0.5 * h * w:
            my, mx = max(2, (bottom - top) // 2), max(2, (right - left) // 2)
            y0, y1 = max(0, top - my), min(h, bottom + my)
            x0, x1 = max(0, left - mx), min(w, right + mx)
            fig.update_xaxes(range=[x0 - 0.5, x1 - 0.5])
            fig.update_yaxes(range=[y1 - 0.5, y0 - 0.5], autorange=False)
            fig.update_layout(
                title_text=fig.layout.title.text.replace(
                    "</sup>", f"; zoomed to rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1}</sup>"
                )
            )
    return fig


def _int_step(top: float, ticks: int = 6) -> int:
    """An integer tick step that gives at most about ``ticks`` ticks up to ``top``."""
    raw = max(1.0, top / ticks)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return int(m * mag)
    return int(10 * mag)


def rf_growth_figure(
    names: Sequence[str],
    sizes: Sequence[int | None],
    jumps: Sequence[int | None],
    *,
    input_size: int | None = None,
) -> go.Figure:
    """How the receptive field grows with depth: size and effective stride per layer.

    Args:
        names: Layer names in forward order.
        sizes: Receptive field size (one axis) per layer; ``None`` where unknown.
        jumps: Effective stride (jump) per layer.
        input_size: The input's side, drawn as a reference line (the field covers the whole
            image once it reaches it).

    Returns:
        A bar chart of sizes with the jump as a line on a second axis (integer ticks).

    Raises:
        ValueError: For lists of different lengths.
    """
    if not (len(names) == len(sizes) == len(jumps)):
        raise ValueError("`names`, `sizes` and `jumps` must have the same length")
    x = [plotly_text(n) for n in names]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=x,
            y=[None if s is None else int(s) for s in sizes],
            name="receptive field (px)",
            marker_color="#4c78a8",
            hovertemplate="%{x}<br>receptive field %{y} px<extra></extra>",
        )
    )
    jump_values = [int(j) for j in jumps if j is not None]
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[None if j is None else int(j) for j in jumps],
            name="jump (effective stride, px)",
            mode="lines+markers",
            yaxis="y2",
            marker_color="#f58518",
            hovertemplate="%{x}<br>jump %{y} px<extra></extra>",
        )
    )
    if input_size:
        fig.add_hline(
            y=input_size,
            line_dash="dot",
            line_color="#888",
            annotation_text=f"input {input_size} px",
            annotation_position="top left",
        )
    top_jump = max(jump_values, default=1)
    many = len(x) > 24
    bottom = 40 if not many else int(min(160, 40 + 5.5 * max(len(n) for n in x)))
    fig.update_layout(
        yaxis={"title": {"text": "receptive field (px)"}, "rangemode": "tozero"},
        yaxis2={
            "title": {"text": "jump (px)", "standoff": 8},
            "overlaying": "y",
            "side": "right",
            "range": [0, top_jump * 1.08],
            "tickmode": "linear",
            "tick0": 0,
            "dtick": _int_step(top_jump),
            "tickformat": "d",
            "showgrid": False,
        },
        legend={"orientation": "h", "x": 0, "y": -0.12 if not many else -0.55},
    )
    base_layout(fig, "Receptive field growth with depth", height=360 + (bottom if many else 0))
    fig.update_layout(margin={"l": 60, "r": 70, "t": 50, "b": bottom + 40})
    fig.update_xaxes(showticklabels=not many or len(x) <= 200, tickfont={"size": 9})
    return fig
