"""Deletion and insertion curves of attribution methods (Petsiuk et al. 2018) against random maps.

Deletion removes the most attributed pixels first: the explained class's score should fall
fast (a small area under the curve). Insertion puts them into a blank image first: the score
should rise fast (a large area). A random ordering of the pixels is the baseline a method must
beat.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnviz.figures._common import base_layout, plotly_text

__all__ = ["faithfulness_figure"]

#: Line colours: the method's deletion and insertion curves; the random ones are grey.
DELETION = "#d62728"
INSERTION = "#1f77b4"
RANDOM = "#8c8c8c"

Curves = tuple[Sequence[float], Sequence[float]]


def _values(curve: Sequence[float], n: int, what: str) -> list[float | None]:
    if len(curve) != n:
        raise ValueError(f"{what} has {len(curve)} points for {n} fractions")
    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in curve]


def faithfulness_figure(
    fractions: Sequence[float],
    curves: Mapping[str, Curves],
    random: Curves | None = None,
    *,
    scores: Mapping[str, float | None] | None = None,
    score: str = "probability",
    columns: int = 4,
    title: str = "Deletion and insertion curves (mean over the probe images)",
) -> go.Figure:
    """One panel per method: its deletion and insertion curves, with the random ones in grey.

    Args:
        fractions: Share of the input removed or inserted at each point (x axis).
        curves: Method to ``(deletion, insertion)`` curves, in the order to draw (most
            faithful first).
        random: The random orderings' ``(deletion, insertion)`` curves.
        scores: Method to its score against random (panel titles).
        score: What the curves measure (``probability`` or ``logit``; the y axis title).
        columns: Panels per row.
        title: Figure title.

    Returns:
        The figure; panels share their axes.

    Raises:
        ValueError: Without curves, or for a curve with another number of points.

    Example:
        >>> fig = faithfulness_figure([0, 0.5, 1], {"saliency": ([0.9, 0.3, 0.1], [0.1, 0.6, 0.9])},
        ...                           ([0.9, 0.5, 0.1], [0.1, 0.5, 0.9]))
    """
    if not curves:
        raise ValueError("`curves` must hold at least one method")
    xs = [float(f) for f in fractions]
    n = len(xs)
    methods = list(curves)
    rows = math.ceil(len(methods) / max(1, columns))
    cols = math.ceil(len(methods) / rows)  # balanced rows: 5 methods as 3 + 2
    titles = []
    for i, m in enumerate(methods, start=1):
        s = None if scores is None else scores.get(m)
        extra = f" · {s:+.3f}" if s is not None and math.isfinite(s) else ""
        titles.append(f"{i}. {plotly_text(m)}{extra}")
    fig = make_subplots(
        rows=rows,
        cols=cols,
        shared_xaxes="all",
        shared_yaxes="all",
        subplot_titles=titles,
        horizontal_spacing=0.05,
        vertical_spacing=0.16 if rows > 1 else 0.1,
    )
    rnd = None
    if random is not None:
        rnd = (
            _values(random[0], n, "the random deletion curve"),
            _values(random[1], n, "the random insertion curve"),
        )
    seen: list[float] = []
    for i, m in enumerate(methods):
        r, c = divmod(i, cols)
        deletion = _values(curves[m][0], n, f"the deletion curve of {m!r}")
        insertion = _values(curves[m][1], n, f"the insertion curve of {m!r}")
        name = plotly_text(m)
        lines = [
            ("deletion", deletion, DELETION, "solid"),
            ("insertion", insertion, INSERTION, "solid"),
        ]
        if rnd is not None:
            lines += [
                ("random deletion", rnd[0], RANDOM, "dot"),
                ("random insertion", rnd[1], RANDOM, "dash"),
            ]
        for what, ys, colour, dash in lines:
            seen += [v for v in ys if v is not None]
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=what,
                    legendgroup=what,
                    showlegend=i == 0,
                    line={"color": colour, "dash": dash, "width": 1.5 if "random" in what else 2},
                    hovertemplate=f"{name}, {what}<br>%{{x:.0%}} of the input: "
                    "%{y:.3f}<extra></extra>",
                ),
                row=r + 1,
                col=c + 1,
            )
    fig.update_xaxes(tickformat=".0%", range=[0, 1], nticks=5)
    lo, hi = (min(seen), max(seen)) if seen else (0.0, 1.0)
    if score == "probability":
        lo, hi = 0.0, min(1.0, hi) if hi > 0 else 1.0
    pad = 0.06 * (hi - lo or 1.0)
    fig.update_yaxes(range=[lo - (0 if score == "probability" else pad), hi + pad])
    for c in range(1, cols + 1):
        fig.update_xaxes(title="share of the input removed / inserted", row=rows, col=c)
    for r in range(1, rows + 1):
        fig.update_yaxes(title=plotly_text(score), row=r, col=1)
    fig.update_annotations(font={"size": 12})
    height = 150 + 250 * rows
    base_layout(fig, plotly_text(title), height=height)
    top, bottom = 110, 60
    fig.update_layout(
        title={"y": 1 - 12 / height, "yanchor": "top"},
        # under the title, above the panels' titles
        legend={
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": 1 + 34 / (height - top - bottom),
            "yanchor": "bottom",
        },
        margin={"l": 60, "r": 20, "t": top, "b": bottom},
    )
    return fig
