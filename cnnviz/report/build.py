"""``build_report``: one self-contained HTML file from a run store."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from cnnviz.report.data import RunData, find_store, load_run
from cnnviz.report.html import Page, PlotlyJS, esc, message_page
from cnnviz.report.layers import layer_section
from cnnviz.report.sections import (
    attributions_section,
    curves_section,
    layer_table_section,
    notes_section,
    overview_section,
    predictions_section,
    writer_state,
)

__all__ = ["build_report", "write_atomic"]


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, then ``os.replace``).

    A reader (a browser reloading the live report) never sees a half-written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _title(data: RunData, title: str | None) -> str:
    if title:
        return title
    model = data.fact("model") or "model"
    dataset = data.fact("data")
    return f"cnnviz — {model}" + (f" on {dataset}" if dataset else "")


def _banner(data: RunData, live: bool) -> str:
    status, age = writer_state(data)
    if status == "stopped":
        beat = data.fact("heartbeat", (int, float))
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(beat)) if beat else "unknown"
        return (
            '<div class="banner failed">The run says it is training, but the writer stopped '
            f"responding (last heartbeat {esc(when)}, {age or 0:.0f} s before this report was "
            "written): it was probably killed. This page does not reload.</div>"
        )
    if status == "running" and live:
        return (
            '<div class="banner live" id="live-banner">Training is running: this page reloads '
            'every 5 s. <label><input type="checkbox" id="live-pause"> pause reloading</label>'
            "</div>"
        )
    if status == "running":
        return '<div class="banner live">Training was running when this report was written.</div>'
    if status == "failed":
        err = data.info.get("error") or "unknown error"
        return f'<div class="banner failed">The run failed: {esc(err)}</div>'
    return ""


def build_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    plotly_js: PlotlyJS = "inline",
    title: str | None = None,
    live: bool = False,
    progress: bool = True,
    max_events: int = 12,
) -> Path:
    """Build the HTML report of a run from its store alone (no model or data needed).

    The page holds an overview (model, data, settings, training curves, layer table),
    predictions on the probe images, input attributions with their checks, and one section per
    layer with what the run recorded for it (filters, activation maps, receptive fields, top
    patches, Grad-CAM, feature visualization). Figures are drawn when scrolled into view.

    Args:
        path: The run directory (holding ``cnnviz/``), the store itself, or a parent with
            exactly one run.
        out: Output file (default ``<run_dir>/report.html``).
        plotly_js: ``"inline"`` (plotly.js included once; no network needed) or ``"cdn"``
            (linked from cdn.plot.ly: about 4.8 MB smaller, needs the network).
        title: Page title (default from the model and data names).
        live: While the run's status is ``running``, the page reloads itself every 5 s.
        progress: Print a progress line per section to stderr.
        max_events: Most events per slider (evenly spaced; first and last kept).

    Returns:
        The path written. When the store holds no records, a page that says so is written.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ReportError: If no run store (or more than one) is found under ``path``.
        ValueError: For a bad ``plotly_js`` or ``max_events``.

    Example:
        >>> build_report("runs/lenet5-shapes32-20250101-120000")
        PosixPath('runs/lenet5-shapes32-20250101-120000/report.html')
    """
    if plotly_js not in ("inline", "cdn"):
        raise ValueError(f"`plotly_js` must be 'inline' or 'cdn'; got {plotly_js!r}")
    if not isinstance(max_events, int) or max_events < 1:
        raise ValueError(f"`max_events` must be a positive int; got {max_events!r}")
    start = time.perf_counter()
    data = load_run(find_store(path))
    target = Path(out) if out is not None else data.run_dir / "report.html"
    say: Callable[[str], None] = (
        (lambda msg: print(f"cnnviz report: {msg}", file=sys.stderr, flush=True))
        if progress
        else (lambda msg: None)
    )
    page_title = _title(data, title)
    if not data.has_content:
        write_atomic(
            target,
            message_page(
                page_title,
                "This run has no cnnviz data: no callback recorded anything. Add cnnviz callbacks "
                "(e.g. FilterWeights, ActivationMaps) to the Trainer, or check that the run got as "
                "far as its first logging event.",
                {
                    "store": str(data.root.resolve()),
                    "status": data.fact("status"),
                    "problems": "; ".join(n.text for n in data.reader.damage[:5]) or None,
                },
            ),
        )
        say(f"no cnnviz records in {data.root}; wrote a message page to {target}")
        return target
    page = Page(
        page_title,
        plotly_js=plotly_js,
        live=live,
        status=data.fact("status"),
        heartbeat=data.fact("heartbeat", (int, float)),
        built=time.time(),
    )
    layers = data.layers()
    anchors = {layer: page.new_id(f"layer-{layer}") for layer in layers}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("overview", lambda: overview_section(data, page, page_title)),
        ("training curves", lambda: curves_section(data, page)),
        ("layer table", lambda: layer_table_section(data, page, anchors)),
        ("predictions", lambda: predictions_section(data, page, max_events=max_events)),
        ("attributions", lambda: attributions_section(data, page)),
    ]
    total = len(steps) + len(layers)
    for i, (name, step) in enumerate(steps, start=1):
        say(f"[{i}/{total}] {name}")
        _guarded(page, name, step)
    if layers:
        page.nav("layers", "Layers")
        page.add_section(
            "layers",
            f"<h2>Layers</h2><p class=note>{len(layers)} layers with "
            "recorded data, in the model's order.</p>",
        )
    for j, layer in enumerate(layers, start=len(steps) + 1):
        say(f"[{j}/{total}] layer {layer}")
        anchor = anchors[layer]
        kind: list[str | None] = [None]

        def run(layer: str = layer, anchor: str = anchor, kind: list = kind) -> None:
            kind[0] = layer_section(data, page, layer, anchor, max_events=max_events)

        if _guarded(page, f"layer {layer}", run, anchor=anchor):
            page.nav(anchor, layer, level=1, kind=kind[0] or "")
        else:
            page.nav(anchor, layer, level=1, kind="error")
    # The notes go right after the overview: they include what the sections above found.
    before = len(page.sections)
    _guarded(page, "notes", lambda: notes_section(data, page))
    if len(page.sections) > before:
        page.sections.insert(1, page.sections.pop())
        if page.toc and page.toc[-1][0] == "notes":
            page.toc.insert(1, page.toc.pop())
    html_text = page.render(banner=_banner(data, live))
    write_atomic(target, html_text)
    size = len(html_text.encode("utf-8"))
    say(
        f"wrote {target} ({size / 1e6:.1f} MB, {len(page.scripts)} figures, "
        f"{time.perf_counter() - start:.1f} s)"
    )
    return target


def _guarded(page: Page, name: str, step: Callable[[], None], *, anchor: str | None = None) -> bool:
    """Run one section; a failure becomes a visible error card (and a warning), not a lost page."""
    try:
        step()
        return True
    except Exception as err:  # one malformed record must not cost the whole report
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        warnings.warn(
            f"cnnviz report: section {name!r} failed: {detail}", RuntimeWarning, stacklevel=2
        )
        page.add_section(
            anchor or page.new_id(f"error-{name}"),
            f"<h2>{esc(name)}</h2><p class=note>This section could not be built: "
            f"<code>{esc(detail)}</code></p>",
        )
        return False
