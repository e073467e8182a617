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
from cnnviz.report.dissection import dissection_section
from cnnviz.report.groups import GROUP_FROM, LayerGroup, group_layers, strip_prefix
from cnnviz.report.html import NavGroup, NavItem, Page, PlotlyJS, esc, message_page, table
from cnnviz.report.layers import FIGURE_BUDGET, LayerBudget, layer_section
from cnnviz.report.runinfo import errors_section
from cnnviz.report.sections import (
    _first_int,
    attributions_section,
    curves_section,
    layer_table_rows,
    layer_table_section,
    notes_section,
    overview_section,
    predictions_section,
    writer_state,
)
from cnnviz.store.records import ActivationsRecord, ErrorRecord

__all__ = ["PAGE_BYTES", "build_report", "layer_budget", "write_atomic"]


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


#: Largest report (bytes) the layer sections are sized for: each layer's figures and pictures
#: get an equal share of what the page has left after plotly.js and the run-level sections.
PAGE_BYTES = 18_000_000
#: Bytes kept for plotly.js (embedded) and the sections above the layers.
_FIXED_BYTES = {"inline": 3_600_000, "cdn": 1_400_000}


def layer_budget(
    layers: int, plotly_js: PlotlyJS = "inline", page_bytes: int = PAGE_BYTES
) -> LayerBudget:
    """The :class:`~cnnviz.report.layers.LayerBudget` of each of ``layers`` layer sections.

    A layer section holds about three history figures (filters, activations, ERF; gradients
    and statistics are smaller) and one or two pictures (top patches, receptive field).
    """
    share = max(1, page_bytes - _FIXED_BYTES[plotly_js]) / max(1, layers)
    figure = int(min(FIGURE_BUDGET, max(20_000, share * 0.28)))
    patch = 32 if share > 250_000 else 24 if share > 150_000 else 16
    return LayerBudget(figure=figure, patch_size=patch, secondary=max(10_000, figure // 2))


def _output_sizes(data: RunData) -> dict[str, tuple[int, ...]]:
    """Each layer's output spatial size, from the layer table or the activation records."""
    sizes = {
        name: tuple(row.output_shape[1:])
        for name, row in layer_table_rows(data).items()
        if row.output_shape
    }
    for rec in data.read(ActivationsRecord):
        if rec.layer and rec.layer not in sizes and len(rec.shape) > 2:
            sizes[rec.layer] = tuple(rec.shape[2:])
    return sizes


def _group_summary(data: RunData, group: LayerGroup, sizes: dict[str, tuple[int, ...]]) -> str:
    """The facts in a group's summary line: layers, output sizes, receptive fields."""
    bits = [f"{len(group.layers)} layers"]
    shapes = [sizes[n] for n in group.layers if n in sizes]
    if shapes:
        first, last = shapes[0], shapes[-1]
        text = "×".join(map(str, first))
        if last != first:
            text += " → " + "×".join(map(str, last))
        bits.append(f"output {text}")
    rows = layer_table_rows(data)
    fields = [_first_int(rows[n].rf_size) for n in group.layers if n in rows]
    fields = [f for f in fields if f is not None]
    if fields:
        lo, hi = min(fields), max(fields)
        bits.append(f"receptive field {lo}" + (f"–{hi}" if hi != lo else "") + " px")
    errors = sum(1 for e in data.read(ErrorRecord) if e.layer in group.layers)
    if errors:
        bits.append(f"⚠ {errors} errors")
    return ", ".join(bits)


def build_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    plotly_js: PlotlyJS = "inline",
    title: str | None = None,
    live: bool = False,
    progress: bool = True,
    max_events: int = 12,
    page_bytes: int = PAGE_BYTES,
    _retry: bool = False,
) -> Path:
    """Build the HTML report of a run from its store alone (no model or data needed).

    The page opens on an overview (model, data, what cnnviz left out, the time ledger), then
    callback errors, training curves, the layer table, predictions on the probe images, input
    attributions with their checks, and one section per layer with what the run recorded for
    it (filters and their gradients, activation maps, receptive fields, top patches,
    Grad-CAM, feature visualisation). A network with more than 12 recorded layers gets its
    layers in collapsed groups (by module and stage) and a layer picker in the navigation.
    Figures are drawn when they come into view (or their group is opened).

    Args:
        path: The run directory (holding ``cnnviz/``), the store itself, or a parent with
            exactly one run.
        out: Output file (default ``<run_dir>/report.html``).
        plotly_js: ``"inline"`` (plotly.js included once; no network needed) or ``"cdn"``
            (linked from cdn.plot.ly: about 4.8 MB smaller, needs the network).
        title: Page title (default from the model and data names).
        live: While the run's status is ``running``, the page reloads itself every 5 s
            (and stops when the writer's heartbeat is older than a minute).
        progress: Print a progress line per section to stderr.
        max_events: Most events per slider (evenly spaced; first and last kept).
        page_bytes: The size the layer sections are fitted to (events are thinned and
            patches shrunk for networks with many layers).

    Returns:
        The path written. When the store holds no records, a page that says so is written.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ReportError: If no run store (or more than one) is found under ``path``.
        ValueError: For a bad ``plotly_js``, ``max_events`` or ``page_bytes``.

    Example:
        >>> build_report("runs/lenet5-shapes32-20250101-120000")
        PosixPath('runs/lenet5-shapes32-20250101-120000/report.html')
    """
    if plotly_js not in ("inline", "cdn"):
        raise ValueError(f"`plotly_js` must be 'inline' or 'cdn'; got {plotly_js!r}")
    if not isinstance(max_events, int) or max_events < 1:
        raise ValueError(f"`max_events` must be a positive int; got {max_events!r}")
    if not isinstance(page_bytes, int) or page_bytes < 1_000_000:
        raise ValueError(f"`page_bytes` must be an int of at least 1 000 000; got {page_bytes!r}")
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
    sizes = _output_sizes(data)
    groups = group_layers(layers, sizes)
    grouped = len(groups) > 1
    page.picker = len(layers) > GROUP_FROM
    budget = layer_budget(len(layers), plotly_js, page_bytes)
    anchors = {layer: page.new_id(f"layer-{layer}") for layer in layers}
    steps: list[tuple[str, Callable[[], object]]] = [
        ("overview", lambda: overview_section(data, page, page_title)),
        ("callback errors", lambda: errors_section(data, page)),
        ("training curves", lambda: curves_section(data, page)),
        ("layer table", lambda: layer_table_section(data, page, anchors)),
        ("predictions", lambda: predictions_section(data, page, max_events=max_events)),
        ("attributions", lambda: attributions_section(data, page)),
        ("concept dissection", lambda: dissection_section(data, page, anchors)),
    ]
    total = len(steps) + len(layers)
    for i, (name, step) in enumerate(steps, start=1):
        say(f"[{i}/{total}] {name}")
        _guarded(page, name, step)
    page.mark_top()
    if layers:
        page.nav("layers", "Layers", kind=f"{len(layers)}")
        page.add_section("layers", _layers_intro(data, groups if grouped else [], sizes, anchors))
    errors_by_layer: dict[str, int] = {}
    for e in data.read(ErrorRecord):
        if e.layer:
            errors_by_layer[e.layer] = errors_by_layer.get(e.layer, 0) + 1
    j = len(steps)
    group_labels = strip_prefix([g.title for g in groups], layers) if grouped else []
    for gi, group in enumerate(groups):
        items: list[NavItem] = []
        short = strip_prefix(group.layers, group.layers) if grouped else list(group.layers)
        if grouped:
            gid = page.new_id(f"group-{group.title}")
            page.raw(
                f'<details class="group" id="{esc(gid)}"><summary><span>{esc(group.title)}'
                f'</span><span class="sum-facts">{esc(_group_summary(data, group, sizes))}'
                '</span></summary><div class="group-body">'
            )
        for layer, label in zip(group.layers, short, strict=True):
            j += 1
            say(f"[{j}/{total}] layer {layer}")
            anchor = anchors[layer]
            kind: list[str | None] = [None]

            def run(layer: str = layer, anchor: str = anchor, kind: list = kind) -> None:
                kind[0] = layer_section(
                    data,
                    page,
                    layer,
                    anchor,
                    max_events=max_events,
                    budget=budget,
                    anchors=anchors,
                )

            ok = _guarded(page, f"layer {layer}", run, anchor=anchor)
            mark = f"⚠ {errors_by_layer[layer]}" if errors_by_layer.get(layer) else ""
            items.append(
                NavItem(
                    anchor,
                    label,
                    1,
                    (kind[0] or "") if ok else "error",
                    mark if ok else "⚠",
                    name=layer,
                )
            )
        if grouped:
            page.raw("</div></details>")
            bad = sum(1 for it in items if it.mark)
            page.nav_group(
                NavGroup(
                    gid,
                    group_labels[gi],
                    tuple(items),
                    f"⚠ {bad}" if bad else "",
                    name=group.title,
                )
            )
        else:
            page.toc.extend(items)
    before = len(page.sections)
    _guarded(page, "notes", lambda: notes_section(data, page))
    if len(page.sections) > before:
        page.sections.insert(1, page.sections.pop())  # right after the overview
        if page.top is not None:
            page.top = (page.top[0] + 1, page.top[1])
        if page.toc and isinstance(page.toc[-1], NavItem) and page.toc[-1].anchor == "notes":
            page.toc.insert(1, page.toc.pop())
    html_text = page.render(banner=_banner(data, live))
    size = len(html_text.encode("utf-8"))
    if size > page_bytes * 1.1 and len(layers) > GROUP_FROM and not _retry:
        # the per-layer shares were estimates: build once more with what they really took
        smaller = max(1_000_000, int(page_bytes * page_bytes / size * 0.95))
        say(f"{size / 1e6:.1f} MB is over {page_bytes / 1e6:.0f} MB: fitting the layers again")
        return build_report(
            path,
            out,
            plotly_js=plotly_js,
            title=title,
            live=live,
            progress=progress,
            max_events=max_events,
            page_bytes=smaller,
            _retry=True,
        )
    write_atomic(target, html_text)
    say(
        f"wrote {target} ({size / 1e6:.1f} MB, {len(page.scripts)} figures, "
        f"{time.perf_counter() - start:.1f} s)"
    )
    return target


def _layers_intro(
    data: RunData,
    groups: list[LayerGroup],
    sizes: dict[str, tuple[int, ...]],
    anchors: dict[str, str],
) -> str:
    """The heading of the layer sections; with groups, a table of them."""
    n = len(anchors)
    if not groups:
        return (
            f"<h2>Layers</h2><p class=note>{n} layers with recorded data, in the model's order.</p>"
        )
    rows = []
    for group in groups:
        first = anchors[group.layers[0]]
        link = f'<a href="#{esc(first)}">{esc(group.title)}</a>'
        rows.append([link, esc(_group_summary(data, group, sizes))])
    return (
        f"<h2>Layers</h2><p class=note>{n} layers with recorded data, in the model's order, in "
        f"{len(groups)} groups (by module and stage). Each group is collapsed: open it (or pick "
        "a layer in the navigation's search box) and its figures are drawn as they come into "
        "view.</p>" + table(["group", "what it holds"], rows, raw=[0, 1], wrap=[1])
    )


def _guarded(
    page: Page, name: str, step: Callable[[], object], *, anchor: str | None = None
) -> bool:
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
