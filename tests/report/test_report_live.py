"""The live page's writer (cnnviz.report.live): constant work per event, whatever the history."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnnviz.report.live import LiveReport, live_dir, live_page
from cnnviz.store import RunStore, StoreReader

LAYERS = ["features.0", "features.3"]


def _event(store: RunStore, e: int, rng: np.random.Generator) -> None:
    """One epoch's records: metrics, filters and activations of two layers, an erf."""
    meta = {"event": "epoch", "label": f"epoch {e + 1}"}
    step = 10 * (e + 1)
    store.write(
        "metrics",
        None,
        source="cnnviz",
        epoch=e,
        step=step,
        meta={**meta, "values": {"train/loss": 1 / (e + 1), "val/acc": 0.1 * e}},
    )
    for i, layer in enumerate(LAYERS):
        w = rng.standard_normal((4, 3 if i == 0 else 4, 3, 3)).astype(np.float32)
        store.write(
            "filters",
            {"weight": w, "norms": np.linalg.norm(w.reshape(4, -1), axis=1)},
            source="f",
            layer=layer,
            epoch=e,
            step=step,
            meta={**meta, "rgb": i == 0, "layer_type": "Conv2d"},
        )
        maps = np.maximum(rng.standard_normal((4, 4, 8, 8)), 0).astype(np.float32)
        store.write(
            "activations",
            {"maps": maps, "channels": np.arange(4)},
            source="a",
            layer=layer,
            epoch=e,
            step=step,
            meta={**meta, "shape": [4, 4, 8, 8], "stage": "activation"},
        )
        store.write("erf", {"map": rng.random((8, 8))}, source="r", layer=layer, epoch=e, meta=meta)


def _payload(path: Path) -> dict[str, Any]:
    m = re.search(r"cnnvizLive\.\w+\((.*)\);", path.read_text(), re.S)
    assert m is not None
    return json.loads(m.group(1))


@pytest.fixture
def running(tmp_path: Path) -> tuple[RunStore, LiveReport]:
    store = RunStore(tmp_path / "run" / "cnnviz")
    store.update_run(status="running", heartbeat=time.time(), layers=LAYERS)
    live = LiveReport(store.root, tmp_path / "run" / "report.html", title="t <live>")
    live.start()
    return store, live


def test_the_work_per_event_does_not_grow_with_the_history(
    running: tuple[RunStore, LiveReport], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, live = running
    parsed: list[int] = []
    original = StoreReader.parse_lines

    def counting(self: StoreReader, lines: Any, **kw: Any) -> Any:
        lines = list(lines)
        parsed.append(len(lines))
        return original(self, lines, **kw)

    monkeypatch.setattr(StoreReader, "parse_lines", counting)
    rng = np.random.default_rng(0)
    written = []
    for e in range(30):
        _event(store, e, rng)
        written.append(live.update())
    # the manifest lines read per update: the event's own (7), never the history (up to 210)
    assert parsed == [7] * 30
    shapes = [{re.sub(r"\d+", "N", k) for k in w} for w in written]
    assert all(s == shapes[1] for s in shapes[1:])  # the same files at every event...
    assert shapes[1] == {"metrics-N.js", "layer-N.js", "index.js"}
    for name in ("layer-0.js", "layer-1.js"):  # ...of the same size (± compression noise)
        sizes = [w[name] for w in written[1:]]
        assert max(sizes) <= 1.05 * min(sizes), (name, sizes)
        assert np.mean(sizes[-5:]) <= 1.02 * np.mean(sizes[:5]), (name, sizes)
    index = [w["index.js"] for w in written]
    assert max(index) - min(index) <= 16, index  # a few more digits in the counters
    assert written[0]["curves.js"] > 0 and "curves.js" not in written[1]  # names did not change


def test_data_files_hold_the_newest_figures(running: tuple[RunStore, LiveReport]) -> None:
    store, live = running
    rng = np.random.default_rng(0)
    for e in range(3):
        _event(store, e, rng)
    live.update()
    folder = live_dir(live.target)
    index = _payload(folder / "index.js")
    assert index["status"] == "running" and index["final"] is False and index["metrics"] == 3
    assert [row[0] for row in index["layers"]] == LAYERS
    assert index["event"] == "epoch 3" and index["groups"] is None
    layer = _payload(folder / f"layer-{index['layers'][1][1]}.js")
    assert layer["label"] == "epoch 3" and len(layer["figs"]) == 2
    titles = [f["layout"]["title"]["text"] for f in layer["figs"]]
    assert titles[0].startswith("features.3 — filters") and "activations" in titles[1]
    assert [_payload(folder / f"metrics-{n}.js")["epoch"] for n in range(3)] == [1, 2, 3]
    curves = _payload(folder / "curves.js")["spec"]
    assert sorted(t["meta"] for t in curves["data"]) == ["train/loss", "val/acc"]


def test_the_page_is_small_and_loads_plotly_from_the_data_folder(
    running: tuple[RunStore, LiveReport],
) -> None:
    _, live = running
    html = live.target.read_text()
    assert len(html) < 200_000  # no plotly.js, no figures: they come from report_live/
    assert '<script src="report_live/plotly.min.js"' in html
    assert "t &lt;live&gt;" in html and "<live>" not in html
    assert (live_dir(live.target) / "plotly.min.js").stat().st_size > 1_000_000
    cfg = json.loads(html.split('id="cnnviz-live">')[1].split("</script>")[0])
    assert cfg["dir"] == "report_live" and cfg["stale_s"] == 60.0
    assert not re.search(r"\bfetch\(", html)  # file:// pages cannot fetch: scripts only
    from cnnviz.report.assets import APP_JS, LIVE_JS

    assert "</script" not in APP_JS + LIVE_JS  # inlined scripts must not end early
    assert live_page("x", data_dir="d").count("</script>") == 4


def test_heartbeat_and_finish(running: tuple[RunStore, LiveReport]) -> None:
    store, live = running
    _event(store, 0, np.random.default_rng(0))
    live.update()
    store.update_run(heartbeat=1234.5, status="failed")
    live.beat()  # copies run.json's heartbeat and status into the index only
    index = _payload(live.dir / "index.js")
    assert index["heartbeat"] == 1234.5 and index["status"] == "failed"
    live.finish()
    assert _payload(live.dir / "index.js")["final"] is True
    assert [p.name for p in live.dir.iterdir()] == ["index.js"]  # the data is gone
    assert live.update() == {}  # nothing more after the end
