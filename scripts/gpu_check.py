"""GPU check: overhead of FilterWeights + ActivationMaps on CUDA, and host syncs on ordinary steps.

Two parts, on LeNet-5 / Shapes 32 px by default:

1. Overhead: fits with and without the two callbacks (default cadence: every epoch), interleaved,
   timed with ``torch.cuda.synchronize()`` around ``trainer.fit``; prints the medians and ratio.
2. Host synchronisation: ``torch.cuda.set_sync_debug_mode("warn")`` is switched on for every
   *ordinary* training step — one after which no cnnviz event follows — from
   ``on_train_batch_start`` (a watcher placed before the cnnviz callbacks) to ``on_train_batch_end``
   (a closer placed after them), so the callbacks' per-step hooks are inside the window and their
   logging events are outside it. Every "synchronizing CUDA operation" warning is counted. The
   same fit without the callbacks gives Lightning's own count; the difference is what cnnviz adds
   (expected: 0).

3. A user's setup (``--part user``, run by default after 1 and 2): torchvision's ResNet-50 at
   224 px in a user's own LightningModule (tuple batches, ``(logits, features)`` output), compiled
   with ``torch.compile``, ``precision="bf16-mixed"``, ``channels_last``, with **every** cnnviz
   callback at its defaults (the time budget on). Prints the dynamo graphs built with and without
   the callbacks (they must be equal), the wall-time ratio, the host syncs added on ordinary
   steps, and what the budget cut.

Without CUDA it says so and exits 0. ``--device cpu`` runs the same harness on the CPU (no sync
detection there), to check the script itself (``--size 64 --epochs 1`` keeps it short).

Usage::

    .venv/bin/python scripts/gpu_check.py [--epochs 3] [--repeats 3] [--model lenet5|resnet18]
    .venv/bin/python scripts/gpu_check.py --part user [--size 224] [--epochs 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

SIZES = {"lenet5": 32, "resnet18": 64}


def make_watchers(cnnviz_callbacks: list[Any], enabled: bool) -> tuple[Any, Any]:
    """The window opener (first in the callback list) and closer (last)."""
    import lightning.pytorch as pl

    class Opener(pl.Callback):
        def __init__(self) -> None:
            self.ordinary_steps = 0
            self.event_steps = 0
            self.syncs: list[str] = []
            self._catcher: Any = None
            self._caught: list[warnings.WarningMessage] | None = None

        def _event_follows(self, trainer: pl.Trainer) -> bool:
            # Same rule as the callbacks: a step event after this optimizer step, or the epoch's
            # last batch when an epoch event is due. The first step of all is ordinary.
            for cb in cnnviz_callbacks:
                if cb.step_due(trainer) or (trainer.is_last_batch and cb.epoch_due(trainer)):
                    return True
            return False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if self._event_follows(trainer):
                self.event_steps += 1
                return
            self.ordinary_steps += 1
            self._catcher = warnings.catch_warnings(record=True)
            self._caught = self._catcher.__enter__()
            warnings.simplefilter("always")
            if enabled:
                torch.cuda.set_sync_debug_mode("warn")

        def close(self) -> None:
            if self._catcher is None:
                return
            if enabled:
                torch.cuda.set_sync_debug_mode("default")
            caught, catcher = self._caught or [], self._catcher
            self._catcher = self._caught = None
            catcher.__exit__(None, None, None)
            for w in caught:
                text = str(w.message)
                if "synchroniz" in text.lower():
                    self.syncs.append(f"{Path(w.filename).name}:{w.lineno}: {text[:120]}")

        def on_exception(self, trainer, pl_module, exception) -> None:
            self.close()

    class Closer(pl.Callback):
        def __init__(self, opener: Opener) -> None:
            self.opener = opener

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.opener.close()

    opener = Opener()
    return opener, Closer(opener)


def fit(
    args: argparse.Namespace, dm: Any, *, watched: bool, sync_check: bool, root: Path
) -> tuple[float, Any]:
    import lightning.pytorch as pl

    from cnnviz import models
    from cnnviz.callbacks import ActivationMaps, FilterWeights
    from cnnviz.module import CaseStudyModule

    pl.seed_everything(0, verbose=False)
    size = SIZES[args.model]
    net = models.create(args.model, in_channels=3, num_classes=dm.num_classes, input_size=size)
    cnnviz_callbacks = [FilterWeights(), ActivationMaps()] if watched else []
    opener = closer = None
    callbacks: list[Any] = list(cnnviz_callbacks)
    if sync_check:
        # without the callbacks, watch the same steps a watched fit would
        rule = cnnviz_callbacks or [FilterWeights(), ActivationMaps()]
        opener, closer = make_watchers(rule, enabled=args.device == "cuda")
        callbacks = [opener, *callbacks, closer]
    trainer = pl.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=args.logger != "none",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=callbacks,
    )
    module = CaseStudyModule(model=net)
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, opener


def user_module(size: int, num_classes: int) -> Any:
    """ResNet-50 from torchvision in a user's own LightningModule, compiled, channels_last."""
    import lightning.pytorch as pl
    import torch.nn.functional as F
    import torchvision

    class UserModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            net = torchvision.models.resnet50(num_classes=num_classes)
            self.net = torch.compile(net.to(memory_format=torch.channels_last))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(x)
            return logits, logits.detach().softmax(dim=1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self(x.to(memory_format=torch.channels_last))[0], y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x)[0], y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    return UserModule()


def user_setup(args: argparse.Namespace) -> int:
    """Part 3: a compiled, bf16-mixed, channels_last ResNet-50 with every callback."""
    import lightning.pytorch as pl
    import torch._dynamo
    import torch._dynamo.utils as dynamo_utils

    from cnnviz.callbacks import (
        ActivationMaps,
        Attributions,
        FeatureVisualization,
        FilterWeights,
        ReceptiveFields,
        TopActivations,
    )
    from cnnviz.data.shapes import ShapesDataModule

    size = args.size
    dm = ShapesDataModule(image_size=size, num_train=args.num_train, num_val=256, batch_size=32)
    dm.setup("fit")
    root = Path(tempfile.mkdtemp(prefix="cnnviz-gpu-user-"))
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"user setup: torchvision resnet50 {size}px, compiled, bf16-mixed, channels_last, {device}"
    )

    def every() -> list[Any]:
        return [
            FilterWeights(),
            ActivationMaps(),
            ReceptiveFields(),
            TopActivations(),
            Attributions(),
            FeatureVisualization(),
        ]

    def run(watched: bool, rep: str, sync_check: bool = False) -> tuple[float, int, Any, Any]:
        torch._dynamo.reset()
        pl.seed_everything(0, verbose=False)
        cbs = every() if watched else []
        callbacks: list[Any] = list(cbs)
        opener = None
        if sync_check:
            opener, closer = make_watchers(cbs or every(), enabled=args.device == "cuda")
            callbacks = [opener, *callbacks, closer]
        trainer = pl.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu",
            devices=1,
            precision="bf16-mixed",
            max_epochs=args.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(root / rep),
            callbacks=callbacks,
        )
        module = user_module(size, dm.num_classes)
        before = int(dynamo_utils.counters["stats"]["unique_graphs"])
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        if args.device == "cuda":
            torch.cuda.synchronize()
        graphs = int(dynamo_utils.counters["stats"]["unique_graphs"]) - before
        return time.perf_counter() - start, graphs, opener, cbs

    run(False, "warmup")  # compile caches, cuDNN autotune, lazy imports
    times: dict[bool, list[float]] = {False: [], True: []}
    graphs: dict[bool, int] = {}
    cbs: list[Any] = []
    for rep in range(args.repeats):
        for watched in (False, True) if rep % 2 == 0 else (True, False):
            seconds, count, _, used = run(watched, f"r{rep}-{int(watched)}")
            times[watched].append(seconds)
            graphs[watched] = count
            cbs = used or cbs
            print(
                f"  rep {rep} {'with   ' if watched else 'without'} {seconds:7.2f} s, "
                f"{count} dynamo graphs",
                flush=True,
            )
    m0, m1 = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"graphs: without {graphs[False]}, with every callback {graphs[True]} "
        f"({'equal' if graphs[False] == graphs[True] else 'DIFFERENT'})"
    )
    print(f"overhead: without {m0:.2f} s, with {m1:.2f} s, ratio {m1 / m0:.3f} (budget 1.10)")
    for cb in cbs:
        cuts = "; ".join(cb._said_cuts) or "nothing cut"
        print(f"  budget: {type(cb).__name__}: {cuts}")
    _, _, base, _ = run(False, "sync0", sync_check=True)
    _, _, mine, _ = run(True, "sync1", sync_check=True)
    added = len(mine.syncs) - len(base.syncs)
    print(
        f"host syncs on {mine.ordinary_steps} ordinary steps: with callbacks {len(mine.syncs)}, "
        f"without {len(base.syncs)} -> added by cnnviz: {added}"
    )
    for line in sorted(set(mine.syncs) - set(base.syncs))[:10]:
        print("  ", line)
    ok = graphs[False] == graphs[True] and added <= 0
    print("user setup:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=list(SIZES), default="lenet5")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-train", type=int, default=5000)
    parser.add_argument("--logger", choices=["tensorboard", "none"], default="tensorboard")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--part", choices=["all", "overhead", "user"], default="all")
    parser.add_argument("--size", type=int, default=224, help="image size of the user setup")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine; nothing to check.")
        return 0
    warnings.filterwarnings("ignore")
    import lightning.pytorch  # noqa: F401  (sets its loggers' levels on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from cnnviz.data.shapes import ShapesDataModule

    if args.part == "user":
        return user_setup(args)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    size = SIZES[args.model]
    print(f"gpu_check: {args.model} on Shapes {size}px, {device}, torch {torch.__version__}")
    dm = ShapesDataModule(
        image_size=SIZES[args.model], num_train=args.num_train, num_val=500, batch_size=64
    )
    dm.setup("fit")
    root = Path(tempfile.mkdtemp(prefix="cnnviz-gpu-check-"))

    # 1. overhead
    for watched in (False, True):  # warm-up (CUDA context, cuDNN autotune, lazy imports)
        fit(args, dm, watched=watched, sync_check=False, root=root / "warmup")
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.repeats):
        for watched in (False, True) if rep % 2 == 0 else (True, False):
            seconds, _ = fit(args, dm, watched=watched, sync_check=False, root=root / f"r{rep}")
            times[watched].append(seconds)
            print(f"  rep {rep} {'with   ' if watched else 'without'} {seconds:7.2f} s", flush=True)
    m0, m1 = statistics.median(times[False]), statistics.median(times[True])
    print(f"overhead: without {m0:.2f} s, with {m1:.2f} s, ratio {m1 / m0:.3f} (target <= 1.03)")

    # 2. host synchronisation on ordinary steps
    _, base = fit(args, dm, watched=False, sync_check=True, root=root / "sync0")
    _, mine = fit(args, dm, watched=True, sync_check=True, root=root / "sync1")
    added = len(mine.syncs) - len(base.syncs)
    print(
        f"host syncs on {mine.ordinary_steps} ordinary steps ({mine.event_steps} event steps not "
        f"watched): with callbacks {len(mine.syncs)}, without {len(base.syncs)} -> "
        f"added by cnnviz: {added}"
    )
    for line in sorted(set(mine.syncs) - set(base.syncs))[:10]:
        print("  ", line)
    if args.device != "cuda":
        print("(cpu run: sync detection needs CUDA; this only exercised the harness)")
    print("sync check:", "OK (none added)" if added <= 0 else "FAILED: cnnviz synchronised")
    status = 0 if added <= 0 else 1
    if args.part == "all":
        status = max(status, user_setup(args))
    return status


if __name__ == "__main__":
    sys.exit(main())
