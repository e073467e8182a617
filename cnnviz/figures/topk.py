"""Top-k dataset patches: for each channel, the input patches that excite it most.

A patch is the unit's (local) receptive field cut from its input image; where the field leaves
the image the patch holds the padding value. The panel marks that part in the picture: tinted
red, with the image border drawn inside the patch, when the layer's field geometry is known
(:func:`patch_inside`), else a frame; the hover text gives the share.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures.images import block_mean, shrink_factor
from cnnviz.figures.mosaic import image_mosaic
from cnnviz.figures.panels import Cell, Panel, panel_figure

__all__ = ["patch_inside", "topk_figure", "topk_panel"]

#: Padding shares below this are not marked (rounding of the field's edges).
PAD_MIN = 0.005


def patch_inside(
    positions: np.ndarray,
    *,
    size: Sequence[int],
    jump: Sequence[int],
    start: Sequence[int],
    image_size: Sequence[int],
) -> np.ndarray:
    """The part of each patch inside the image, as fractions of the patch.

    A unit at position ``p`` (per axis) reads input rows ``start + p·jump`` to
    ``start + p·jump + size`` (unclipped); the rest of its patch is padding.

    Args:
        positions: ``[C, k, 2]`` unit positions (-1 where there is no entry).
        size: Field size per axis (the local field of layers that see global context).
        jump: Field jump per axis.
        start: Where unit 0's field starts, per axis.
        image_size: Input height and width.

    Returns:
        ``[C, k, 4]``: ``(top, bottom, left, right)`` fractions in [0, 1]; NaN where there is
        no entry.

    Raises:
        ValueError: Unless everything is given for two axes.
    """
    pos = np.asarray(positions)
    if (
        pos.ndim != 3
        or pos.shape[-1] != 2
        or not (len(size) == len(jump) == len(start) == len(image_size) == 2)
    ):
        raise ValueError("`patch_inside` needs [C, k, 2] positions and two-axis field geometry")
    out = np.full((*pos.shape[:2], 4), np.nan, dtype=np.float32)
    valid = (pos >= 0).all(axis=-1)
    for a in range(2):
        first = start[a] + pos[..., a].astype(np.float64) * jump[a]
        lo = np.clip(-first / size[a], 0, 1)
        hi = np.clip((image_size[a] - first) / size[a], 0, 1)
        out[..., 2 * a] = np.where(valid, lo, np.nan)
        out[..., 2 * a + 1] = np.where(valid, hi, np.nan)
    return out


#: Colour of the hatching over the padding (RGB in [0, 1]).
HATCH = (0.86, 0.16, 0.16)
#: Colour of the frame around a patch with padding whose geometry is unknown.
FRAME = (1.0, 0.55, 0.0)


def _hatch(patch: np.ndarray, inside: np.ndarray) -> None:
    """Tint the part of ``patch`` (``[h, w, 3]``) outside ``inside`` red; outline the image.

    A flat tint rather than stripes: the mosaic is a JPEG, and stripes would triple its size.
    """
    h, w = patch.shape[:2]
    top, bottom, left, right = (float(v) for v in inside)
    y0, y1 = round(top * h), max(round(top * h), round(bottom * h))
    x0, x1 = round(left * w), max(round(left * w), round(right * w))
    outside = np.ones((h, w), dtype=bool)
    outside[y0:y1, x0:x1] = False
    patch[outside] = 0.45 * patch[outside] + 0.55 * np.asarray(HATCH)
    if y1 > y0 and x1 > x0:  # the image border, in white
        if y0 > 0:
            patch[y0 - 1, max(x0 - 1, 0) : x1 + 1] = 1.0
        if y1 < h:
            patch[y1, max(x0 - 1, 0) : x1 + 1] = 1.0
        if x0 > 0:
            patch[max(y0 - 1, 0) : y1 + 1, x0 - 1] = 1.0
        if x1 < w:
            patch[max(y0 - 1, 0) : y1 + 1, x1] = 1.0


def _frame(patch: np.ndarray) -> None:
    patch[0, :] = patch[-1, :] = patch[:, 0] = patch[:, -1] = FRAME


def topk_panel(
    patches: np.ndarray,
    values: np.ndarray | None = None,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    samples: np.ndarray | None = None,
    padding: np.ndarray | None = None,
    inside: np.ndarray | None = None,
    max_size: int = 32,
) -> Panel:
    """One row per channel: its ``k`` strongest dataset patches, strongest first.

    The part of a patch in the zero padding is tinted red in the picture, with the image
    border drawn white, when ``inside`` is given; without it, a patch with padding gets an orange
    frame. Either way the hover text gives each patch's padding share.

    Args:
        patches: ``[C, k, h, w, 3]`` or ``[C, k, h, w]`` in [0, 1].
        values: ``[C, k]`` activation of each patch (hover; NaN where there is no entry).
        layer: Layer name.
        channels: Real channel index of each row.
        samples: ``[C, k]`` data-set index of each patch (hover; -1 where there is none).
        padding: ``[C, k]`` share of each patch's field in the zero padding.
        inside: ``[C, k, 4]`` part of each patch inside the image (:func:`patch_inside`).
        max_size: Patches larger than this (per side) are shrunk by block averaging.

    Returns:
        The panel (one hover cell per patch).

    Raises:
        ValueError: For patches of another shape or a wrong ``channels``.
    """
    p = np.asarray(patches, dtype=np.float32)
    if p.ndim not in (4, 5):
        raise ValueError(f"`patches` must be [C, k, h, w, 3] or [C, k, h, w]; got {p.shape}")
    if p.ndim == 4:
        p = p[..., None]
    p = block_mean(p, shrink_factor(p.shape[2], p.shape[3], max_size))
    c, k, h, w = p.shape[:4]
    real = list(channels) if channels is not None else list(range(c))
    if len(real) != c:
        raise ValueError(f"`channels` has {len(real)} entries for {c} rows")
    vals = None if values is None else np.asarray(values, dtype=np.float64)
    smp = None if samples is None else np.asarray(samples)
    pad = None if padding is None else np.asarray(padding, dtype=np.float64)
    box = None if inside is None else np.asarray(inside, dtype=np.float64)
    shares = np.zeros((c, k)) if pad is None else np.where(np.isfinite(pad), pad, 0.0)
    if (shares > PAD_MIN).any():
        p = np.repeat(p, 3, axis=-1) if p.shape[-1] == 1 else p.copy()
        p = np.clip(np.where(np.isfinite(p), p, 1.0), 0, 1)
    cells: list[Cell] = []
    padded = 0
    for ci in range(c):
        for j in range(k):
            x, y = j * (w + 1), ci * (h + 1)
            missing = (vals is not None and not np.isfinite(vals[ci, j])) or (
                smp is not None and smp[ci, j] < 0
            )
            label = f"ch {real[ci]}" if j == 0 else ""
            if missing:
                cells.append(Cell(x, y, w, h, title="no entry", label=label))
                continue
            t = f"ch {real[ci]} #{j + 1}"
            if vals is not None:
                t += f": activation {vals[ci, j]:.3g}"
            if smp is not None:
                t += f", sample {int(smp[ci, j])}"
            if shares[ci, j] > PAD_MIN:
                padded += 1
                t += f"; {shares[ci, j]:.0%} of its field is zero padding"
                if box is not None and np.isfinite(box[ci, j]).all():
                    _hatch(p[ci, j], box[ci, j])
                else:
                    _frame(p[ci, j])
            cells.append(Cell(x, y, w, h, title=t, label=label))
    img, _ = image_mosaic(p.reshape(c * k, *p.shape[2:]), columns=k, gap=1)
    caption = f"{layer}: top-{k} patches per channel, strongest first"
    if padded:
        caption += (
            f"; {padded} of them reach into the zero padding outside the image (tinted red; "
            "white line: the image border)"
            if box is not None
            else f"; {padded} of them reach into the zero padding (orange frame; share in the "
            "hover text)"
        )
    return Panel(
        image=img,
        cells=tuple(cells),
        caption=caption,
        scale=max(1.0, min(64 / max(h, 1), 900 / img.shape[1])),
        max_width=1000,
        photo=True,
        title=f"{layer} — top-{k} dataset patches per channel (strongest first)",
    )


def topk_figure(
    patches: np.ndarray,
    values: np.ndarray | None = None,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    samples: np.ndarray | None = None,
    padding: np.ndarray | None = None,
    inside: np.ndarray | None = None,
    max_size: int = 32,
) -> go.Figure:
    """:func:`topk_panel` as a Plotly figure (for loggers).

    With ``padding`` (and ``inside``), the patches that reach into the zero padding are marked
    as in :func:`topk_panel` and a line under the title says how many and how they are marked.

    Example:
        >>> fig = topk_figure(patches, values, layer="features.3", channels=[0, 1, 2])
    """
    panel = topk_panel(
        patches,
        values,
        layer=layer,
        channels=channels,
        samples=samples,
        padding=padding,
        inside=inside,
        max_size=max_size,
    )
    _, _, marks = panel.caption.partition("; ")  # "...; 3 of them reach into the padding..."
    return panel_figure(panel, subtitle=marks[:1].upper() + marks[1:] if marks else None)
