"""The live page of a running fit: constant work per event, off the training thread.

While a fit trains, ``report.html`` is a small page (:func:`live_page`) that loads small data
scripts from ``report_live/`` beside it — classic ``<script src>`` tags, which browsers allow
from ``file://`` where ``fetch`` is blocked:

``index.js``
    rewritten (atomically) after every event and every few seconds: the run's status and
    heartbeat (copied from ``run.json``), and per layer the version of its data file. Its size
    depends on the number of layers, not on the run's history.
``layer-<i>.js``
    the newest filters and activation maps of one layer, rewritten when that layer gets new
    records.
``metrics-<n>.js`` and ``curves.js``
    one file per ``metrics`` record (never rewritten), and the training-curves figure without
    its points (rewritten only when the set of metric names changes); the page puts the points
    in.

:class:`LiveReport` reads only the manifest lines added since its last update, so the work
of an update is that of the event's new records, whatever the length of the run. The page
polls ``index.js``; it stops, and says so, when the heartbeat is older than a minute (the
writer was killed or hangs), and it reloads itself once the fit has replaced ``report.html``
with the final single-file report (``index.js`` then says ``final``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.figures.activations import activations_figure
from cnnviz.figures.curves import training_curves_figure
from cnnviz.figures.filters import filters_figure
from cnnviz.report.assets import APP_JS, LIVE_JS, STYLE, fill
from cnnviz.report.encode import compact_figure, dumps_for_script
from cnnviz.report.groups import group_layers
from cnnviz.report.html import _template, esc, neutral_json
from cnnviz.store import HEARTBEAT_STALE, MANIFEST, RUN_FILE, StoreReader
from cnnviz.store.files import StoreDataError
from cnnviz.store.records import (
    ActivationsRecord,
    ErrorRecord,
    FiltersRecord,
    MetricsRecord,
    ProbeRecord,
    StoreRecord,
)

__all__ = ["LIVE_POLL_MS", "LiveReport", "live_dir", "live_page"]

#: How often the live page reads ``index.js`` (milliseconds).
LIVE_POLL_MS = 2000
#: Probe inputs drawn per layer on the live page (the final report has them all).
LIVE_PROBES = 4


def live_dir(target: str | os.PathLike[str]) -> Path:
    """The data folder of the live page ``target``: ``report_live/`` for ``report.html``."""
    t = Path(target)
    return t.parent / f"{t.stem}_live"


def _write(path: Path, text: str) -> int:
    """Write ``text`` atomically; returns the bytes written."""
    from cnnviz.report.build import write_atomic

    write_atomic(path, text)
    return len(text.encode("utf-8"))


def _call(fn: str, payload: Any) -> str:
    """A data script: ``cnnvizLive.<fn>(<json>);`` (JSON safe inside a script)."""
    return f"window.cnnvizLive&&cnnvizLive.{fn}({neutral_json(dumps_for_script(payload))});\n"


@functools.cache
def _plotly_source() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def live_page(title: str, *, data_dir: str, poll_ms: int = LIVE_POLL_MS) -> str:
    """The live page's HTML (CSS and scripts inlined; plotly.js from ``data_dir``).

    Args:
        title: Page title.
        data_dir: The data folder, relative to the page (``report_live``).
        poll_ms: How often the page reads ``index.js``.
    """
    config = {
        "dir": data_dir,
        "poll_ms": int(poll_ms),
        "stale_s": HEARTBEAT_STALE,
        "template": _template(),
    }
    return fill(
        "live.html",
        {
            "title": esc(title),
            "style": STYLE,
            "plotly_src": esc(f"{data_dir}/plotly.min.js"),
            "config": neutral_json(dumps_for_script(config)),
            "app": APP_JS,
            "live": LIVE_JS,
        },
    )


@dataclass
class _Layer:
    id: int
    version: int = 0
    type: str | None = None
    figs: dict[str, Any] = field(default_factory=dict)
    label: str = ""


class LiveReport:
    """Keeps the live page of a running fit up to date.

    Args:
        store_root: The run store.
        target: The page (``<run_dir>/report.html``); its data goes to ``live_dir(target)``.
        title: Page title.

    Attributes:
        last_written: ``{file name: bytes}`` written by the last :meth:`update` (for tests and
            benchmarks: it does not grow with the run's history).
    """

    def __init__(
        self, store_root: str | os.PathLike[str], target: str | os.PathLike[str], *, title: str
    ) -> None:
        self.root = Path(store_root)
        self.target = Path(target)
        self.dir = live_dir(self.target)
        self.title = title
        self._reader = StoreReader(self.root, load=False, warn=False)
        self._offset = 0
        self._lines = 0
        self._layers: dict[str, _Layer] = {}
        self._order: list[str] = []
        self._metrics = 0
        self._metric_names: list[str] = []
        self._curves = 0
        self._seq = 0
        self._event = ""
        self._errors = 0
        self._probe_labels: list[str] | None = None
        self._lock = threading.Lock()
        self._final = False
        self.last_written: dict[str, int] = {}

    # -- the page ------------------------------------------------------------------------------
    def start(self) -> None:
        """Write the live page, plotly.js for it, and a first index."""
        self.dir.mkdir(parents=True, exist_ok=True)
        plotly = self.dir / "plotly.min.js"
        source = _plotly_source()
        if not plotly.exists() or plotly.stat().st_size != len(source.encode("utf-8")):
            _write(plotly, source)
        _write(self.target, live_page(self.title, data_dir=self.dir.name))
        with self._lock:
            self._write_index()

    # -- reading what is new -------------------------------------------------------------------
    def _new_records(self) -> list[StoreRecord]:
        path = self.root / MANIFEST
        try:
            size = os.stat(path).st_size
        except OSError:
            return []
        if size < self._offset:  # replaced: start again
            self._offset, self._lines = 0, 0
            self._reader.reset_ids()
        if size == self._offset:
            return []
        try:
            data = self._reader.read_tail(path, self._offset)
        except StoreDataError:
            return []
        end = data.rfind(b"\n") + 1  # complete lines only
        lines = data[:end].split(b"\n")[:-1]
        records = self._reader.parse_lines(
            enumerate(lines, start=self._lines + 1), check_arrays=False
        )
        self._offset += end
        self._lines += len(lines)
        return records

    def _run_info(self) -> dict[str, Any]:
        try:
            with open(self.root / RUN_FILE, "rb") as fh:
                info = json.loads(fh.read(1 << 20))
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    # -- updates -------------------------------------------------------------------------------
    def update(self) -> dict[str, int]:
        """Turn the records added since the last update into data files; rewrite the index.

        Returns:
            ``{file name: bytes}`` written (also kept in :attr:`last_written`).
        """
        with self._lock:
            if self._final:
                return {}
            written: dict[str, int] = {}
            changed: dict[str, _Layer] = {}
            for rec in self._new_records():
                try:
                    self._take(rec, changed, written)
                except (StoreDataError, ValueError, TypeError, IndexError):
                    continue  # a damaged record: the final report notes it
            self._seq += 1
            for layer in changed.values():
                layer.version = self._seq
                payload = {
                    "id": layer.id,
                    "version": layer.version,
                    "label": layer.label,
                    "figs": [layer.figs[k] for k in ("filters", "activations") if k in layer.figs],
                }
                file = f"layer-{layer.id}.js"
                written[file] = _write(self.dir / file, _call("layer", payload))
            written["index.js"] = self._write_index()
            self.last_written = written
            return written

    def _take(self, rec: StoreRecord, changed: dict[str, _Layer], written: dict[str, int]) -> None:
        if isinstance(rec, ProbeRecord):
            self._probe_labels = _probe_labels(rec)
        elif isinstance(rec, ErrorRecord):
            self._errors += 1
        elif isinstance(rec, MetricsRecord):
            values = {
                k: float(v)
                for k, v in (rec.values or {}).items()
                if isinstance(v, (int, float)) and np.isfinite(v)
            }
            names = sorted(set(self._metric_names) | set(values))
            if names != self._metric_names:
                self._metric_names = names
                self._curves += 1
                fig = training_curves_figure([], {n: [] for n in names})
                payload = {"version": self._curves, "spec": compact_figure(fig)}
                written["curves.js"] = _write(self.dir / "curves.js", _call("curves", payload))
            file = f"metrics-{self._metrics}.js"
            epoch = (rec.epoch or 0) + 1
            written[file] = _write(
                self.dir / file, _call("metrics", {"n": self._metrics, "epoch": epoch, **values})
            )
            self._metrics += 1
            self._event = rec.label
        elif isinstance(rec, (FiltersRecord, ActivationsRecord)) and rec.layer:
            layer = self._layers.get(rec.layer)
            if layer is None:
                layer = self._layers[rec.layer] = _Layer(id=len(self._layers))
                self._order.append(rec.layer)
            layer.type = rec.layer_type or layer.type
            layer.label = rec.label
            self._event = rec.label
            if isinstance(rec, FiltersRecord):
                fig = filters_figure(
                    [rec.weight],
                    [rec.label],
                    layer=rec.layer,
                    channels=list(rec.channels) or None,
                    rgb=bool(rec.rgb),
                )
                layer.figs["filters"] = compact_figure(fig, bits=8)
            else:
                maps = np.asarray(rec.maps)[:LIVE_PROBES]
                labels = (self._probe_labels or [])[: len(maps)]
                channels = rec.channels
                fig = activations_figure(
                    [maps],
                    [rec.label],
                    layer=rec.layer,
                    channels=None if channels is None else [int(c) for c in channels],
                    probe_labels=labels if len(labels) == len(maps) else None,
                    value="activation" if rec.stage in (None, "activation") else "pre-activation",
                )
                layer.figs["activations"] = compact_figure(fig, bits=8)
            changed[rec.layer] = layer

    def _layer_rows(self) -> list[list[Any]]:
        rank = {n: i for i, n in enumerate(self._model_layers)}
        names = sorted(self._order, key=lambda n: (rank.get(n, len(rank)), self._order.index(n)))
        return [
            [n, self._layers[n].id, self._layers[n].version, self._layers[n].type or ""]
            for n in names
        ]

    @functools.cached_property
    def _model_layers(self) -> list[str]:
        layers = self._run_info().get("layers")
        out = []
        for entry in layers if isinstance(layers, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                out.append(entry["name"])
            elif isinstance(entry, str):
                out.append(entry.split("  ", 1)[0].strip())
        return out

    def _write_index(self, info: dict[str, Any] | None = None) -> int:
        info = self._run_info() if info is None else info
        rows = self._layer_rows()
        groups = group_layers([r[0] for r in rows]) if rows else []
        ids = {r[0]: r[1] for r in rows}
        index = {
            "seq": self._seq,
            "status": info.get("status"),
            "heartbeat": info.get("heartbeat"),
            "final": self._final,
            "event": self._event,
            "metrics": self._metrics,
            "curves": self._curves,
            "errors": self._errors,
            "layers": rows,
            "groups": [[g.title, [ids[n] for n in g.layers]] for g in groups]
            if len(groups) > 1
            else None,
            "written": time.time(),
        }
        return _write(self.dir / "index.js", _call("index", index))

    def beat(self) -> None:
        """Rewrite the index with ``run.json``'s heartbeat and status (a few hundred bytes)."""
        with self._lock:
            if not self._final:
                self._write_index()

    def finish(self) -> None:
        """Tell open live pages that ``report.html`` is now the final report; drop the data."""
        with self._lock:
            self._final = True
            self._write_index()
            for f in self.dir.glob("*.js"):
                if f.name != "index.js":
                    with contextlib.suppress(OSError):
                        f.unlink()


def _probe_labels(rec: ProbeRecord) -> list[str] | None:
    try:
        y = rec.y
    except StoreDataError:
        return None
    if y is None:
        return None
    names = list(rec.class_names or ())
    out = []
    for i, v in enumerate(np.asarray(y).reshape(-1)):
        c = int(v) if np.isfinite(v) else -1
        out.append(f"#{i} {names[c] if 0 <= c < len(names) else c}")
    return out
