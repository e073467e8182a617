"""Time feature visualization of every channel of every LeNet-5 conv and pooling layer.

Usage: python scripts/bench_featvis.py [--threads 2] [--steps N] [--param fourier|pixel]
       [--objective mean|center] [--activation tanh|relu] [--pooling avg|max]

LeNet-5 is built for 3-channel 32 px input (9 classes, seeded random weights: the cost does not
depend on the weights; ``--activation relu --pooling max`` is the demo's variant). Each layer's
channels are optimised as one batch with the defaults of
:func:`cnnviz.analysis.featvis.visualize_channels`: conv layers read after their activation,
the objective averaged over the units whose receptive field lies inside the image. Prints, per
layer, the wall-clock seconds, the process CPU seconds (less sensitive to other load on the
machine), the setup seconds within them (a one-step call: finding the readout and the receptive
fields), the mean final objective, where the maps were read and which units were averaged;
then the totals.
"""

from __future__ import annotations

import argparse
import time

import torch

from cnnviz.analysis.featvis import visualize_channels
from cnnviz.analysis.layers import list_layers
from cnnviz.models import create


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=None, help="default: the library's")
    parser.add_argument("--param", choices=["fourier", "pixel"], default="fourier")
    parser.add_argument("--objective", choices=["mean", "center"], default="mean")
    parser.add_argument("--activation", choices=["tanh", "relu"], default="tanh")
    parser.add_argument("--pooling", choices=["avg", "max"], default="avg")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create(
            "lenet5",
            in_channels=3,
            num_classes=9,
            input_size=32,
            activation=args.activation,
            pooling=args.pooling,
        )
    extra = {} if args.steps is None else {"steps": args.steps}
    common = {"mean": 0.5, "std": 0.3, "param": args.param, "objective": args.objective}
    layers = [info.name for info in list_layers(model) if info.dims == 2]
    # Warm-up (allocator, FFT plans, tracing) so the first layer's time is not inflated.
    visualize_channels(model, layers[0], [0], steps=4, mean=0.5, std=0.3)
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, param={args.param}, "
        f"objective={args.objective}, LeNet-5 {args.activation}/{args.pooling}, input (3, 32, 32)"
    )
    print(
        f"{'layer':<13}{'channels':>9}{'wall s':>8}{'cpu s':>8}{'setup s':>9}{'objective':>11}"
        "  read / units"
    )
    total_wall = total_cpu = 0.0
    total_channels = 0
    for layer in layers:
        setup0 = time.perf_counter()
        visualize_channels(model, layer, [0], steps=1, **common)
        setup = time.perf_counter() - setup0
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = visualize_channels(model, layer, None, **common, **extra)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        total_wall += wall
        total_cpu += cpu
        total_channels += len(res.channels)
        where = res.readout.describe() if res.readout is not None else "logits"
        print(
            f"{layer:<13}{len(res.channels):>9}{wall:>8.2f}{cpu:>8.2f}{setup:>9.2f}"
            f"{res.activations.mean().item():>11.3f}  {where} / {res.units} {res.units_reason}"
        )
    print(
        f"{'total':<13}{total_channels:>9}{total_wall:>8.2f}{total_cpu:>8.2f}"
        f"   (steps={res.steps}, lr={res.lr})"
    )


if __name__ == "__main__":
    main()
