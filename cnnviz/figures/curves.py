"""Training curves: loss, accuracy and other logged metrics per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnviz.figures._common import base_layout, plotly_text

__all__ = ["metric_groups", "training_curves_figure"]

_COLOURS = {"train": "#1f77b4", "val": "#d62728", "test": "#2ca02c"}


def metric_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Group metric names by what they measure.

    ``train/loss`` and ``val/loss`` both go to ``loss``; a name without a ``/`` is its own
    group. ``*_step`` duplicates are dropped when an ``*_epoch`` or plain version exists, and
    a plain name when its ``*_epoch`` exists.
    """
    present = set(names)
    groups: dict[str, list[str]] = {}
    for name in names:
        if name.endswith("_step") and (
            name[: -len("_step")] in present or name[: -len("_step")] + "_epoch" in present
        ):
            continue
        if name + "_epoch" in present:  # Lightning logs both; the epoch mean is the curve
            continue
        base = name[: -len("_epoch")] if name.endswith("_epoch") else name
        key = base.rsplit("/", 1)[-1]
        groups.setdefault(key, []).append(name)
    order = sorted(groups, key=lambda g: (0 if "loss" in g else 1 if "acc" in g else 2, g))
    return {g: groups[g] for g in order}


def training_curves_figure(
    epochs: Sequence[int],
    values: Mapping[str, Sequence[float | None]],
    *,
    title: str = "Training curves",
    max_groups: int = 4,
) -> go.Figure:
    """Loss, accuracy and other metrics against the epoch, one panel per kind of metric.

    Args:
        epochs: The epoch (1-based, as people count) of each point.
        values: Metric name to one value per epoch (``None``/NaN where it was not logged).
        title: Figure title.
        max_groups: Panels at most (loss and accuracy first; other metrics follow).

    Returns:
        The figure; train metrics in blue, validation in red.

    Raises:
        ValueError: If a metric does not have one value per epoch.

    Example:
        >>> fig = training_curves_figure([1, 2], {"train/loss": [1.0, 0.5], "val/acc": [0.6, 0.8]})
    """
    for name, v in values.items():
        if len(v) != len(epochs):
            raise ValueError(f"metric {name!r} has {len(v)} values for {len(epochs)} epochs")
    groups = list(metric_groups(list(values)).items())[:max_groups]
    cols = max(1, len(groups))
    fig = make_subplots(
        rows=1,
        cols=cols,
        subplot_titles=[plotly_text(g) for g, _ in groups] or [""],
        horizontal_spacing=0.08,
    )
    for col, (_, names) in enumerate(groups, start=1):
        for name in names:
            y = np.array([np.nan if v is None else float(v) for v in values[name]])
            stage = name.split("/", 1)[0] if "/" in name else ""
            shown = name[: -len("_epoch")] if name.endswith("_epoch") else name
            fig.add_trace(
                go.Scatter(
                    x=list(epochs),
                    y=np.where(np.isfinite(y), y, np.nan),
                    mode="lines+markers",
                    name=plotly_text(shown),
                    meta=name,
                    line={"color": _COLOURS.get(stage)} if stage in _COLOURS else {},
                    hovertemplate=f"{plotly_text(shown)}<br>epoch %{{x}}: %{{y:.4g}}"
                    "<extra></extra>",
                    connectgaps=True,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title="epoch", row=1, col=col, dtick=1 if len(epochs) <= 20 else None)
    base_layout(fig, plotly_text(title), height=340)
    fig.update_layout(legend={"orientation": "h", "y": -0.25}, margin={"b": 70})
    return fig
