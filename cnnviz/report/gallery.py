"""Picture panels (:class:`cnnviz.figures.panels.Panel`) drawn with plain HTML.

An ``<img>`` with positioned boxes costs the browser next to nothing, where a Plotly figure
costs tens of milliseconds, which adds up over a hundred layers. Hover text comes from
``title`` attributes on transparent cells laid over the image; padding is hatched with CSS.
Every string is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnviz.figures.panels import Cell, Panel
from cnnviz.report.html import esc

__all__ = ["image_panel", "panel_html", "pictures_css"]


def _cells_html(cells: Sequence[Cell], h: float, w: float) -> list[str]:
    out = []
    for c in cells:
        style = (
            f"left:{100 * c.x / w:.2f}%;top:{100 * c.y / h:.2f}%;"
            f"width:{100 * c.w / w:.2f}%;height:{100 * c.h / h:.2f}%"
        )
        title = f' title="{esc(c.title)}"' if c.title else ""
        label = f"<span>{esc(c.label)}</span>" if c.label else ""
        out.append(f'<div class="cell {esc(c.kind)}" style="{style}"{title}>{label}</div>')
    return out


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
        # width and height give the box its shape before a lazy image is loaded
        f'<div class="panel-img"><img alt="{esc(caption)}" width="{w}" height="{h}" '
        f'loading="lazy" decoding="async" src="{esc(uri)}">',
        *_cells_html(cells, h, w),
        "</div>",
    ]
    if caption:
        parts.append(f"<figcaption>{esc(caption)}</figcaption>")
    parts.append("</figure>")
    return "".join(parts)


def panel_html(panel: Panel, pictures: dict[str, str] | None = None) -> str:
    """A :class:`~cnnviz.figures.panels.Panel` as an HTML ``<figure>``.

    A panel with a ``canvas`` larger than its picture is drawn on a grey area with the picture
    at its ``offset``. With ``pictures`` (a page's ``{data URI: CSS class}``), the picture is
    drawn as a background of that class, so a page holds a picture shown in many panels (the
    probe image under every layer's receptive field) once.
    """
    uri = panel.data_uri()
    if panel.canvas is None and pictures is None:
        return image_panel(
            uri,
            panel.size,
            scale=panel.scale,
            cells=panel.cells,
            caption=panel.caption,
            max_width=panel.max_width,
        )
    ch, cw = panel.size
    ih, iw = panel.image.shape[:2]
    top, left = panel.offset
    place = (
        f"left:{100 * left / cw:.2f}%;top:{100 * top / ch:.2f}%;"
        f"width:{100 * iw / cw:.2f}%;height:{100 * ih / ch:.2f}%"
    )
    if pictures is not None:
        cls = pictures.setdefault(uri, f"pic-{len(pictures)}")
        picture = f'<div class="pic {cls}" role="img" style="{place}"></div>'
    else:
        picture = (
            f'<img class="placed" alt="" loading="lazy" decoding="async" src="{esc(uri)}" '
            f'style="{place}">'
        )
    width = panel.width_px()
    parts = [
        f'<figure class="panel" style="width:{width}px">',
        f'<div class="panel-img canvas" style="aspect-ratio:{cw}/{ch}">{picture}',
        *_cells_html(panel.cells, ch, cw),
        "</div>",
    ]
    if panel.caption:
        parts.append(f"<figcaption>{esc(panel.caption)}</figcaption>")
    parts.append("</figure>")
    return "".join(parts)


def pictures_css(pictures: dict[str, str]) -> str:
    """The CSS rules of a page's shared pictures (:func:`panel_html`)."""
    return "".join(f'.{cls}{{background-image:url("{uri}")}}' for uri, cls in pictures.items())
