"""Time Network Dissection per layer against one validation pass of the same data.

For each model (LeNet-5 at 32 px, the case-study ResNet-18 at 64 px), on Shapes validation
images (the default data: 1000 images, as ``ShapesDataModule(num_val=1000)``) prepared once as
``(images, labels, masks)`` batches so that data loading is timed in neither:

* ``val s``: one validation pass — every batch through the model in eval mode under
  ``torch.no_grad()``, plus the cross-entropy loss (what Lightning's validation loop computes,
  without its bookkeeping);
* ``dissect s``: ``dissect(model, layer, batches, ShapesConcepts.for_dataset(ds))`` with the
  defaults (quantile 0.005, 1024 bins): concept masks, the guarded forward passes (stopped
  after the layer), upsampling, thresholds and IoUs;
* ``ratio`` = median dissect / median val (target: at most 2);
* ``cached s`` / ``ratio c``: the same with the concepts coded once beforehand
  (``cache_concepts``), as when the same validation images are dissected every few epochs;
* a last row per model dissects all listed layers in the same pass (``dissect_layers``).

Rounds are interleaved (each round times the validation pass and every layer, in an order that
alternates between rounds) after one untimed warm-up; medians over the rounds are reported. The
models have random weights (nothing is downloaded or trained): units of a trained network are
more selective, which only makes the map filters of the dissection skip more. Run it alone on
the machine if you can; with other load, raise ``--rounds``.

Usage::

    .venv/bin/python scripts/bench_dissect.py [--images 1000] [--rounds 3] [--threads 1]
        [--models lenet5 resnet18] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import default_collate

from cnnviz.analysis.concepts import ShapesConcepts
from cnnviz.analysis.dissect import cache_concepts, dissect, dissect_layers
from cnnviz.data.shapes import ShapesDataset
from cnnviz.models import create

#: Model name -> (input size, layers to dissect).
MODELS: dict[str, tuple[int, list[str]]] = {
    "lenet5": (32, ["features.c1", "features.s2", "features.c3", "features.c5"]),
    "resnet18": (
        64,
        [
            "conv1",
            "maxpool",
            "layer1.1.conv2",
            "layer2.1.conv2",
            "layer3.1.conv2",
            "layer4.0.conv1",
            "layer4.1.conv2",
        ],
    ),
}


def batches_of(ds: ShapesDataset, batch_size: int, device: torch.device) -> list[tuple]:
    """The data set as ``(images, labels, masks)`` batches on ``device``."""
    out = []
    for start in range(0, len(ds), batch_size):
        items = [ds.sample(i) for i in range(start, min(len(ds), start + batch_size))]
        out.append(tuple(t.to(device) for t in default_collate(items)))
    return out


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes (synchronising CUDA around it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def validation_pass(model: nn.Module, batches: list[tuple]) -> float:
    """One validation epoch: forward and loss of every batch, no gradients."""
    total = 0.0
    model.eval()
    with torch.no_grad():
        for images, labels, _ in batches:
            total += float(F.cross_entropy(model(images), labels))
    return total


def bench(name: str, args: argparse.Namespace, device: torch.device) -> list[list[str]]:
    size, layers = MODELS[name]
    torch.manual_seed(0)
    model = create(name, in_channels=3, num_classes=9, input_size=size).to(device).eval()
    ds = ShapesDataset(args.images, image_size=size, split="val", seed=0)
    batches = batches_of(ds, args.batch_size, device)
    source = ShapesConcepts.for_dataset(ds)
    cached = cache_concepts(batches, source, device=device)
    jobs: dict[str, Callable[[], object]] = {"val": lambda: validation_pass(model, batches)}
    results = {}

    def one(layer: str, data: object, key: str) -> Callable[[], object]:
        def run() -> None:
            results[key] = dissect(model, layer, data, source if data is batches else None)

        return run

    for layer in layers:
        jobs[layer] = one(layer, batches, layer)
        jobs[f"{layer} (cached)"] = one(layer, cached, f"{layer} (cached)")

    def together(data: object, key: str) -> Callable[[], object]:
        def run() -> None:
            dissect_layers(model, layers, data, source if data is batches else None)

        return run

    jobs["all listed layers"] = together(batches, "all")
    jobs["all listed layers (cached)"] = together(cached, "all (cached)")
    for fn in jobs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in jobs}
    order = list(jobs)
    for round_index in range(args.rounds):
        for key in order if round_index % 2 == 0 else order[::-1]:
            times[key].append(timed(jobs[key], device))
    val = statistics.median(times["val"])
    rows = [[name, "(validation pass)", "", "", "", f"{val:.3f}", "", "", "", ""]]
    for key in [k for k in order[1:] if not k.endswith("(cached)")]:
        med = statistics.median(times[key])
        fast = statistics.median(times[f"{key} (cached)"])
        if key in results:
            r = results[key]
            maps = f"{r.num_channels}x{r.map_size[0]}x{r.map_size[1]}"
            passes, labelled = str(r.passes), f"{int(r.labelled.sum())}/{r.num_channels}"
        else:
            maps, passes, labelled = f"{len(layers)} layers", "", ""
        rows.append(
            [
                name,
                key,
                maps,
                f"{med:.3f}",
                f"{fast:.3f}",
                f"{val:.3f}",
                f"{med / val:.2f}",
                f"{fast / val:.2f}",
                passes,
                labelled,
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header = [
        "model",
        "layer",
        "maps",
        "dissect s",
        "cached s",
        "val s",
        "ratio",
        "ratio c",
        "passes",
        "labelled",
    ]
    rows = [header]
    for name in args.models:
        rows.extend(bench(name, args, device))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(
        f"{args.images} Shapes val images, batch {args.batch_size}, {args.rounds} rounds, "
        f"{args.threads} thread(s), {device}; medians"
    )
    for r in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
