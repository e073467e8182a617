"""Compact per-layer figures with a slider over logged events: filters and activation maps.

These builders are meant for long histories (the report): hover information comes from the
axis categories rather than per-pixel ``customdata``, so a figure costs about one number per
drawn pixel, and each event is one trace (Plotly draws few large traces much faster than many
small ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import DIVERGING, SEQUENTIAL, base_layout
from cnnviz.figures._steps import fig_height, plotly_text, step_slider
from cnnviz.figures.images import image_mosaic, png_data_uri
from cnnviz.figures.mosaic import normalise

__all__ = [
    "activation_grid",
    "activation_history_figure",
    "filter_grid",
    "filter_history_figure",
    "stretch_channels",
]


#: Plot-area width (px) a figure gets in the report's column at 1280 px (for the height).
PLOT_WIDTH = 760


def _label_margin(labels: Sequence[str]) -> int:
    """Left margin (px) that fits tick labels of 9 px type."""
    longest = max((len(str(s)) for s in labels), default=4)
    return int(min(220, 24 + 5.5 * longest))


def _check_history(history: Sequence[np.ndarray], labels: Sequence[str]) -> None:
    if len(history) != len(labels):
        raise ValueError("`history` and `labels` must have the same length")
    if not len(history):
        raise ValueError("`history` must hold at least one event")


def _block_grid(blocks: np.ndarray) -> np.ndarray:
    """Place ``blocks[r, c]`` (``[R, C, h, w]``, or ``[R, C, L]`` rows) at row ``r``, column ``c``.

    Blocks are separated by one NaN column; 2-D blocks also by one NaN row, 1-D blocks are
    stacked without row gaps.
    """
    if blocks.ndim == 3:
        blocks, row_gap = blocks[:, :, None, :], 0
    else:
        row_gap = 1
    rows, cols, h, w = blocks.shape
    out = np.full((rows * (h + row_gap) - row_gap, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            y, x = r * (h + row_gap), c * (w + 1)
            out[y : y + h, x : x + w] = blocks[r, c]
    return out


def filter_grid(weight: np.ndarray) -> np.ndarray:
    """Lay out ``[K, C, kh, kw]`` (or ``[K, C, k]``) filters as one image.

    Filter ``f`` is column block ``f``, input channel ``c`` is row block ``c``, blocks
    separated by NaN.

    Wide rather than tall, so that many filters fit a 1280 px page.
    """
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim not in (3, 4):
        raise ValueError(f"`weight` must be [K, C, kh, kw] or [K, C, k]; got shape {w.shape}")
    return _block_grid(w.swapaxes(0, 1))  # rows: input channels, columns: filters


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


def filter_history_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    rgb: bool = False,
    title: str | None = None,
) -> go.Figure:
    """The filters of one conv layer at each logged event, with a slider over the events.

    Rule for drawing: a first layer that sees RGB (``rgb=True`` and 3 input channels) shows
    each filter as one colour tile (scaled symmetrically around zero, grey = 0). Otherwise
    filter ``f`` is column block ``f`` and its input channel ``c`` is row block ``c``, drawn on
    a diverging scale centred at zero (blue negative, red positive), one scale per event.

    Args:
        history: Weights per event, ``[K, C, kh, kw]`` (or ``[K, C, k]`` for 1-D convs).
        labels: Slider label per event (``"start"``, ``"epoch 1"``...).
        layer: Layer name (used in the title and hover).
        channels: Real filter indices of the ``K`` filters (default ``0..K-1``).
        rgb: Draw colour tiles (the first conv layer on RGB input).
        title: Figure title (default: ``"<layer> — filters"``).

    Returns:
        A figure with one trace per event (plus one hover layer for colour tiles).

    Example:
        >>> fig = filter_history_figure([w0, w1], ["start", "epoch 1"], layer="features.0")
    """
    _check_history(history, labels)
    name = plotly_text(layer)
    first = np.asarray(history[-1])
    k = first.shape[0]
    real = list(channels) if channels is not None else list(range(k))
    if len(real) != k:
        raise ValueError(f"`channels` has {len(real)} entries for {k} filters")
    fig = go.Figure()
    if rgb and first.ndim == 4 and first.shape[1] == 3:
        kh, kw = first.shape[2:]
        cols = min(k, 16)
        for weight, label in zip(history, labels, strict=True):
            tiles = (normalise(np.asarray(weight), symmetric=True).transpose(0, 2, 3, 1) + 1) / 2
            img, _ = image_mosaic(tiles, columns=cols)
            fig.add_trace(go.Image(source=png_data_uri(img), name=str(label), hoverinfo="skip"))
        rows = int(np.ceil(k / cols))
        centres = [
            (f % cols * (kw + 1) + (kw - 1) / 2, f // cols * (kh + 1) + (kh - 1) / 2)
            for f in range(k)
        ]
        fig.add_trace(
            go.Scatter(
                x=[c[0] for c in centres],
                y=[c[1] for c in centres],
                mode="markers",
                marker={"size": 14, "opacity": 0, "symbol": "square"},
                text=[f"{name} filter {f}" for f in real],
                hovertemplate="%{text}<extra></extra>",
                showlegend=False,
            )
        )
        step_slider(
            fig,
            list(map(str, labels)),
            [[i] for i in range(len(history))],
            static=[len(history)],
            prefix="filters at ",
        )
        height = fig_height(
            min(700, 600 * rows * (kh + 1) / max(1, cols * (kw + 1))), slider=len(history) > 1
        )
        base_layout(
            fig, title or f"{name} — filters (colour: RGB weights, grey = 0)", height=height
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
        return fig
    for weight, label in zip(history, labels, strict=True):
        img = filter_grid(weight)
        finite = img[np.isfinite(img)]
        m = float(np.abs(finite).max()) if finite.size else 1.0
        m = m if m > 0 else 1.0
        fig.add_trace(
            go.Heatmap(
                z=np.where(np.isfinite(img), img, np.nan),
                colorscale=DIVERGING,
                zmid=0,
                zmin=-m,
                zmax=m,
                hoverongaps=False,
                hovertemplate=f"{name} %{{x}}<br>%{{y}}<br>weight %{{z:.3g}}<extra>{label}</extra>",
                name=str(label),
                colorbar={"title": {"text": "weight"}, "thickness": 12},
            )
        )
    w = np.asarray(history[-1])
    kh = 1 if w.ndim == 3 else w.shape[2]
    kw = w.shape[-1]
    c = w.shape[1]
    xl, xt, xtt = _grid_labels(k, kw, 1, "filter", real)
    yl, yt, ytt = _grid_labels(c, kh, 0 if w.ndim == 3 else 1, "input", list(range(c)))
    for trace in fig.data:
        trace.x = xl
        trace.y = yl
    step_slider(
        fig, list(map(str, labels)), [[i] for i in range(len(history))], prefix="filters at "
    )
    rows, cols = len(yl), len(xl)
    height = fig_height(
        min(640, max(120, PLOT_WIDTH * rows / max(cols, 1))), slider=len(history) > 1
    )
    base_layout(
        fig, title or f"{name} — filters (columns: filters, rows: input channels)", height=height
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


def activation_grid(maps: np.ndarray) -> np.ndarray:
    """Lay out ``[N, K, h, w]`` maps (or ``[N, K, L]`` sequences) as one image.

    Row block ``p`` is probe input ``p``, column block ``c`` is channel ``c``; blocks are
    separated by one NaN row/column (sequences: one row per probe input, no row gaps).
    """
    a = np.asarray(maps, dtype=np.float32)
    if a.ndim not in (3, 4):
        raise ValueError(f"`maps` must be [N, K, h, w] or [N, K, L]; got shape {a.shape}")
    out = _block_grid(a)  # rows: probe inputs, columns: channels
    return np.where(np.isfinite(out), out, np.nan)


def stretch_channels(grid: np.ndarray, width: int) -> np.ndarray:
    """Scale each channel's column block (``width`` columns, one gap) of a grid to [0, 1]."""
    out = np.array(grid, dtype=np.float32)
    for x in range(0, out.shape[1], width + 1):
        block = out[:, x : x + width]
        finite = block[np.isfinite(block)]
        if finite.size:
            lo, hi = finite.min(), finite.max()
            out[:, x : x + width] = (block - lo) / (hi - lo) if hi > lo else block * 0
    return out


def activation_history_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    probe_labels: Sequence[str] | None = None,
    scale: Literal["layer", "channel"] = "layer",
    title: str | None = None,
) -> go.Figure:
    """What one layer fires on for each probe input, with a slider over logged events.

    Rows are probe inputs, column blocks are channels, on a sequential colour scale.
    ``scale="layer"`` uses one colour scale for the layer at each event (channels compare);
    ``"channel"`` stretches each channel over its own range (weak channels become visible).
    ``layout.meta["cnnviz_mosaic"]`` describes the blocks, so a page can switch the scale
    without more data (the report does).

    Args:
        history: Maps per event, ``[N, K, h, w]`` (images) or ``[N, K, L]`` (sequences).
        labels: Slider label per event.
        layer: Layer name.
        channels: Real channel index of each of the ``K`` maps.
        probe_labels: A label per probe input (e.g. ``"#3 circle"``).
        scale: ``"layer"`` or ``"channel"``.
        title: Figure title.

    Returns:
        A figure with one heatmap trace per event.

    Example:
        >>> fig = activation_history_figure([maps], ["epoch 1"], layer="features.1")
    """
    _check_history(history, labels)
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
    # Categorical axes carry the hover information (probe, channel, pixel) at no per-pixel
    # cost; Plotly links the scales of same-type axes only, so both are categorical.
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
        grid = activation_grid(a)
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
                hovertemplate=f"{name} %{{x}}<br>%{{y}}<br>activation %{{z:.3g}}"
                f"<extra>{plotly_text(label)}</extra>",
                colorbar={
                    "title": {"text": "activation" if scale == "layer" else "stretched"},
                    "thickness": 12,
                },
            )
        )
    step_slider(
        fig, list(map(str, labels)), [[i] for i in range(len(history))], prefix="activations at "
    )
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
