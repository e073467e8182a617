"""Receptive fields: the theoretical region of a unit, and the effective receptive field.

The theoretical region of one unit is drawn on a probe image; the effective receptive field
(mean absolute input gradient) with a slider over logged events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import base_layout
from cnnviz.figures._steps import fig_height, plotly_text, step_slider
from cnnviz.figures.images import png_data_uri

__all__ = ["erf_figure", "receptive_field_figure", "rf_growth_figure"]

ERF_SCALE = "Inferno"


def _box(region: Sequence[int], colour: str, dash: str = "solid") -> dict[str, Any]:
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


def receptive_field_figure(
    image: np.ndarray,
    region: Sequence[int],
    *,
    layer: str,
    size: Sequence[int] | int | None = None,
    unit: Sequence[int] | None = None,
) -> go.Figure:
    """A probe image with the input region one unit of ``layer`` sees, as a box.

    Args:
        image: ``[H, W, C]`` or ``[H, W]`` in [0, 1].
        region: ``(top, bottom, left, right)``, half-open (rows ``top..bottom-1``).
        layer: Layer name.
        size: The theoretical receptive field size (for the title).
        unit: The output unit, e.g. ``(i, j)`` (for the title).

    Returns:
        The figure.

    Example:
        >>> fig = receptive_field_figure(img, (0, 5, 0, 5), layer="features.0", size=5)
    """
    if len(region) < 4:
        raise ValueError(f"`region` must be (top, bottom, left, right); got {region!r}")
    img = np.asarray(image)
    fig = go.Figure(go.Image(source=png_data_uri(img), hoverinfo="skip"))
    fig.add_shape(_box(region, "#ff2d2d"))
    what = f" of unit {tuple(unit)}" if unit is not None else ""
    sz = "" if size is None else f": {'×'.join(map(str, np.atleast_1d(size)))} px"
    base_layout(fig, f"{plotly_text(layer)} — receptive field{what}{sz}", height=360)
    fig.update_xaxes(visible=False, range=[-0.5, img.shape[1] - 0.5])
    fig.update_yaxes(visible=False, range=[img.shape[0] - 0.5, -0.5], scaleanchor="x")
    return fig


def erf_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    radius: Sequence[float | None] | None = None,
    centre: Sequence[float] | None = None,
    region: Sequence[int] | None = None,
) -> go.Figure:
    """The effective receptive field (mean ``|d unit / d input|``) at each event, with a slider.

    A dashed box marks the theoretical receptive field (``region``), a circle the radius that
    holds most of the gradient mass at each event.

    Args:
        history: Maps ``[H, W]`` (or ``[L]``) per event.
        labels: Slider label per event.
        layer: Layer name.
        radius: Effective radius in pixels per event (``None`` entries are skipped).
        centre: ``(row, column)`` the circle is centred on (default: the map's centre).
        region: Theoretical region ``(top, bottom, left, right)``, half-open.

    Returns:
        The figure.

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
        r = None if radius is None else radius[e]
        if r is not None and h > 1:
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
    base_layout(
        fig,
        f"{name} — effective receptive field (dashed: theoretical; circle: effective radius)",
        height=fig_height(360, slider=len(history) > 1),
    )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(
        showticklabels=False,
        showgrid=False,
        zeroline=False,
        autorange="reversed",
        scaleanchor="x" if h > 1 else None,
    )
    return fig


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
        A bar chart of sizes with the jump as a line on a second axis.
    """
    if not (len(names) == len(sizes) == len(jumps)):
        raise ValueError("`names`, `sizes` and `jumps` must have the same length")
    x = [str(n) for n in names]
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
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[None if j is None else int(j) for j in jumps],
            name="jump (effective stride)",
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
    fig.update_layout(
        yaxis={"title": "receptive field (px)", "rangemode": "tozero"},
        yaxis2={
            "title": "jump (px)",
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "tickformat": "d",
            "showgrid": False,
        },
        legend={"orientation": "h", "y": 1.12},
        height=340,
    )
    return base_layout(fig, "Receptive field growth with depth", height=340)
