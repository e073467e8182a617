"""Page-level sections of the report: overview, curves, layer table, predictions, attributions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnviz.figures.attributions import attribution_checks_figure, attributions_figure
from cnnviz.figures.curves import training_curves_figure
from cnnviz.figures.predictions import predictions_figure
from cnnviz.figures.receptive_field import rf_growth_figure
from cnnviz.report.data import RunData, metrics_from_records, pick_events, read_metrics_csv
from cnnviz.report.html import Page, esc, facts, table

__all__ = [
    "ProbeInfo",
    "attributions_section",
    "curves_section",
    "fmt",
    "layer_table_section",
    "overview_section",
    "predictions_section",
    "probe_info",
]


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


def probe_info(data: RunData, n: int | None = None) -> ProbeInfo:
    """Display images, labels and class names of the run's probe batch (what is known)."""
    names = data.class_names()
    rec = data.latest("probe")
    arrays = data.arrays(rec) if rec is not None else {}
    images = arrays.get("display")
    if (
        images is None
        and "x" in arrays
        and arrays["x"].ndim == 4
        and arrays["x"].shape[1] in (1, 3)
    ):
        x = arrays["x"].astype(np.float32)
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        hi = x.max(axis=(1, 2, 3), keepdims=True)
        images = ((x - lo) / np.maximum(hi - lo, 1e-12)).transpose(0, 2, 3, 1)
    y = arrays.get("y")
    targets = [int(v) for v in np.asarray(y).reshape(-1)] if y is not None else None
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


def overview_section(data: RunData, page: Page, title: str) -> None:
    """Title, run facts and callback settings."""
    info = data.info
    status = info.get("status") or "unknown"
    css = {"running": "warn", "finished": "ok", "failed": "bad"}.get(status, "")
    epochs = info.get("epochs")
    max_epochs = info.get("max_epochs")
    epoch_text = None
    if epochs is not None or max_epochs is not None:
        epoch_text = f"{fmt(epochs) if epochs is not None else '?'}"
        if max_epochs is not None:
            epoch_text += f" of {fmt(max_epochs)}"
    kinds: dict[str, int] = {}
    for r in data.records:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    classes = data.class_names()
    body = [
        f"<h1>{esc(title)}</h1>",
        f'<div class="chips"><span class="chip {css} status">{esc(status)}</span>'
        + "".join(f'<span class="chip">{esc(k)}: {n}</span>' for k, n in sorted(kinds.items()))
        + "</div>",
        facts(
            [
                ("model", info.get("model")),
                ("LightningModule", info.get("module")),
                ("data", info.get("data")),
                ("input shape", fmt(info.get("input_shape")) if info.get("input_shape") else None),
                (
                    "parameters",
                    fmt(info.get("num_parameters"))
                    if info.get("num_parameters") is not None
                    else None,
                ),
                ("epochs", epoch_text),
                ("classes", ", ".join(classes) if classes else None),
                ("run directory", str(data.run_dir.resolve())),
            ]
        ),
    ]
    if info.get("error"):
        body.append(f"<h3>Error</h3><pre>{esc(info['error'])}</pre>")
    settings = info.get("settings")
    if settings:
        body.append(
            "<details><summary>Callback settings</summary><pre>"
            f"{esc(json.dumps(settings, indent=1, sort_keys=True, default=str))}</pre></details>"
        )
    page.nav("overview", "Overview")
    page.add_section("overview", "".join(body))


def curves_section(data: RunData, page: Page) -> None:
    """Loss and accuracy per epoch (``metrics`` records, else the CSVLogger file)."""
    epochs, values = metrics_from_records(data.of("metrics"))
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
    fig = training_curves_figure(epochs, values)
    page.add_section(
        "curves",
        f"<h2>Training curves</h2><p class=note>From {esc(source)}.</p>" + page.figure(fig),
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
    """``[[1, 1], [2, 2]]`` (left, right per axis) as ``[1, 2]`` when symmetric."""
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value)
    ):
        if all(v[0] == v[1] for v in value):
            return [v[0] for v in value]
        return ["/".join(map(str, v)) for v in value]
    return value


def normalise_row(row: dict[str, Any]) -> dict[str, Any]:
    """A layer-table row in the store format (also accepts ``LayerRow.as_dict()`` keys)."""
    rf = row.get("receptive_field") if isinstance(row.get("receptive_field"), dict) else {}
    out = dict(row)
    out["kernel"] = row.get("kernel", row.get("kernel_size"))
    out["padding"] = _padding(row.get("padding"))
    out["weights_arithmetic"] = row.get("weights_arithmetic", row.get("params_arithmetic"))
    out["rf_size"] = row.get("rf_size", rf.get("size"))
    out["rf_jump"] = row.get("rf_jump", rf.get("jump"))
    return out


def _table_rows(data: RunData) -> list[dict[str, Any]]:
    rec = data.latest("layer_table")
    rows = (rec.meta.get("rows") if rec is not None else None) or []
    return [normalise_row(r) for r in rows if isinstance(r, dict)]


def layer_table_rows(data: RunData) -> dict[str, dict[str, Any]]:
    """Rows of the newest ``layer_table`` record, by layer name."""
    return {str(r.get("name")): r for r in _table_rows(data)}


def _first_int(value: Any) -> int | None:
    """The first axis of a per-axis value (``[5, 5]`` -> 5), or the int itself."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, (int, float)) else None


def layer_table_section(data: RunData, page: Page, anchors: dict[str, str]) -> None:
    """The lecture's layer table (from ``layer_table``), else the layer list of ``run.json``."""
    rows = _table_rows(data)
    page.nav("layer-table", "Layer table")
    if rows:
        present = [(k, h) for k, h in _TABLE_COLUMNS if any(r.get(k) is not None for r in rows)]
        numeric = [i for i, (k, _) in enumerate(present) if k in ("params",)]
        html_rows = [[fmt(r.get(k)) for k, _ in present] for r in rows]
        body = table([h for _, h in present], html_rows, numeric=numeric)
        links = [
            f'<a href="#{esc(anchors[str(r.get("name"))])}">{esc(r.get("name"))}</a>'
            for r in rows
            if str(r.get("name")) in anchors
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
        growth = ""
        sized = [r for r in rows if _first_int(r.get("rf_size")) is not None]
        if sized:
            shape = data.info.get("input_shape") or []
            fig = rf_growth_figure(
                [str(r.get("name")) for r in sized],
                [_first_int(r.get("rf_size")) for r in sized],
                [_first_int(r.get("rf_jump")) for r in sized],
                input_size=int(shape[-1]) if shape else None,
            )
            growth = page.figure(fig)
        page.add_section("layer-table", f"<h2>Layer table</h2>{note}{body}{growth}")
        return
    described = data.info.get("layers") or []
    if described:
        parsed = [str(s).partition("  ") for s in described]
        body = table(["layer", "module"], [[a.strip(), c.strip()] for a, _, c in parsed])
        page.add_section(
            "layer-table",
            "<h2>Layers</h2><p class=note>The run recorded no layer table (add the "
            "ReceptiveFields callback for shapes, arithmetic and receptive fields).</p>" + body,
        )
        return
    page.add_section("layer-table", "<h2>Layers</h2><p class=note>No layer list recorded.</p>")


def predictions_section(data: RunData, page: Page, *, max_events: int) -> None:
    """Top-3 predictions on the probe images at each logged event."""
    recs = data.of("predictions")
    if not recs:
        return
    recs = pick_events(recs, max_events)
    n, c = data.arrays(recs[-1])["probs"].shape
    recs = [r for r in recs if data.arrays(r).get("probs", np.empty(0)).shape == (n, c)]
    history = [data.arrays(r)["probs"] for r in recs]
    labels = [str(r.meta.get("label", f"epoch {(r.epoch or 0) + 1}")) for r in recs]
    probe = probe_info(data, n)
    names = recs[-1].meta.get("class_names") or probe.class_names
    targets = probe.targets if probe.targets is not None and len(probe.targets) == n else None
    images = probe.images if probe.images is not None and len(probe.images) == n else None
    fig = predictions_figure(history, labels, class_names=names, targets=targets, images=images)
    chips = ""
    if targets is not None:
        right = int((history[-1].argmax(1) == np.asarray(targets)).sum())
        chips = (
            f'<div class="chips"><span class="chip">probe accuracy at {esc(labels[-1])}: '
            f"{right}/{n}</span></div>"
        )
    page.nav("predictions", "Predictions")
    page.add_section(
        "predictions",
        "<h2>Predictions on the probe images</h2><p class=note>Top-3 classes per image; the "
        "true class is green. Move the slider to see the predictions at each logged event."
        f"</p>{chips}" + page.figure(fig),
    )


def attribution_maps(
    data: RunData, methods: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], Any]:
    """``{method: [N, H, W]}`` of the newest ``attributions`` record, and the record."""
    rec = data.latest("attributions")
    if rec is None:
        return {}, None
    arrays = data.arrays(rec)
    names = rec.meta.get("methods") or [k for k in arrays if not k.startswith("__")]
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


def grad_cam_layer(rec: Any) -> str | None:
    """The layer Grad-CAM used, if the attributions record says."""
    if rec is None:
        return None
    meta = rec.meta
    layers = meta.get("layers")
    if isinstance(layers, dict) and layers.get("grad_cam"):
        return str(layers["grad_cam"])
    for key in ("grad_cam_layer", "layer"):
        if meta.get(key):
            return str(meta[key])
    return rec.layer


def attribution_labels(probe: ProbeInfo, targets: Sequence[int] | None, n: int) -> list[str]:
    """Row labels ``#i true → explained class``."""
    out = []
    for i in range(n):
        label = probe.labels[i] if i < len(probe.labels) else f"#{i}"
        if targets is not None and i < len(targets):
            label += f" → {probe.name(int(targets[i]))}"
        out.append(label)
    return out


def attributions_section(data: RunData, page: Page) -> None:
    """Input attributions of the newest event, with notes and the sanity checks."""
    maps, rec = attribution_maps(data)
    checks = data.latest("attribution_checks")
    if rec is None and checks is None:
        return
    body = ["<h2>Input attributions</h2>"]
    if rec is not None:
        meta = rec.meta
        body.append(
            f"<p class=note>Which input pixels drive the prediction, at "
            f"{esc(meta.get('label', 'the last event'))}. Each map is scaled by its largest "
            "absolute value; red: evidence for the explained class (after the arrow), blue: "
            "against it.</p>"
        )
        if maps:
            n = next(iter(maps.values())).shape[0]
            probe = probe_info(data, n)
            targets = meta.get("targets")
            images = probe.images if probe.images is not None and len(probe.images) == n else None
            fig = attributions_figure(
                maps,
                images=images,
                probe_labels=attribution_labels(probe, targets, n),
                title="Input attributions (rows: probe images; columns: methods)",
            )
            body.append(page.figure(fig, bits=8))
        notes = meta.get("notes") or {}
        unavailable = meta.get("unavailable") or {}
        items = [f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in notes.items() if v]
        items += [
            f"<li><b>{esc(k)}</b> not available: {esc(v)}</li>" for k, v in unavailable.items()
        ]
        if items:
            body.append(f"<ul class=note>{''.join(items)}</ul>")
    if checks is not None:
        body.append("<h3>Sanity and faithfulness checks</h3>")
        rand = checks.meta.get("randomisation") or None
        share = checks.meta.get("mask_share") or None
        body.append(
            "<p class=note>Model randomisation (Adebayo et al., 2018): the layers are replaced "
            "by random weights from the top down; a map that explains the model must change, "
            "so its rank correlation with the trained model's map should fall towards 0. "
            "Mask share: the part of the attribution that falls on the object (Shapes masks), "
            "next to the part of the image the object covers (chance).</p>"
        )
        if (rand and rand.get("layers")) or share:
            body.append(page.figure(attribution_checks_figure(rand, share)))
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
