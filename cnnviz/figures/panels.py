"""Picture panels: an image with labelled rectangles over it, and their Plotly rendering.

Dataset patches, feature visualisations and receptive-field boxes are pictures. Their builders
(:func:`~cnnviz.figures.topk.topk_panel`, :func:`~cnnviz.figures.featvis.featvis_panel`,
:func:`~cnnviz.figures.receptive_field.receptive_field_panel`) return a :class:`Panel`: the
picture (uint8) and :class:`Cell` s over it (hover text, labels, boxes, padding marks). The
report draws a panel as plain HTML (an ``<img>`` costs the browser next to nothing, where a
Plotly figure costs tens of milliseconds); loggers get :func:`panel_figure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import plotly.graph_objects as go

from cnnviz.figures._common import base_layout, fig_height, plotly_text
from cnnviz.figures.images import jpeg_data_uri, png_data_uri

__all__ = ["Cell", "CellKind", "Panel", "panel_figure"]

#: ``tag``: hover area with a corner label; ``box``: the field a unit sees (solid outline);
#: ``local``: a unit's local field when it also sees global context (dashed outline);
#: ``pad``: the zero padding around an image (hatched); ``edge``: the image border (dotted).
CellKind = Literal["tag", "box", "local", "pad", "edge"]


@dataclass(frozen=True)
class Cell:
    """A rectangle over the picture, in picture pixels.

    Attributes:
        x: Left edge.
        y: Top edge.
        w: Width.
        h: Height.
        title: Hover text (plain text).
        label: A short corner label (plain text).
        kind: How it is drawn (:data:`CellKind`).
    """

    x: float
    y: float
    w: float
    h: float
    title: str = ""
    label: str = ""
    kind: CellKind = "tag"


@dataclass(frozen=True)
class Panel:
    """A picture with cells, ready to be drawn as HTML or as a Plotly figure.

    Attributes:
        image: ``[H, W, 3]`` uint8.
        cells: Rectangles over it, in canvas pixels.
        caption: One line under the picture (plain text).
        scale: Screen pixels per picture pixel the picture is meant to be shown at.
        max_width: Widest the picture is drawn (screen pixels).
        photo: Encode as JPEG (noisy content) rather than PNG (exact pixels).
        title: A title (for the Plotly rendering).
        canvas: ``(height, width)`` of the area drawn, when larger than the picture (a margin
            of padding around it); ``None``: the picture's size.
        offset: ``(top, left)`` of the picture on the canvas.
    """

    image: np.ndarray
    cells: tuple[Cell, ...] = field(default_factory=tuple)
    caption: str = ""
    scale: float = 1.0
    max_width: int = 1000
    photo: bool = False
    title: str = ""
    canvas: tuple[int, int] | None = None
    offset: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the area drawn (the canvas)."""
        if self.canvas is not None:
            return int(self.canvas[0]), int(self.canvas[1])
        return int(self.image.shape[0]), int(self.image.shape[1])

    def data_uri(self) -> str:
        """The picture as a data URI (JPEG q90 for photos, else PNG)."""
        return jpeg_data_uri(self.image, quality=90) if self.photo else png_data_uri(self.image)

    def width_px(self) -> int:
        """The width it is drawn at."""
        return int(min(self.max_width, max(1.0, self.size[1] * self.scale)))


_LINES = {
    "box": {"color": "#ff2d2d", "width": 2},
    "local": {"color": "#ffd400", "width": 2, "dash": "dash"},
    "edge": {"color": "#ffffff", "width": 1, "dash": "dot"},
}


def panel_figure(
    panel: Panel, *, title: str | None = None, subtitle: str | None = None
) -> go.Figure:
    """A :class:`Panel` as a Plotly figure (for loggers that take figures).

    Boxes become outlines, padding semi-transparent red, labels text, hover texts invisible
    markers at the cells' centres. ``subtitle`` is a smaller line under the title (what the
    marks in the picture mean).
    """
    h, w = panel.size
    top, left = panel.offset
    fig = go.Figure(go.Image(source=panel.data_uri(), x0=left, y0=top, hoverinfo="skip"))
    shapes = []
    xs, ys, texts, lx, ly, ltext = [], [], [], [], [], []
    for c in panel.cells:
        rect = {
            "type": "rect",
            "xref": "x",
            "yref": "y",
            "x0": c.x - 0.5,
            "x1": c.x + c.w - 0.5,
            "y0": c.y - 0.5,
            "y1": c.y + c.h - 0.5,
        }
        if c.kind == "pad":
            shapes.append({**rect, "fillcolor": "rgba(220,40,40,0.35)", "line": {"width": 0}})
        elif c.kind in _LINES:
            shapes.append({**rect, "line": _LINES[c.kind]})
        if c.title:
            xs.append(c.x + (c.w - 1) / 2)
            ys.append(c.y + (c.h - 1) / 2)
            texts.append(plotly_text(c.title))
        if c.label:
            lx.append(c.x)
            ly.append(c.y)
            ltext.append(plotly_text(c.label))
    if xs:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                text=texts,
                hovertemplate="%{text}<extra></extra>",
                marker={"size": 12, "opacity": 0, "symbol": "square"},
                showlegend=False,
            )
        )
    if lx:
        fig.add_trace(
            go.Scatter(
                x=lx,
                y=ly,
                mode="text",
                text=ltext,
                textposition="bottom right",
                textfont={"size": 9, "color": "#222"},
                hoverinfo="skip",
                showlegend=False,
            )
        )
    if panel.canvas is not None:
        fig.update_layout(plot_bgcolor="rgb(200,200,200)")
    fig.update_layout(shapes=shapes)
    base_layout(
        fig,
        plotly_text(title or panel.title or panel.caption),
        height=fig_height(min(760, panel.width_px() * h / max(w, 1))),
    )
    if subtitle:
        fig.update_layout(
            title={"subtitle": {"text": plotly_text(subtitle), "font": {"size": 11}}},
            margin={"t": 70},
        )
    fig.update_xaxes(visible=False, range=[-0.5, w - 0.5])
    fig.update_yaxes(visible=False, range=[h - 0.5, -0.5], scaleanchor="x")
    return fig
