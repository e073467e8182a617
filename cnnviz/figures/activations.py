"""Activation maps of one layer for the probe images, and per-channel statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnviz.figures._common import SEQUENTIAL, add_slider, base_layout, image_axes
from cnnviz.figures.mosaic import normalise, tile

__all__ = ["activation_mosaic", "activation_stats_figure", "activations_figure"]

Scale = Literal["layer", "channel"]


def activation_mosaic(
    maps: np.ndarray, *, scale: Scale = "layer"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out ``[N, K, h, w]`` maps as rows = probe images, columns = channels.

    1-D maps ``[N, K, L]`` become one ``K x L`` block per probe item, stacked vertically.
    ``scale="channel"`` normalises each channel to [0, 1] over all probe images (so weak
    channels are visible); ``"layer"`` keeps the raw values (one colour scale for the layer).

    Returns:
        ``(image, probe_index, channel_position)`` with -1 in gaps.
    """
    a = np.asarray(maps, dtype=np.float32)
    if scale not in ("layer", "channel"):
        raise ValueError(f"`scale` must be 'layer' or 'channel'; got {scale!r}")
    if a.ndim == 3:  # [N, K, L]
        if scale == "channel":
            a = normalise(a, axis=(0, 2))
        img, idx = tile(a, columns=1, gap=1)
        rows = np.arange(img.shape[0])
        pos = np.where(idx >= 0, (rows[:, None] % (a.shape[1] + 1)), -1)
        return img, idx, pos
    if a.ndim != 4:
        raise ValueError(f"`maps` must be [N, K, h, w] or [N, K, L]; got shape {a.shape}")
    if scale == "channel":
        a = normalise(a, axis=(0, 2, 3))
    n, k, h, w = a.shape
    img, idx = tile(a.reshape(n * k, h, w), columns=k)
    probe = np.where(idx >= 0, idx // k, -1)
    chan = np.where(idx >= 0, idx % k, -1)
    return img, probe, chan


def activations_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    scale: Scale = "layer",
    title: str | None = None,
) -> go.Figure:
    """What one layer fires on for each probe image, with a slider over logged events.

    Args:
        history: Per event, maps ``[N, K, h, w]`` (images) or ``[N, K, L]`` (sequences).
        labels: Slider label per event.
        layer: Layer name.
        channels: Real channel index of each of the ``K`` maps.
        scale: ``"layer"`` (one colour scale) or ``"channel"`` (each channel to [0, 1]).
        title: Figure title.
    """
    if len(history) != len(labels):
        raise ValueError("`history` and `labels` must have the same length")
    fig = go.Figure()
    for maps, label in zip(history, labels, strict=True):
        img, probe, pos = activation_mosaic(maps, scale=scale)
        k = np.asarray(maps).shape[1]
        real = np.asarray(channels if channels is not None else range(k))
        ch = np.where(pos >= 0, real[np.clip(pos, 0, len(real) - 1)], -1)
        finite = img[np.isfinite(img)]
        warn = "" if finite.size == img[~np.isnan(img)].size else " (non-finite values hidden)"
        fig.add_trace(
            go.Heatmap(
                z=np.where(np.isfinite(img), img, np.nan),
                customdata=np.stack([probe, ch], axis=-1),
                colorscale=SEQUENTIAL,
                hovertemplate=(
                    f"{layer} channel %{{customdata[1]}}<br>probe image %{{customdata[0]}}"
                    f"<br>activation %{{z:.4f}}<extra>{label}{warn}</extra>"
                ),
                name=label,
                colorbar={"title": "activation" if scale == "layer" else "scaled", "thickness": 12},
            )
        )
    add_slider(fig, labels, prefix="activations at ")
    dims = np.asarray(history[-1]).ndim if len(history) else 4
    base_layout(fig, title or f"{layer} — activations (rows: probe inputs, columns: channels)")
    if dims == 4:
        image_axes(fig)
    else:
        fig.update_yaxes(autorange="reversed", title="probe item × channel")
        fig.update_xaxes(title="position")
    return fig


def activation_stats_figure(
    stats: Sequence[dict[str, np.ndarray]],
    labels: Sequence[str],
    *,
    layer: str,
) -> go.Figure:
    """Per-channel mean, max and fraction of zeros, with a slider over events.

    Args:
        stats: Per event, a mapping with ``mean``, ``max`` and ``zero_fraction`` arrays ``[C]``.
        labels: Event labels.
        layer: Layer name.
    """
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=("mean", "max", "fraction of zeros"),
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
                        f"{layer} channel %{{x}}<br>{key} %{{y:.4f}}<extra>{label}</extra>"
                    ),
                ),
                row=row,
                col=1,
            )
    add_slider(fig, labels, traces_per_step=3, prefix="statistics at ")
    fig.update_yaxes(range=[0, 1], row=3, col=1)
    fig.update_xaxes(title="channel", row=3, col=1)
    return base_layout(fig, f"{layer} — per-channel statistics", height=480)
