"""The one tiler (cnnviz.figures.mosaic) and the image encoders (cnnviz.figures.images)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from cnnviz.figures.images import (
    block_mean,
    downsample,
    image_mosaic,
    jpeg_data_uri,
    png_bytes,
    png_data_uri,
)
from cnnviz.figures.mosaic import as_uint8, grid_shape, normalise, tile, to_uint8_rgb


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_grid_shape_and_tile() -> None:
    assert grid_shape(0) == (0, 0) and grid_shape(5) == (2, 3) and grid_shape(5, 2) == (3, 2)
    img, idx = tile(np.arange(8.0).reshape(2, 2, 2), columns=2, gap=1)
    assert img.shape == (2, 5) and np.isnan(img[:, 2]).all()
    assert idx.tolist() == [[0, 0, -1, 1, 1], [0, 0, -1, 1, 1]]


def test_tile_row_gap_and_channels() -> None:
    img, idx = tile(np.ones((4, 1, 3)), columns=2, gap=1, row_gap=0)
    assert img.shape == (2, 7) and idx[1, 4] == 3  # rows stacked without a gap
    rgb, _ = tile(np.zeros((3, 2, 2, 3)), columns=3, fill=1.0)
    assert rgb.shape == (2, 8, 3) and rgb[0, 2].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="`tiles`"):
        tile(np.ones((2, 2)))


def test_normalise() -> None:
    v = np.array([[1.0, 3.0], [-2.0, np.nan]])
    n = normalise(v)
    assert n[0, 0] == pytest.approx(0.6) and n[1, 0] == 0 and np.isnan(n[1, 1])
    assert normalise(v, symmetric=True)[0, 1] == 1.0
    assert normalise(np.array([[1.0, 2.0], [5.0, 5.0]]), axis=(1,))[1].tolist() == [0.0, 0.0]
    assert np.isnan(normalise(np.full((2, 2), np.inf))).all()  # nothing finite: all blank


def test_uint8_conversions() -> None:
    out = to_uint8_rgb(np.array([[0.0, np.nan]]))
    assert out.shape == (1, 2, 3) and out[0, 1].tolist() == [255, 255, 255]
    assert as_uint8(np.array([[0.0, 0.5], [2.0, np.nan]])).tolist() == [[0, 128], [255, 255]]
    assert as_uint8(np.array([[300, -4]])).tolist() == [[255, 0]]
    assert as_uint8(np.zeros((2, 2, 1))).shape == (2, 2)
    with pytest.raises(ValueError, match="`image` must be"):
        as_uint8(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 1)])
def test_png_round_trip_is_pixel_exact(shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    back = _decode(png_bytes(img))
    assert np.array_equal(back, img.reshape(back.shape))
    uri = png_data_uri(img)
    assert uri.startswith("data:image/png;base64,")
    assert np.array_equal(_decode(base64.b64decode(uri.split(",", 1)[1])), back)


def test_image_mosaic_layout() -> None:
    tiles = np.zeros((5, 2, 3))
    tiles[4] = 1.0
    out, (rows, cols) = image_mosaic(tiles, columns=3, gap=1)
    assert (rows, cols) == (2, 3) and out.shape == (5, 11, 3) and out.dtype == np.uint8
    assert out[3:5, 4:7].min() == 255  # tile 4: row 1, column 1
    assert out[0:2, 0:3].max() == 0  # tile 0 is black
    assert out[2].min() == 255  # the gap row is white
    with pytest.raises(ValueError, match="`images` must be"):
        image_mosaic(np.zeros((2, 3)))


def test_jpeg_data_uri_and_downsample() -> None:
    img = np.random.default_rng(0).random((40, 40, 3))
    uri = jpeg_data_uri(img)
    assert uri.startswith("data:image/jpeg;base64,")
    assert _decode(base64.b64decode(uri.split(",", 1)[1])).shape == (40, 40, 3)
    a = np.arange(2 * 6 * 6 * 1, dtype=np.float32).reshape(2, 6, 6, 1)
    d = downsample(a, 3)
    assert d.shape == (2, 3, 3, 1)
    assert d[0, 0, 0, 0] == np.mean(a[0, :2, :2, 0])
    assert downsample(a, 8).shape == a.shape
    assert downsample(np.ones((5, 5, 3)), 2).shape == (2, 2, 3)  # padded to a multiple of 3
    assert block_mean(a, 1) is not None and block_mean(a, 2).shape == (2, 3, 3, 1)
