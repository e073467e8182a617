"""Page-level sections of the report: overview, notes, curves, layer table, predictions.

Also :func:`guarded`, which turns a figure that fails into a note inside its section.
"""

from __future__ import annotations

import json
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnviz.figures.attributions import attribution_checks_figure, attributions_figure
from cnnviz.figures.curves import training_curves_figure
from cnnviz.figures.predictions import predictions_figure
from cnnviz.figures.receptive_field import rf_growth_figure
from cnnviz.report.data import RunData, metrics_from_records, pick_events, read_metrics_csv
from cnnviz.report.html import Page, esc, facts, table
from cnnviz.store.files import StoreDataError
from cnnviz.store.reader import HEARTBEAT_STALE
from cnnviz.store.records import (
    AttributionChecksRecord,
    AttributionsRecord,
    BudgetRecord,
    ErrorRecord,
    LayerTableRecord,
    MetricsRecord,
    PredictionsRecord,
    ProbeRecord,
    TableRow,
)

__all__ = [
    "ProbeInfo",
    "attributions_section",
    "curves_section",
    "fmt",
    "guarded",
    "layer_table_section",
    "nonfinite_note",
    "notes_section",
    "overview_section",
    "predictions_section",
    "probe_info",
    "row_values",
    "writer_state",
]


def guarded(data: RunData, what: str, build: Callable[[], list[str]]) -> list[str]:
    """Run one figure's ``build``; a failure becomes a small note in place of the figure.

    The rest of the section (and the page) is drawn as usual; the failure is also a warning
    and a note in the page's list of problems.
    """
    try:
        return build()
    except Exception as err:  # one figure must not cost its neighbours
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        warnings.warn(f"cnnviz report: {what} failed: {detail}", RuntimeWarning, stacklevel=2)
        data.note(f"{what} could not be drawn: {detail}")
        return [
            f'<p class="note fig-error">{esc(what)} could not be drawn: '
            f"<code>{esc(detail)}</code></p>"
        ]


def nonfinite_note(arrays: Sequence[np.ndarray], labels: Sequence[str]) -> str:
    """A chip that counts NaN and Inf values of the events shown (``""`` when there are none)."""
    parts = []
    for a, label in zip(arrays, labels, strict=False):
        v = np.asarray(a)
        if v.dtype.kind != "f":
            continue
        nan = int(np.isnan(v).sum())
        inf = int(np.isinf(v).sum())
        what = [f"{nan} NaN values" if nan else "", f"{inf} Inf values" if inf else ""]
        if nan or inf:
            parts.append(f"{' and '.join(w for w in what if w)} at {label}")
    if not parts:
        return ""
    text = "; ".join(parts[:4]) + (f"; … ({len(parts)} events)" if len(parts) > 4 else "")
    return f'<span class="chip bad">{esc(text)} (drawn blank)</span>'


def writer_state(data: RunData, now: float | None = None) -> tuple[str, float | None]:
    """``(status, heartbeat age in seconds)`` of the run.

    ``status`` is ``stopped`` for a running store whose writer's heartbeat is older than the
    limit (the writer was killed or hangs).
    """
    status = data.fact("status") or "unknown"
    age = data.reader.heartbeat_age(now)
    if status == "running" and age is not None and age > HEARTBEAT_STALE:
        return "stopped", age
    return status, age


def fmt(value: Any) -> str:
    """Plain text for a table cell: shapes as ``3×32×32``, floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "×".join(fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


@dataclass
class ProbeInfo:
    """The probe inputs as the report shows them."""

    images: np.ndarray | None
    targets: list[int] | None
    labels: list[str]
    class_names: list[str] | None

    def name(self, c: int) -> str:
        """Class name of index ``c``."""
        if self.class_names and 0 <= c < len(self.class_names):
            return self.class_names[c]
        return str(c)


def _array(rec: Any, attr: str) -> np.ndarray | None:
    """A record's array, or ``None`` when it is absent or cannot be read (the reader notes it)."""
    if rec is None:
        return None
    try:
        value = getattr(rec, attr)
    except StoreDataError:
        return None
    return None if value is None else np.asarray(value)


def probe_info(data: RunData, n: int | None = None) -> ProbeInfo:
    """Display images, labels and class names of the run's probe batch (what is known)."""
    names = data.class_names()
    rec = data.latest(ProbeRecord)
    images = _array(rec, "display")
    x = _array(rec, "x") if images is None else None
    if x is not None and x.ndim == 4 and x.shape[1] in (1, 3):
        x = np.nan_to_num(x.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        images = ((x - lo) / np.maximum(hi - lo, 1e-12)).transpose(0, 2, 3, 1)
    if images is not None and (images.ndim != 4 or images.shape[-1] not in (1, 3)):
        images = None
    y = _array(rec, "y")
    targets = [int(v) for v in y.reshape(-1) if np.isfinite(v)] if y is not None else None
    count = (
        n
        if n is not None
        else (len(images) if images is not None else len(targets) if targets else 0)
    )
    info = ProbeInfo(images=images, targets=targets, labels=[], class_names=names)
    info.labels = [
        f"#{i} {info.name(targets[i])}" if targets is not None and i < len(targets) else f"#{i}"
        for i in range(count)
    ]
    return info


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def overview_section(data: RunData, page: Page, title: str) -> None:
    """Title, run facts and callback settings."""
    status, age = writer_state(data)
    shown = "running — the writer stopped responding" if status == "stopped" else status
    css = {"running": "warn", "finished": "ok", "failed": "bad", "stopped": "bad"}.get(status, "")
    epochs = data.fact("epochs", int)
    max_epochs = data.fact("max_epochs", int)
    epoch_text = None
    if epochs is not None or max_epochs is not None:
        epoch_text = f"{fmt(epochs) if epochs is not None else '?'}"
        if max_epochs is not None:
            epoch_text += f" of {fmt(max_epochs)}"
    kinds: dict[str, int] = {}
    for r in data.records:
        kinds[r.KIND] = kinds.get(r.KIND, 0) + 1
    classes = data.class_names()
    shape = data.shape_fact("input_shape")
    params = data.fact("num_parameters", int)
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<div class="chips"><span class="chip {css} status">{esc(shown)}</span>'
        + "".join(f'<span class="chip">{esc(k)}: {n}</span>' for k, n in sorted(kinds.items()))
        + "</div>",
        facts(
            [
                ("model", data.fact("model")),
                ("LightningModule", data.fact("module")),
                ("data", data.fact("data")),
                ("input shape", fmt(shape) if shape else None),
                ("parameters", fmt(params) if params is not None else None),
                ("epochs", epoch_text),
                ("classes", ", ".join(classes) if classes else None),
                ("run", data.reader.current_run),
                ("last heartbeat", _age(age) if age is not None and status != "finished" else None),
                ("run directory", str(data.run_dir.resolve())),
            ]
        ),
    ]
    if data.info.get("error"):
        body.append(f"<h3>Error</h3><pre>{esc(data.info['error'])}</pre>")
    settings = data.info.get("settings")
    if settings:
        body.append(
            "<details><summary>Callback settings</summary><pre>"
            f"{esc(json.dumps(settings, indent=1, sort_keys=True, default=str))}</pre></details>"
        )
    page.nav("overview", "Overview")
    page.add_section("overview", "".join(body))


def notes_section(data: RunData, page: Page) -> None:
    """What the run reported about itself and what the report skipped.

    Callback errors and budget cuts come from the store; damaged records, missing files and
    figures that failed from the reader and the report.
    """
    errors = data.read(ErrorRecord)
    budgets = data.read(BudgetRecord)
    notes = data.all_notes()
    damage = [n for n in notes if n.level == "damage"]
    info = [n for n in notes if n.level != "damage"]
    if not (errors or budgets or notes):
        return
    body = ["<h2>Notes on this run</h2>"]
    if damage:
        body.append(
            f'<p class="note"><span class="chip bad">{len(damage)} problems in the run store'
            "</span> What could not be read was skipped; everything else is shown.</p>"
        )
        items = "".join(f"<li>{esc(n.text)}</li>" for n in damage[:200])
        more = f"<li>… and {len(damage) - 200} more</li>" if len(damage) > 200 else ""
        body.append(f'<ul class="note store-damage">{items}{more}</ul>')
    if errors:
        body.append("<h3>Callback errors (training went on)</h3>")
        for e in errors[-50:]:
            where = f" ({e.layer})" if e.layer else ""
            at = f" at {e.at}" if e.at else (f" at {e.label}" if e.label else "")
            body.append(
                f"<details><summary><b>{esc(e.callback)}</b>{esc(where)}{esc(at)}: "
                f"{esc(e.exception)}: {esc(e.message)}</summary>"
                f"<pre>{esc(e.traceback)}</pre></details>"
            )
    if budgets:
        body.append("<h3>What the time budget cut</h3><ul class=note>")
        for b in budgets:
            settings = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in b.settings.items())
            extra = f" (to record everything: {esc(settings)})" if settings else ""
            body.append(f"<li><b>{esc(b.callback)}</b>: {esc('; '.join(b.decisions))}{extra}</li>")
        body.append("</ul>")
    if info:
        items = "".join(f"<li>{esc(n.text)}</li>" for n in info[:50])
        body.append(f'<ul class="note muted">{items}</ul>')
    page.nav("notes", "Notes", kind=f"{len(damage)} problems" if damage else "")
    page.add_section("notes", "".join(body))


def curves_section(data: RunData, page: Page) -> None:
    """Loss and accuracy per epoch (``metrics`` records, else the CSVLogger file)."""
    epochs, values = metrics_from_records(data.read(MetricsRecord))
    source = "metrics recorded by the cnnviz callbacks"
    if not values:
        epochs, values = read_metrics_csv(data.run_dir / "metrics.csv")
        source = "metrics.csv (CSVLogger)"
    page.nav("curves", "Training curves")
    if not values:
        page.add_section(
            "curves",
            "<h2>Training curves</h2><p class=note>No metrics were recorded (log them with "
            "<code>self.log(...)</code> in the LightningModule, or add a CSVLogger).</p>",
        )
        return
    body = guarded(
        data,
        "training curves",
        lambda: [page.figure(training_curves_figure(epochs, values))],
    )
    page.add_section(
        "curves",
        f"<h2>Training curves</h2><p class=note>From {esc(source)}.</p>" + "".join(body),
    )


_TABLE_COLUMNS = (
    ("name", "layer"),
    ("type", "type"),
    ("input_shape", "input"),
    ("output_shape", "output"),
    ("kernel", "kernel"),
    ("stride", "stride"),
    ("padding", "padding"),
    ("output_arithmetic", "output size (N − F + 2P)/S + 1"),
    ("weights_arithmetic", "weights"),
    ("params", "parameters"),
    ("rf_size", "receptive field"),
    ("rf_jump", "jump"),
)


def _padding(value: Any) -> Any:
    """Padding per axis for display: ``[1, 1]``, or ``["1/2", ...]`` where before ≠ after."""
    if isinstance(value, (list, tuple)):
        return ["/".join(map(str, v)) if isinstance(v, (list, tuple)) else v for v in value]
    return value


def row_values(row: TableRow) -> dict[str, Any]:
    """A layer-table row as display values (padding pairs as ``before/after``)."""
    out = {k: getattr(row, k) for k, _ in _TABLE_COLUMNS}
    out["padding"] = _padding(row.padding)
    out["params_value"] = row.params
    return out


def layer_table_rows(data: RunData) -> dict[str, TableRow]:
    """Rows of the newest ``layer_table`` record, by layer name."""
    rec = data.latest(LayerTableRecord)
    return {r.name: r for r in (rec.rows if rec is not None else ())}


def _first_int(value: Any) -> int | None:
    """The first axis of a per-axis value (``[5, 5]`` -> 5), or the int itself."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, (int, float)) else None


def layer_table_section(data: RunData, page: Page, anchors: dict[str, str]) -> None:
    """The lecture's layer table (from ``layer_table``), else the layer list of ``run.json``."""
    rec = data.latest(LayerTableRecord)
    rows = list(rec.rows) if rec is not None else []
    page.nav("layer-table", "Layer table")
    if rows:
        values = [row_values(r) for r in rows]
        present = [(k, h) for k, h in _TABLE_COLUMNS if any(v.get(k) is not None for v in values)]
        numeric = [i for i, (k, _) in enumerate(present) if k in ("params",)]
        html_rows = [[fmt(v.get(k)) for k, _ in present] for v in values]
        body = table([h for _, h in present], html_rows, numeric=numeric)
        links = [
            f'<a href="#{esc(anchors[r.name])}">{esc(r.name)}</a>'
            for r in rows
            if r.name in anchors
        ]
        note = (
            (
                "<p class=note>Output size per axis: (N − F + 2P)/S + 1; weights: kernel × input "
                "channels × filters (+ one bias per filter). Sections below: "
                + ", ".join(links)
                + "</p>"
            )
            if links
            else ""
        )
        sized = [r for r in rows if _first_int(r.rf_size) is not None]

        def growth() -> list[str]:
            if not sized:
                return []
            shape = data.shape_fact("input_shape")
            fig = rf_growth_figure(
                [r.name for r in sized],
                [_first_int(r.rf_size) for r in sized],
                [_first_int(r.rf_jump) for r in sized],
                input_size=int(shape[-1]) if shape else None,
            )
            return [page.figure(fig)]

        extra = "".join(guarded(data, "receptive-field growth", growth))
        page.add_section("layer-table", f"<h2>Layer table</h2>{note}{body}{extra}")
        return
    described = data.layer_facts()
    if described:
        body = table(["layer", "module"], [[f.name, f.describe or f.type or ""] for f in described])
        page.add_section(
            "layer-table",
            "<h2>Layers</h2><p class=note>The run recorded no layer table (add the "
            "ReceptiveFields callback for shapes, arithmetic and receptive fields).</p>" + body,
        )
        return
    page.add_section("layer-table", "<h2>Layers</h2><p class=note>No layer list recorded.</p>")


def predictions_section(data: RunData, page: Page, *, max_events: int) -> None:
    """Top-3 predictions on the probe images at each logged event."""
    recs = data.same_shape(data.read(PredictionsRecord), "probs", "predictions")
    if not recs:
        return
    recs = pick_events(recs, max_events)
    history = [np.asarray(r.probs) for r in recs]
    n, _ = history[-1].shape
    labels = [r.label for r in recs]
    probe = probe_info(data, n)
    names = list(recs[-1].class_names or ()) or probe.class_names
    targets = probe.targets if probe.targets is not None and len(probe.targets) == n else None
    images = probe.images if probe.images is not None and len(probe.images) == n else None
    chips = ""
    if targets is not None and np.isfinite(history[-1]).all():
        right = int((history[-1].argmax(1) == np.asarray(targets)).sum())
        chips = (
            f'<div class="chips"><span class="chip">probe accuracy at {esc(labels[-1])}: '
            f"{right}/{n}</span>{nonfinite_note(history, labels)}</div>"
        )
    elif nonfinite_note(history, labels):
        chips = f'<div class="chips">{nonfinite_note(history, labels)}</div>'
    body = guarded(
        data,
        "predictions",
        lambda: [
            page.figure(
                predictions_figure(
                    [np.nan_to_num(h, nan=0.0) for h in history],
                    labels,
                    class_names=names,
                    targets=targets,
                    images=images,
                )
            )
        ],
    )
    page.nav("predictions", "Predictions")
    page.add_section(
        "predictions",
        "<h2>Predictions on the probe images</h2><p class=note>Top-3 classes per image; the "
        "true class is green. Move the slider to see the predictions at each logged event."
        f"</p>{chips}" + "".join(body),
    )


def attribution_maps(
    data: RunData, methods: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], AttributionsRecord | None]:
    """``{method: [N, H, W]}`` of the newest ``attributions`` record, and the record."""
    recs = data.loadable(data.read(AttributionsRecord), "maps")
    if not recs:
        return {}, None
    rec = recs[-1]
    arrays = rec.maps or {}
    names = list(rec.methods) or list(arrays)
    out = {}
    for m in names:
        a = arrays.get(m)
        if a is None:
            continue
        a = np.asarray(a, dtype=np.float32)
        if a.ndim == 4:  # [N, C, H, W]: sum over channels, as the store format asks
            a = a.sum(axis=1)
        if a.ndim == 3 and (methods is None or m in methods):
            out[m] = a
    return out, rec


def grad_cam_layer(rec: AttributionsRecord | None) -> str | None:
    """The layer Grad-CAM used, if the attributions record says."""
    if rec is None:
        return None
    return rec.layers.get("grad_cam") or rec.layers.get("guided_grad_cam")


def attribution_labels(probe: ProbeInfo, targets: Sequence[int] | None, n: int) -> list[str]:
    """Row labels ``#i true → explained class``."""
    out = []
    for i in range(n):
        label = probe.labels[i] if i < len(probe.labels) else f"#{i}"
        if targets is not None and i < len(targets):
            label += f" → {probe.name(int(targets[i]))}"
        out.append(label)
    return out


def _checks(data: RunData) -> tuple[dict[str, Any] | None, dict[str, list[float]] | None]:
    """The newest randomisation check and mask shares (they come in separate records)."""
    rand = share = None
    for rec in data.read(AttributionChecksRecord):
        if rec.randomisation is not None:
            r = rec.randomisation
            rand = {"method": r.method, "layers": list(r.layers), "spearman": list(r.spearman)}
        if rec.mask_share:
            share = {k: list(v) for k, v in rec.mask_share.items()}
    return rand, share


def attributions_section(data: RunData, page: Page) -> None:
    """Input attributions of the newest event, with notes and the sanity checks."""
    maps, rec = attribution_maps(data)
    has_checks = bool(data.read(AttributionChecksRecord))
    if rec is None and not has_checks:
        return
    body = ["<h2>Input attributions</h2>"]
    if rec is not None:
        body.append(
            f"<p class=note>Which input pixels drive the prediction, at "
            f"{esc(rec.label)}. Each map is scaled by its largest "
            "absolute value; red: evidence for the explained class (after the arrow), blue: "
            "against it.</p>"
        )
        if maps:
            n = next(iter(maps.values())).shape[0]
            probe = probe_info(data, n)
            images = probe.images if probe.images is not None and len(probe.images) == n else None
            names, arrays = list(maps), list(maps.values())
            chip = nonfinite_note(arrays, names)
            if chip:
                body.append(f'<div class="chips">{chip}</div>')
            body += guarded(
                data,
                "input attributions",
                lambda: [
                    page.figure(
                        attributions_figure(
                            maps,
                            images=images,
                            probe_labels=attribution_labels(probe, rec.targets, n),
                            title="Input attributions (rows: probe images; columns: methods)",
                        ),
                        bits=8,
                    )
                ],
            )
        items = [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in rec.notes.items() if v]
        items += [
            f"<li><b>{esc(k)}</b> not available: {esc(v)}</li>" for k, v in rec.unavailable.items()
        ]
        if items:
            body.append(f"<ul class=note>{''.join(items)}</ul>")
    if has_checks:
        rand, share = _checks(data)
        body.append("<h3>Sanity and faithfulness checks</h3>")
        body.append(
            "<p class=note>Model randomisation (Adebayo et al., 2018): the layers are replaced "
            "by random weights from the top down; a map that explains the model must change, "
            "so its rank correlation with the trained model's map should fall towards 0. "
            "Mask share: the part of the attribution that falls on the object (Shapes masks), "
            "next to the part of the image the object covers (chance).</p>"
        )
        if (rand and rand.get("layers")) or share:
            body += guarded(
                data,
                "attribution checks",
                lambda: [page.figure(attribution_checks_figure(rand, share))],
            )
        if share:
            body.append(
                table(
                    ["method", "inside the mask", "mask area"],
                    [[m, f"{_first(v, 0):.1%}", f"{_first(v, 1):.1%}"] for m, v in share.items()],
                )
            )
    page.nav("attributions", "Attributions")
    page.add_section("attributions", "".join(body))


def _first(v: Any, i: int) -> float:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] <= i:
        return float("nan")
    return float(np.nanmean(a[..., i]))
