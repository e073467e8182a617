"""Shared pieces of the figure builders: colour scales, safe text, the event slider, sizes."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

__all__ = [
    "DIVERGING",
    "ERF_SCALE",
    "SEQUENTIAL",
    "base_layout",
    "fig_height",
    "plotly_text",
    "step_slider",
]

DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"
ERF_SCALE = "Inferno"


def plotly_text(value: object) -> str:
    """``value`` as text for Plotly titles, labels and hover templates.

    Plotly reads a small subset of HTML in these strings; escaping ``&``, ``<`` and ``>`` makes a
    name such as ``<b>conv</b>`` appear literally. ``%{`` (which would start a hover-template
    placeholder) is written as ``%&#123;``.

    Example:
        >>> plotly_text("<b>x</b>")
        '&lt;b&gt;x&lt;/b&gt;'
    """
    text = html.escape(str(value), quote=False)
    return text.replace("%{", "%&#123;")


def step_slider(
    fig: go.Figure,
    labels: Sequence[str],
    groups: Sequence[Sequence[int]],
    *,
    static: Sequence[int] = (),
    prefix: str = "",
    layouts: Sequence[Mapping[str, Any]] | None = None,
    active: int | None = None,
) -> None:
    """Show the traces of ``groups[s]`` (plus the ``static`` ones) at slider step ``s``.

    The one slider of every cnnviz figure with a history (filters, activations, ERF,
    predictions, statistics).

    Args:
        fig: The figure; its traces are indexed as in ``fig.data``.
        labels: One label per step.
        groups: Trace indices shown at each step.
        static: Traces shown at every step (e.g. images next to bars).
        prefix: Text before the current label.
        layouts: Optional layout changes per step (the slider then uses ``update``).
        active: The step shown first (default: the last, the newest state).

    Raises:
        ValueError: If ``groups`` or ``layouts`` do not have one entry per label.
    """
    if len(groups) != len(labels):
        raise ValueError("`groups` and `labels` must have the same length")
    if layouts is not None and len(layouts) != len(labels):
        raise ValueError("`layouts` and `labels` must have the same length")
    n = len(labels)
    if n == 0:
        return
    active = n - 1 if active is None else active
    keep = set(static)
    total = len(fig.data)
    visible = [[i in keep or i in set(g) for i in range(total)] for g in groups]
    for i, trace in enumerate(fig.data):
        trace.visible = visible[active][i]
    if layouts is not None:
        fig.update_layout(**dict(layouts[active]))
    if n <= 1:
        return
    steps = []
    for s, label in enumerate(labels):
        if layouts is None:
            steps.append({"method": "restyle", "args": [{"visible": visible[s]}], "label": label})
        else:
            steps.append(
                {
                    "method": "update",
                    "args": [{"visible": visible[s]}, dict(layouts[s])],
                    "label": label,
                }
            )
    fig.update_layout(
        sliders=[
            {
                "active": active,
                "currentvalue": {"prefix": prefix, "font": {"size": 13}},
                "pad": {"t": 36, "b": 6},
                "len": 1.0,
                "x": 0,
                "steps": steps,
            }
        ]
    )


def event_slider(fig: go.Figure, labels: Sequence[str], *, per_step: int = 1, prefix: str) -> None:
    """:func:`step_slider` for figures with ``per_step`` consecutive traces per event."""
    groups = [list(range(s * per_step, (s + 1) * per_step)) for s in range(len(labels))]
    step_slider(fig, [str(s) for s in labels], groups, prefix=prefix)


def fig_height(
    rows_px: float, *, extra: int = 0, slider: bool = False, lo: int = 220, hi: int = 900
) -> int:
    """A figure height for ``rows_px`` pixels of plot area plus title, margins and a slider."""
    total = rows_px + 80 + extra + (90 if slider else 0)
    return int(max(lo, min(hi, total)))


def base_layout(
    fig: go.Figure, title: str, *, width: int | None = None, height: int | None = None
) -> go.Figure:
    """Common layout: title, compact margins, white background."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        margin={"l": 40, "r": 20, "t": 50, "b": 30},
        plot_bgcolor="white",
        width=width,
        height=height,
    )
    return fig
