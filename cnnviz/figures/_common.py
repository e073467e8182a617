"""Shared pieces of the figure builders: the epoch slider and layout defaults."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"


def add_slider(
    fig: go.Figure, labels: Sequence[str], traces_per_step: int = 1, prefix: str = ""
) -> None:
    """Show one group of ``traces_per_step`` traces at a time, chosen by a slider over ``labels``.

    The last step (the newest state) is shown first.
    """
    n = len(labels)
    total = n * traces_per_step
    for i, trace in enumerate(fig.data):
        trace.visible = i // traces_per_step == n - 1
    if n <= 1:
        return
    steps = []
    for s, label in enumerate(labels):
        visible = [i // traces_per_step == s for i in range(total)]
        steps.append({"method": "restyle", "args": [{"visible": visible}], "label": str(label)})
    fig.update_layout(
        sliders=[
            {
                "active": n - 1,
                "currentvalue": {"prefix": prefix},
                "pad": {"t": 30},
                "steps": steps,
            }
        ]
    )


def base_layout(
    fig: go.Figure, title: str, *, width: int | None = None, height: int | None = None
) -> go.Figure:
    """Common layout: title, compact margins, white background, image-like axes."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        margin={"l": 40, "r": 20, "t": 50, "b": 30},
        plot_bgcolor="white",
        width=width,
        height=height,
    )
    return fig


def image_axes(fig: go.Figure) -> None:
    """Hide ticks and keep pixels square, y pointing down."""
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(
        showticklabels=False, showgrid=False, zeroline=False, autorange="reversed", scaleanchor="x"
    )
