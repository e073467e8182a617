"""HTML pieces of the report: escaping, the page skeleton, figure slots, tables.

Every string that reaches the page from a model, a data set or a user goes through
:func:`esc` (HTML text and attributes) or :func:`~cnnviz.report.encode.dumps_for_script`
(JSON inside ``<script>``); nothing is inserted unescaped.
"""

from __future__ import annotations

import base64
import functools
import html
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import plotly.graph_objects as go
import plotly.io as pio

from cnnviz._text import safe_text
from cnnviz.report.assets import APP_JS, STYLE, fill
from cnnviz.report.encode import compact_figure, dumps_for_script
from cnnviz.store.reader import HEARTBEAT_STALE

__all__ = [
    "NavGroup",
    "NavItem",
    "Page",
    "esc",
    "facts",
    "message_page",
    "neutral_json",
    "table",
    "update_live_heartbeat",
]

PlotlyJS = Literal["inline", "cdn"]
RELOAD_MS = 5000


def esc(value: object) -> str:
    """HTML-escape ``value`` (text and attribute safe), with bidi overrides made visible.

    Direction controls (U+202A–U+202E, U+2066–U+2069, U+200E/U+200F) from file, layer or class
    names are shown as ``[U+202E]`` so they cannot reorder the text around them.
    """
    return html.escape(safe_text(value), quote=True)


_BIDI_JSON = re.compile(r"\\u(20[2][a-eA-E]|206[6-9]|200[eEfF])")


def neutral_json(text: str) -> str:
    r"""Embedded JSON with every bidi control (raw or ``\uXXXX``) shown as ``[U+XXXX]``."""
    text = _BIDI_JSON.sub(lambda m: f"[U+{m.group(1).upper()}]", text)
    return safe_text(text)


def slug(text: str, taken: set[str]) -> str:
    """A unique, safe element id derived from ``text``."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "item"
    out, i = base, 2
    while out in taken:
        out, i = f"{base}-{i}", i + 1
    taken.add(out)
    return out


def facts(items: Iterable[tuple[str, Any]], *, raw: bool = False) -> str:
    """A two-column fact list; values are escaped unless ``raw`` (then they must be HTML)."""
    rows = [
        f"<dt>{esc(k)}</dt><dd>{v if raw else esc(v)}</dd>" for k, v in items if v not in (None, "")
    ]
    return f'<dl class="facts">{"".join(rows)}</dl>' if rows else ""


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Sequence[int] = (),
    wrap: Sequence[int] = (),
    raw: Sequence[int] = (),
) -> str:
    """An HTML table; every cell is escaped except in ``raw`` columns (which must be HTML).

    Columns in ``numeric`` are right-aligned; long text in ``wrap`` columns wraps.
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            css = " class=num" if i in numeric else " class=wrap" if i in wrap else ""
            cells.append(f"<td{css}>{v if i in raw else esc(v)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="tablewrap"><table class="grid"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _template() -> dict[str, Any]:
    t = pio.templates["plotly_white"].to_plotly_json()
    layout = dict(t.get("layout", {}))
    layout["font"] = {
        "family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
        "size": 12,
        "color": "#1d232b",
    }
    for axis in ("xaxis", "yaxis"):  # automargin re-measures and redraws: 20% slower pages
        layout[axis] = {**layout.get(axis, {}), "automargin": False}
    return {"layout": layout}


@functools.lru_cache(maxsize=1)
def _packed_plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return base64.b64encode(zlib.compress(get_plotlyjs().encode("utf-8"), 9)).decode("ascii")


def _plotly_script(plotly_js: PlotlyJS) -> str:
    if plotly_js == "inline":
        # plotly.js (4.8 MB) deflated and base64-encoded (2 MB); the page inflates it with the
        # browser's DecompressionStream and runs it before drawing the first figure.
        return (
            '<script type="application/octet-stream" id="cnnviz-plotly">'
            f"{_packed_plotlyjs()}</script>"
        )
    from plotly.offline import get_plotlyjs_version

    url = f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js"
    return f'<script src="{esc(url)}" charset="utf-8"></script>'


@dataclass(frozen=True)
class NavItem:
    """One entry of the navigation.

    Attributes:
        anchor: The element id it links to.
        label: Its text.
        level: 0 for page sections, 1 for layers.
        kind: A small grey note (the layer type).
        mark: A red mark (``"⚠ 2"``: errors).
        name: The full name (hover text, and what the layer picker matches; default ``label``).
    """

    anchor: str
    label: str
    level: int = 0
    kind: str = ""
    mark: str = ""
    name: str = ""


@dataclass(frozen=True)
class NavGroup:
    """A group of layers in the navigation (a collapsible list)."""

    anchor: str
    label: str
    layers: tuple[NavItem, ...]
    mark: str = ""
    name: str = ""


@dataclass
class Page:
    """Collects the sections, navigation and figures of one report page.

    Args:
        title: Page title (plain text; escaped when written).
        plotly_js: ``"inline"`` (works offline) or ``"cdn"`` (smaller file).
        live: Reload the page every few seconds while ``status`` is ``"running"`` and the
            writer's heartbeat is fresh.
        status: The run's status (``running``/``finished``/``failed``).
        heartbeat: The writer's last heartbeat (seconds since the epoch), if known: the page
            stops reloading, and says so, once it is older than ``HEARTBEAT_STALE``.
        built: When the page was built (seconds since the epoch).
    """

    title: str
    plotly_js: PlotlyJS = "inline"
    live: bool = False
    status: str | None = None
    heartbeat: float | None = None
    built: float | None = None
    sections: list[str] = field(default_factory=list)
    toc: list[NavItem | NavGroup] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    figure_bytes: int = 0
    picker: bool = False
    pictures: dict[str, str] = field(default_factory=dict)
    top: tuple[int, int] | None = None

    def new_id(self, text: str) -> str:
        """A unique element id for ``text``."""
        return slug(text, self.ids)

    def nav(self, anchor: str, label: str, level: int = 0, kind: str = "", mark: str = "") -> None:
        """Add a navigation entry pointing at ``#anchor``."""
        self.toc.append(NavItem(anchor, label, level, kind, mark))

    def nav_group(self, group: NavGroup) -> None:
        """Add a collapsible group of layer entries to the navigation."""
        self.toc.append(group)

    @staticmethod
    def encode(fig: go.Figure, *, bits: int = 16) -> str:
        """The figure's compact JSON, as it will be embedded."""
        return neutral_json(dumps_for_script(compact_figure(fig, bits=bits)))

    def figure(
        self,
        fig: go.Figure,
        *,
        bits: int = 16,
        payload: str | None = None,
        scale_toggle: bool = False,
    ) -> str:
        """Register a figure; return the HTML slot it is drawn into (lazily, when visible).

        ``payload`` is the figure's :meth:`encode` output when the caller already has it.
        ``scale_toggle`` adds the layer/channel colour-scale switch of activation mosaics.
        """
        fid = self.new_id(f"fig-{len(self.scripts)}")
        payload = payload if payload is not None else self.encode(fig, bits=bits)
        self.figure_bytes += len(payload)
        self.scripts.append(f'<script type="application/json" id="{fid}">{payload}</script>')
        height = fig.layout.height or 450
        toggle = ""
        if scale_toggle:
            toggle = (
                f'<div class="scale-toggle" data-for="{fid}">colour scale: '
                f'<label><input type="radio" name="scale-{fid}" value="layer" checked> one for '
                f'the layer</label><label><input type="radio" name="scale-{fid}" '
                'value="channel"> each channel stretched to its range</label></div>'
            )
        return f'{toggle}<div class="fig" data-fig="{fid}" style="height:{int(height)}px"></div>'

    def add_section(self, anchor: str, body: str, *, css: str = "card") -> None:
        """Append a ``<section>`` with id ``anchor``."""
        self.sections.append(f'<section class="{css}" id="{esc(anchor)}">{body}</section>')

    def mark_top(self) -> None:
        """End of the first screens: what is above is drawn while the rest is still loading.

        The figures registered so far are embedded right after these sections (the rest at
        the end of the page), and drawing starts there: a reader need not wait for the whole
        file to be parsed.
        """
        self.top = (len(self.sections), len(self.scripts))

    def raw(self, html_text: str) -> None:
        """Append trusted HTML (group wrappers) between sections."""
        self.sections.append(html_text)

    def _nav_html(self) -> str:
        parts = ['<div class="brand">cnnviz report</div>']
        layers = sum(
            len(t.layers) if isinstance(t, NavGroup) else int(t.level > 0) for t in self.toc
        )
        if self.picker and layers:
            idle = f"{layers} layers; type part of a name"
            parts.append(
                '<div class="picker"><input id="layer-filter" type="search" '
                f'placeholder="Find a layer…" autocomplete="off" aria-label="Find a layer">'
                f'<div class="hint" id="layer-filter-hint" data-idle="{esc(idle)}">{esc(idle)}'
                "</div></div>"
            )
        parts.append("<ul>")

        def item(t: NavItem) -> str:
            extra = f' <span class="kind">{esc(t.kind)}</span>' if t.kind else ""
            mark = f' <span class="mark">{esc(t.mark)}</span>' if t.mark else ""
            if t.level:
                full = esc(t.name or t.label)
                return (
                    f'<li class="sub layer" data-name="{full}"><a href="#{esc(t.anchor)}"'
                    f' title="{full}">{esc(t.label)}{mark}{extra}</a></li>'
                )
            return f'<li><a href="#{esc(t.anchor)}">{esc(t.label)}{mark}{extra}</a></li>'

        for t in self.toc:
            if isinstance(t, NavGroup):
                mark = f' <span class="mark">{esc(t.mark)}</span>' if t.mark else ""
                inner = "".join(item(x) for x in t.layers)
                parts.append(
                    f'<li class="group"><details><summary><a href="#{esc(t.anchor)}" '
                    f'title="{esc(t.name or t.label)}">{esc(t.label)}{mark} <span class="kind">'
                    f"{len(t.layers)}</span></a></summary><ul>{inner}</ul></details></li>"
                )
            else:
                parts.append(item(t))
        parts.append("</ul>")
        return "".join(parts)

    def render(self, *, banner: str = "") -> str:
        """The complete HTML document."""
        from cnnviz.report.gallery import pictures_css

        config = {
            "live": bool(self.live),
            "status": self.status,
            "reload_ms": RELOAD_MS,
            "heartbeat": self.heartbeat,
            "built": self.built,
            "stale_s": HEARTBEAT_STALE,
            "template": _template(),
        }
        top_sections, top_scripts = self.top or (len(self.sections), len(self.scripts))
        main = [
            *self.sections[:top_sections],
            *self.scripts[:top_scripts],
            "<script>window.cnnviz.start();</script>",
            *self.sections[top_sections:],
        ]
        return fill(
            "page.html",
            {
                "title": esc(self.title),
                "style": STYLE + pictures_css(self.pictures),
                "plotly": _plotly_script(self.plotly_js),
                "nav": self._nav_html(),
                "banner": banner,
                "main": "".join(main),
                "config": neutral_json(dumps_for_script(config)),
                "figures": "".join(self.scripts[top_scripts:]),
                "app": APP_JS,
            },
        )


def message_page(title: str, message: str, details: Mapping[str, Any] | None = None) -> str:
    """A small page that explains why there is nothing to show (no plotly.js, no script)."""
    return fill(
        "message.html",
        {
            "title": esc(title),
            "style": STYLE,
            "message": esc(message),
            "details": facts((details or {}).items()),
        },
    )


_CONFIG = re.compile(r'(<script type="application/json" id="cnnviz-config">)(.*?)(</script>)', re.S)


def update_live_heartbeat(page_html: str, heartbeat: float, *, status: str | None = None) -> str:
    """A built page with a new heartbeat (and status) in its config, without rebuilding it.

    A live page compares its heartbeat with the clock; a writer that keeps training without
    new events can refresh the page this way (a few milliseconds) so it keeps reloading.

    Raises:
        ValueError: If ``page_html`` is not a cnnviz report page.
    """
    import json

    m = _CONFIG.search(page_html)
    if m is None:
        raise ValueError("`page_html` is not a cnnviz report (no cnnviz-config block)")
    config = json.loads(m.group(2))
    config["heartbeat"] = float(heartbeat)
    if status is not None:
        config["status"] = status
    body = neutral_json(dumps_for_script(config))
    return page_html[: m.start(2)] + body + page_html[m.end(2) :]
