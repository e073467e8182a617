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
from cnnviz.figures.curves import metric_groups, training_curves_figure
from cnnviz.figures.predictions import predictions_figure
from cnnviz.figures.receptive_field import rf_growth_figure
from cnnviz.report.data import RunData, metrics_from_records, pick_events, read_metrics_csv
from cnnviz.report.html import Page, esc, facts, table
from cnnviz.report.runinfo import error_summary, left_out_card
from cnnviz.report.tokens import tokens_html
from cnnviz.store.files import StoreDataError
from cnnviz.store.reader import HEARTBEAT_STALE
from cnnviz.store.records import (
    AttributionChecksRecord,
    AttributionsRecord,
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
    "inspection",
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


def inspection(data: RunData) -> bool:
    """Whether the store is a ``cnnviz inspect`` of a model (no training run)."""
    settings = data.info.get("settings")
    if isinstance(settings, dict) and "inspect" in settings:
        return True
    writers = {r.writer for r in data.records}
    return writers == {"inspect"}


def _weights_label(data: RunData) -> str | None:
    """The label of an inspection's records (``checkpoint (epoch 5)``, ``random weights``)."""
    labels = [r.label for r in data.records if r.label]
    return labels[0] if labels else None


def overview_section(data: RunData, page: Page, title: str) -> None:
    """Title, run facts, what cnnviz left out (budget) and the callback settings."""
    status, age = writer_state(data)
    shown = "running — the writer stopped responding" if status == "stopped" else status
    css = {"running": "warn", "finished": "ok", "failed": "bad", "stopped": "bad"}.get(status, "")
    inspected = inspection(data)
    epochs = data.fact("epochs", int)
    max_epochs = data.fact("max_epochs", int)
    epoch_text = None
    if not inspected and (epochs is not None or max_epochs is not None):
        epoch_text = f"{fmt(epochs) if epochs is not None else '?'}"
        if max_epochs is not None:
            epoch_text += f" of {fmt(max_epochs)}"
    kinds: dict[str, int] = {}
    for r in data.records:
        kinds[r.KIND] = kinds.get(r.KIND, 0) + 1
    classes = data.class_names()
    shape = data.shape_fact("input_shape")
    params = data.fact("num_parameters", int)
    errors, off = error_summary(data)
    chips = [f'<span class="chip {css} status">{esc(shown)}</span>']
    if inspected:
        chips.append('<span class="chip">inspection of a model (cnnviz inspect)</span>')
    if errors or off:
        what = [f"{errors} callback errors" if errors else "", f"{off} turned off" if off else ""]
        chips.append(
            f'<a class="chip bad" href="#errors">{esc(", ".join(w for w in what if w))}</a>'
        )
    chips += [f'<span class="chip">{esc(k)}: {n}</span>' for k, n in sorted(kinds.items())]
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<div class="chips">{"".join(chips)}</div>',
        facts(
            [
                ("model", data.fact("model")),
                ("LightningModule", data.fact("module")),
                ("data", data.fact("data")),
                ("input shape", fmt(shape) if shape else None),
                ("parameters", fmt(params) if params is not None else None),
                ("weights", _weights_label(data) if inspected else None),
                ("epochs", epoch_text),
                ("classes", ", ".join(classes) if classes else None),
                ("run", data.reader.current_run),
                ("last heartbeat", _age(age) if age is not None and status != "finished" else None),
                ("run directory", str(data.run_dir.resolve())),
            ]
        ),
    ]
    if inspected:
        body.append(
            "<p class=note>This report inspects a model on some images (<code>cnnviz inspect"
            "</code>): it shows one state of the weights, not a training run, so there are no "
            "training curves and no history over epochs.</p>"
        )
    if data.info.get("error"):
        body.append(f"<h3>Error</h3><pre>{esc(data.info['error'])}</pre>")
    body.append(left_out_card(data))
    settings = data.info.get("settings")
    if settings:
        body.append(
            "<details><summary>Callback settings</summary><pre>"
            f"{esc(json.dumps(settings, indent=1, sort_keys=True, default=str))}</pre></details>"
        )
    page.nav("overview", "Overview")
    page.add_section("overview", "".join(body))


def notes_section(data: RunData, page: Page) -> None:
    """What the report skipped: damaged records, missing files, figures that failed.

    Callback errors have their own section (:func:`cnnviz.report.runinfo.errors_section`) and
    budget cuts are in the overview.
    """
    notes = data.all_notes()
    damage = [n for n in notes if n.level == "damage"]
    info = [n for n in notes if n.level != "damage"]
    if not notes:
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
    if info:
        items = "".join(f"<li>{esc(n.text)}</li>" for n in info[:50])
        more = f"<li>… and {len(info) - 50} more</li>" if len(info) > 50 else ""
        body.append(f'<ul class="note muted">{items}{more}</ul>')
    page.nav("notes", "Notes", kind=f"{len(damage)} problems" if damage else "")
    page.add_section("notes", "".join(body))


#: Panels of the training-curves figure at most.
MAX_PANELS = 4


def curves_section(data: RunData, page: Page) -> None:
    """Loss and accuracy per epoch (``metrics`` records, else the CSVLogger file)."""
    epochs, values = metrics_from_records(data.read(MetricsRecord))
    source = "metrics recorded by the cnnviz callbacks"
    if not values:
        epochs, values = read_metrics_csv(data.run_dir / "metrics.csv")
        source = "metrics.csv (CSVLogger)"
    if not values and inspection(data):
        return  # an inspection has no training: the overview says so
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
        lambda: [page.figure(training_curves_figure(epochs, values, max_groups=MAX_PANELS))],
    )
    groups = metric_groups(list(values))
    rest = [n for g in list(groups)[MAX_PANELS:] for n in groups[g]]
    dropped = [n for n in values if n not in {x for g in groups.values() for x in g}]
    extra = ""
    if rest:
        extra += (
            f"<p class=left-out>{len(rest)} more metrics are not drawn (at most {MAX_PANELS} "
            f"panels: loss and accuracy first): {esc(', '.join(rest[:12]))}"
            f"{' …' if len(rest) > 12 else ''}.</p>"
        )
    if dropped:
        extra += (
            "<p class=note>Metrics logged both per step and per epoch are drawn once, per "
            f"epoch ({esc(', '.join(dropped[:8]))}{' …' if len(dropped) > 8 else ''} repeat "
            "other curves).</p>"
        )
    page.add_section(
        "curves",
        f"<h2>Training curves</h2><p class=note>From {esc(source)}.</p>{extra}" + "".join(body),
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


def _table_columns(
    values: list[dict[str, Any]], rows: list[TableRow]
) -> list[tuple[str, list[str]]]:
    """The layer table's columns: the lecture's quantities, folded to fit a page's width."""

    def col(key: str) -> list[str]:
        return [fmt(v.get(key)) for v in values]

    shapes = [
        f"{fmt(v['input_shape'])} → {fmt(v['output_shape'])}"
        if v.get("input_shape") and v.get("output_shape")
        else fmt(v.get("output_shape") or v.get("input_shape"))
        for v in values
    ]
    geometry = [
        " / ".join(fmt(v.get(k)) or "–" for k in ("kernel", "stride", "padding"))
        if v.get("kernel") is not None
        else ""
        for v in values
    ]
    weights = []
    for r, v in zip(rows, values, strict=True):
        text = fmt(v.get("weights_arithmetic"))
        if text and r.params is not None and "=" not in text and text != str(r.params):
            text += f" = {fmt(r.params)}"
        weights.append(text or (fmt(r.params) if r.params is not None else ""))
    fields = [
        f"{fmt(v['rf_size'])} (jump {fmt(v.get('rf_jump'))})" if v.get("rf_size") else ""
        for v in values
    ]
    return [
        ("layer", col("name")),
        ("type", col("type")),
        ("input → output", shapes),
        ("kernel / stride / padding", geometry),
        ("output size (N − F + 2P)/S + 1", col("output_arithmetic")),
        ("weights", weights),
        ("receptive field (jump)", fields),
    ]


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
        columns = _table_columns([row_values(r) for r in rows], rows)
        present = [(h, cells) for h, cells in columns if any(c for c in cells)]
        html_rows = []
        for i, r in enumerate(rows):
            cells = [esc(cells[i]) for _, cells in present]
            if r.name in anchors:  # the layer's name links to its section
                cells[0] = f'<a href="#{esc(anchors[r.name])}">{esc(r.name)}</a>'
            html_rows.append(cells)
        heads = [h for h, _ in present]
        body = table(
            heads,
            html_rows,
            wrap=[i for i, h in enumerate(heads) if h.startswith(("output size", "weights"))],
            raw=range(len(present)),
        )
        note = (
            "<p class=note>Output size per axis: (N − F + 2P)/S + 1; weights: kernel × input "
            "channels × filters (+ one bias per filter); a layer's name links to its section."
            "</p>"
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
    everything = data.same_shape(data.read(PredictionsRecord), "probs", "predictions")
    if not everything:
        return
    recs = pick_events(everything, max_events)
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
        "true class is green."
        + (" Move the slider to see the predictions at each logged event." if len(recs) > 1 else "")
        + "</p>"
        + (
            f"<p class=left-out>{len(everything) - len(recs)} of {len(everything)} logged events "
            f"are not on the slider ({len(recs)} evenly spaced ones are: "
            "<code>cnnviz report --max-events</code>).</p>"
            if len(recs) < len(everything)
            else ""
        )
        + chips
        + "".join(body),
    )


def attribution_maps(
    data: RunData, methods: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], AttributionsRecord | None]:
    """The maps of the newest ``attributions`` record, and the record.

    Image maps are ``[N, H, W]`` (``[N, C, H, W]`` is summed over channels); token and
    sequence maps ``[N, L]``.
    """
    recs = data.loadable(data.read(AttributionsRecord), "maps")
    if not recs:
        return {}, None
    rec = recs[-1]
    arrays = rec.maps or {}
    names = list(rec.methods) or list(arrays)
    out = {}
    for m in names:
        a = arrays.get(m)
        if a is None or (methods is not None and m not in methods):
            continue
        a = np.asarray(a, dtype=np.float32)
        if a.ndim == 4:  # [N, C, H, W]: sum over channels, as the store format asks
            a = a.sum(axis=1)
        if a.ndim in (2, 3):
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
        if rec.mask_share and rec.masks is not False:
            share = {k: list(v) for k, v in rec.mask_share.items()}
    return rand, share


def _token_view(data: RunData, maps: dict[str, np.ndarray], rec: AttributionsRecord) -> str:
    """Token attributions as coloured words (or ids) per sentence and method."""
    n = next(iter(maps.values())).shape[0]
    probe = data.latest(ProbeRecord)
    ids = _array(probe, "x")
    if ids is None or ids.ndim != 2 or ids.shape != next(iter(maps.values())).shape:
        ids = None
    vocabulary = list(probe.vocabulary) if probe is not None and probe.vocabulary else None
    labels = attribution_labels(probe_info(data, n), rec.targets, n)
    what = "words" if vocabulary is not None else "token ids (the data has no vocabulary)"
    note = (
        f"<p class=note>Which tokens drive the prediction, at {esc(rec.label)}: each token's "
        f"attribution (summed over its embedding), shown on the {what}. Red: evidence for "
        "the explained class (after the arrow), blue: against it.</p>"
    )
    if ids is None:
        note += (
            "<p class=left-out>the probe's token ids were not recorded with a matching shape, "
            "so positions are shown instead of tokens.</p>"
        )
    return note + tokens_html(maps, ids, vocabulary=vocabulary, row_labels=labels)


def attributions_section(data: RunData, page: Page) -> None:
    """Input attributions of the newest event, with notes and the sanity checks."""
    maps, rec = attribution_maps(data)
    has_checks = bool(data.read(AttributionChecksRecord))
    if rec is None and not has_checks:
        return
    body = ["<h2>Input attributions</h2>"]
    if rec is not None:
        kind = rec.input_kind or ("tokens" if maps and next(iter(maps.values())).ndim == 2 else "")
        flat = {m: a for m, a in maps.items() if a.ndim == 2}
        if kind == "tokens" and flat:
            body += guarded(data, "token attributions", lambda: [_token_view(data, flat, rec)])
            maps = {}
        elif flat:  # float sequences [N, L]: one row per probe input
            maps = {m: a[:, None, :] for m, a in flat.items()}
        if maps:
            body.append(
                f"<p class=note>Which input pixels drive the prediction, at "
                f"{esc(rec.label)}. Each map is scaled by its largest "
                "absolute value; red: evidence for the explained class (after the arrow), blue: "
                "against it.</p>"
            )
            older = len(data.read(AttributionsRecord)) - 1
            if older > 0:
                body.append(
                    f"<p class=left-out>the {older} earlier events' attributions are not shown "
                    "(the newest is); the run store holds them.</p>"
                )
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
                            title="Input attributions (rows: probe inputs; columns: methods)",
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
        body += _checks_part(data, page)
    page.nav("attributions", "Attributions")
    page.add_section("attributions", "".join(body))


def _checks_part(data: RunData, page: Page) -> list[str]:
    """The sanity checks (randomisation, mask share) and the faithfulness ranking.

    The mask share is described only where the probe data had object masks (it ran).
    """
    from cnnviz.report.faithfulness import faithfulness_part  # it uses this module's helpers

    rand, share = _checks(data)
    faithful = guarded(data, "faithfulness ranking", lambda: faithfulness_part(data, page))
    heading = "Sanity and faithfulness checks" if faithful else "Sanity checks"
    body = [f"<h3>{heading}</h3>"]
    text = []
    if rand and rand.get("layers"):
        text.append(
            f"Model randomisation (Adebayo et al., 2018) of {esc(rand.get('method', ''))}: "
            "the layers are replaced by random weights from the top down; a map that "
            "explains the model must change, so its rank correlation with the trained "
            "model's map should fall towards 0."
        )
    else:
        text.append(
            "The model randomisation check runs once, at the end of training; this run "
            "has not recorded it."
        )
    if share:
        text.append(
            "Mask share: the part of the attribution that falls on the object (the probe's "
            "foreground masks), next to the part of the image the object covers (chance)."
        )
    body.append(f"<p class=note>{' '.join(text)}</p>")
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
    return body + faithful


def _first(v: Any, i: int) -> float:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] <= i:
        return float("nan")
    return float(np.nanmean(a[..., i]))
