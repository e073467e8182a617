"""Measure the report: file size, build time and render time in headless Chromium.

Trains (or takes) two runs with every callback that ``cnnviz.callbacks`` provides
(``cnnviz.demo.default_callbacks``): a 5-epoch ResNet-18 on Shapes 64 px and the LeNet-5 demo,
builds each report, loads it in headless Chromium (Debian's ``/usr/bin/chromium`` via
Playwright) and scrolls through it, timing from navigation until every figure is drawn.

Targets (issue 6): ResNet-18 report <= 20 MB and rendered in < 5 s; LeNet-5 report <= 6 MB.

Usage:
    python scripts/bench_report.py                      # train both runs under runs/bench
    python scripts/bench_report.py --resnet-run DIR --lenet-run DIR   # measure existing runs
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
    ns = p.parse_args(argv)
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
