"""Top-k dataset patches: for each channel, the input patches that excite it most."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import base_layout
from cnnviz.figures._steps import fig_height, plotly_text
from cnnviz.figures.images import downsample, image_mosaic, jpeg_data_uri

__all__ = ["topk_figure"]


def topk_figure(
    patches: np.ndarray,
    values: np.ndarray | None = None,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    samples: np.ndarray | None = None,
    max_size: int = 32,
) -> go.Figure:
    """One row per channel: its ``k`` strongest dataset patches, strongest first.

    Args:
        patches: ``[C, k, h, w, 3]`` or ``[C, k, h, w]`` in [0, 1].
        values: ``[C, k]`` activation of each patch (hover).
        layer: Layer name.
        channels: Real channel index of each row.
        samples: ``[C, k]`` data-set index of each patch (hover).
        max_size: Patches larger than this (per side) are shrunk by block averaging (deep
            layers see most of the image; their patches would dominate the page's size).

    Returns:
        The figure.

    Example:
        >>> fig = topk_figure(patches, values, layer="features.3", channels=[0, 1, 2])
    """
    p = np.asarray(patches)
    if p.ndim not in (4, 5):
        raise ValueError(f"`patches` must be [C, k, h, w, 3] or [C, k, h, w]; got {p.shape}")
    if p.ndim == 4:
        p = p[..., None]
    p = downsample(p, max_size)
    c, k, h, w = p.shape[:4]
    real = list(channels) if channels is not None else list(range(c))
    if len(real) != c:
        raise ValueError(f"`channels` has {len(real)} entries for {c} rows")
    flat = p.reshape(c * k, *p.shape[2:])
    img, _ = image_mosaic(flat, columns=k, gap=1)
    name = plotly_text(layer)
    fig = go.Figure(go.Image(source=jpeg_data_uri(img), hoverinfo="skip"))
    xs, ys, texts = [], [], []
    for ci in range(c):
        for j in range(k):
            xs.append(j * (w + 1) + (w - 1) / 2)
            ys.append(ci * (h + 1) + (h - 1) / 2)
            t = f"{name} channel {real[ci]}, #{j + 1}"
            if values is not None:
                t += f"<br>activation {float(np.asarray(values)[ci, j]):.4g}"
            if samples is not None:
                t += f"<br>sample {int(np.asarray(samples)[ci, j])}"
            texts.append(t)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers",
            text=texts,
            hovertemplate="%{text}<extra></extra>",
            marker={"size": 12, "opacity": 0, "symbol": "square"},
            showlegend=False,
        )
    )
    rows_px = min(760, max(120, 56 * c))
    base_layout(
        fig,
        f"{name} — top-{k} dataset patches per channel (strongest first)",
        height=fig_height(rows_px),
    )
    fig.update_layout(margin={"l": 55})
    fig.update_xaxes(
        showticklabels=False, showgrid=False, zeroline=False, range=[-0.5, img.shape[1] - 0.5]
    )
    fig.update_yaxes(
        tickvals=[ci * (h + 1) + (h - 1) / 2 for ci in range(c)],
        ticktext=[f"ch {r}" for r in real],
        range=[img.shape[0] - 0.5, -0.5],
        scaleanchor="x",
        showgrid=False,
        zeroline=False,
        tickfont={"size": 10},
    )
    return fig
