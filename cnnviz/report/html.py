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
from cnnviz.report.assets import APP_JS, STYLE
from cnnviz.report.encode import compact_figure, dumps_for_script
from cnnviz.store.reader import HEARTBEAT_STALE

__all__ = ["Page", "esc", "facts", "message_page", "neutral_json", "table", "update_live_heartbeat"]

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
    header: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Sequence[int] = ()
) -> str:
    """An HTML table; every cell is escaped; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f"<td{' class=num' if i in numeric else ''}>{esc(v)}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
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
    toc: list[tuple[str, str, int, str]] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    figure_bytes: int = 0

    def new_id(self, text: str) -> str:
        """A unique element id for ``text``."""
        return slug(text, self.ids)

    def nav(self, anchor: str, label: str, level: int = 0, kind: str = "") -> None:
        """Add a table-of-contents entry pointing at ``#anchor``."""
        self.toc.append((anchor, label, level, kind))

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

    def render(self, *, banner: str = "") -> str:
        """The complete HTML document."""
        nav = ['<div class="brand">cnnviz report</div><ul>']
        for anchor, label, level, kind in self.toc:
            extra = f' <span class="kind">{esc(kind)}</span>' if kind else ""
            cls = ' class="sub"' if level else ""
            nav.append(f'<li{cls}><a href="#{esc(anchor)}">{esc(label)}</a>{extra}</li>')
        nav.append("</ul>")
        config = {
            "live": bool(self.live),
            "status": self.status,
            "reload_ms": RELOAD_MS,
            "heartbeat": self.heartbeat,
            "built": self.built,
            "stale_s": HEARTBEAT_STALE,
            "template": _template(),
        }
        return "".join(
            [
                '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                '<meta name="generator" content="cnnviz">',
                f"<title>{esc(self.title)}</title><style>{STYLE}</style>",
                _plotly_script(self.plotly_js),
                '</head><body><div class="layout"><nav id="toc">',
                "".join(nav),
                "</nav><main>",
                banner,
                "".join(self.sections),
                "</main></div>",
                '<script type="application/json" id="cnnviz-config">'
                f"{neutral_json(dumps_for_script(config))}</script>",
                "".join(self.scripts),
                f"<script>{APP_JS}</script></body></html>\n",
            ]
        )


def message_page(title: str, message: str, details: Mapping[str, Any] | None = None) -> str:
    """A small page that explains why there is nothing to show (no plotly.js, no script)."""
    rows = facts((details or {}).items())
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f'<div class="message"><h1>{esc(title)}</h1><p>{esc(message)}</p>{rows}</div>'
        "</body></html>\n"
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
