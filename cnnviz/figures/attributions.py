"""Input attributions (saliency, integrated gradients, Grad-CAM...) and their sanity checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnviz.figures._common import DIVERGING, base_layout, fig_height, plotly_text
from cnnviz.figures.images import png_data_uri

__all__ = ["attribution_checks_figure", "attributions_figure", "relative_maps"]


def relative_maps(maps: np.ndarray) -> np.ndarray:
    """Scale each map of ``[N, H, W]`` by its largest absolute value, to [-1, 1] (NaN-safe)."""
    a = np.asarray(maps, dtype=np.float32)
    a = np.where(np.isfinite(a), a, np.nan)
    axes = tuple(range(1, a.ndim))
    with np.errstate(all="ignore"):
        m = np.nanmax(np.abs(a), axis=axes, keepdims=True) if a.size else np.ones(1)
    m = np.where(np.isfinite(m) & (m > 0), m, 1.0)
    return a / m


def attributions_figure(
    maps: Mapping[str, np.ndarray],
    *,
    images: np.ndarray | None = None,
    probe_labels: Sequence[str] | None = None,
    title: str = "Input attributions",
) -> go.Figure:
    """Rows: probe inputs; columns: the input, then one attribution map per method.

    Each map is divided by its largest absolute value and drawn on a diverging scale
    (red: evidence for the explained class, blue: against it, white: none).

    Args:
        maps: Method name to ``[N, H, W]`` signed maps (summed over input channels).
        images: ``[N, H, W, C]`` or ``[N, H, W]`` inputs in [0, 1], shown first.
        probe_labels: One label per row (e.g. ``"#0 circle → circle"``).
        title: Figure title.

    Returns:
        The figure.

    Example:
        >>> fig = attributions_figure({"saliency": s, "grad_cam": g}, images=x_display)
    """
    names = [m for m, a in maps.items() if np.asarray(a).ndim == 3]
    if not names:
        raise ValueError("`maps` must hold at least one [N, H, W] array")
    n, h, w = np.asarray(maps[names[0]]).shape
    for m in names:
        if np.asarray(maps[m]).shape != (n, h, w):
            raise ValueError(
                f"map {m!r} has shape {np.asarray(maps[m]).shape}; expected {(n, h, w)}"
            )
    show = images is not None and len(images) == n
    gap = max(1, w // 12)
    fig = go.Figure()
    centres: list[float] = []
    names_shown: list[str] = []
    col = 0
    if show:
        stack = np.full((n * (h + gap) - gap, w, 3), 1.0, dtype=np.float32)
        imgs = np.asarray(images, dtype=np.float32)
        if imgs.ndim == 3:
            imgs = imgs[..., None]
        if imgs.shape[1:3] == (h, w):
            for i in range(n):
                im = imgs[i] if imgs.shape[-1] == 3 else np.repeat(imgs[i][..., :1], 3, axis=2)
                stack[i * (h + gap) : i * (h + gap) + h] = im
            fig.add_trace(go.Image(source=png_data_uri(stack), x0=0, y0=0, hoverinfo="skip"))
            centres.append((w - 1) / 2)
            names_shown.append("input")
            col = 1
    for j, m in enumerate(names):
        rel = relative_maps(maps[m])
        block = np.full((n * (h + gap) - gap, w), np.nan, dtype=np.float32)
        for i in range(n):
            block[i * (h + gap) : i * (h + gap) + h] = rel[i]
        x0 = (col + j) * (w + gap)
        centres.append(x0 + (w - 1) / 2)
        names_shown.append(plotly_text(m))
        fig.add_trace(
            go.Heatmap(
                z=block,
                x0=x0,
                dx=1,
                y0=0,
                dy=1,
                zmin=-1,
                zmax=1,
                colorscale=DIVERGING,
                showscale=j == 0,
                hoverongaps=False,
                name=plotly_text(m),
                hovertemplate=f"{plotly_text(m)}<br>relative attribution %{{z:.3f}}<extra></extra>",
                colorbar={"title": {"text": "relative"}, "thickness": 12},
            )
        )
    labels = (
        [plotly_text(s) for s in probe_labels]
        if probe_labels is not None
        else [f"#{i}" for i in range(n)]
    )
    total_w = (col + len(names)) * (w + gap) - gap
    total_h = n * (h + gap) - gap
    base_layout(
        fig,
        plotly_text(title),
        height=fig_height(min(1400, 640 * total_h / max(total_w, 1)), extra=30),
    )
    longest = max((len(s) for s in labels[:n]), default=4)
    fig.update_layout(margin={"t": 90, "l": int(min(260, 24 + 6 * longest))})
    fig.update_xaxes(
        tickvals=centres,
        ticktext=names_shown,
        side="top",
        showgrid=False,
        zeroline=False,
        range=[-0.5, total_w - 0.5],
        tickfont={"size": 10},
    )
    fig.update_yaxes(
        tickvals=[i * (h + gap) + (h - 1) / 2 for i in range(n)],
        ticktext=labels[:n],
        range=[total_h - 0.5, -0.5],
        scaleanchor="x",
        showgrid=False,
        zeroline=False,
        tickfont={"size": 10},
    )
    return fig


def _mean(v: Any) -> float | None:
    a = np.asarray(v, dtype=np.float64) if v is not None else np.array([])
    if a.size == 0 or not np.isfinite(a).any():
        return None
    return float(np.nanmean(a))


def attribution_checks_figure(
    randomisation: Mapping[str, Any] | None = None,
    mask_share: Mapping[str, Sequence[float]] | None = None,
) -> go.Figure:
    """Sanity and faithfulness checks of the attribution methods.

    Left: the model-randomisation test (Adebayo et al. 2018): rank correlation between the map
    of the trained model and the map after randomising layers from the top down; a method that
    explains the model must fall towards zero. Right: the share of attribution inside the
    object's mask, next to the mask's share of the image (a method better than chance is above
    its grey bar).

    Args:
        randomisation: ``{"method": str, "layers": [names], "spearman": [float]}`` (a value
            may be a list, one per probe input; its mean is drawn).
        mask_share: Method to ``[share inside the mask, mask area share]``.

    Returns:
        The figure.

    Raises:
        ValueError: If neither check is given.
    """
    panels = []
    if randomisation and randomisation.get("layers"):
        panels.append("randomisation")
    if mask_share:
        panels.append("mask")
    if not panels:
        raise ValueError("give `randomisation` and/or `mask_share`")
    titles = {
        "randomisation": "model randomisation:<br>rank correlation (should fall)",
        "mask": "share of attribution<br>inside the object mask",
    }
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        subplot_titles=[titles[p] for p in panels],
        horizontal_spacing=0.12,
    )
    for col, panel in enumerate(panels, start=1):
        if panel == "randomisation":
            randomisation = randomisation or {}
            layers = [plotly_text(s) for s in randomisation.get("layers", [])]
            rho = [_mean(v) for v in randomisation.get("spearman", [])][: len(layers)]
            method = plotly_text(randomisation.get("method", ""))
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=rho,
                    mode="lines+markers",
                    name=f"{method} (randomised)",
                    hovertemplate="randomised up to %{x}<br>Spearman %{y:.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            fig.update_yaxes(range=[-1.05, 1.05], title="Spearman ρ", row=1, col=col)
            fig.update_xaxes(title="layers randomised (top down, cumulative)", row=1, col=col)
        else:
            mask_share = mask_share or {}
            methods = [plotly_text(m) for m in mask_share]
            inside = [
                _mean(np.asarray(v, dtype=float)[..., 0]) if np.asarray(v).size else None
                for v in mask_share.values()
            ]
            area = [
                _mean(np.asarray(v, dtype=float)[..., 1]) if np.asarray(v).size > 1 else None
                for v in mask_share.values()
            ]
            fig.add_trace(
                go.Bar(
                    x=methods,
                    y=inside,
                    name="inside the mask",
                    marker={"color": "#d62728"},
                    hovertemplate="%{x}: %{y:.1%} inside<extra></extra>",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Bar(
                    x=methods,
                    y=area,
                    name="mask area (chance)",
                    marker={"color": "#b0b0b0"},
                    hovertemplate="%{x}: mask covers %{y:.1%}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=col)
    longest = max((len(str(s)) for s in (randomisation or {}).get("layers", [])), default=0)
    bottom = int(min(220, 70 + 4.2 * longest))  # rotated layer names under the axis
    base_layout(fig, "Attribution checks", height=330 + bottom)
    fig.update_layout(
        margin={"l": 60, "b": bottom, "r": 170, "t": 95},
        title={"y": 1 - 12 / (330 + bottom), "yanchor": "top"},
    )
    fig.update_layout(barmode="group", legend={"orientation": "v", "x": 1.02, "y": 1})
    return fig
