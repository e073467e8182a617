"""Images for figures: PNG data URIs (compact, pixel-exact) from arrays, and mosaics of them."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np

__all__ = [
    "as_uint8_image",
    "downsample",
    "image_mosaic",
    "jpeg_data_uri",
    "png_bytes",
    "png_data_uri",
]


def as_uint8_image(image: np.ndarray) -> np.ndarray:
    """An image ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` as uint8 ``[H, W]`` or ``[H, W, 3]``.

    Floats are read as [0, 1] (clipped); NaN becomes white. Integer images must be 0..255.

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
    if np.issubdtype(img.dtype, np.integer):
        return np.clip(img, 0, 255).astype(np.uint8)
    f = np.asarray(img, dtype=np.float32)
    f = np.where(np.isfinite(f), np.clip(f, 0.0, 1.0), 1.0)
    return (f * 255 + 0.5).astype(np.uint8)


def _chunk(tag: bytes, data: bytes) -> bytes:
    body = tag + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an image (see :func:`as_uint8_image`) as PNG (grey or RGB, 8 bits)."""
    img = as_uint8_image(image)
    h, w = img.shape[:2]
    colour = 2 if img.ndim == 3 else 0
    rows = img.reshape(h, -1)
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def png_data_uri(image: np.ndarray) -> str:
    """The image as a ``data:image/png;base64,...`` URI (for ``go.Image(source=...)``).

    Example:
        >>> png_data_uri(np.zeros((2, 2))).startswith("data:image/png;base64,")
        True
    """
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def jpeg_data_uri(image: np.ndarray, quality: int = 85) -> str:
    """The image as a ``data:image/jpeg`` URI.

    Several times smaller than PNG for photographic or noisy content (dataset patches, feature
    visualizations). Falls back to PNG when Pillow (a torchvision dependency) is missing.
    """
    img = as_uint8_image(image)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - torchvision brings Pillow
        return png_data_uri(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def downsample(images: np.ndarray, max_size: int) -> np.ndarray:
    """Shrink ``[..., H, W, C]`` images by an integer factor, averaging pixel blocks.

    Both sides end up at most ``max_size``.

    Args:
        images: Images with the two spatial axes at positions -3 and -2 (``[..., H, W, C]``).
        max_size: Largest side allowed.

    Returns:
        The images, unchanged when already small enough.
    """
    a = np.asarray(images, dtype=np.float32)
    h, w = a.shape[-3], a.shape[-2]
    f = int(np.ceil(max(h, w) / max_size)) if max_size > 0 else 1
    if f <= 1:
        return a
    ph, pw = (-h) % f, (-w) % f
    pad = [(0, 0)] * (a.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
    a = np.pad(a, pad, mode="edge")
    shape = (*a.shape[:-3], a.shape[-3] // f, f, a.shape[-2] // f, f, a.shape[-1])
    return a.reshape(shape).mean(axis=(-4, -2))


def image_mosaic(
    images: np.ndarray, *, columns: int | None = None, gap: int = 1
) -> tuple[np.ndarray, tuple[int, int]]:
    """Tile ``[K, H, W]`` or ``[K, H, W, C]`` images (floats in [0, 1] or uint8) on white.

    Returns:
        ``(mosaic uint8 [H', W', 3], (rows, columns))``.
    """
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[..., None]
    if imgs.ndim != 4 or imgs.shape[3] not in (1, 3):
        raise ValueError(f"`images` must be [K, H, W] or [K, H, W, 1|3]; got shape {imgs.shape}")
    k, h, w = imgs.shape[:3]
    u8 = np.stack([as_uint8_image(im) for im in imgs]) if k else np.zeros((0, h, w), np.uint8)
    if u8.ndim == 3:
        u8 = np.repeat(u8[..., None], 3, axis=3)
    cols = max(1, min(k, columns or int(np.ceil(np.sqrt(max(k, 1))))))
    rows = max(1, int(np.ceil(k / cols)))
    out = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, np.uint8)
    for i in range(k):
        r, cc = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, cc * (w + gap) : cc * (w + gap) + w] = u8[i]
    return out, (rows, cols)
