"""Conv filters (or their gradients) as images, with a slider over the logged events.

One layout for every consumer (report, loggers, TensorBoard images): filter ``f`` is column
block ``f`` and its input channel ``c`` is row block ``c`` — wide rather than tall, so many
filters fit a page. A first layer that sees RGB is drawn as colour tiles instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import (
    DIVERGING,
    SEQUENTIAL,
    base_layout,
    event_slider,
    fig_height,
    plotly_text,
)
from cnnviz.figures.mosaic import normalise, tile, to_uint8_rgb

__all__ = ["PLOT_WIDTH", "filter_mosaic", "filter_norms_figure", "filters_figure"]

#: Plot-area width (px) a figure gets in the report's column at 1280 px (for the height).
PLOT_WIDTH = 760
#: Colour tiles per row of an RGB first layer.
RGB_COLUMNS = 16


def _check_history(history: Sequence[np.ndarray], labels: Sequence[str]) -> None:
    if len(history) != len(labels):
        raise ValueError("`history` and `labels` must have the same length")
    if not len(history):
        raise ValueError("`history` must hold at least one event")


def filter_mosaic(weight: np.ndarray, *, rgb: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lay out conv filters as one image.

    Rule: a first layer that sees RGB (``rgb=True``, 3 input channels) draws each filter as one
    colour tile scaled symmetrically around zero (grey = 0), :data:`RGB_COLUMNS` per row, on
    white. Otherwise filter ``f`` is column block ``f`` and input channel ``c`` row block ``c``,
    blocks separated by NaN (1-D filters ``[K, C, k]``: one row per input channel, no row gaps;
    1×1 filters: no gaps, the ``C × K`` weight matrix).

    Args:
        weight: ``[K, C, kh, kw]`` or ``[K, C, k]``.
        rgb: Draw colour tiles (only with 3 input channels).

    Returns:
        ``(image, filter_index, in_channel_index)``, the indices -1 in the gaps; the image is
        ``[H, W, 3]`` in [0, 1] for colour tiles, else ``[H, W]`` in weight units.

    Raises:
        ValueError: For a weight of another shape.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim not in (3, 4):
        raise ValueError(f"`weight` must be [K, C, kh, kw] or [K, C, k]; got shape {w.shape}")
    k, c = w.shape[:2]
    if rgb and w.ndim == 4 and c == 3:
        tiles = (normalise(w, symmetric=True).transpose(0, 2, 3, 1) + 1) / 2  # [K, kh, kw, 3]
        img, idx = tile(tiles, columns=min(k, RGB_COLUMNS), gap=1, fill=1.0)
        return img, idx, np.where(idx >= 0, 0, -1)
    blocks = w.swapaxes(0, 1)  # [C, K, ...]: rows are input channels, columns filters
    gap = 0 if w.shape[2:] in ((1,), (1, 1)) else 1  # 1×1 convs: a plain matrix
    if w.ndim == 3:
        img, idx = tile(blocks.reshape(c * k, 1, -1), columns=k, gap=gap, row_gap=0)
    else:
        img, idx = tile(blocks.reshape(c * k, *w.shape[2:]), columns=k, gap=gap)
    img = np.where(np.isfinite(img), img, np.nan)
    return img, np.where(idx >= 0, idx % k, -1), np.where(idx >= 0, idx // k, -1)


def _grid_labels(
    count: int, size: int, gap: int, name: str, real: Sequence[int]
) -> tuple[list[str], list[str], list[str]]:
    """Unique category labels for rows/columns of a block grid, and tick positions/texts."""
    labels: list[str] = []
    for b in range(count):
        for i in range(size):
            labels.append(f"{name} {real[b]} · {i}" if size > 1 else f"{name} {real[b]}")
        if b < count - 1:
            labels.extend(f"gap {b}.{g}" for g in range(gap))
    step = max(1, int(np.ceil(count / 32)))
    ticks = [labels[b * (size + gap) + size // 2] for b in range(0, count, step)]
    texts = [str(real[b]) for b in range(0, count, step)]
    return labels, ticks, texts


def filters_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    rgb: bool = False,
    title: str | None = None,
    what: str = "weight",
) -> go.Figure:
    """The filters of one conv layer at each logged event, with a slider over the events.

    Rule for drawing: see :func:`filter_mosaic`. Grey-scale layers use a diverging scale
    centred at zero (blue negative, red positive), one scale per event; hover gives the filter,
    the input channel and the value (from the categorical axes, at no per-pixel cost).

    Args:
        history: Weights (or gradients) per event, ``[K, C, kh, kw]`` (or ``[K, C, k]``).
        labels: Slider label per event (``"start"``, ``"epoch 1"``...).
        layer: Layer name (title and hover).
        channels: Real filter indices of the ``K`` filters (default ``0..K-1``).
        rgb: Draw colour tiles (the first conv layer on RGB input).
        title: Figure title (default: ``"<layer> — filters"``).
        what: What the values are (``"weight"``, ``"gradient"``): colour bar and hover.

    Returns:
        A figure with one trace per event.

    Raises:
        ValueError: For mismatched lengths, an empty history or a wrong ``channels``.

    Example:
        >>> fig = filters_figure([w0, w1], ["start", "epoch 1"], layer="features.0")
    """
    _check_history(history, labels)
    name = plotly_text(layer)
    last = np.asarray(history[-1])
    k = last.shape[0]
    real = list(channels) if channels is not None else list(range(k))
    if len(real) != k:
        raise ValueError(f"`channels` has {len(real)} entries for {k} filters")
    fig = go.Figure()
    slider = len(history) > 1
    shown = "filters" if what == "weight" else f"{what}s"
    if rgb and last.ndim == 4 and last.shape[1] == 3:
        kh, kw = last.shape[2:]
        for weight, label in zip(history, labels, strict=True):
            img, filt, _ = filter_mosaic(weight, rgb=True)
            custom = np.where(filt >= 0, np.asarray(real)[np.clip(filt, 0, k - 1)], -1)
            fig.add_trace(
                go.Image(
                    z=to_uint8_rgb(img),
                    customdata=custom.astype(np.int32),
                    hovertemplate=f"{name} filter %{{customdata}}<extra>{plotly_text(label)}"
                    "</extra>",
                    name=str(label),
                )
            )
        event_slider(fig, labels, prefix="filters at ")
        cols = min(k, RGB_COLUMNS)
        rows = int(np.ceil(k / cols))
        height = fig_height(
            min(700, 600 * rows * (kh + 1) / max(1, cols * (kw + 1))), slider=slider
        )
        base_layout(
            fig,
            title or f"{name} — {shown} (colour: RGB {what}s, grey = 0)",
            height=height,
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False, scaleanchor="x")
        return fig
    for weight, label in zip(history, labels, strict=True):
        img, _, _ = filter_mosaic(weight, rgb=False)
        finite = img[np.isfinite(img)]
        m = float(np.abs(finite).max()) if finite.size else 1.0
        m = m if m > 0 else 1.0
        fig.add_trace(
            go.Heatmap(
                z=img,
                colorscale=DIVERGING,
                zmid=0,
                zmin=-m,
                zmax=m,
                hoverongaps=False,
                hovertemplate=f"{name} %{{x}}<br>%{{y}}<br>{what} %{{z:.3g}}"
                f"<extra>{plotly_text(label)}</extra>",
                name=str(label),
                colorbar={"title": {"text": what}, "thickness": 12},
            )
        )
    kh = 1 if last.ndim == 3 else last.shape[2]
    kw = last.shape[-1]
    c = last.shape[1]
    gap = 0 if kh == kw == 1 else 1
    xl, xt, xtt = _grid_labels(k, kw, gap, "filter", real)
    yl, yt, ytt = _grid_labels(c, kh, 0 if last.ndim == 3 else gap, "input", list(range(c)))
    for trace in fig.data:
        trace.x = xl
        trace.y = yl
    event_slider(fig, labels, prefix=f"{shown} at ")
    rows, cols = len(yl), len(xl)
    height = fig_height(min(640, max(120, PLOT_WIDTH * rows / max(cols, 1))), slider=slider)
    base_layout(
        fig,
        title or f"{name} — {shown} (columns: filters, rows: input channels)",
        height=height,
    )
    fig.update_layout(margin={"l": 70, "b": 45})
    fig.update_xaxes(
        type="category",
        tickvals=xt,
        ticktext=xtt,
        title="filter",
        showgrid=False,
        tickfont={"size": 9},
    )
    fig.update_yaxes(
        type="category",
        tickvals=yt,
        ticktext=ytt,
        title="input channel",
        autorange="reversed",
        scaleanchor="x",
        showgrid=False,
        tickfont={"size": 9},
    )
    return fig


def filter_norms_figure(
    norms: np.ndarray,
    labels: Sequence[str],
    *,
    layer: str,
    flagged: Mapping[str, Sequence[int]] | None = None,
    what: str = "‖w‖",
    title: str | None = None,
) -> go.Figure:
    """Per-filter L2 norm over events as a heatmap (events × filters), flagged filters listed.

    Args:
        norms: ``[E, K]`` norms (of the weights, or of their gradients).
        labels: Event labels (``E``).
        layer: Layer name.
        flagged: e.g. ``{"dead": [3], "unchanged": [5]}``, listed in the title.
        what: The colour bar's title (``‖w‖``, ``‖∇w‖``).
        title: Figure title (default ``"<layer> — filter norms"``).

    Returns:
        The figure.
    """
    norms = np.asarray(norms, dtype=np.float32)
    name = plotly_text(layer)
    fig = go.Figure(
        go.Heatmap(
            z=np.where(np.isfinite(norms.T), norms.T, np.nan),
            x=[str(s) for s in labels],
            y=list(range(norms.shape[1])),
            colorscale=SEQUENTIAL,
            hovertemplate=f"{name} filter %{{y}}<br>%{{x}}: {what} %{{z:.4g}}<extra></extra>",
            colorbar={"title": {"text": what}, "thickness": 12},
        )
    )
    notes = [f"{k}: {list(v)}" for k, v in (flagged or {}).items() if len(v)]
    head = title or f"{name} — filter norms"
    base_layout(fig, head + (f" ({'; '.join(notes)})" if notes else ""))
    fig.update_xaxes(type="category")
    fig.update_yaxes(title="filter")
    return fig
