"""Predictions on the probe images, as the ConvNetJS demo shows them: top classes as bars."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnviz.figures._common import base_layout, plotly_text, step_slider
from cnnviz.figures.images import png_data_uri

__all__ = ["predictions_figure", "top_classes"]

CORRECT = "#74c476"
OTHER = "#c6d2e3"


def top_classes(probs: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Indices and probabilities of the ``k`` most likely classes of each row of ``[N, C]``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"`probs` must be [N, num_classes]; got shape {p.shape}")
    k = min(k, p.shape[1])
    idx = np.argsort(-np.nan_to_num(p, nan=-1.0), axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(p, idx, axis=1)


def predictions_figure(
    history: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    class_names: Sequence[str] | None = None,
    targets: Sequence[int] | None = None,
    images: np.ndarray | None = None,
    k: int = 3,
    per_row: int = 4,
) -> go.Figure:
    """Each probe image with its top-``k`` classes as bars, at each logged event (slider).

    The true class, when known, is drawn green; other classes grey.

    Args:
        history: Softmax outputs ``[N, num_classes]`` per event.
        labels: Slider label per event.
        class_names: Class names (default: class indices).
        targets: True class of each probe input.
        images: Probe images ``[N, H, W, C]`` (or ``[N, H, W]``) in [0, 1], shown left of the bars.
        k: Classes shown per image.
        per_row: Probe images per row.

    Returns:
        The figure.

    Example:
        >>> fig = predictions_figure([probs], ["epoch 1"], class_names=names, targets=y)
    """
    if len(history) != len(labels) or not len(history):
        raise ValueError("`history` and `labels` must have the same, non-zero length")
    n, c = np.asarray(history[-1]).shape
    names = (
        [plotly_text(s) for s in class_names]
        if class_names is not None
        else [str(i) for i in range(c)]
    )
    if len(names) < c:
        names = names + [str(i) for i in range(len(names), c)]
    if targets is not None and len(targets) != n:
        raise ValueError(f"`targets` has {len(targets)} entries for {n} probe inputs")
    show_images = images is not None and len(images) == n
    per_row = max(1, min(per_row, n))
    rows = int(np.ceil(n / per_row))
    cols = per_row * (2 if show_images else 1)
    widths = [0.35, 0.65] * per_row if show_images else None
    titles = []
    for i in range(n):
        t = f"#{i}" + (f" true: {names[int(targets[i])]}" if targets is not None else "")
        titles.extend(([""] if show_images else []) + [t])
    titles.extend([""] * (rows * cols - len(titles)))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        column_widths=widths,
        subplot_titles=titles,
        horizontal_spacing=0.012 if show_images else 0.04,
        vertical_spacing=0.16 / rows + 0.04,
    )

    def cell(i: int) -> tuple[int, int]:
        r, c_ = divmod(i, per_row)
        return r + 1, c_ * (2 if show_images else 1) + 1

    static: list[int] = []
    if show_images:
        for i in range(n):
            r, c_ = cell(i)
            static.append(len(fig.data))
            fig.add_trace(
                go.Image(source=png_data_uri(np.asarray(images)[i]), hoverinfo="skip"),
                row=r,
                col=c_,
            )
            fig.update_xaxes(visible=False, row=r, col=c_)
            fig.update_yaxes(visible=False, row=r, col=c_)
    groups: list[list[int]] = []
    for probs, label in zip(history, labels, strict=True):
        idx, p = top_classes(np.asarray(probs), k)
        group = []
        for i in range(n):
            r, c_ = cell(i)
            c_ += 1 if show_images else 0
            true = int(targets[i]) if targets is not None else -1
            group.append(len(fig.data))
            fig.add_trace(
                go.Bar(
                    x=np.round(p[i], 4),
                    y=list(range(len(idx[i]))),
                    orientation="h",
                    marker={"color": [CORRECT if j == true else OTHER for j in idx[i]]},
                    customdata=[names[j] for j in idx[i]],
                    hovertemplate="%{customdata}: %{x:.1%}<extra>"
                    + plotly_text(label)
                    + "</extra>",
                    showlegend=False,
                ),
                row=r,
                col=c_,
            )
            group.append(len(fig.data))
            fig.add_trace(  # a full-length track carries the text, so it never needs to fit
                go.Bar(
                    x=[1.0] * len(idx[i]),
                    y=list(range(len(idx[i]))),
                    orientation="h",
                    marker={"color": "rgba(0,0,0,0)", "line": {"color": "#c5cdd8", "width": 1}},
                    text=[f"{names[j]} {q:.0%}" for j, q in zip(idx[i], p[i], strict=True)],
                    textposition="inside",
                    insidetextanchor="start",
                    textangle=0,
                    constraintext="none",
                    textfont={"size": 11, "color": "#1d232b"},
                    hoverinfo="skip",
                    showlegend=False,
                ),
                row=r,
                col=c_,
            )
            fig.update_xaxes(range=[0, 1], showticklabels=False, showgrid=False, row=r, col=c_)
            fig.update_yaxes(autorange="reversed", visible=False, row=r, col=c_)
        groups.append(group)
    step_slider(fig, [str(s) for s in labels], groups, static=static, prefix="predictions at ")
    base_layout(
        fig,
        f"Predictions on the probe images (top {k}; green = true class)",
        height=int(150 * rows + 110 + (80 if len(history) > 1 else 0)),
    )
    fig.update_annotations(font={"size": 11})
    fig.update_layout(barmode="overlay", bargap=0.25)
    return fig
