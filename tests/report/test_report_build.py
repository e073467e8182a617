"""build_report on a hand-written store holding every record kind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from report_helpers import EVIL, config, figures, parse, titles, write_full_run

from cnnviz.report import ReportError, build_report
from cnnviz.store import RunStore, StoreWarning
from cnnviz.store.files import npz_bytes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("full") / "run"
    write_full_run(run)
    out = build_report(run, progress=False)
    return out, out.read_text(encoding="utf-8")


def test_default_output_is_in_the_run_directory(built: tuple[Path, str]) -> None:
    out, _ = built
    assert out.name == "report.html"
    assert (out.parent / "cnnviz").is_dir()


def test_every_section_and_layer_is_present_and_linked(built: tuple[Path, str]) -> None:
    _, html = built
    page = parse(html)
    for anchor in ("overview", "curves", "layer-table", "predictions", "attributions", "layers"):
        assert anchor in page.ids
    toc = [h for h in page.hrefs if h.startswith("#")]
    assert len(toc) >= 9
    for href in toc:  # every link of the table of contents resolves
        assert href[1:] in page.ids, href
    assert len(set(page.ids)) == len(page.ids)


def test_each_record_kind_is_rendered(built: tuple[Path, str]) -> None:
    _, html = built
    t = " | ".join(titles(figures(html)))
    for needle in (
        "Training curves",
        "Predictions on the probe images",
        "features.0 — filters",
        "features.2 — filters (columns: filters",
        "filter norms",
        "activations (rows: probe inputs",
        "per-channel statistics",
        "effective receptive field",
        "Input attributions",
        "features.2 — Grad-CAM",
        "Attribution checks",
    ):
        assert needle in t, needle
    text = "".join(parse(html).text)
    # pictures are plain HTML panels (an <img> with positioned boxes), not Plotly figures
    assert text.count("the input region unit (1, 1) sees") == 3
    assert text.count("top-4 patches per channel, strongest first") == 3
    assert text.count("optimised inputs (hover: activation reached)") == 3
    assert 'title="ch 2 #1: activation' in html
    assert 'title="ch 5 #4: activation' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;: top-4 patches per channel" in html
    assert re.search(
        r'class="cell box" style="left:12\.50%;top:0\.00%;width:31\.25%;height:31\.25%"',
        html,
    )  # region (0, 5, 2, 7) of a 16 px image
    assert "3×3×3×4 + 4 = 112" in text  # the layer table's weight count, written out
    assert "(16 - 3 + 2·1)/1 + 1 = 16" in text
    assert "dead at epoch 3: 1" in text and "unchanged at epoch 3: 2" in text
    assert "saliency: absolute <values>" in text
    assert "deeplift not available: reused <module>" in text
    assert "90% of the gradient mass in 50% of the theoretical field" in text


def test_hostile_strings_are_escaped_everywhere(built: tuple[Path, str]) -> None:
    _, html = built
    assert EVIL not in html  # neither in the page nor inside embedded JSON
    assert "<b>tri</b>" not in html
    assert "</script><script>x()" not in html
    page = parse(html)
    # it appears as text: in the TOC, the layer header and the layer table
    assert sum(EVIL in t for t in page.text) >= 3
    # only the page's own scripts exist: plotly (packed), config, figures, the app
    kinds = {a.get("type") for a, _ in page.scripts}
    assert kinds <= {"application/json", "application/octet-stream", None}
    inline = [b for a, b in page.scripts if a.get("type") is None]
    assert len(inline) == 2 and inline[1] == "window.cnnviz.start();"  # the app, its start
    # plotly text in figures shows the name literally (entities, not tags)
    figs = json.dumps([f["layout"] for f in figures(html).values()])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in figs


def test_plotly_js_is_embedded_once_and_nothing_is_fetched(built: tuple[Path, str]) -> None:
    _, html = built
    page = parse(html)
    packed = [b for a, b in page.scripts if a.get("id") == "cnnviz-plotly"]
    assert len(packed) == 1 and len(packed[0]) > 1_000_000
    assert not re.search(r"<script[^>]+src=", html)
    assert not re.search(r"<link[^>]+href=", html)
    assert "cdn.plot.ly" not in html


def test_cdn_mode_links_plotly(full_run: Path, tmp_path: Path) -> None:
    out = build_report(full_run, tmp_path / "cdn.html", plotly_js="cdn", progress=False)
    html = out.read_text()
    assert re.search(r'<script src="https://cdn\.plot\.ly/plotly-[0-9.]+\.min\.js"', html)
    assert 'id="cnnviz-plotly"' not in html
    assert out.stat().st_size < 1_000_000


def test_filter_slider_steps_show_one_event_each(built: tuple[Path, str]) -> None:
    _, html = built
    fig = next(
        f for f in figures(html).values() if "features.2 — filters" in f["layout"]["title"]["text"]
    )
    steps = fig["layout"]["sliders"][0]["steps"]
    assert [s["label"] for s in steps] == ["start", "epoch 1", "epoch 2", "epoch 3"]
    for i, step in enumerate(steps):
        visible = step["args"][0]["visible"]
        assert visible == [j == i for j in range(len(fig["data"]))]
    # the last event is shown first, and its values survive the 8-bit encoding
    assert fig["data"][-1]["visible"] is True
    store = RunStore(Path(html and built[0]).parent / "cnnviz")
    w = store.load(store.records("filters", layer="features.2")[-1])["weight"]
    z = np.asarray(fig["data"][-1]["z"], dtype=float)
    assert np.nanmax(np.abs(z[:3, :3] - w[0, 0])) <= (np.abs(w).max() * 2) / 254 + 1e-6


def test_activation_scale_switch(built: tuple[Path, str]) -> None:
    _, html = built
    figs = figures(html)
    fid, fig = next(
        (k, f)
        for k, f in figs.items()
        if "features.0 — activations" in f["layout"]["title"]["text"]
    )
    assert len(fig["data"]) == 4  # one trace per event
    assert fig["layout"]["meta"]["cnnviz_mosaic"] == {"width": 16, "channels": 4, "scale": "layer"}
    assert f'<div class="scale-toggle" data-for="{fid}">' in html
    assert f'name="scale-{fid}" value="channel"' in html


def test_secondary_figures_are_in_closed_sections(built: tuple[Path, str]) -> None:
    _, html = built
    assert re.search(
        r'<details class="more"><summary>Per-channel statistics \(all 4 channels', html
    )


def test_live_config_and_banner(full_run: Path, tmp_path: Path) -> None:
    RunStore(full_run / "cnnviz").update_run(status="running")
    html = build_report(full_run, tmp_path / "live.html", live=True, progress=False).read_text()
    cfg = config(html)
    assert cfg["live"] is True and cfg["status"] == "running" and cfg["reload_ms"] == 5000
    assert 'id="live-pause"' in html
    RunStore(full_run / "cnnviz").update_run(status="finished")
    html = build_report(full_run, tmp_path / "done.html", live=True, progress=False).read_text()
    assert config(html)["status"] == "finished"
    assert 'id="live-pause"' not in html


def test_failed_run_shows_the_error(full_run: Path, tmp_path: Path) -> None:
    RunStore(full_run / "cnnviz").update_run(status="failed", error="RuntimeError: <boom>")
    html = build_report(full_run, tmp_path / "f.html", progress=False).read_text()
    assert "The run failed: RuntimeError: &lt;boom&gt;" in html


def test_progress_lines(full_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_report(full_run, progress=True)
    err = capsys.readouterr().err
    assert "cnnviz report: [1/10] overview" in err
    assert f"layer {EVIL}" in err
    assert re.search(r"wrote .*report\.html \([0-9.]+ MB, \d+ figures", err)


def test_empty_store_gives_a_message_page(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run" / "cnnviz")
    store.update_run(status="running", model="m")
    out = build_report(tmp_path / "run", progress=False)
    html = out.read_text()
    assert "This run has no cnnviz data" in html
    assert "cnnviz-plotly" not in html and 'class="fig"' not in html


def test_no_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no cnnviz run store"):
        build_report(tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "missing", progress=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"plotly_js": "web"}, "`plotly_js`"), ({"max_events": 0}, "`max_events`")],
)
def test_bad_arguments(full_run: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_report(full_run, progress=False, **kwargs)


def test_curves_fall_back_to_csv_logger_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    store = RunStore(run / "cnnviz")
    store.write(
        "predictions", {"probs": np.full((2, 3), 1 / 3)}, epoch=0, step=1, meta={"label": "epoch 1"}
    )
    (run / "metrics.csv").write_text(
        "epoch,step,train/loss_step,train/loss_epoch,val/acc\n"
        "0,9,1.5,,\n0,9,,1.4,0.5\n1,19,1.1,,\n1,19,,1.0,0.7\n"
    )
    html = build_report(run, progress=False).read_text()
    assert "From metrics.csv (CSVLogger)." in html
    curves = next(
        f for f in figures(html).values() if f["layout"]["title"]["text"] == "Training curves"
    )
    names = {t["name"]: t["y"] for t in curves["data"]}
    assert names == {"train/loss": [1.4, 1.0], "val/acc": [0.5, 0.7]}


def test_broken_records_are_skipped_and_noted_not_the_page(full_run: Path, tmp_path: Path) -> None:
    store = RunStore(full_run / "cnnviz")
    rec = store.records("topk", layer="features.0")[-1]
    (store.root / rec.file).write_bytes(b"not an npz")
    # a record the writer would refuse (2-D filters), as a copied or edited store may hold
    bad = store.root / "arrays" / "filters" / "bad.npz"
    bad.write_bytes(npz_bytes({"weight": np.zeros((2, 2)), "norms": np.ones(2)}))
    line = {
        "id": "bad",
        "kind": "filters",
        "run": None,
        "writer": "f",
        "segment": 0,
        "layer": "features.2",
        "epoch": 9,
        "step": 99,
        "event": "epoch",
        "label": "epoch 10",
        "time": 0.0,
        "file": "arrays/filters/bad.npz",
        "meta": {},
    }
    with (store.root / "manifest.jsonl").open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    with pytest.warns(StoreWarning) as caught:
        html = build_report(full_run, tmp_path / "x.html", progress=False).read_text()
    messages = " | ".join(str(w.message) for w in caught)
    assert "is not an .npz file" in messages and "has shape (2, 2)" in messages
    text = "".join(parse(html).text)
    assert "2 problems in the run store" in text
    assert "epoch 3 of features.0 topk not shown" in text
    assert "epoch 10 of features.2 filters not shown" in text
    assert "features.0 — filters" in html and "features.2 — filters" in html
    fig = next(
        f for f in figures(html).values() if "features.2 — filters" in f["layout"]["title"]["text"]
    )
    labels = [s["label"] for s in fig["layout"]["sliders"][0]["steps"]]
    assert labels == ["start", "epoch 1", "epoch 2", "epoch 3"]  # the bad record is left out


def test_events_are_thinned_to_max_events(full_run: Path, tmp_path: Path) -> None:
    html = build_report(full_run, tmp_path / "m.html", max_events=2, progress=False).read_text()
    fig = next(
        f
        for f in figures(html).values()
        if "features.0 — activations" in f["layout"]["title"]["text"]
    )
    labels = [s["label"] for s in fig["layout"]["sliders"][0]["steps"]]
    assert labels == ["start", "epoch 3"]
    assert "2 of 4 logged events are not shown here" in html
    assert "2 of 4 logged events are not on the slider" in html  # the predictions say so too


def test_a_built_page_gets_a_new_heartbeat_without_a_rebuild(
    full_run: Path, tmp_path: Path
) -> None:
    from cnnviz.report.html import update_live_heartbeat

    RunStore(full_run / "cnnviz").update_run(status="running", heartbeat=100.0)
    html = build_report(full_run, tmp_path / "live.html", live=True, progress=False).read_text()
    assert config(html)["heartbeat"] == 100.0
    fresh = update_live_heartbeat(html, 200.0, status="finished")
    cfg = config(fresh)
    assert cfg["heartbeat"] == 200.0 and cfg["status"] == "finished"
    figs = [b for a, b in parse(html).scripts if str(a.get("id", "")).startswith("fig-")]
    assert figs == [b for a, b in parse(fresh).scripts if str(a.get("id", "")).startswith("fig-")]
    with pytest.raises(ValueError, match="not a cnnviz report"):
        update_live_heartbeat("<html></html>", 1.0)
