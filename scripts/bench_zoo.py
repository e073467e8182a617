"""Cost of every cnnviz callback at its defaults, on models of several sizes, side by side.

For each model, one fit without cnnviz and one fit with every callback at its default settings
(the time budget on: cnnviz may take 10% of the fit) run one after the other, each in a fresh
Python process (so peak RSS is the fit's own). Printed per model: the wall-time ratio, the peak-RSS
ratio and what the budget cut. Targets: wall <= 1.10, RSS <= 1.5.

Models (fits of at least a minute on 2 cores at the default sizes):

- ``lenet5``: the demo's LeNet-5 (ReLU, max pooling) on Shapes 32 px;
- ``resnet18``: the case-study ResNet-18 on Shapes 64 px;
- ``efficientnet_b0``: timm's, random weights, Shapes 64 px, in a user's own LightningModule;
- ``densenet121``: torchvision's, random weights, Shapes 64 px, in a user's own LightningModule.

Usage::

    .venv/bin/python scripts/bench_zoo.py [--models lenet5 resnet18 ...] [--threads 2]
        [--repeats 2]

With ``--repeats N`` each kind of fit runs N times (alternating which goes first) and the
fastest of each is compared: on a shared machine other load only ever adds time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

#: model -> (image size, training images, epochs, batch size)
SETTINGS: dict[str, tuple[int, int, int, int]] = {
    "lenet5": (32, 12000, 24, 64),
    "resnet18": (64, 3072, 3, 32),
    "efficientnet_b0": (64, 2048, 4, 32),
    "densenet121": (64, 1024, 4, 32),
}


def _module(name: str, size: int, num_classes: int) -> Any:
    import lightning.pytorch as pl
    import torch
    import torch.nn.functional as F

    from cnnviz.module import CaseStudyModule

    if name == "lenet5":
        return CaseStudyModule(
            "lenet5",
            model_kwargs={"activation": "relu", "pooling": "max"},
            data_info={"num_classes": num_classes, "in_channels": 3, "input_size": size},
            optimizer="adam",
            lr=2e-3,
            weight_decay=0.0,
        )
    if name == "resnet18":
        return CaseStudyModule(
            "resnet18",
            data_info={"num_classes": num_classes, "in_channels": 3, "input_size": size},
            optimizer="adam",
            lr=1e-3,
        )
    if name == "efficientnet_b0":
        import timm

        net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=num_classes)
    else:
        import torchvision

        net = torchvision.models.densenet121(num_classes=num_classes)

    class UserModule(pl.LightningModule):
        """A user's own module around a library backbone."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    return UserModule()


def child(args: argparse.Namespace) -> None:
    """One fit; prints one JSON line with its wall time, peak RSS and the budget's cuts."""
    import lightning.pytorch as pl
    import torch

    torch.set_num_threads(args.threads)
    from cnnviz.callbacks import (
        ActivationMaps,
        Attributions,
        FeatureVisualization,
        FilterWeights,
        ReceptiveFields,
        TopActivations,
    )
    from cnnviz.data import ShapesDataModule

    size, num_train, epochs, batch = SETTINGS[args.model]
    num_train = args.num_train or num_train
    epochs = args.epochs or epochs
    pl.seed_everything(0, verbose=False)
    dm = ShapesDataModule(
        image_size=size, num_train=num_train, num_val=256, batch_size=batch, seed=0
    )
    module = _module(args.model, size, dm.num_classes)
    callbacks: list[Any] = []
    if args.watched:
        callbacks = [
            FilterWeights(),
            ActivationMaps(),
            ReceptiveFields(),
            TopActivations(),
            Attributions(),
            FeatureVisualization(),
        ]
    root = tempfile.mkdtemp(prefix="cnnviz-zoo-")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=pl.loggers.CSVLogger(root, name="", version=""),
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    cuts = {type(cb).__name__: list(cb._said_cuts) for cb in callbacks}
    off = {type(cb).__name__: cb.disabled for cb in callbacks if cb.disabled}
    spent = {}
    if callbacks and callbacks[0].session is not None:
        spent = callbacks[0].session.budget.summary()
    print(
        "RESULT "
        + json.dumps(
            {"wall": wall, "rss": rss, "cuts": cuts, "off": off, "budget": spent, "root": root}
        ),
        flush=True,
    )


def run(model: str, watched: bool, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        model,
        "--threads",
        str(args.threads),
        "--watched",
        str(int(watched)),
    ]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.num_train:
        cmd += ["--num-train", str(args.num_train)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("CNNVIZ_BUDGET", None)  # the defaults, as users get them
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{model} ({'with' if watched else 'without'}) failed:\n{out.stderr[-3000:]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=0, help="override the epochs")
    parser.add_argument(
        "--repeats", type=int, default=1, help="fits of each kind (the fastest is compared)"
    )
    parser.add_argument("--num-train", type=int, default=0, help="override the data size")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="lenet5", help=argparse.SUPPRESS)
    parser.add_argument("--watched", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    rows = []
    for model in args.models:
        plains, watcheds = [], []
        for r in range(args.repeats):  # alternate which goes first
            pair = [(False, plains), (True, watcheds)]
            for watched_run, out in pair if r % 2 == 0 else pair[::-1]:
                out.append(run(model, watched_run, args))
        # the least disturbed fit of each kind (the machine's noise only adds time)
        plain = min(plains, key=lambda r: r["wall"])
        watched = min(watcheds, key=lambda r: r["wall"])
        if args.repeats > 1:
            print(
                f"{model:16s} walls without {[round(r['wall'], 1) for r in plains]}, with "
                f"{[round(r['wall'], 1) for r in watcheds]}: the fastest of each is compared",
                flush=True,
            )
        wall, rss = watched["wall"] / plain["wall"], watched["rss"] / plain["rss"]
        rows.append((model, plain, watched, wall, rss))
        print(
            f"{model:16s} without {plain['wall']:7.1f} s {plain['rss']:7.0f} MiB | with "
            f"{watched['wall']:7.1f} s {watched['rss']:7.0f} MiB | wall {wall:.3f} "
            f"(<= 1.10) rss {rss:.2f} (<= 1.5)",
            flush=True,
        )
        budget = watched.get("budget") or {}
        print(
            f"    cnnviz spent {budget.get('total_spent', 0):.1f} s of "
            f"{budget.get('train_seconds', 0):.1f} s training: {budget.get('spent', {})}"
        )
        for name, cuts in watched["cuts"].items():
            if cuts:
                print(f"    {name}: {'; '.join(cuts)}")
        for name, reason in watched["off"].items():
            print(f"    {name} off: {reason}")
    print()
    print("| model | wall without | wall with | wall ratio | RSS ratio |")
    print("|---|---|---|---|---|")
    for model, plain, watched, wall, rss in rows:
        print(
            f"| {model} | {plain['wall']:.1f} s | {watched['wall']:.1f} s | {wall:.3f} | "
            f"{rss:.2f} |"
        )
    ok = all(wall <= 1.10 and rss <= 1.5 for *_, wall, rss in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
