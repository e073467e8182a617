"""Images for figures and pages: PNG and JPEG data URIs (Pillow), and block downsampling.

The mosaic layout itself lives in :mod:`cnnviz.figures.mosaic`; :func:`image_mosaic` is
re-exported here for the callbacks that import it from this module.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from cnnviz.figures.mosaic import as_uint8, image_mosaic

__all__ = [
    "as_uint8",
    "block_mean",
    "downsample",
    "image_mosaic",
    "jpeg_data_uri",
    "png_bytes",
    "png_data_uri",
    "shrink_factor",
]


def png_bytes(image: np.ndarray, *, level: int = 9) -> bytes:
    """Encode an image (see :func:`~cnnviz.figures.mosaic.as_uint8`) as a PNG, grey or RGB.

    Args:
        image: ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``; floats in [0, 1] or uint8.
        level: zlib compression level (0-9).

    Returns:
        The PNG file's bytes (pixel exact).
    """
    buf = io.BytesIO()
    Image.fromarray(as_uint8(image)).save(buf, format="PNG", compress_level=int(level))
    return buf.getvalue()


def png_data_uri(image: np.ndarray) -> str:
    """The image as a ``data:image/png;base64,...`` URI.

    Example:
        >>> png_data_uri(np.zeros((2, 2))).startswith("data:image/png;base64,")
        True
    """
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def jpeg_data_uri(image: np.ndarray, quality: int = 85) -> str:
    """The image as a ``data:image/jpeg`` URI (no chroma subsampling).

    Several times smaller than PNG for photographic or noisy content (dataset patches, feature
    visualizations); colours of few-pixel tiles survive because chroma is not subsampled.
    """
    buf = io.BytesIO()
    Image.fromarray(as_uint8(image)).save(buf, format="JPEG", quality=int(quality), subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def downsample(images: np.ndarray, max_size: int) -> np.ndarray:
    """Shrink ``[..., H, W, C]`` images by an integer factor, averaging pixel blocks.

    Both sides end up at most ``max_size``; edges are padded by repetition to a multiple of
    the factor.

    Args:
        images: Images with the two spatial axes at positions -3 and -2 (``[..., H, W, C]``).
        max_size: Largest side allowed.

    Returns:
        The images, unchanged when already small enough.
    """
    a = np.asarray(images, dtype=np.float32)
    return block_mean(a, shrink_factor(a.shape[-3], a.shape[-2], max_size))


def shrink_factor(height: int, width: int, max_size: int) -> int:
    """The integer factor :func:`downsample` divides ``height`` and ``width`` by."""
    return int(np.ceil(max(height, width) / max_size)) if max_size > 0 else 1


def block_mean(images: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` × ``factor`` pixel blocks of ``[..., H, W, C]`` images."""
    a = np.asarray(images, dtype=np.float32)
    if factor <= 1:
        return a
    h, w = a.shape[-3], a.shape[-2]
    ph, pw = (-h) % factor, (-w) % factor
    pad = [(0, 0)] * (a.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
    a = np.pad(a, pad, mode="edge")
    shape = (*a.shape[:-3], a.shape[-3] // factor, factor, a.shape[-2] // factor, factor)
    return a.reshape((*shape, a.shape[-1])).mean(axis=(-4, -2))
