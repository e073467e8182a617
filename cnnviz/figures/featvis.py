"""Feature visualization: the synthetic input that excites each channel most."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnviz.figures.mosaic import image_mosaic
from cnnviz.figures.panels import Cell, Panel

__all__ = ["featvis_panel"]


def featvis_panel(
    images: np.ndarray,
    activations: np.ndarray | None = None,
    *,
    layer: str,
    channels: Sequence[int] | None = None,
    columns: int = 8,
) -> Panel:
    """A grid of optimised inputs, one per channel, labelled with the channel.

    Args:
        images: ``[K, H, W, C]`` (or ``[K, H, W]``) in [0, 1]; NaN is drawn white.
        activations: ``[K]`` objective value each image reaches (hover).
        layer: Layer name.
        channels: Real channel index of each image.
        columns: Images per row.

    Returns:
        The panel (draw it with the report, or :func:`~cnnviz.figures.panels.panel_figure`).

    Raises:
        ValueError: For images of another shape or a wrong ``channels``.

    Example:
        >>> panel = featvis_panel(images, acts, layer="features.3", channels=[0, 5])
    """
    imgs = np.asarray(images)
    if imgs.ndim not in (3, 4):
        raise ValueError(f"`images` must be [K, H, W, C] or [K, H, W]; got shape {imgs.shape}")
    k, h, w = imgs.shape[:3]
    real = list(channels) if channels is not None else list(range(k))
    if len(real) != k:
        raise ValueError(f"`channels` has {len(real)} entries for {k} images")
    mosaic, (_, cols) = image_mosaic(imgs, columns=min(columns, max(k, 1)), gap=2)
    acts = None if activations is None else np.asarray(activations, dtype=np.float64)
    cells = []
    for i in range(k):
        r, cc = divmod(i, cols)
        t = f"{layer} channel {real[i]}"
        if acts is not None and i < len(acts):
            t += f": activation {acts[i]:.4g}"
        cells.append(Cell(cc * (w + 2), r * (h + 2), w, h, title=t, label=f"ch {real[i]}"))
    return Panel(
        image=mosaic,
        cells=tuple(cells),
        caption="optimised inputs (hover: activation reached)",
        scale=max(1.0, min(128 / max(h, 1), 1000 / mosaic.shape[1])),
        photo=True,
        title=f"{layer} — feature visualization (inputs optimised to excite each channel)",
    )
