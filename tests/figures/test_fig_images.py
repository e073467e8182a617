"""PNG data URIs and image mosaics (cnnviz.figures.images)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from cnnviz.figures.images import (
    as_uint8_image,
    downsample,
    image_mosaic,
    jpeg_data_uri,
    png_bytes,
    png_data_uri,
)


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 1)])
def test_png_round_trip_is_pixel_exact(shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    back = _decode(png_bytes(img))
    assert np.array_equal(back, img.reshape(back.shape))


def test_float_images_are_clipped_and_nan_is_white() -> None:
    img = np.array([[0.0, 0.5], [2.0, np.nan]])
    assert as_uint8_image(img).tolist() == [[0, 128], [255, 255]]
    uri = png_data_uri(img)
    assert uri.startswith("data:image/png;base64,")
    assert _decode(base64.b64decode(uri.split(",", 1)[1])).tolist() == [[0, 128], [255, 255]]


def test_bad_image_shape() -> None:
    with pytest.raises(ValueError, match="`image` must be"):
        as_uint8_image(np.zeros((2, 2, 2)))


def test_image_mosaic_layout() -> None:
    tiles = np.zeros((5, 2, 3))
    tiles[4] = 1.0
    out, (rows, cols) = image_mosaic(tiles, columns=3, gap=1)
    assert (rows, cols) == (2, 3) and out.shape == (5, 11, 3)
    assert out[3:5, 4:7].min() == 255  # tile 4: row 1, column 1
    assert out[0:2, 0:3].max() == 0  # tile 0 is black
    assert out[2].min() == 255  # the gap row is white
    with pytest.raises(ValueError, match="`images` must be"):
        image_mosaic(np.zeros((2, 3)))


def test_jpeg_data_uri_and_downsample() -> None:
    img = np.random.default_rng(0).random((40, 40, 3))
    uri = jpeg_data_uri(img)
    assert uri.startswith("data:image/jpeg;base64,")
    back = _decode(base64.b64decode(uri.split(",", 1)[1]))
    assert back.shape == (40, 40, 3)
    a = np.arange(2 * 6 * 6 * 1, dtype=np.float32).reshape(2, 6, 6, 1)
    d = downsample(a, 3)
    assert d.shape == (2, 3, 3, 1)
    assert d[0, 0, 0, 0] == np.mean(a[0, :2, :2, 0])
    assert downsample(a, 8) is not None and downsample(a, 8).shape == a.shape
    assert downsample(np.ones((5, 5, 3)), 2).shape == (2, 2, 3)  # padded to a multiple of 3
