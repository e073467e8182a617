"""Measure the report: file size, build time and render time in headless Chromium.

Three benchmarks:

- ``--deep``: reports of deep networks with every layer recorded (torchvision DenseNet-121,
  timm EfficientNet-B0; ``--make-deep`` trains such a run on Shapes 64 px with ``budget=None``
  and ``layers="*"``). Prints the size, the build time, the time from navigation until the
  first screen is drawn, and the time to open the largest layer group and draw every figure in
  it. Targets (issue 11): <= 20 MB, first screen < 2 s.
- ``--live``: the live page's cost per event over a LeNet-5 fit with ``Report(live=True)``:
  bytes and files written and seconds spent per update (on the store's background thread),
  early and late in the run, and the time the Report callback's hooks take on the training
  thread. Target: constant per event (the late/early ratio stays about 1).
- the default: trains (or takes) a 5-epoch ResNet-18 on Shapes 64 px and the LeNet-5 demo
  with every callback (``cnnviz.demo.default_callbacks``), builds each report, loads it in
  headless Chromium (Debian's ``/usr/bin/chromium`` via Playwright) and scrolls through it,
  timing from navigation until every figure is drawn. Targets (issue 6): ResNet-18 report
  <= 20 MB and rendered in < 5 s; LeNet-5 report <= 6 MB.

Timings on a shared machine are noisy: every page load is repeated (``--repeats``) and the
median is printed with the individual runs.

Usage:
    python scripts/bench_report.py                      # train both runs under runs/bench
    python scripts/bench_report.py --resnet-run DIR --lenet-run DIR   # measure existing runs
    python scripts/bench_report.py --make-deep densenet121 runs/deep-densenet
    python scripts/bench_report.py --deep runs/deep-densenet runs/deep-effnet
    python scripts/bench_report.py --live --live-epochs 12
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


OPTIONAL = {  # callbacks cnnviz.demo.default_callbacks() uses when cnnviz.callbacks has them
    "ReceptiveFields": "cnnviz.callbacks.receptive_fields",
    "TopActivations": "cnnviz.callbacks.top_activations",
    "Attributions": "cnnviz.callbacks.attributions",
    "FeatureVisualization": "cnnviz.callbacks.feature_visualization",
}


def expose_callbacks() -> list[str]:
    """Make every callback that exists and constructs visible to ``default_callbacks`` (a shim
    while the package does not export one yet); returns the names of the callbacks in use."""
    import importlib

    from cnnviz import callbacks
    from cnnviz.demo import default_callbacks

    for name, module in OPTIONAL.items():
        try:
            cls = getattr(callbacks, name, None) or getattr(importlib.import_module(module), name)
            cls()  # a callback still being written may not construct yet
        except Exception as err:  # measure without it, and say so
            print(f"[bench] {name} not available: {type(err).__name__}: {err}", flush=True)
            if hasattr(callbacks, name):
                delattr(callbacks, name)  # this process only
            continue
        setattr(callbacks, name, cls)
    return [type(c).__name__ for c in default_callbacks(live=False, report=False)]


def train(
    model: str, image_size: int, epochs: int, num_train: int, num_val: int, out: Path, quick: bool
) -> Path:
    from cnnviz.demo import demo

    t = time.perf_counter()
    run = demo(
        model=model,
        image_size=image_size,
        epochs=epochs,
        num_train=num_train,
        num_val=num_val,
        out=out,
        accelerator="auto",
        report=False,
        live=False,
        quick=quick,
    )
    print(f"[bench] trained {model} in {time.perf_counter() - t:.0f} s -> {run}", flush=True)
    return run


# Scrolls through the page one screen at a time, as a reader would, waiting until every
# figure on screen is drawn; returns milliseconds since navigation start (performance.now()).
SCROLL_THROUGH = r"""
async () => {
  const frame = () => new Promise(r => requestAnimationFrame(r));
  if (document.readyState === 'loading') {
    await new Promise(r => document.addEventListener('DOMContentLoaded', r));
  }
  const figs = Array.from(document.querySelectorAll('.fig[data-fig]'))
    .filter(el => !el.closest('details:not([open])'));
  const done = el => el.dataset.state === 'drawn' || el.dataset.state === 'error';
  const onScreen = el => {
    const r = el.getBoundingClientRect();
    return r.bottom > 0 && r.top < innerHeight;
  };
  let first = null, y = 0;
  for (;;) {
    window.scrollTo(0, y);
    await frame();
    while (figs.some(el => onScreen(el) && !done(el))) { await frame(); }
    if (first === null) { first = performance.now(); }
    if (y + innerHeight >= document.documentElement.scrollHeight) { break; }
    y += innerHeight;
  }
  while (!figs.every(done)) { await frame(); }
  return {first, all: performance.now(), figures: figs.length,
          drawn: figs.filter(el => el.dataset.state === 'drawn').length,
          hidden: document.querySelectorAll('.fig[data-fig]').length - figs.length};
}
"""


def chromium_cpu_seconds() -> float:
    """CPU time (user + system) used so far by the Chromium processes Playwright started."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            if b"playwright" not in cmd or b"chromium" not in cmd:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def render(path: Path, chromium: str, repeats: int) -> dict[str, Any]:
    """Load ``path`` ``repeats`` times; time from navigation to the first screen and to every
    figure drawn while scrolling through (best of the repeats)."""
    from playwright.sync_api import sync_playwright

    results, errors, blocked = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.route(
                "**/*",
                lambda r: (
                    r.continue_()
                    if r.request.url.startswith(("file:", "data:", "blob:"))
                    else (blocked.append(r.request.url), r.abort())
                ),
            )
            cpu = chromium_cpu_seconds()
            page.goto(path.resolve().as_uri(), wait_until="commit")
            result = page.evaluate(SCROLL_THROUGH)
            result["busy"] = chromium_cpu_seconds() - cpu  # CPU time, whatever the load
            results.append(result)
            page.close()
        browser.close()
    best = min(results, key=lambda r: r["all"])
    return {
        "figures": best["figures"],
        "drawn": best["drawn"],
        "hidden": best["hidden"],
        "seconds": best["all"] / 1000,
        "first": best["first"] / 1000,
        "all": [r["all"] / 1000 for r in results],
        "busy": best["busy"],
        "errors": errors,
        "blocked": blocked,
    }


def measure(
    name: str, run: Path, chromium: str, repeats: int, limit_mb: float, limit_s: float | None
) -> bool:
    from cnnviz.report import build_report

    t = time.perf_counter()
    out = build_report(run, run / "report.html", progress=False)
    build_s = time.perf_counter() - t
    size = out.stat().st_size / 1e6
    r = render(out, chromium, repeats)
    ok = size <= limit_mb and (limit_s is None or r["seconds"] < limit_s) and not r["errors"]
    ok = ok and r["drawn"] >= r["figures"] and not r["blocked"]
    print(
        f"{name}: {size:.2f} MB (limit {limit_mb} MB), built in {build_s:.1f} s, "
        f"{r['figures']} figures on the page ({r['drawn']} drawn; {r['hidden']} more in closed "
        f"sections, drawn when opened); first screen drawn {r['first']:.2f} s after navigation, "
        f"every figure drawn while scrolling through {r['seconds']:.2f} s "
        f"(Chromium used {r['busy']:.2f} s of CPU; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs)"
        + (f" (limit {limit_s} s)" if limit_s else "")
        + f" [runs: {', '.join(f'{s:.2f}' for s in r['all'])}]"
        + (f"; console errors: {r['errors'][:3]}" if r["errors"] else "")
        + (f"; blocked requests: {r['blocked'][:3]}" if r["blocked"] else "")
        + ("  OK" if ok else "  OVER"),
        flush=True,
    )
    return ok


# -- deep networks -------------------------------------------------------------------------------
def make_deep(model: str, out: Path, epochs: int = 3) -> Path:
    """Train ``model`` (torchvision densenet121 or timm efficientnet_b0, random weights) for a
    few batches on Shapes 64 px with every layer recorded (``budget=None``, ``layers="*"``)."""
    os.environ.setdefault("CNNVIZ_AUTO_REPORT", "0")
    import lightning.pytorch as pl

    from cnnviz.callbacks import (
        ActivationMaps,
        Attributions,
        FilterWeights,
        ReceptiveFields,
        TopActivations,
    )
    from cnnviz.data import ShapesDataModule
    from cnnviz.module import CaseStudyModule

    pl.seed_everything(0, verbose=False)
    dm = ShapesDataModule(image_size=64, num_train=64, num_val=32, batch_size=16)
    classes = dm.model_kwargs["num_classes"]
    if model == "densenet121":
        import torchvision

        net = torchvision.models.densenet121(num_classes=classes)
    elif model == "efficientnet_b0":
        import timm

        net = timm.create_model("efficientnet_b0", num_classes=classes, pretrained=False)
    else:
        raise SystemExit(f"--make-deep: unknown model {model!r} (densenet121, efficientnet_b0)")
    module = CaseStudyModule(
        net, data_info=dm.model_kwargs, optimizer="adam", lr=1e-3, scheduler="none"
    )
    every = {"budget": None, "layers": "*"}
    callbacks = [
        FilterWeights(**every),
        ActivationMaps(num_probe=4, **every),
        ReceptiveFields(**every),
        TopActivations(**every),
        Attributions(methods=["saliency", "grad_cam"], budget=None, num_probe=4),
    ]
    t = time.perf_counter()
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_train_batches=2,
        limit_val_batches=2,
        default_root_dir=str(out),
        callbacks=callbacks,
    ).fit(module, datamodule=dm)
    print(f"[bench] recorded {model} in {time.perf_counter() - t:.0f} s -> {out}", flush=True)
    return out


# Milliseconds from navigation until plotly.js is ready and every figure on the first screen is
# drawn (what a reader waits for before the page is usable).
FIRST_SCREEN = r"""
async () => {
  const frame = () => new Promise(r => requestAnimationFrame(r));
  while (!window.cnnviz) { await frame(); }
  await window.cnnviz.ready;
  const onScreen = el => {
    const r = el.getBoundingClientRect();
    return r.height > 0 && r.bottom > 0 && r.top < innerHeight;
  };
  const done = el => el.dataset.state === 'drawn' || el.dataset.state === 'error';
  for (;;) {
    const figs = Array.from(document.querySelectorAll('.fig[data-fig]')).filter(onScreen);
    if (figs.every(done) || performance.now() > 120000) {
      return {ms: performance.now(), figures: figs.length,
              height: document.documentElement.scrollHeight,
              groups: document.querySelectorAll('details.group').length};
    }
    await frame();
  }
}
"""

# Opens a layer group and scrolls through it until every figure in it is drawn.
OPEN_GROUP = r"""
async (id) => {
  const frame = () => new Promise(r => requestAnimationFrame(r));
  const group = document.getElementById(id);
  const t0 = performance.now();
  window.cnnviz.reveal(id);
  const figs = Array.from(group.querySelectorAll('.fig[data-fig]'))
    .filter(el => !el.closest('details.more:not([open])'));
  const done = el => el.dataset.state === 'drawn' || el.dataset.state === 'error';
  const onScreen = el => {
    const r = el.getBoundingClientRect();
    return r.height > 0 && r.bottom > 0 && r.top < innerHeight;
  };
  const limit = t0 + 120000;  // a figure that never draws must not hang the benchmark
  let y = group.getBoundingClientRect().top + scrollY;
  for (;;) {
    window.scrollTo(0, y);
    await frame();
    while (figs.some(el => onScreen(el) && !done(el)) && performance.now() < limit) {
      await frame();
    }
    const end = group.getBoundingClientRect().bottom + scrollY;  // pictures may grow it
    if (y + innerHeight >= end || performance.now() > limit) { break; }
    y += innerHeight;
  }
  while (!figs.every(done) && performance.now() < limit) { await frame(); }
  return {ms: performance.now() - t0, figures: figs.length,
          drawn: figs.filter(el => el.dataset.state === 'drawn').length,
          layers: group.querySelectorAll('section.card').length};
}
"""


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def measure_deep(run: Path, chromium: str, repeats: int) -> bool:
    from playwright.sync_api import sync_playwright

    from cnnviz.report import build_report
    from cnnviz.report.data import load_run

    t = time.perf_counter()
    out = build_report(run, run / "report.html", progress=False)
    build_s = time.perf_counter() - t
    size = out.stat().st_size / 1e6
    layers = len(load_run(run / "cnnviz", warn=False).layers())
    firsts, opens, errors, blocked = [], [], [], []
    info: dict[str, Any] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route(
                "**/*",
                lambda r: (
                    r.continue_()
                    if r.request.url.startswith(("file:", "data:", "blob:"))
                    else (blocked.append(r.request.url), r.abort())
                ),
            )
            page.goto(out.resolve().as_uri(), wait_until="commit")
            first = page.evaluate(FIRST_SCREEN)
            firsts.append(first["ms"] / 1000)
            info = first
            page.wait_for_load_state("domcontentloaded")
            info["parsed"] = page.evaluate(
                "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
            )
            info["groups"] = page.evaluate("document.querySelectorAll('details.group').length")
            group = page.evaluate(
                "() => { const gs = Array.from(document.querySelectorAll('details.group'));"
                " gs.sort((a, b) => b.querySelectorAll('.fig').length -"
                " a.querySelectorAll('.fig').length); return gs.length ? gs[0].id : null; }"
            )
            if group:
                opened = page.evaluate(OPEN_GROUP, group)
                opens.append(opened["ms"] / 1000)
                info["group"] = (group, opened)
            page.close()
        browser.close()
    ok = size <= 20 and _median(firsts) < 2 and not errors and not blocked
    group_text = ""
    if "group" in info:
        gid, g = info["group"]
        group_text = (
            f"; opening the largest group ({gid}: {g['layers']} layers, {g['figures']} figures) "
            f"and drawing all of it: {_median(opens):.2f} s "
            f"[runs: {', '.join(f'{v:.2f}' for v in opens)}]"
        )
    print(
        f"{run.name}: {layers} layers, {size:.2f} MB (limit 20 MB), built in {build_s:.1f} s; "
        f"page {info.get('height', 0):,} px tall with {info.get('groups', 0)} collapsed groups; "
        f"first screen drawn {_median(firsts):.2f} s after navigation (limit 2 s) "
        f"[runs: {', '.join(f'{v:.2f}' for v in firsts)}], the whole file parsed after "
        f"{info.get('parsed', 0) / 1000:.2f} s{group_text}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        + (f"; console errors: {errors[:3]}" if errors else "")
        + (f"; blocked requests: {blocked[:3]}" if blocked else "")
        + ("  OK" if ok else "  OVER"),
        flush=True,
    )
    return ok


# -- the live page ---------------------------------------------------------------------------------
def measure_live(out: Path, epochs: int) -> bool:
    """A LeNet-5 fit with Report(live=True): the live page's cost per event, early and late."""
    os.environ.setdefault("CNNVIZ_AUTO_REPORT", "0")
    import lightning.pytorch as pl
    import torch

    from cnnviz.callbacks import ActivationMaps, FilterWeights
    from cnnviz.callbacks.report import Report
    from cnnviz.data import ShapesDataModule
    from cnnviz.module import CaseStudyModule
    from cnnviz.report import live as live_module

    torch.set_num_threads(1)
    costs: list[tuple[float, int, int]] = []
    original = live_module.LiveReport.update

    def timed(self: Any) -> dict[str, int]:
        t = time.perf_counter()
        written = original(self)
        costs.append((time.perf_counter() - t, sum(written.values()), len(written)))
        return written

    live_module.LiveReport.update = timed  # type: ignore[method-assign]
    hooks: list[float] = []

    class Timed(Report):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            t = time.perf_counter()
            super().on_train_epoch_end(trainer, pl_module)
            hooks.append(time.perf_counter() - t)

    pl.seed_everything(0, verbose=False)
    dm = ShapesDataModule(image_size=32, num_train=256, num_val=64, batch_size=32)
    module = CaseStudyModule("lenet5", data_info=dm.model_kwargs, scheduler="none")
    report = Timed(live=True)
    run = out / "live"
    pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run),
        callbacks=[
            FilterWeights(budget=None),
            ActivationMaps(num_probe=8, budget=None),
            report,
        ],
    ).fit(module, datamodule=dm)
    live_module.LiveReport.update = original  # type: ignore[method-assign]
    third = max(1, len(costs) // 3)
    early, late = costs[1 : 1 + third], costs[-third:]

    def avg(rows: list[tuple[float, int, int]], i: int) -> float:
        return sum(r[i] for r in rows) / max(1, len(rows))

    from cnnviz.report import build_report

    t = time.perf_counter()
    build_report(run, run / "rebuild.html", progress=False)
    rebuild = time.perf_counter() - t
    ratio_s = avg(late, 0) / max(avg(early, 0), 1e-9)
    ratio_b = avg(late, 1) / max(avg(early, 1), 1)
    print(
        f"live page, LeNet-5, {epochs} epochs, {len(costs)} updates on the store's thread: "
        f"early {avg(early, 0) * 1000:.0f} ms, {avg(early, 1) / 1000:.0f} kB in "
        f"{avg(early, 2):.1f} files per update; late {avg(late, 0) * 1000:.0f} ms, "
        f"{avg(late, 1) / 1000:.0f} kB in {avg(late, 2):.1f} files (late/early: time "
        f"{ratio_s:.2f}, bytes {ratio_b:.2f}); the Report's epoch hook on the training thread: "
        f"median {_median(hooks) * 1000:.2f} ms; the final report built once "
        f"({report.builds} build); for comparison, rebuilding the single file at the last event "
        f"(what live mode did on the training thread per event before) takes {rebuild:.2f} s",
        flush=True,
    )
    return ratio_b < 1.1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="where runs are trained")
    p.add_argument("--resnet-run", type=Path, default=None, help="existing ResNet-18 run dir")
    p.add_argument("--lenet-run", type=Path, default=None, help="existing LeNet-5 run dir")
    p.add_argument("--resnet-train", type=int, default=1000, help="ResNet-18 training images")
    p.add_argument("--lenet-train", type=int, default=2000, help="LeNet-5 training images")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--repeats", type=int, default=2, help="page loads per report (best kept)")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--skip-lenet", action="store_true")
    p.add_argument(
        "--full",
        action="store_true",
        help="the callbacks' full settings (default: the demo's --quick settings)",
    )
    p.add_argument("--deep", type=Path, nargs="+", default=None, help="deep-network run dirs")
    p.add_argument(
        "--make-deep",
        nargs=2,
        metavar=("MODEL", "OUT"),
        default=None,
        help="record MODEL (densenet121 or efficientnet_b0) with every layer into OUT",
    )
    p.add_argument("--live", action="store_true", help="measure the live page per event")
    p.add_argument("--live-epochs", type=int, default=12)
    ns = p.parse_args(argv)
    if ns.make_deep or ns.deep or ns.live:
        ok = True
        if ns.make_deep:
            make_deep(ns.make_deep[0], Path(ns.make_deep[1]))
        for run in ns.deep or []:
            ok &= measure_deep(run, ns.chromium, max(ns.repeats, 3))
        if ns.live:
            ok &= measure_live(ns.out, ns.live_epochs)
        return 0 if ok else 1
    print(f"[bench] callbacks: {', '.join(expose_callbacks())}", flush=True)
    ok = True
    if not ns.skip_resnet:
        run = ns.resnet_run or train("resnet18", 64, 5, ns.resnet_train, 200, ns.out, not ns.full)
        ok &= measure("ResNet-18, Shapes 64 px, 5 epochs", run, ns.chromium, ns.repeats, 20, 5)
    if not ns.skip_lenet:
        run = ns.lenet_run or train("lenet5", 32, 10, ns.lenet_train, 500, ns.out, not ns.full)
        label = "LeNet-5 demo, Shapes 32 px, 10 epochs"
        ok &= measure(label, run, ns.chromium, ns.repeats, 6, None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
