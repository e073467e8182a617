"""Filter weights as images, with a slider over the logged epochs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import DIVERGING, SEQUENTIAL, add_slider, base_layout, image_axes
from cnnviz.figures.mosaic import normalise, tile

__all__ = ["filter_mosaic", "filter_norms_figure", "filters_figure"]


def filter_mosaic(weight: np.ndarray, *, rgb: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out conv filters as one image.

    Rule: a first layer that sees RGB (``rgb=True``, 3 input channels) draws each filter as one
    colour tile, scaled symmetrically around zero (grey = 0). Otherwise each filter is a *row* of
    its input-channel slices, one grey-scale tile per input channel (as many as were recorded),
    so row ``f`` column ``c`` is ``weight[f, c]``. 1-D filters ``[K, C, k]`` are drawn as one
    ``C x k`` tile per filter.

    Returns:
        ``(image, filter_index, in_channel_index)`` with -1 in the gaps.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim == 3:  # 1-D conv: [K, C, k] -> one C x k tile per filter
        img, idx = tile(w, columns=min(len(w), 8))
        return img, idx, np.where(idx >= 0, 0, -1)
    if w.ndim != 4:
        raise ValueError(f"`weight` must be [K, C, kh, kw] or [K, C, k]; got shape {w.shape}")
    if rgb and w.shape[1] == 3:
        tiles = (normalise(w, symmetric=True).transpose(0, 2, 3, 1) + 1) / 2  # [K, kh, kw, 3]
        img, idx = tile(tiles, gap=1, fill=1.0)
        return img, idx, np.where(idx >= 0, 0, -1)
    k, c, kh, kw = w.shape
    flat = w.reshape(k * c, kh, kw)
    img, idx = tile(flat, columns=c)
    filt = np.where(idx >= 0, idx // c, -1)
    chan = np.where(idx >= 0, idx % c, -1)
    return img, filt, chan


def filters_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    rgb: bool = False,
    title: str | None = None,
) -> go.Figure:
    """The filters of one conv layer at each logged event, with a slider over events.

    Args:
        history: Weights per event, each ``[K, C, kh, kw]`` (or ``[K, C, k]``).
        labels: Slider label per event (``"start"``, ``"epoch 1"``...).
        layer: Layer name, for the title and hover.
        channels: The real filter indices of the ``K`` rows (default ``0..K-1``).
        rgb: Draw each filter as a colour image (first layer on RGB input).
        title: Figure title.

    Returns:
        A figure with one image trace per event.
    """
    if len(history) != len(labels):
        raise ValueError("`history` and `labels` must have the same length")
    fig = go.Figure()
    for weight, label in zip(history, labels, strict=True):
        img, filt, chan = filter_mosaic(weight, rgb=rgb)
        real = np.asarray(channels if channels is not None else range(len(weight)))
        fidx = np.where(filt >= 0, real[np.clip(filt, 0, len(real) - 1)], -1)
        custom = np.stack([fidx, chan], axis=-1)
        if img.ndim == 3:
            fig.add_trace(
                go.Image(
                    z=(np.nan_to_num(img, nan=1.0) * 255).astype(np.uint8),
                    customdata=custom,
                    hovertemplate=f"{layer} filter %{{customdata[0]}}<extra>{label}</extra>",
                    name=label,
                )
            )
        else:
            img = np.where(np.isfinite(img), img, np.nan)  # NaN/Inf weights are drawn blank
            m = float(np.nanmax(np.abs(img))) if np.isfinite(img).any() else 1.0
            fig.add_trace(
                go.Heatmap(
                    z=img,
                    customdata=custom,
                    colorscale=DIVERGING,
                    zmid=0,
                    zmin=-m,
                    zmax=m,
                    hovertemplate=(
                        f"{layer} filter %{{customdata[0]}}, input %{{customdata[1]}}"
                        f"<br>weight %{{z:.4f}}<extra>{label}</extra>"
                    ),
                    name=label,
                    colorbar={"title": "weight", "thickness": 12},
                )
            )
    add_slider(fig, labels, prefix="filters at ")
    base_layout(fig, title or f"{layer} — filters")
    image_axes(fig)
    return fig


def filter_norms_figure(
    norms: np.ndarray,
    labels: Sequence[str],
    *,
    layer: str,
    flagged: dict[str, Sequence[int]] | None = None,
) -> go.Figure:
    """Per-filter L2 norm over events as a heatmap (events x filters), flagged filters marked.

    Args:
        norms: ``[E, K]`` norms.
        labels: Event labels (``E``).
        layer: Layer name.
        flagged: e.g. ``{"dead": [3], "unchanged": [5]}``, listed in the title.
    """
    norms = np.asarray(norms, dtype=np.float32)
    fig = go.Figure(
        go.Heatmap(
            z=norms.T,
            x=list(labels),
            y=list(range(norms.shape[1])),
            colorscale=SEQUENTIAL,
            hovertemplate=f"{layer} filter %{{y}}<br>%{{x}}: norm %{{z:.4f}}<extra></extra>",
            colorbar={"title": "‖w‖", "thickness": 12},
        )
    )
    notes = [f"{k}: {list(v)}" for k, v in (flagged or {}).items() if len(v)]
    base_layout(fig, f"{layer} — filter norms" + (f" ({'; '.join(notes)})" if notes else ""))
    fig.update_yaxes(title="filter")
    return fig
