"""Tile many small maps into one image (numpy only), for image traces and logger images."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["grid_shape", "normalise", "tile", "to_uint8_rgb"]


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    """Rows and columns for ``count`` tiles (near-square unless ``columns`` is given)."""
    if count <= 0:
        return (0, 0)
    cols = columns or max(1, math.ceil(math.sqrt(count)))
    cols = min(cols, count)
    return (math.ceil(count / cols), cols)


def tile(
    tiles: np.ndarray,
    *,
    columns: int | None = None,
    gap: int = 1,
    fill: float = np.nan,
) -> tuple[np.ndarray, np.ndarray]:
    """Arrange ``[K, h, w]`` or ``[K, h, w, 3]`` tiles in a grid separated by ``gap`` pixels.

    Args:
        tiles: The tiles.
        columns: Tiles per row (default: near-square).
        gap: Pixels between tiles, filled with ``fill`` (NaN draws as blank in heatmaps).
        fill: Value of gap pixels.

    Returns:
        ``(image, index)``: the mosaic and, per pixel, the tile index (-1 in gaps), for hover.
    """
    tiles = np.asarray(tiles)
    k, h, w = tiles.shape[:3]
    rows, cols = grid_shape(k, columns)
    extra = tiles.shape[3:]
    height = rows * h + (rows - 1) * gap if rows else 0
    width = cols * w + (cols - 1) * gap if cols else 0
    out = np.full((height, width, *extra), fill, dtype=np.float32)
    index = np.full((height, width), -1, dtype=np.int32)
    for i in range(k):
        r, c = divmod(i, cols)
        y, x = r * (h + gap), c * (w + gap)
        out[y : y + h, x : x + w] = tiles[i]
        index[y : y + h, x : x + w] = i
    return out, index


def normalise(
    values: np.ndarray, *, symmetric: bool = False, axis: tuple[int, ...] | None = None
) -> np.ndarray:
    """Scale to [0, 1] (or [-1, 1] around zero when ``symmetric``), NaN-safe.

    ``axis`` selects the axes reduced for the scale (``None``: the whole array), so
    ``axis=(1, 2)`` on ``[K, h, w]`` normalises each tile on its own.
    """
    v = np.asarray(values, dtype=np.float32)
    finite = np.where(np.isfinite(v), v, np.nan)
    if symmetric:
        scale = np.nanmax(np.abs(finite), axis=axis, keepdims=True) if finite.size else 1.0
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        return finite / scale
    lo = np.nanmin(finite, axis=axis, keepdims=True)
    hi = np.nanmax(finite, axis=axis, keepdims=True)
    span = np.where(np.isfinite(hi - lo) & (hi - lo > 0), hi - lo, 1.0)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    return (finite - lo) / span


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """A [0, 1] grey ``[H, W]`` or colour ``[H, W, 3]`` image as uint8 ``[H, W, 3]``.

    NaN pixels (gaps between tiles) become white.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.where(np.isfinite(img), np.clip(img, 0, 1), 1.0)
    return (img * 255 + 0.5).astype(np.uint8)
