"""Image panels drawn with plain HTML (an ``<img>`` and positioned boxes) instead of Plotly.

Dataset patches, feature visualizations and receptive-field boxes are pictures: an ``<img>``
costs the browser next to nothing, where a Plotly figure costs tens of milliseconds, which
adds up over a hundred layers. Hover text comes from ``title`` attributes on transparent
cells laid over the image. Every string is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnnviz.figures.images import downsample, image_mosaic, jpeg_data_uri, png_data_uri
from cnnviz.report.html import esc

__all__ = ["Cell", "featvis_panel", "image_panel", "receptive_field_panel", "topk_panel"]


@dataclass(frozen=True)
class Cell:
    """A rectangle over the image, in pixels of the image: hover text and/or a drawn box."""

    x: float
    y: float
    w: float
    h: float
    title: str = ""
    label: str = ""
    css: str = ""


def image_panel(
    uri: str,
    size: tuple[int, int],
    *,
    scale: float,
    cells: Sequence[Cell] = (),
    caption: str = "",
    max_width: int = 1000,
) -> str:
    """An image shown at ``scale`` screen pixels per image pixel (at most ``max_width`` wide).

    Cells are positioned in percent, so they follow any resizing.
    """
    h, w = size
    width = int(min(max_width, max(1.0, w * scale)))
    parts = [
        f'<figure class="panel" style="width:{width}px">',
        f'<div class="panel-img"><img alt="{esc(caption)}" src="{esc(uri)}">',
    ]
    for c in cells:
        style = (
            f"left:{100 * c.x / w:.3f}%;top:{100 * c.y / h:.3f}%;"
            f"width:{100 * c.w / w:.3f}%;height:{100 * c.h / h:.3f}%"
        )
        title = f' title="{esc(c.title)}"' if c.title else ""
        label = f"<span>{esc(c.label)}</span>" if c.label else ""
        parts.append(f'<div class="cell {esc(c.css)}" style="{style}"{title}>{label}</div>')
    parts.append("</div>")
    if caption:
        parts.append(f"<figcaption>{esc(caption)}</figcaption>")
    parts.append("</figure>")
    return "".join(parts)


def topk_panel(
    patches: np.ndarray,
    values: np.ndarray | None,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    samples: np.ndarray | None = None,
    max_size: int = 32,
) -> str:
    """Rows: channels; columns: each channel's strongest dataset patches (JPEG mosaic)."""
    p = np.asarray(patches)
    if p.ndim == 4:
        p = p[..., None]
    if p.ndim != 5:
        raise ValueError(f"`patches` must be [C, k, h, w, 3] or [C, k, h, w]; got {p.shape}")
    p = downsample(p, max_size)
    c, k, h, w = p.shape[:4]
    real = list(channels) if channels is not None else list(range(c))
    img, _ = image_mosaic(p.reshape(c * k, *p.shape[2:]), columns=k, gap=1)
    vals = None if values is None else np.asarray(values)
    smp = None if samples is None else np.asarray(samples)
    cells = []
    for ci in range(c):
        for j in range(k):
            t = f"{layer} channel {real[ci]}, #{j + 1}"
            if vals is not None:
                t += f", activation {float(vals[ci, j]):.4g}"
            if smp is not None:
                t += f", sample {int(smp[ci, j])}"
            label = f"ch {real[ci]}" if j == 0 else ""
            cells.append(Cell(j * (w + 1), ci * (h + 1), w, h, title=t, label=label, css="tag"))
    scale = max(1.0, min(64 / max(h, 1), 900 / img.shape[1]))
    return image_panel(
        jpeg_data_uri(img),
        img.shape[:2],
        scale=scale,
        cells=cells,
        caption=f"top-{k} patches per channel, strongest first",
    )


def featvis_panel(
    images: np.ndarray,
    activations: np.ndarray | None,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    columns: int = 8,
) -> str:
    """A grid of optimised inputs, one per channel, labelled with the channel."""
    imgs = np.asarray(images)
    if imgs.ndim not in (3, 4):
        raise ValueError(f"`images` must be [K, H, W, C] or [K, H, W]; got shape {imgs.shape}")
    k, h, w = imgs.shape[:3]
    real = list(channels) if channels is not None else list(range(k))
    mosaic, (_, cols) = image_mosaic(imgs, columns=min(columns, max(k, 1)), gap=2)
    acts = None if activations is None else np.asarray(activations)
    cells = []
    for i in range(k):
        r, cc = divmod(i, cols)
        t = f"{layer} channel {real[i]}"
        if acts is not None:
            t += f": activation {float(acts[i]):.4g}"
        cells.append(
            Cell(cc * (w + 2), r * (h + 2), w, h, title=t, label=f"ch {real[i]}", css="tag")
        )
    scale = max(1.0, min(128 / max(h, 1), 1000 / mosaic.shape[1]))
    return image_panel(
        jpeg_data_uri(mosaic, quality=90),
        mosaic.shape[:2],
        scale=scale,
        cells=cells,
        caption="optimised inputs (hover: activation reached)",
    )


def receptive_field_panel(
    image: np.ndarray, region: Sequence[int], *, unit: Sequence[int] | None = None
) -> str:
    """A probe image with the region ``(top, bottom, left, right)`` (half-open) one unit sees."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    top, bottom, left, right = (float(v) for v in region[:4])
    what = f"unit {tuple(int(u) for u in unit)}" if unit is not None else "one unit"
    box = Cell(
        left,
        top,
        right - left,
        bottom - top,
        css="box",
        title=f"rows {int(top)}..{int(bottom) - 1}, columns {int(left)}..{int(right) - 1}",
    )
    return image_panel(
        png_data_uri(img),
        (h, w),
        scale=max(1.0, 240 / max(h, w)),
        cells=[box],
        caption=f"the input region {what} sees",
    )
