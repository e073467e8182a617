"""Take a screenshot of a report in headless Chromium, for the README (``docs/report.png``).

Usage:
    python scripts/screenshot_report.py runs/<run>                # -> docs/report.png
    python scripts/screenshot_report.py runs/<run> --anchor predictions --height 1100
    python scripts/screenshot_report.py runs/<run> --anchor dissection -o dissection.png
    python scripts/screenshot_report.py path/to/report.html -o shot.png --full-page

The report is built first when RUN is a run directory without ``report.html``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def report_path(target: Path) -> Path:
    """The report file for a report, a run directory or a store."""
    if target.is_file():
        return target
    from cnnviz.report import build_report, find_store

    store = find_store(target)
    out = store.parent / "report.html"
    return out if out.exists() else build_report(store, out, progress=False)


WAIT_VISIBLE = r"""
async () => {
  await window.cnnviz.ready;
  const frame = () => new Promise(r => requestAnimationFrame(r));
  const onScreen = el => {
    const r = el.getBoundingClientRect();
    return r.height > 0 && r.bottom > 0 && r.top < innerHeight;
  };
  const done = el => el.dataset.state === 'drawn' || el.dataset.state === 'error';
  for (let i = 0; i < 600; i++) {
    const figs = Array.from(document.querySelectorAll('.fig[data-fig]')).filter(onScreen);
    if (figs.every(done)) { return figs.length; }
    await frame();
  }
  return -1;
}
"""


def shoot(
    report: Path,
    out: Path,
    *,
    anchor: str | None,
    width: int,
    height: int,
    full_page: bool,
    chromium: str,
    open_details: bool = False,
) -> Path:
    """Open ``report``, reveal ``anchor`` (opening its group), draw what is on screen, save a PNG.

    With ``full_page`` every figure is drawn first (slow for reports of deep networks).
    """
    from playwright.sync_api import sync_playwright

    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        page.route(
            "**/*",
            lambda r: (
                r.continue_()
                if r.request.url.startswith(("file:", "data:", "blob:"))
                else r.abort()
            ),
        )
        page.goto(report.resolve().as_uri())
        page.wait_for_function("window.cnnviz !== undefined")
        if anchor is None:  # default: the first layer section (filters + activation maps)
            anchor = page.evaluate(
                "(document.querySelector('nav#toc li.layer a') || {}).getAttribute?.('href')"
                "?.slice(1) || 'overview'"
            )
        found = page.evaluate("id => !!window.cnnviz.reveal(id)", anchor)
        if not found:
            raise SystemExit(f"screenshot_report: no element with id {anchor!r}")
        if open_details:
            page.evaluate(
                "id => document.getElementById(id).querySelectorAll('details')"
                ".forEach(d => { d.open = true; })",
                anchor,
            )
        if full_page:
            page.evaluate("window.cnnviz.renderAll()")
        page.evaluate(WAIT_VISIBLE)
        page.evaluate("id => window.cnnviz.reveal(id)", anchor)
        page.evaluate(WAIT_VISIBLE)
        page.wait_for_timeout(300)
        page.screenshot(path=str(out), full_page=full_page)
        browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Screenshot a cnnviz report (headless Chromium).")
    p.add_argument("target", type=Path, help="report.html, a run directory or a store")
    p.add_argument("-o", "--output", type=Path, default=Path("docs/report.png"))
    p.add_argument("--anchor", default=None, help="section id to scroll to (default: 1st layer)")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--full-page", action="store_true", help="the whole page, not the viewport")
    p.add_argument(
        "--open", action="store_true", help="open the secondary boxes (<details>) of the section"
    )
    p.add_argument("--chromium", default="/usr/bin/chromium")
    ns = p.parse_args(argv)
    try:
        report = report_path(ns.target)
    except (FileNotFoundError, ValueError) as err:
        print(f"screenshot_report: error: {err}", file=sys.stderr)
        return 2
    out = shoot(
        report,
        ns.output,
        anchor=ns.anchor,
        width=ns.width,
        height=ns.height,
        full_page=ns.full_page,
        chromium=ns.chromium,
        open_details=ns.open,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
