"""Feature visualization: the synthetic input that excites each channel most."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import base_layout
from cnnviz.figures._steps import fig_height, plotly_text
from cnnviz.figures.images import image_mosaic, jpeg_data_uri

__all__ = ["featvis_figure"]


def featvis_figure(
    images: np.ndarray,
    activations: np.ndarray | None = None,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    columns: int = 8,
) -> go.Figure:
    """A grid of optimised inputs, one per channel, labelled with the activation reached.

    Args:
        images: ``[K, H, W, C]`` (or ``[K, H, W]``) in [0, 1].
        activations: ``[K]`` objective value each image reaches (hover).
        layer: Layer name.
        channels: Real channel index of each image.
        columns: Images per row.

    Returns:
        The figure.

    Example:
        >>> fig = featvis_figure(images, acts, layer="features.3", channels=[0, 5])
    """
    imgs = np.asarray(images)
    if imgs.ndim not in (3, 4):
        raise ValueError(f"`images` must be [K, H, W, C] or [K, H, W]; got shape {imgs.shape}")
    k, h, w = imgs.shape[:3]
    real = list(channels) if channels is not None else list(range(k))
    if len(real) != k:
        raise ValueError(f"`channels` has {len(real)} entries for {k} images")
    mosaic, (rows, cols) = image_mosaic(imgs, columns=min(columns, max(k, 1)), gap=2)
    name = plotly_text(layer)
    fig = go.Figure(go.Image(source=jpeg_data_uri(mosaic, quality=90), hoverinfo="skip"))
    xs, ys, texts = [], [], []
    for i in range(k):
        r, c = divmod(i, cols)
        xs.append(c * (w + 2) + (w - 1) / 2)
        ys.append(r * (h + 2) + (h - 1) / 2)
        t = f"{name} channel {real[i]}"
        if activations is not None:
            t += f"<br>activation {float(np.asarray(activations)[i]):.4g}"
        texts.append(t)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=ys,
            mode="markers+text",
            text=[f"ch {r}" for r in real],
            textposition="bottom center",
            textfont={"size": 10, "color": "#333"},
            hovertext=texts,
            hovertemplate="%{hovertext}<extra></extra>",
            marker={"size": 20, "opacity": 0},
            showlegend=False,
        )
    )
    base_layout(
        fig,
        f"{name} — feature visualization (inputs optimised to excite each channel)",
        height=fig_height(min(760, 140 * rows)),
    )
    fig.update_xaxes(visible=False, range=[-0.5, mosaic.shape[1] - 0.5])
    fig.update_yaxes(visible=False, range=[mosaic.shape[0] + 8, -0.5], scaleanchor="x")
    return fig
