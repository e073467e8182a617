"""Tile many small maps into one image (numpy only): the one tiler of cnnviz.

:func:`tile` lays out float tiles with gaps (NaN: drawn blank in heatmaps) and returns, per
pixel, the tile index (for hover); :func:`image_mosaic` is the same layout as a uint8 picture on
white (for image loggers and HTML panels). :func:`normalise` and :func:`to_uint8_rgb` turn values
into displayable pixels.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["grid_shape", "image_mosaic", "normalise", "tile", "to_uint8_rgb"]


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
    row_gap: int | None = None,
    fill: float = np.nan,
) -> tuple[np.ndarray, np.ndarray]:
    """Arrange ``[K, h, w]`` or ``[K, h, w, C]`` tiles in a grid.

    Args:
        tiles: The tiles.
        columns: Tiles per row (default: near-square).
        gap: Pixels between columns, filled with ``fill``.
        row_gap: Pixels between rows (default ``gap``).
        fill: Value of gap pixels (NaN draws as blank in heatmaps).

    Returns:
        ``(image, index)``: the mosaic and, per pixel, the tile index (-1 in gaps).

    Example:
        >>> img, idx = tile(np.zeros((6, 3, 3)), columns=3)
        >>> img.shape, idx[0, 4]
        ((7, 11), 1)
    """
    tiles = np.asarray(tiles)
    if tiles.ndim < 3:
        raise ValueError(f"`tiles` must be [K, h, w] or [K, h, w, C]; got shape {tiles.shape}")
    rgap = gap if row_gap is None else row_gap
    k, h, w = tiles.shape[:3]
    rows, cols = grid_shape(k, columns)
    extra = tiles.shape[3:]
    height = rows * h + (rows - 1) * rgap if rows else 0
    width = cols * w + (cols - 1) * gap if cols else 0
    out = np.full((height, width, *extra), fill, dtype=np.float32)
    index = np.full((height, width), -1, dtype=np.int32)
    for i in range(k):
        r, c = divmod(i, cols)
        y, x = r * (h + rgap), c * (w + gap)
        out[y : y + h, x : x + w] = tiles[i]
        index[y : y + h, x : x + w] = i
    return out, index


def normalise(
    values: np.ndarray, *, symmetric: bool = False, axis: tuple[int, ...] | None = None
) -> np.ndarray:
    """Scale to [0, 1] (or [-1, 1] around zero when ``symmetric``), NaN-safe.

    ``axis`` selects the axes reduced for the scale (``None``: the whole array), so
    ``axis=(1, 2)`` on ``[K, h, w]`` normalises each tile on its own. Inf counts as missing.
    """
    v = np.asarray(values, dtype=np.float32)
    finite = np.where(np.isfinite(v), v, np.nan)
    if not np.isfinite(finite).any():
        return finite
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN tile is simply blank
        if symmetric:
            scale = np.nanmax(np.abs(finite), axis=axis, keepdims=True)
            scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
            return finite / scale
        lo = np.nanmin(finite, axis=axis, keepdims=True)
        hi = np.nanmax(finite, axis=axis, keepdims=True)
    span = np.where(np.isfinite(hi - lo) & (hi - lo > 0), hi - lo, 1.0)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    return (finite - lo) / span


def as_uint8(image: np.ndarray) -> np.ndarray:
    """An image ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` as uint8 ``[H, W]`` or ``[H, W, 3]``.

    Floats are read as [0, 1] (clipped); NaN and Inf become white. Integer images must be
    0..255 (clipped).

    Raises:
        ValueError: If ``image`` is not 2-D or 3-D with 1 or 3 channels.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"`image` must be [H, W], [H, W, 1] or [H, W, 3]; got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.integer) or img.dtype == bool:
        return np.clip(img.astype(np.int64) * (255 if img.dtype == bool else 1), 0, 255).astype(
            np.uint8
        )
    f = np.asarray(img, dtype=np.float32)
    f = np.where(np.isfinite(f), np.clip(f, 0.0, 1.0), 1.0)
    return (f * 255 + 0.5).astype(np.uint8)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """A grey ``[H, W]`` or colour ``[H, W, 3]`` image as uint8 ``[H, W, 3]`` (:func:`as_uint8`).

    NaN pixels (gaps between tiles) become white.

    Example:
        >>> to_uint8_rgb(np.array([[0.0, np.nan]]))[0, 1].tolist()
        [255, 255, 255]
    """
    img = as_uint8(image)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def image_mosaic(
    images: np.ndarray, *, columns: int | None = None, gap: int = 1
) -> tuple[np.ndarray, tuple[int, int]]:
    """Tile ``[K, H, W]`` or ``[K, H, W, 1|3]`` images (floats in [0, 1] or uint8) on white.

    Returns:
        ``(mosaic uint8 [H', W', 3], (rows, columns))``.

    Raises:
        ValueError: For images of another shape.
    """
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or imgs.shape[3] not in (1, 3):
        raise ValueError(f"`images` must be [K, H, W] or [K, H, W, 1|3]; got shape {imgs.shape}")
    if imgs.shape[3] == 1:
        imgs = np.repeat(imgs, 3, axis=3)
    if imgs.dtype != np.uint8:
        imgs = np.stack([as_uint8(im) for im in imgs]) if len(imgs) else imgs.astype(np.uint8)
    k = len(imgs)
    rows, cols = grid_shape(max(k, 1), columns)
    if k == 0:
        return np.full((*imgs.shape[1:3], 3), 255, np.uint8), (1, 1)
    img, _ = tile(imgs.astype(np.float32), columns=cols, gap=gap, fill=255.0)
    return img.astype(np.uint8), (rows, cols)
