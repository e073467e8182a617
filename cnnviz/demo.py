"""``cnnviz demo``: train LeNet-5 on the built-in Shapes data with every cnnviz callback.

The ConvNetJS CIFAR-10 demo, for Lightning: a small net trains on the CPU (or GPU) while every
layer's filters and activations are recorded to the run store, and the report is rewritten after
each logging event.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["DEMO_MODEL_KWARGS", "default_callbacks", "demo", "demo_parser"]

#: The demo trains LeNet-5 with ReLU and max pooling (the modern variant): it reaches 95% on
#: Shapes in about half the epochs of the 1998 tanh / average-pooling default.
DEMO_MODEL_KWARGS: dict[str, dict[str, Any]] = {"lenet5": {"activation": "relu", "pooling": "max"}}


def default_callbacks(*, live: bool = True, report: bool = True, quick: bool = False) -> list[Any]:
    """Every cnnviz callback with the demo's settings.

    The demo shows everything for its small LeNet-5: every callback is told so explicitly
    (``budget=None``) — at default settings cnnviz would keep itself to 10% of this short fit
    and leave things out.
    """
    from cnnviz import callbacks as cb

    found: list[Any] = [cb.FilterWeights(budget=None), cb.ActivationMaps(num_probe=8, budget=None)]
    for name, kwargs in (
        ("ReceptiveFields", {}),
        ("TopActivations", {}),
        (
            "Attributions",
            {"methods": ["saliency", "integrated_gradients", "grad_cam"]} if quick else {},
        ),
        ("FeatureVisualization", {"steps": 32} if quick else {}),
        ("ConceptDissection", {}),
    ):
        if hasattr(cb, name):
            found.append(getattr(cb, name)(budget=None, **kwargs))
    if report and hasattr(cb, "Report"):
        found.append(cb.Report(live=live))
    return found


def _on_cpu(accelerator: str) -> bool:
    import torch

    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def demo_parser() -> argparse.ArgumentParser:
    """Arguments of ``cnnviz demo``."""
    p = argparse.ArgumentParser(
        prog="cnnviz demo",
        description="Train LeNet-5 on the built-in Shapes data with every cnnviz callback.",
    )
    p.add_argument("--model", default="lenet5", help="case-study model name (default lenet5)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--image-size", type=int, default=32, help="Shapes image size (default 32)")
    p.add_argument("--num-train", type=int, default=6000, help="training images (default 6000)")
    p.add_argument("--num-val", type=int, default=1000, help="validation images (default 1000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="parent directory of the run (default runs/)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip the HTML report")
    p.add_argument(
        "--no-live", dest="live", action="store_false", help="write the report only at the end"
    )
    p.add_argument("--quick", action="store_true", help="lighter analysis settings (for tests)")
    return p


def demo(
    *,
    model: str = "lenet5",
    epochs: int = 10,
    image_size: int = 32,
    num_train: int = 6000,
    num_val: int = 1000,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    out: str | Path = "runs",
    accelerator: str = "auto",
    report: bool = True,
    live: bool = True,
    quick: bool = False,
) -> Path:
    """Train ``model`` on Shapes with every callback and return the run directory.

    Args:
        model: Case-study model name.
        epochs: Training epochs.
        image_size: Shapes image size in pixels.
        num_train: Training images.
        num_val: Validation images.
        batch_size: Batch size.
        lr: Adam learning rate.
        seed: Seed for data and training.
        out: Parent directory of the run directory.
        accelerator: Lightning accelerator.
        report: Write the HTML report.
        live: Rewrite the report after each logging event.
        quick: Lighter analysis settings.

    Returns:
        The run directory (holds ``cnnviz/``, ``metrics.csv`` and ``report.html``).
    """
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from cnnviz.data import ShapesDataModule
    from cnnviz.module import CaseStudyModule

    if _on_cpu(accelerator) and "OMP_NUM_THREADS" not in os.environ:
        # LeNet-sized ops gain nothing from intra-op threads, and on a busy 2-core machine two
        # threads made a training step 10-20x slower (thread hand-offs); one thread is steady.
        torch.set_num_threads(1)
    pl.seed_everything(seed, verbose=False)
    dm = ShapesDataModule(
        image_size=image_size,
        num_train=num_train,
        num_val=num_val,
        batch_size=batch_size,
        seed=seed,
    )
    module = CaseStudyModule(
        model,
        model_kwargs=DEMO_MODEL_KWARGS.get(model),
        data_info=dm.model_kwargs,
        optimizer="adam",
        lr=lr,
        weight_decay=0.0,
        scheduler="cosine",
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) / f"{model}-shapes{image_size}-{stamp}"
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=CSVLogger(save_dir=str(run_dir), name="", version=""),
        callbacks=default_callbacks(live=live, report=report, quick=quick),
        enable_checkpointing=False,
        log_every_n_steps=10,
    )
    print(
        f"cnnviz demo: training {model} on Shapes {image_size}px for {epochs} epochs -> {run_dir}"
    )
    trainer.fit(module, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    print(
        "cnnviz demo: done; "
        + ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        + f"\nrun directory: {run_dir.resolve()}"
    )
    report_file = run_dir / "report.html"
    if report_file.exists():
        print(f"report: {report_file.resolve()}")
    return run_dir
