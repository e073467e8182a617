"""Shared by the store tests: a healthy run written with the typed API, a report build that
cannot hang and records every file the reader opens, and readers of the page."""

from __future__ import annotations

import json
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.report import build_report
from cnnviz.store import (
    ActivationsRecord,
    ErfRecord,
    FiltersRecord,
    MetricsRecord,
    PredictionsRecord,
    ProbeRecord,
    RunStore,
)

LAYERS = ("features.0", "features.2")
LABELS = ["start", "epoch 1", "epoch 2", "epoch 3", "epoch 4"]


def event(i: int) -> dict[str, Any]:
    """Header of event ``i`` (0: start, then one per epoch, 10 steps each)."""
    if i == 0:
        return {"epoch": 0, "step": 0, "event": "start", "label": "start"}
    return {"epoch": i - 1, "step": 10 * i, "event": "epoch", "label": f"epoch {i}"}


def write_event(
    store: RunStore, i: int, *, rng: np.random.Generator, filters: int = 4, nan: bool = False
) -> None:
    """Every per-event record of event ``i`` (NaN weights, maps and ERF with ``nan``)."""
    hdr = event(i)
    if i:
        store.put(MetricsRecord(values={"train/loss": 1.0 / i}), writer="cnnviz", **hdr)
    store.put(PredictionsRecord(probs=rng.dirichlet(np.ones(3), 4)), writer="acts", **hdr)
    for layer, c_in in zip(LAYERS, (3, filters), strict=True):
        w = rng.standard_normal((filters, c_in, 3, 3)).astype(np.float32)
        maps = np.maximum(rng.standard_normal((4, filters, 8, 8)), 0).astype(np.float32)
        emap = rng.random((16, 16)).astype(np.float32)
        if nan:
            w[0, 0, 0, 0] = np.nan
            maps[:, 0] = np.nan
            emap[:] = np.nan
        store.put(
            FiltersRecord(
                weight=w,
                norms=np.linalg.norm(w.reshape(filters, -1), axis=1),
                full_shape=w.shape,
                rgb=layer == "features.0",
                nonfinite=int(np.isnan(w).sum()),
                layer_type="Conv2d",
            ),
            writer="filters",
            layer=layer,
            **hdr,
        )
        store.put(
            ActivationsRecord(
                maps=maps,
                channels=np.arange(filters),
                mean=np.nanmean(maps, axis=(0, 2, 3)) if not nan else np.full(filters, np.nan),
                max=maps.max(axis=(0, 2, 3)),
                min=maps.min(axis=(0, 2, 3)),
                zero_fraction=(maps == 0).mean(axis=(0, 2, 3)),
                shape=(4, filters, 8, 8),
                read_from=layer,
                nonfinite=int(np.isnan(maps).sum()),
                layer_type="Conv2d",
            ),
            writer="acts",
            layer=layer,
            **hdr,
        )
        store.put(
            ErfRecord(
                map=emap,
                radius=float("nan") if nan else 2.0 + i,
                sigma=(1.0, 1.0),
                ratio=float("nan") if nan else 0.5,
                centroid=(float("nan"), float("nan")) if nan else (7.5, 7.5),
                region=(4, 12, 4, 12),
            ),
            writer="rf",
            layer=layer,
            **hdr,
        )


def write_run(run_dir: Path, *, events: int = 5, run: str = "run-a", seed: int = 0) -> RunStore:
    """A finished run: probe, then events 0..events-1 of two conv layers."""
    rng = np.random.default_rng(seed)
    store = RunStore(run_dir / "cnnviz").open_writer(run)
    store.update_run(
        model="tiny",
        data="Shapes",
        input_shape=[3, 16, 16],
        layers=[
            {"name": "features.0", "type": "Conv2d", "kind": "conv", "describe": "Conv2d(3→4)"},
            {"name": "features.2", "type": "Conv2d", "kind": "conv", "describe": "Conv2d(4→4)"},
        ],
    )
    store.put(
        ProbeRecord(
            x=rng.standard_normal((4, 3, 16, 16)),
            y=np.array([0, 1, 2, 0]),
            display=rng.random((4, 16, 16, 3)),
            class_names=("a", "b", "c"),
        ),
        writer="acts",
        **event(0),
    )
    for i in range(events):
        write_event(store, i, rng=rng)
    store.close(status="finished")
    return store


def manifest_lines(store_root: Path) -> list[dict[str, Any]]:
    """The manifest's lines, decoded."""
    text = (store_root / "manifest.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def append_line(store_root: Path, line: Any) -> None:
    """Append one raw line (JSON-encoded unless bytes) to the manifest."""
    data = line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode()
    with (store_root / "manifest.jsonl").open("ab") as fh:
        fh.write(data)


class Build:
    """The result of :func:`build_guarded`."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.error: BaseException | None = None
        self.opened: list[str] = []
        self.warnings: list[str] = []

    @property
    def html(self) -> str:
        assert self.path is not None
        return self.path.read_text(encoding="utf-8")


def build_guarded(run_dir: Path, monkeypatch: Any, *, timeout: float = 120.0) -> Build:
    """Build the report on a thread (a hang fails the test instead of blocking it) and record
    every path the process opens with ``os.open`` meanwhile."""
    result = Build()
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        result.opened.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)

    def target() -> None:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result.path = build_report(
                    run_dir, run_dir / "report.html", progress=False, max_events=50
                )
            result.warnings = [str(w.message) for w in caught]
        except BaseException as err:  # re-raised on the test's thread
            result.error = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    monkeypatch.setattr(os, "open", real_open)
    assert not thread.is_alive(), f"build_report did not finish in {timeout} s (it hangs)"
    if result.error is not None:
        raise result.error
    return result


def outside(paths: list[str], run_dir: Path) -> list[str]:
    """The paths that are not inside ``run_dir`` (after resolving)."""
    root = run_dir.resolve()
    bad = []
    for p in paths:
        full = Path(p).resolve() if os.path.isabs(p) else (Path.cwd() / p).resolve()
        if full != root and root not in full.parents:
            bad.append(p)
    return bad


def slider_labels(html: str) -> dict[str, list[str]]:
    """Figure title (first 40 characters) to its slider labels."""
    out = {}
    for m in re.finditer(r'<script type="application/json" id="(fig-[^"]+)">(.*?)</script>', html):
        spec = json.loads(m.group(2))
        layout = spec.get("layout", {})
        title = str((layout.get("title") or {}).get("text", ""))
        sliders = layout.get("sliders") or []
        if sliders:
            out[title[:40]] = [s["label"] for s in sliders[0]["steps"]]
    return out


def labels_of(html: str, layer: str, what: str) -> list[str]:
    """Slider labels of the ``what`` (``filters``, ``activations``) figure of ``layer``."""
    for title, labels in slider_labels(html).items():
        if title.startswith(f"{layer} — {what}"):
            return labels
    return []
