"""``cnnviz report`` and ``cnnviz inspect``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["inspect_parser", "report_parser", "run_inspect", "run_report"]


def report_parser() -> argparse.ArgumentParser:
    """Arguments of ``cnnviz report``."""
    p = argparse.ArgumentParser(
        prog="cnnviz report",
        description="Build the single-file HTML report of a run from its run store.",
    )
    p.add_argument(
        "run_dir", help="run directory (holds cnnviz/), the store, or a parent of one run"
    )
    p.add_argument("-o", "--output", default=None, help="output file (default RUN_DIR/report.html)")
    p.add_argument(
        "--cdn",
        action="store_true",
        help="link plotly.js from cdn.plot.ly (smaller file; needs the network to view)",
    )
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--max-events", type=int, default=12, help="most events per slider (default 12)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def _fail(prog: str, message: str, code: int = 2) -> SystemExit:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return SystemExit(code)


def run_report(argv: Sequence[str]) -> Path:
    """Run ``cnnviz report``; print and return the report's path.

    Exits with status 2 when no run store is found, and 1 when the store holds no cnnviz data
    (a page saying so is still written).
    """
    from cnnviz.report.build import build_report
    from cnnviz.report.data import ReportError, find_store, load_run

    ns = report_parser().parse_args(list(argv))
    if ns.max_events < 1:
        raise _fail("cnnviz report", "--max-events must be at least 1")
    try:
        store = find_store(ns.run_dir)
        empty = not load_run(store, warn=False).has_content
        path = build_report(
            store,
            ns.output,
            plotly_js="cdn" if ns.cdn else "inline",
            title=ns.title,
            progress=not ns.quiet,
            max_events=ns.max_events,
        )
    except (FileNotFoundError, ReportError) as err:
        raise _fail("cnnviz report", str(err)) from None
    if empty:
        raise _fail(
            "cnnviz report",
            f"the run store {store} holds no cnnviz records (no callback recorded anything); "
            f"wrote a page that says so to {path}",
            code=1,
        )
    print(path)
    return path


def inspect_parser() -> argparse.ArgumentParser:
    """Arguments of ``cnnviz inspect``."""
    from cnnviz.inspect import DEFAULT_METHODS, MAX_PIXELS

    p = argparse.ArgumentParser(
        prog="cnnviz inspect",
        description="Write the report of a (trained) model on some images, without training.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="registry model name (optional with a CaseStudyModule checkpoint)",
    )
    p.add_argument("--checkpoint", default=None, help="Lightning checkpoint or state_dict file")
    p.add_argument(
        "--images", nargs="+", default=None, help="image files (default: Shapes validation images)"
    )
    p.add_argument("--input-size", type=int, default=None, help="input size in pixels")
    p.add_argument("--num-classes", type=int, default=None, help="number of classes")
    p.add_argument("--num-probe", type=int, default=8, help="Shapes images when no --images")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"largest image (width × height) decoded (default {MAX_PIXELS:,})",
    )
    p.add_argument(
        "--normalize",
        choices=["shapes", "imagenet", "none"],
        default="shapes",
        help="normalisation of --images (default: the Shapes statistics)",
    )
    p.add_argument(
        "--methods",
        nargs="*",
        default=list(DEFAULT_METHODS),
        help="attribution methods (none: skip attributions)",
    )
    p.add_argument(
        "--dissect",
        type=int,
        default=256,
        help="dissect the conv layers over this many Shapes images (0: none; without --images)",
    )
    p.add_argument(
        "--label-maps",
        nargs="+",
        default=None,
        help="with --images: one label-map image per image, to dissect on your own concepts",
    )
    p.add_argument(
        "--concept-names", nargs="+", default=None, help="the concept of each label value"
    )
    p.add_argument(
        "--run-dir", default=None, help="where to write the store (default runs/inspect-...)"
    )
    p.add_argument("-o", "--output", default=None, help="report file (default RUN_DIR/report.html)")
    p.add_argument("--cdn", action="store_true", help="link plotly.js from the CDN")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def run_inspect(argv: Sequence[str]) -> Path:
    """Run ``cnnviz inspect``; print and return the report's path."""
    from cnnviz.inspect import inspect_model

    ns = inspect_parser().parse_args(list(argv))
    try:
        path = inspect_model(
            ns.model,
            checkpoint=ns.checkpoint,
            images=ns.images,
            input_size=ns.input_size,
            num_classes=ns.num_classes,
            num_probe=ns.num_probe,
            normalize=ns.normalize,
            methods=ns.methods,
            run_dir=ns.run_dir,
            out=ns.output,
            dissect=ns.dissect,
            label_maps=ns.label_maps,
            concept_names=ns.concept_names,
            plotly_js="cdn" if ns.cdn else "inline",
            progress=not ns.quiet,
            max_pixels=ns.max_pixels,
        )
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise _fail("cnnviz inspect", str(err)) from None
    print(path)
    return path
