"""Overhead of ``FilterWeights`` + ``ActivationMaps`` at the default cadence (every epoch).

For each case (LeNet-5 on Shapes 32 px, ResNet-18 on Shapes 64 px) the same seeded model is fitted
on the same data with and without the two callbacks. The runs are interleaved (A B, B A, A B...)
so that drift in the machine's load hits both sides, and the script prints every fit time, the
medians and their ratio. The target is a ratio of at most 1.03.

Every fit is timed around ``trainer.fit`` only (data generated beforehand, one warm-up fit of each
kind first). Both sides use the same logger (TensorBoard by default, as a plain ``Trainer`` does),
so the callbacks' image logging is part of the overhead.

Usage::

    .venv/bin/python scripts/bench_overhead.py                      # both cases, a few minutes
    .venv/bin/python scripts/bench_overhead.py --cases lenet5 --repeats 5
    .venv/bin/python scripts/bench_overhead.py --cases resnet18 --epochs 3 --num-train 512
    .venv/bin/python scripts/bench_overhead.py --profile            # where the callbacks spend

Options ``--threads`` (torch intra-op threads; on a shared machine 1 gives steadier numbers),
``--logger tensorboard|csv|none`` and ``--device cpu|cuda``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import warnings

# This measures the watching callbacks. The report that a fit without a Report callback writes
# once at its end (~1 s for LeNet-5) is a one-off cost of issue 6, measured by bench_report.py.
os.environ.setdefault("CNNVIZ_AUTO_REPORT", "0")
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Default sizes: epochs long enough to be a realistic unit (the fixed cost of the start event
# and of setting up is then not most of what is measured), short enough for a few minutes on
# 2 CPU cores. LeNet-5 uses the Shapes default of 5000 samples; its epochs take ~1 s on a CPU.
CASES: dict[str, dict[str, int]] = {
    "lenet5": {"image_size": 32, "num_train": 5000, "num_val": 500, "epochs": 6},
    "resnet18": {"image_size": 64, "num_train": 1536, "num_val": 128, "epochs": 2},
}


@dataclass
class Result:
    case: str
    without: list[float]  # wall seconds
    with_: list[float]
    cpu_without: list[float]  # process CPU seconds (all threads)
    cpu_with: list[float]
    events: int
    epoch_s: float

    @property
    def ratio(self) -> float:
        return statistics.median(self.with_) / statistics.median(self.without)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.cpu_with) / statistics.median(self.cpu_without)


def wait_for_project(timeout: float = 0.0) -> None:
    """Import the model registry and the Shapes data, polling while they are being written."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            import cnnviz.data.shapes
            import cnnviz.models  # noqa: F401

            return
        except ImportError as err:
            if time.monotonic() >= deadline:
                raise SystemExit(f"bench_overhead: cnnviz models/data missing: {err}") from err
            time.sleep(10)


def make_logger(kind: str, root: Path) -> Any:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    if kind == "tensorboard":
        return TensorBoardLogger(root)
    if kind == "csv":
        return CSVLogger(root)
    return False


def fit_once(
    case: str, dm: Any, *, watched: bool, epochs: int, root: Path, args: argparse.Namespace
) -> tuple[float, float, int]:
    """One seeded fit; returns its wall time, CPU time and the number of cnnviz events."""
    import lightning.pytorch as pl

    from cnnviz import models
    from cnnviz.callbacks import ActivationMaps, FilterWeights
    from cnnviz.module import CaseStudyModule

    pl.seed_everything(0, verbose=False)
    size = CASES[case]["image_size"]
    net = models.create(case, in_channels=3, num_classes=dm.num_classes, input_size=size)
    module = CaseStudyModule(model=net)
    callbacks = [FilterWeights(), ActivationMaps()] if watched else []
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        max_epochs=epochs,
        logger=make_logger(args.logger, root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
    )
    if args.device == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(module, datamodule=dm)
    if args.device == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return elapsed, cpu, (callbacks[0].events if callbacks else 0)


def run_case(case: str, args: argparse.Namespace, root: Path) -> Result:
    from cnnviz.data.shapes import ShapesDataModule

    cfg = dict(CASES[case])
    if args.num_train:
        cfg["num_train"] = args.num_train
    epochs = args.epochs or cfg["epochs"]
    dm = ShapesDataModule(
        image_size=cfg["image_size"],
        num_train=cfg["num_train"],
        num_val=cfg["num_val"],
        batch_size=args.batch_size,
    )
    dm.setup("fit")  # generate the data once, outside every timing
    print(
        f"\n== {case}: Shapes {cfg['image_size']}px, {cfg['num_train']} train / {cfg['num_val']} "
        f"val, batch {args.batch_size}, {epochs} epochs, {args.repeats} repeats, "
        f"{args.device}, {torch.get_num_threads()} thread(s), logger {args.logger}",
        flush=True,
    )
    for watched in (False, True):  # warm-up: lazy imports, allocator, first TensorBoard writer
        fit_once(case, dm, watched=watched, epochs=1, root=root / "warmup", args=args)
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    events = 0
    for rep in range(args.repeats):
        order = (False, True) if rep % 2 == 0 else (True, False)
        for watched in order:
            seconds, cpu_s, n = fit_once(
                case, dm, watched=watched, epochs=epochs, root=root / f"{case}{rep}", args=args
            )
            wall[watched].append(seconds)
            cpu[watched].append(cpu_s)
            events = max(events, n)
            label = "with   " if watched else "without"
            print(f"  rep {rep}  {label}  wall {seconds:7.2f} s   cpu {cpu_s:7.2f} s", flush=True)
    result = Result(
        case,
        wall[False],
        wall[True],
        cpu[False],
        cpu[True],
        events,
        statistics.median(wall[False]) / epochs,
    )
    if args.profile:
        profile_case(case, dm, epochs, args, root / "profile")
    return result


def profile_case(case: str, dm: Any, epochs: int, args: argparse.Namespace, root: Path) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fit_once(case, dm, watched=True, epochs=epochs, root=root, args=args)
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
    stats.print_stats(r"cnnviz/(callbacks|analysis|store|loggers|figures)|tensorboard/writer", 25)
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--epochs", type=int, default=0, help="override the case's epochs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=0, help="override the case's size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--logger", choices=["tensorboard", "csv", "none"], default="tensorboard")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--profile", action="store_true", help="profile one watched fit")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for cnnviz")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_overhead: CUDA is not available")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    wait_for_project(args.wait)
    root = Path(tempfile.mkdtemp(prefix="cnnviz-bench-"))
    results = []
    try:
        for case in args.cases:
            results.append(run_case(case, args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        "\nmedians        epoch  | wall: without    with   ratio | cpu: without    with   ratio"
        " | events  wall per event"
    )
    worst = 0.0
    for r in results:
        m0, m1 = statistics.median(r.without), statistics.median(r.with_)
        c0, c1 = statistics.median(r.cpu_without), statistics.median(r.cpu_with)
        worst = max(worst, r.ratio)
        per_event = (m1 - m0) / max(r.events, 1)
        print(
            f"{r.case:<10} {r.epoch_s:7.2f} s |    {m0:8.2f} {m1:7.2f}  {r.ratio:6.3f} |"
            f"    {c0:8.2f} {c1:7.2f}  {r.cpu_ratio:6.3f} | {r.events:6d}  {per_event:10.3f} s"
        )
    verdict = "OK" if worst <= 1.03 else "ABOVE TARGET"
    print(f"target: wall ratio <= 1.03 -> {verdict}")
    print(
        "(cpu = process CPU time of all threads: the work added, whatever else the machine runs;"
        " wall = what you wait for, noisy on a shared machine)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
