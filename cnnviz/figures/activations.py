"""Activation maps of one layer for the probe inputs, and per-channel statistics.

One layout for every consumer: row block ``p`` is probe input ``p``, column block ``c`` is
channel ``c`` (1-D maps: one row per probe input). The report, the loggers and TensorBoard
images all use :func:`activation_mosaic`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnviz.figures._common import SEQUENTIAL, base_layout, event_slider, fig_height, plotly_text
from cnnviz.figures.filters import PLOT_WIDTH
from cnnviz.figures.mosaic import normalise, tile

__all__ = [
    "activation_mosaic",
    "activation_stats_figure",
    "activations_figure",
    "stretch_channels",
]

Scale = Literal["layer", "channel"]


def activation_mosaic(
    maps: np.ndarray, *, scale: Scale = "layer"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out ``[N, K, h, w]`` maps (or ``[N, K, L]`` sequences) as one image.

    Row block ``p`` is probe input ``p``, column block ``c`` is channel ``c``, blocks separated
    by one NaN row/column (sequences: one row per probe input, no row gaps).
    ``scale="channel"`` stretches each channel to [0, 1] over all probe inputs (weak channels
    become visible); ``"layer"`` keeps the values (one colour scale for the layer).

    Returns:
        ``(image, probe_index, channel_position)`` with -1 in the gaps; NaN/Inf values are NaN.

    Raises:
        ValueError: For maps of another shape, or an unknown ``scale``.
    """
    a = np.asarray(maps, dtype=np.float32)
    if scale not in ("layer", "channel"):
        raise ValueError(f"`scale` must be 'layer' or 'channel'; got {scale!r}")
    if a.ndim not in (3, 4):
        raise ValueError(f"`maps` must be [N, K, h, w] or [N, K, L]; got shape {a.shape}")
    if scale == "channel":
        a = normalise(a, axis=(0, *range(2, a.ndim)))
    n, k = a.shape[:2]
    if a.ndim == 3:
        img, idx = tile(a.reshape(n * k, 1, a.shape[2]), columns=k, gap=1, row_gap=0)
    else:
        img, idx = tile(a.reshape(n * k, *a.shape[2:]), columns=k, gap=1)
    img = np.where(np.isfinite(img), img, np.nan)
    return img, np.where(idx >= 0, idx // k, -1), np.where(idx >= 0, idx % k, -1)


def stretch_channels(grid: np.ndarray, width: int) -> np.ndarray:
    """Scale each channel's column block (``width`` columns, one gap) of a mosaic to [0, 1]."""
    out = np.array(grid, dtype=np.float32)
    for x in range(0, out.shape[1], width + 1):
        block = out[:, x : x + width]
        finite = block[np.isfinite(block)]
        if finite.size:
            lo, hi = finite.min(), finite.max()
            out[:, x : x + width] = (block - lo) / (hi - lo) if hi > lo else block * 0
    return out


def _label_margin(labels: Sequence[str]) -> int:
    """Left margin (px) that fits tick labels of 9 px type."""
    longest = max((len(str(s)) for s in labels), default=4)
    return int(min(220, 24 + 5.5 * longest))


def activations_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    probe_labels: Sequence[str] | None = None,
    scale: Scale = "layer",
    title: str | None = None,
    value: str = "activation",
) -> go.Figure:
    """What one layer fires on for each probe input, with a slider over logged events.

    Rows are probe inputs, column blocks are channels (:func:`activation_mosaic`), on a
    sequential colour scale. ``scale="layer"`` uses one colour scale for the layer at each
    event (channels compare); ``"channel"`` stretches each channel over its own range.
    ``layout.meta["cnnviz_mosaic"]`` describes the blocks, so a page can switch the scale
    without more data (the report does). Hover comes from categorical axes (probe, channel,
    pixel), at no per-pixel cost.

    Args:
        history: Maps per event, ``[N, K, h, w]`` (images) or ``[N, K, L]`` (sequences).
        labels: Slider label per event.
        layer: Layer name.
        channels: Real channel index of each of the ``K`` maps.
        probe_labels: A label per probe input (e.g. ``"#3 circle"``).
        scale: ``"layer"`` or ``"channel"``.
        title: Figure title.
        value: What the values are (``"activation"``, ``"pre-activation"``): hover and colour bar.

    Returns:
        A figure with one heatmap trace per event.

    Raises:
        ValueError: For mismatched lengths or shapes, or an unknown ``scale``.

    Example:
        >>> fig = activations_figure([maps], ["epoch 1"], layer="features.1")
    """
    if len(history) != len(labels):
        raise ValueError("`history` and `labels` must have the same length")
    if not len(history):
        raise ValueError("`history` must hold at least one event")
    if scale not in ("layer", "channel"):
        raise ValueError(f"`scale` must be 'layer' or 'channel'; got {scale!r}")
    name = plotly_text(layer)
    last = np.asarray(history[-1])
    if last.ndim not in (3, 4):
        raise ValueError(f"`history` items must be [N, K, h, w] or [N, K, L]; got {last.shape}")
    n, k = last.shape[:2]
    h, w = (1, last.shape[2]) if last.ndim == 3 else last.shape[2:]
    gap = 0 if last.ndim == 3 else 1
    real = list(channels) if channels is not None else list(range(k))
    if len(real) != k:
        raise ValueError(f"`channels` has {len(real)} entries for {k} maps")
    plabels = (
        [plotly_text(p) for p in probe_labels]
        if probe_labels is not None
        else [f"probe {i}" for i in range(n)]
    )
    if len(plabels) != n:
        raise ValueError(f"`probe_labels` has {len(plabels)} entries for {n} probe inputs")
    # Plotly links the scales of same-type axes only, so both axes are categorical.
    ylabels: list[str] = []
    for p in range(n):
        ylabels.extend(f"{plabels[p]} · row {i}" if h > 1 else plabels[p] for i in range(h))
        if p < n - 1:
            ylabels.extend(f"gap {p}.{g}" for g in range(gap))
    xlabels: list[str] = []
    for c in range(k):
        xlabels.extend(
            f"channel {real[c]} · {j}" if w > 1 else f"channel {real[c]}" for j in range(w)
        )
        if c < k - 1:
            xlabels.append(f"gap {c}")
    fig = go.Figure()
    for maps, label in zip(history, labels, strict=True):
        a = np.asarray(maps)
        if a.shape != last.shape:
            raise ValueError(f"every event must have maps of shape {last.shape}; got {a.shape}")
        grid, _, _ = activation_mosaic(a)
        if scale == "channel":
            grid = stretch_channels(grid, w)
        finite = grid[np.isfinite(grid)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        fig.add_trace(
            go.Heatmap(
                z=grid,
                x=xlabels,
                y=ylabels,
                zmin=lo,
                zmax=hi if hi > lo else lo + 1e-6,
                colorscale=SEQUENTIAL,
                hoverongaps=False,
                name=str(label),
                hovertemplate=f"{name} %{{x}}<br>%{{y}}<br>{value} %{{z:.3g}}"
                f"<extra>{plotly_text(label)}</extra>",
                colorbar={
                    "title": {"text": value if scale == "layer" else "stretched"},
                    "thickness": 12,
                },
            )
        )
    event_slider(fig, labels, prefix="activations at ")
    rows, cols = len(ylabels), len(xlabels)
    height = fig_height(
        min(620, max(100, PLOT_WIDTH * rows / max(cols, 1))), slider=len(history) > 1
    )
    base_layout(
        fig, title or f"{name} — activations (rows: probe inputs, columns: channels)", height=height
    )
    fig.update_layout(
        meta={"cnnviz_mosaic": {"width": int(w), "channels": int(k), "scale": scale}},
        margin={"l": _label_margin(plabels), "b": 45, "t": 50},
    )
    step = max(1, int(np.ceil(k / 32)))
    fig.update_xaxes(
        type="category",
        tickvals=[xlabels[c * (w + 1) + w // 2] for c in range(0, k, step)],
        ticktext=[str(real[c]) for c in range(0, k, step)],
        title="channel",
        showgrid=False,
        zeroline=False,
        tickfont={"size": 9},
    )
    fig.update_yaxes(
        type="category",
        tickvals=[ylabels[p * (h + gap) + h // 2] for p in range(n)],
        ticktext=plabels,
        autorange="reversed",
        scaleanchor="x" if last.ndim == 4 else None,
        showgrid=False,
        tickfont={"size": 9},
    )
    return fig


def activation_stats_figure(
    stats: Sequence[Mapping[str, np.ndarray]],
    labels: Sequence[str],
    *,
    layer: str,
    zeros: str = "fraction of zeros",
) -> go.Figure:
    """Per-channel mean, max and fraction of zeros, with a slider over events.

    Args:
        stats: Per event, a mapping with ``mean``, ``max`` and ``zero_fraction`` arrays ``[C]``.
        labels: Event labels.
        layer: Layer name.
        zeros: Title of the zero-fraction panel.

    Returns:
        A figure with three bar traces per event.
    """
    name = plotly_text(layer)
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("mean", "max", plotly_text(zeros)),
    )
    for s, label in zip(stats, labels, strict=True):
        x = np.arange(len(s["mean"]))
        for row, key in enumerate(("mean", "max", "zero_fraction"), start=1):
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=np.nan_to_num(
                        np.asarray(s[key], dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0
                    ),
                    name=f"{key} ({label})",
                    showlegend=False,
                    hovertemplate=(
                        f"{name} channel %{{x}}<br>{key} %{{y:.4f}}"
                        f"<extra>{plotly_text(label)}</extra>"
                    ),
                ),
                row=row,
                col=1,
            )
    event_slider(fig, labels, per_step=3, prefix="statistics at ")
    fig.update_yaxes(range=[0, 1], row=3, col=1)
    fig.update_xaxes(title="channel", row=3, col=1)
    slider = len(stats) > 1
    return base_layout(fig, f"{name} — per-channel statistics", height=480 + (60 if slider else 0))
