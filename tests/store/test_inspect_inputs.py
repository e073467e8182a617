"""``cnnviz inspect`` input limits and the text it takes from files and models."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from cnnviz import inspect as inspect_mod
from cnnviz._text import safe_text
from cnnviz.figures.images import png_bytes
from cnnviz.inspect import image_size, load_images
from cnnviz.report.html import Page, esc

RLO = "\u202e"


def _encoded(fmt: str, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
def test_image_size_reads_the_header(fmt: str) -> None:
    assert image_size(_encoded(fmt, 37, 21)) == (37, 21)


def test_image_size_of_something_else() -> None:
    assert image_size(b"%PDF-1.4 ...") is None
    assert image_size(b"") is None


def _png_header(w: int, h: int) -> bytes:
    """A PNG that claims ``w`` × ``h`` pixels (IHDR only: nothing to decode)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "huge.png"
    f.write_bytes(_png_header(10_000, 10_000))
    import torchvision.io

    def never(*args, **kwargs):
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(torchvision.io, "decode_image", never)
    with pytest.raises(ValueError, match=r"huge\.png' is 10000×10000 = 100,000,000 pixels, over"):
        load_images([f], 32, 3, "none")
    with pytest.raises(ValueError, match="the limit of 25,000,000; resize it first"):
        load_images([f], 32, 3, "none")
    with pytest.raises(ValueError, match="`max_pixels` must be a positive int"):
        load_images([f], 32, 3, "none", max_pixels=0)


def test_the_pixel_limit_can_be_raised(tmp_path: Path) -> None:
    f = tmp_path / "small.png"
    f.write_bytes(png_bytes(np.zeros((20, 30, 3), dtype=np.uint8)))
    with pytest.raises(ValueError, match="over the limit of 100"):
        load_images([f], 8, 3, "none", max_pixels=100)
    x, display = load_images([f], 8, 3, "none", max_pixels=600)
    assert x.shape == (1, 3, 8, 8) and display.shape == (1, 8, 8, 3)


def test_a_fifo_or_a_non_image_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            load_images([fifo], 8, 3, "none")
        except BaseException as err:
            errors.append(err)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert isinstance(errors[0], ValueError) and "is not a regular file" in str(errors[0])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="is not a PNG, JPEG, GIF, BMP or WebP image"):
        load_images([text], 8, 3, "none")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images([tmp_path / "missing.png"], 8, 3, "none")
    monkey = tmp_path / "big.png"
    monkey.write_bytes(png_bytes(np.zeros((4, 4, 3), dtype=np.uint8)))
    old = inspect_mod.MAX_IMAGE_BYTES
    inspect_mod.MAX_IMAGE_BYTES = 10
    try:
        with pytest.raises(ValueError, match="bytes, over the limit of 10"):
            load_images([monkey], 8, 3, "none")
    finally:
        inspect_mod.MAX_IMAGE_BYTES = old


def test_bidi_overrides_are_neutralised_in_text_and_figures() -> None:
    name = f"evil{RLO}gnp.exe"
    assert safe_text(name) == "evil[U+202E]gnp.exe"
    assert esc(f"<b>{name}</b>") == "&lt;b&gt;evil[U+202E]gnp.exe&lt;/b&gt;"
    for ch in ("\u202a", "\u202d", "\u2066", "\u2069", "\u200e", "\u200f"):
        assert f"[U+{ord(ch):04X}]" == esc(ch)
    fig = go.Figure(go.Scatter(x=[0], y=[0], name=name))
    fig.update_layout(title={"text": name})
    payload = Page("t").encode(fig)
    assert RLO not in payload and "\\u202e" not in payload.lower()
    assert "evil[U+202E]gnp.exe" in payload


def test_inspect_shows_file_names_with_overrides_neutralised(tmp_path: Path) -> None:
    from cnnviz.report.cli import run_inspect

    f = tmp_path / f"cat{RLO}gnp.png"
    f.write_bytes(png_bytes(np.full((40, 40, 3), 128, dtype=np.uint8)))
    args = ["--model", "lenet5", "--images", str(f), "--methods", "--run-dir", str(tmp_path / "r")]
    out = run_inspect([*args, "-q"])
    html = out.read_text(encoding="utf-8")
    assert RLO not in html and "cat[U+202E]gnp.png" in html
    info = json.loads((tmp_path / "r" / "cnnviz" / "run.json").read_text())
    assert info["data"] == "images: cat[U+202E]gnp.png" and info["status"] == "finished"
    assert not (tmp_path / "r" / "cnnviz" / "writer.lock").exists()  # the lease was released
