"""Helpers of the newer figure builders: a slider over groups of traces, safe text, sizes."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

__all__ = ["fig_height", "plotly_text", "step_slider"]


def plotly_text(value: object) -> str:
    """``value`` as text for Plotly titles, labels and hover templates.

    Plotly reads a small subset of HTML in these strings; escaping ``&``, ``<`` and ``>`` makes a
    name such as ``<b>conv</b>`` appear literally. Braces are doubled-up safe for hover
    templates (``%{`` would start a placeholder).
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

    Args:
        fig: The figure; its traces are indexed as in ``fig.data``.
        labels: One label per step.
        groups: Trace indices shown at each step.
        static: Traces shown at every step (e.g. images next to bars).
        prefix: Text before the current label.
        layouts: Optional layout changes per step (the slider then uses ``update``).
        active: The step shown first (default: the last, the newest state).
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


def fig_height(
    rows_px: float, *, extra: int = 0, slider: bool = False, lo: int = 220, hi: int = 900
) -> int:
    """A figure height for ``rows_px`` pixels of plot area plus title, margins and a slider."""
    total = rows_px + 80 + extra + (90 if slider else 0)
    return int(max(lo, min(hi, total)))
