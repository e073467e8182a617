"""The report of a short real run, loaded in headless Chromium (Debian's ``chromium``).

Skipped with a reason when Chromium or Playwright is missing, unless the ``CI`` environment
variable is set (then it fails: CI installs Chromium with ``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from cnnviz.callbacks import ActivationMaps, FilterWeights
from cnnviz.callbacks.report import Report
from cnnviz.data import ShapesDataModule
from cnnviz.module import CaseStudyModule

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CNNVIZ_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _need(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser test must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    pl.seed_everything(0, verbose=False)
    dm = ShapesDataModule(image_size=32, num_train=128, num_val=32, batch_size=32)
    module = CaseStudyModule(
        "lenet5", data_info=dm.model_kwargs, optimizer="adam", lr=2e-3, scheduler="none"
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=[FilterWeights(), ActivationMaps(num_probe=4), Report(live=True)],
    )
    trainer.fit(module, datamodule=dm)
    out = root / "report.html"
    assert out.exists()
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need(
        Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
        f"Chromium not found at {CHROMIUM} (install it with `apt-get install -y chromium`)",
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need(False, "the playwright package is not installed")
        raise
    with sync_playwright() as p:
        exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        b = p.chromium.launch(executable_path=exe, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def loaded(browser: Any, report_file: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    blocked: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r: Any) -> None:
        if r.request.url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(report_file.as_uri())
    yield page, errors, blocked
    page.close()


def test_every_figure_draws_without_errors_or_requests(loaded: Any) -> None:
    page, errors, blocked = loaded
    for summary in page.locator("details.more > summary").all():  # secondary figures too
        summary.click()
    ids = page.eval_on_selector_all(".fig[data-fig]", "els => els.map(e => e.dataset.fig)")
    assert len(ids) >= 10
    for fid in ids:  # scroll each into view: figures are drawn lazily
        sel = f'.fig[data-fig="{fid}"]'
        page.locator(sel).scroll_into_view_if_needed()
        page.wait_for_function(
            f"document.querySelector('{sel}').dataset.state === 'drawn' || "
            f"document.querySelector('{sel}').dataset.state === 'error'",
            timeout=20_000,
        )
        assert page.locator(f"{sel} .main-svg").count() >= 1, fid
        assert page.locator(f"{sel} .fig-error").count() == 0, fid
    assert errors == []
    assert blocked == []


def test_table_of_contents_links_resolve(loaded: Any) -> None:
    page, errors, _ = loaded
    hrefs = page.eval_on_selector_all("nav#toc a", "els => els.map(a => a.getAttribute('href'))")
    assert len(hrefs) >= 8
    missing = page.evaluate(
        "hrefs => hrefs.filter(h => !h.startsWith('#') || !document.getElementById(h.slice(1)))",
        hrefs,
    )
    assert missing == []
    page.click("nav#toc a[href='#predictions']")
    top = page.evaluate("document.getElementById('predictions').getBoundingClientRect().top")
    assert abs(top) < 40  # the link scrolls to its section
    assert errors == []


def test_epoch_slider_changes_the_filter_image(loaded: Any) -> None:
    page, errors, _ = loaded
    fid = page.evaluate(
        "Array.from(document.querySelectorAll('.fig[data-fig]')).map(e => e.dataset.fig)"
        ".find(id => document.getElementById(id).textContent.includes('c3 \\u2014 filters'))"
    )
    assert fid, "no filter figure for net.features.c3"
    sel = f'.fig[data-fig="{fid}"]'
    page.locator(sel).scroll_into_view_if_needed()
    page.wait_for_function(f"document.querySelector('{sel}').dataset.state === 'drawn'")
    state = (
        f"(() => {{ const gd = document.querySelector('{sel}');"
        " return {visible: gd._fullData.map(t => t.visible),"
        " images: Array.from(gd.querySelectorAll('.hm image')).map(i => i.getAttribute('href'))"
        ".join('|'), active: gd._fullLayout.sliders[0].active}; })()"
    )
    before = page.evaluate(state)
    assert before["visible"][-1] is True and before["active"] == 2  # the newest first
    shot_before = page.locator(sel).screenshot()
    rail = page.locator(f"{sel} .slider-rail-touch-rect")
    box = rail.bounding_box()
    assert box is not None
    # the left end of the rail is the first step, "start" (waits until the rail is stable)
    rail.click(position={"x": 3, "y": box["height"] / 2})
    # the slider moves first, the restyle that shows the first step's trace follows it
    page.wait_for_function(
        f"(() => {{ const gd = document.querySelector('{sel}');"
        " return gd._fullLayout.sliders[0].active === 0 && gd._fullData[0].visible === true; })()"
    )
    after = page.evaluate(state)
    assert after["visible"][0] is True and after["visible"][-1] is False
    assert after["images"] != before["images"]  # another heatmap is drawn
    assert page.locator(sel).screenshot() != shot_before
    assert errors == []


def test_scale_switch_restyles_activation_maps(loaded: Any) -> None:
    page, errors, _ = loaded
    fid = page.evaluate(
        "Array.from(document.querySelectorAll('.fig[data-fig]')).map(e => e.dataset.fig)"
        ".find(id => document.getElementById(id).textContent.includes('c1 \\u2014 activations'))"
    )
    sel = f'.fig[data-fig="{fid}"]'
    page.locator(sel).scroll_into_view_if_needed()
    page.wait_for_function(f"document.querySelector('{sel}').dataset.state === 'drawn'")
    shown = (
        f"(() => {{ const t = document.querySelector('{sel}')._fullData.find(t => t.visible);"
        " return [t.zmin, t.zmax]; })()"
    )
    lo, hi = page.evaluate(shown)
    assert hi > lo and (lo, hi) != (0, 1)  # one scale for the layer, in activation units
    page.check(f'input[name="scale-{fid}"][value="channel"]')
    page.wait_for_function(
        f"document.querySelector('{sel}')._fullData.find(t => t.visible).zmax === 1"
    )
    assert page.evaluate(shown) == [0, 1]  # each channel stretched to [0, 1]
    page.check(f'input[name="scale-{fid}"][value="layer"]')
    page.wait_for_function(
        f"document.querySelector('{sel}')._fullData.find(t => t.visible).zmax !== 1"
    )
    assert page.evaluate(shown) == [lo, hi]
    assert errors == []


def test_live_page_reloads_and_keeps_its_scroll_position(
    browser: Any, report_file: Path, tmp_path: Path
) -> None:
    from cnnviz.report import build_report
    from cnnviz.store import RunStore

    store = RunStore(report_file.parent / "cnnviz")
    store.update_run(status="running")
    try:
        live = build_report(store.root, tmp_path / "live.html", live=True, progress=False)
    finally:
        store.update_run(status="finished")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(live.as_uri())
    assert page.locator("#live-pause").count() == 1
    page.evaluate("window.scrollTo(0, 1500)")
    with page.expect_navigation(timeout=12_000):  # reloads by itself after 5 s
        pass
    page.wait_for_function("window.scrollY > 1400", timeout=5_000)
    assert page.evaluate("performance.getEntriesByType('navigation')[0].type") == "reload"
    page.check("#live-pause")  # a paused page stays put
    page.evaluate("window.stayed = true")
    page.wait_for_timeout(6_000)
    assert page.evaluate("window.stayed") is True
    assert errors == []
    page.close()


def test_a_live_page_stops_reloading_when_the_writer_stops_responding(
    browser: Any, report_file: Path, tmp_path: Path
) -> None:
    import time

    from cnnviz.report import build_report
    from cnnviz.store import RunStore

    store = RunStore(report_file.parent / "cnnviz")
    # the writer's last heartbeat was 57 s ago: fresh when built, stale within one reload tick
    store.update_run(status="running", heartbeat=time.time() - 57)
    try:
        live = build_report(store.root, tmp_path / "live.html", live=True, progress=False)
    finally:
        store.update_run(status="finished")
    assert 'id="live-pause"' in live.read_text()  # built as a live, reloading page
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live.as_uri())
    page.evaluate("window.stayed = true")
    page.wait_for_function(
        "document.getElementById('live-banner').textContent.includes('stopped responding')",
        timeout=15_000,
    )
    page.wait_for_timeout(6_000)  # longer than one reload interval: it must not reload
    assert page.evaluate("window.stayed") is True
    assert "last heartbeat" in page.inner_text("#live-banner")
    assert errors == []
    page.close()


# -- a deep network: groups, the picker, drawing on demand ---------------------------------------
@pytest.fixture(scope="module")
def deep_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from report_helpers import densenet_like, write_deep

    from cnnviz.report import build_report

    run = tmp_path_factory.mktemp("deep") / "run"
    write_deep(run, densenet_like()[:64], events=2)
    return build_report(run, progress=False)


def _open(browser: Any, path: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    blocked: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r: Any) -> None:
        if r.request.url.startswith(("file:", "data:", "blob:")):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri())
    page.wait_for_function("window.cnnviz !== undefined")
    page.evaluate("window.cnnviz.ready")
    return page, errors, blocked


GROUP_STATES = (
    "id => Array.from(document.getElementById(id).querySelectorAll('.fig[data-fig]'))"
    ".map(el => el.dataset.state || 'waiting')"
)


def test_deep_page_draws_a_group_only_when_it_is_opened(browser: Any, deep_report: Path) -> None:
    page, errors, blocked = _open(browser, deep_report)
    page.wait_for_timeout(1500)  # the first screen draws; the groups stay closed
    groups = page.eval_on_selector_all("details.group", "els => els.map(e => e.id)")
    assert len(groups) >= 4
    assert page.eval_on_selector_all("details.group[open]", "els => els.length") == 0
    drawn = page.evaluate(
        "Array.from(document.querySelectorAll('details.group .fig[data-fig]'))"
        ".filter(el => el.dataset.state).length"
    )
    assert drawn == 0  # nothing in a closed group is drawn
    target = groups[1]
    page.click(f"nav#toc a[href='#{target}']")
    page.wait_for_function(
        f"document.getElementById('{target}').open && "
        f"document.getElementById('{target}').querySelector('.fig[data-fig]')"
        ".dataset.state === 'drawn'",
        timeout=20_000,
    )
    states = page.evaluate(GROUP_STATES, target)
    assert states[0] == "drawn" and "error" not in states
    assert page.evaluate(GROUP_STATES, groups[-1]) == ["waiting"] * len(
        page.evaluate(GROUP_STATES, groups[-1])
    )  # other groups still wait
    assert errors == [] and blocked == []
    page.close()


def test_the_layer_picker_jumps_to_a_layer_and_opens_its_group(
    browser: Any, deep_report: Path
) -> None:
    page, errors, _ = _open(browser, deep_report)
    page.fill("#layer-filter", "denseblock2.denselayer7.conv2")
    visible = page.eval_on_selector_all(
        "nav#toc li.layer:not(.hidden)", "els => els.map(e => e.dataset.name)"
    )
    assert visible == ["features.denseblock2.denselayer7.conv2"]
    assert "1 matching layers" in page.inner_text("#layer-filter-hint")
    page.press("#layer-filter", "Enter")
    anchor = "layer-features-denseblock2-denselayer7-conv2"
    page.wait_for_function(
        f"document.getElementById('{anchor}').querySelector('.fig[data-fig]')"
        ".dataset.state === 'drawn'",
        timeout=20_000,
    )
    top = page.evaluate(f"document.getElementById('{anchor}').getBoundingClientRect().top")
    assert abs(top) < 40  # scrolled to the layer
    assert page.evaluate(f"document.getElementById('{anchor}').closest('details').open")
    assert page.url.endswith("#" + anchor)
    page.fill("#layer-filter", "")
    assert page.eval_on_selector_all("nav#toc li.layer.hidden", "els => els.length") == 0
    assert errors == []
    page.close()


# -- the live page ---------------------------------------------------------------------------------
def _live_store(root: Path, heartbeat: float) -> Any:
    import numpy as np

    from cnnviz.store import RunStore

    store = RunStore(root / "cnnviz")
    store.update_run(status="running", heartbeat=heartbeat, layers=["c1"])
    return store, np


def _add_event(store: Any, np: Any, e: int) -> None:
    meta = {"event": "epoch", "label": f"epoch {e + 1}"}
    rng = np.random.default_rng(e)
    store.write(
        "metrics",
        None,
        source="cnnviz",
        epoch=e,
        step=e,
        meta={**meta, "values": {"loss": 1 / (e + 1)}},
    )
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    store.write(
        "filters", {"weight": w, "norms": np.ones(4)}, source="f", layer="c1", epoch=e, meta=meta
    )


def test_live_page_follows_the_run_and_reloads_into_the_final_report(
    browser: Any, tmp_path: Path
) -> None:
    import time

    from cnnviz.report import build_report
    from cnnviz.report.live import LiveReport

    store, np = _live_store(tmp_path, time.time())
    live = LiveReport(store.root, tmp_path / "report.html", title="live test")
    live.start()
    _add_event(store, np, 0)
    live.update()
    page, errors, blocked = _open(browser, tmp_path / "report.html")
    page.wait_for_function(
        "document.querySelector('#layer-0 .live-label') && "
        "document.querySelector('#layer-0 .live-label').textContent.includes('epoch 1') && "
        "document.querySelector('#layer-0 .fig').dataset.state === 'drawn'",
        timeout=15_000,
    )
    assert "Training is running" in page.inner_text("#live-banner")
    page.evaluate("window.stayed = true")
    _add_event(store, np, 1)
    live.update()  # the open page picks the new event up without reloading
    page.wait_for_function(
        "document.querySelector('#layer-0 .live-label').textContent.includes('epoch 2')",
        timeout=15_000,
    )
    page.wait_for_function("window.cnnvizLive.state.points.length === 2", timeout=15_000)
    assert page.evaluate("window.stayed") is True
    store.update_run(status="finished")
    build_report(store.root, tmp_path / "report.html", progress=False)
    with page.expect_navigation(timeout=15_000):
        live.finish()  # the index says "final": the page reloads into the full report
    page.wait_for_selector("#cnnviz-config", state="attached")
    assert page.evaluate("window.cnnvizLive === undefined")
    assert errors == [] and blocked == []
    page.close()


def test_live_page_stops_when_the_writer_stops_responding(browser: Any, tmp_path: Path) -> None:
    import time

    from cnnviz.report.live import LiveReport

    # the writer's last heartbeat was 57 s ago: fresh at the first read, stale within seconds
    store, np = _live_store(tmp_path, time.time() - 57)
    live = LiveReport(store.root, tmp_path / "report.html", title="live test")
    live.start()
    _add_event(store, np, 0)
    live.update()
    page, errors, _ = _open(browser, tmp_path / "report.html")
    page.wait_for_function(
        "document.getElementById('live-banner').textContent.includes('stopped responding')",
        timeout=20_000,
    )
    polls = page.evaluate("window.cnnvizLive.polls")
    page.wait_for_timeout(5_000)  # more than two poll intervals: no more reading
    assert page.evaluate("window.cnnvizLive.polls") == polls
    assert "last heartbeat" in page.inner_text("#live-banner")
    assert errors == []
    page.close()


# -- concept dissection, the faithfulness ranking, shared feature visualisations -----------------
@pytest.fixture(scope="module")
def checks_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np
    from report_helpers import faithfulness, write_dissection, write_full_run

    from cnnviz.report import build_report
    from cnnviz.store import AttributionChecksRecord, FeatvisRecord

    run = tmp_path_factory.mktemp("checks") / "run"
    store = write_full_run(run)  # topk records for features.0: patches beside its units
    write_dissection(store, layer="features.0", control={2: 0})
    write_dissection(store, layer="features.2", units=8, control={})
    at = {"epoch": 2, "step": 30, "event": "epoch", "label": "epoch 3"}
    store.put(
        AttributionChecksRecord(
            faithfulness=faithfulness({"saliency": 0.2, "grad_cam": 0.1, "smoothgrad": -0.05}),
            masks=False,
        ),
        writer="at",  # the writer of write_full_run's checks
        **at,
    )
    store.put(
        FeatvisRecord(images=np.random.default_rng(0).random((3, 16, 16, 3)), same_as="features.0"),
        writer="FeatureVisualization{}",
        layer="features.2",
        **at,
    )
    return build_report(run, progress=False)


def test_dissection_and_faithfulness_draw_without_errors(browser: Any, checks_report: Path) -> None:
    page, errors, blocked = _open(browser, checks_report)
    for anchor in ("dissection", "attributions", "layer-features-0", "layer-features-2"):
        page.evaluate("id => window.cnnviz.reveal(id)", anchor)
        states = page.evaluate(
            "id => Promise.all(Array.from(document.getElementById(id)"
            ".querySelectorAll('.fig[data-fig]')).map(el => window.cnnviz.render(el)"
            ".then(() => el.dataset.state)))",
            anchor,
        )
        assert states and set(states) == {"drawn"}, (anchor, states)
    titles = page.eval_on_selector_all(
        "#dissection .gtitle, #attributions .gtitle", "els => els.map(e => e.textContent)"
    )
    assert "Unique detectors per layer, by concept category" in titles
    assert any(t.startswith("Deletion and insertion curves") for t in titles)
    # the top patches beside the units are pictures that load, inside the table's width
    pics = page.eval_on_selector_all(
        "#layer-features-0 .layer-dissection img",
        "els => els.map(e => [e.complete, e.naturalWidth, e.getBoundingClientRect().height])",
    )
    assert pics and all(done and width > 0 and 30 < h < 50 for done, width, h in pics)
    wrap = page.evaluate(
        "() => { const t = document.querySelector('#layer-features-0 .dissect .tablewrap');"
        " return [t.scrollWidth, t.clientWidth]; }"
    )
    assert wrap[0] <= wrap[1]  # nothing cut off sideways at 1280 px
    assert errors == [] and blocked == []
    page.close()
