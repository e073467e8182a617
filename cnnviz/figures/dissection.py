"""Concept dissection (Network Dissection, Bau et al. 2017): what the units of each layer detect.

:func:`detectors_figure` is the paper's chart: unique detectors per layer, stacked by concept
category, beside the same counts for a randomised copy of the model (what chance gives);
:func:`detectors_over_time_figure` follows each layer's share of detector units over training.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cnnviz.figures._common import base_layout, plotly_text

__all__ = [
    "CATEGORY_COLOURS",
    "category_order",
    "detectors_figure",
    "detectors_over_time_figure",
]

#: Colour of each concept category (the paper's categories and Shapes' ``colour``).
CATEGORY_COLOURS: dict[str, str] = {
    "object": "#1f77b4",
    "scene": "#9467bd",
    "part": "#ff7f0e",
    "material": "#8c564b",
    "texture": "#e377c2",
    "colour": "#2ca02c",
}
_OTHER = ("#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78")
_LAYER_COLOURS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)


def category_order(categories: Iterable[str]) -> list[str]:
    """The categories in the paper's order, then any others alphabetically.

    The paper's order: object, scene, part, material, texture, colour.

    Example:
        >>> category_order(["colour", "part", "object", "zzz"])
        ['object', 'part', 'colour', 'zzz']
    """
    known = list(CATEGORY_COLOURS)
    cats = set(categories)
    return [c for c in known if c in cats] + sorted(cats - set(known))


def _colour(category: str, order: Sequence[str]) -> str:
    if category in CATEGORY_COLOURS:
        return CATEGORY_COLOURS[category]
    others = [c for c in order if c not in CATEGORY_COLOURS]
    return _OTHER[others.index(category) % len(_OTHER)] if category in others else _OTHER[0]


def detectors_figure(
    layers: Sequence[str],
    counts: Mapping[str, Sequence[int | None]] | None,
    control: Mapping[str, Sequence[int | None]] | None = None,
    *,
    names: Sequence[Mapping[str, Sequence[str]]] | None = None,
    control_names: Sequence[Mapping[str, Sequence[str]]] | None = None,
    label: str = "the model",
    control_label: str = "randomised control",
    title: str = "Unique detectors per layer, by concept category",
) -> go.Figure:
    """Stacked bars of unique detectors per layer and category; the control beside them.

    A unique detector is a concept that at least one unit of the layer detects (its IoU
    reaches the threshold). With ``control``, a second panel shows the same counts for the
    randomised copy of the model on the same y scale: what is learned against what is chance.

    Args:
        layers: The layers (x axis), in the model's order (short names read best).
        counts: Category to one count per layer (``None`` where the layer has no record);
            ``None`` when only the control was recorded.
        control: The same for the randomised control.
        names: Per layer, category to the concepts detected (hover text).
        control_names: The same for the control.
        label: What the first panel shows (``epoch 5``).
        control_label: What the second panel shows.
        title: Figure title.

    Returns:
        The figure.

    Raises:
        ValueError: If neither ``counts`` nor ``control`` is given, or a count list does not
            have one entry per layer.

    Example:
        >>> fig = detectors_figure(["c1", "c3"], {"object": [0, 3], "colour": [2, 1]},
        ...                        {"object": [0, 0], "colour": [1, 0]})
    """
    panels = [
        (p, c, n)
        for p, c, n in (("model", counts, names), ("control", control, control_names))
        if c is not None
    ]
    if not panels:
        raise ValueError("give `counts` and/or `control`")
    for _, c, _ in panels:
        for cat, values in c.items():
            if len(values) != len(layers):
                raise ValueError(
                    f"category {cat!r} has {len(values)} counts for {len(layers)} layers"
                )
    order = category_order({cat for _, c, _ in panels for cat in c})
    titles = {"model": plotly_text(label), "control": plotly_text(control_label)}
    fig = make_subplots(
        rows=1,
        cols=len(panels),
        shared_yaxes=True,
        subplot_titles=[titles[p] for p, _, _ in panels],
        horizontal_spacing=0.06,
    )
    xs = [plotly_text(n) for n in layers]
    shown: set[str] = set()
    top = 1
    for col, (_, c, detail) in enumerate(panels, start=1):
        totals = [0] * len(layers)
        for cat in order:
            values = list(c.get(cat, [None] * len(layers)))
            hover = []
            for i, v in enumerate(values):
                found = list(
                    (detail[i] if detail is not None and i < len(detail) else {}).get(cat, ())
                )
                what = f" ({plotly_text(', '.join(found[:8]))}{', …' if len(found) > 8 else ''})"
                hover.append(
                    "no record"
                    if v is None
                    else f"{v} {plotly_text(cat)} detectors" + (what if found else "")
                )
                totals[i] += int(v or 0)
            fig.add_trace(
                go.Bar(
                    x=xs,
                    y=[0 if v is None else int(v) for v in values],
                    name=plotly_text(cat),
                    legendgroup=cat,
                    showlegend=cat not in shown,
                    marker={"color": _colour(cat, order)},
                    customdata=hover,
                    hovertemplate="%{x}: %{customdata}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            shown.add(cat)
        top = max(top, *totals) if totals else top
        fig.add_trace(  # the total above each bar
            go.Scatter(
                x=xs,
                y=totals,
                mode="text",
                text=[str(t) for t in totals],
                textposition="top center",
                textfont={"size": 11, "color": "#333"},
                hoverinfo="skip",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(
            tickangle=-30 if max((len(n) for n in layers), default=0) > 8 else 0, row=1, col=col
        )
    fig.update_yaxes(title="unique detectors", row=1, col=1)
    fig.update_yaxes(range=[0, top * 1.18 + 0.5], dtick=1 if top <= 12 else None)
    longest = max((len(n) for n in layers), default=0)
    bottom = int(min(160, 40 + (4.5 * longest if longest > 8 else 0)))
    base_layout(fig, plotly_text(title), height=340 + bottom)
    fig.update_layout(
        barmode="stack",
        margin={"l": 60, "r": 20, "t": 70, "b": bottom},
        legend={"orientation": "h", "x": 0, "y": 1.13, "xanchor": "left", "yanchor": "bottom"},
        bargap=0.35,
    )
    fig.update_layout(title={"y": 0.98, "yanchor": "top"})
    return fig


def detectors_over_time_figure(
    labels: Sequence[str],
    detectors: Mapping[str, Sequence[int | None]],
    units: Mapping[str, int],
    *,
    control: Mapping[str, int | None] | None = None,
    control_label: str = "randomised control",
    threshold: float | None = None,
    title: str = "Detector units over training",
) -> go.Figure:
    """Each layer's share of units that are detectors, at each event.

    Args:
        labels: The events (x axis), in order.
        detectors: Layer to its number of detector units at each event (``None``: no record).
        units: Layer to its number of units.
        control: Layer to its detector units in the randomised control (an open marker after
            the last event, in the layer's colour).
        control_label: The control's x position label.
        threshold: The IoU threshold (for the title).
        title: Figure title.

    Returns:
        The figure.

    Raises:
        ValueError: If a layer's counts do not have one entry per event.
    """
    xs = [plotly_text(s) for s in labels]
    fig = go.Figure()
    ctrl_x = plotly_text(control_label)
    for i, (layer, values) in enumerate(detectors.items()):
        if len(values) != len(labels):
            raise ValueError(f"layer {layer!r} has {len(values)} counts for {len(labels)} events")
        n = max(1, int(units.get(layer, 0) or 0))
        colour = _LAYER_COLOURS[i % len(_LAYER_COLOURS)]
        name = plotly_text(layer)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[None if v is None else v / n for v in values],
                customdata=[f"{v} of {n}" if v is not None else "no record" for v in values],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": colour},
                hovertemplate=f"{name} at %{{x}}: %{{customdata}} units are detectors"
                "<extra></extra>",
            )
        )
        c = None if control is None else control.get(layer)
        if c is not None:
            fig.add_trace(
                go.Scatter(
                    x=[ctrl_x],
                    y=[c / n],
                    customdata=[f"{c} of {n}"],
                    mode="markers",
                    name=f"{name} (control)",
                    legendgroup=name,
                    showlegend=False,
                    marker={"color": "white", "size": 10, "line": {"color": colour, "width": 2}},
                    hovertemplate=f"{name}, {ctrl_x}: %{{customdata}} units<extra></extra>",
                )
            )
    full = f"{title} (IoU ≥ {threshold:g})" if threshold is not None else title
    order = xs + ([ctrl_x] if control else [])
    longest = max((len(str(s)) for s in [*labels, control_label]), default=0)
    bottom = int(min(160, 50 + 5.5 * longest))  # slanted event names, then the axis title
    base_layout(fig, plotly_text(full), height=300 + bottom)
    fig.update_xaxes(
        categoryorder="array",
        categoryarray=order,
        title={"text": "event", "standoff": 12},
        tickangle=-35 if len(order) > 6 else 0,
        automargin=True,
    )
    fig.update_yaxes(
        title="share of units that are detectors", tickformat=".0%", rangemode="tozero"
    )
    fig.update_layout(
        legend={"orientation": "v", "x": 1.02, "y": 1},
        margin={"l": 70, "r": 160, "b": bottom},
    )
    return fig
