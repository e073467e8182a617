"""Time every attribution method against the model passes it needs at minimum.

For each model (LeNet-5 at 32 px, ResNet-18 small variant at 64 px) and each method of
:func:`cnnviz.analysis.attribution.attribute`, on 8 probe images on the CPU:

* ``method s``: wall time of ``attribute(...)`` (best of ``--rounds``, after a warm-up call);
* ``passes``: the forward+backward passes the method needs at minimum (IG: ``n_steps``;
  SmoothGrad / GradientShap: samples; DeepLift: one pass over inputs and baselines = 2; guided
  Grad-CAM: 2; occlusion: windows + 1 *forward* passes);
* ``unit s``: the measured cost of one forward+backward w.r.t. the input of the 8 images with
  parameters frozen, in eval mode (forward only for occlusion), timed as ``passes`` of them back
  to back right before the method (best of ``--rounds``);
* ``ratio`` = method time / (passes x unit).

Usage::

    .venv/bin/python scripts/bench_attributions.py [--rounds 5] [--models lenet5 resnet18]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from cnnviz.analysis.attribution import METHODS, AttributionUnavailable, attribute
from cnnviz.models import create

GRADIENT_METHODS = (
    "saliency",
    "integrated_gradients",
    "input_x_gradient",
    "smoothgrad",
    "gradient_shap",
    "grad_cam",
)


def probe(size: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from cnnviz.data.shapes import ShapesDataset

        ds = ShapesDataset(n, image_size=size, channels=3, split="val", seed=0)
        images, labels, _ = zip(*(ds.sample(i) for i in range(n)), strict=True)
        return torch.stack(images), torch.stack(labels)
    except ImportError:
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 9


CLOCK = time.perf_counter


def _timed(fn: Callable[[], object], times: int = 1) -> float:
    t0 = CLOCK()
    for _ in range(times):
        fn()
    return CLOCK() - t0


class Units:
    """One forward+backward w.r.t. the input (params frozen, eval mode), and one forward."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model, self.x = model, x
        self.t = torch.zeros(len(x), dtype=torch.long)

    def __enter__(self) -> Units:
        self.training = self.model.training
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)
        self.model.train(self.training)

    def fwd_bwd(self) -> None:
        xi = self.x.detach().requires_grad_(True)
        out = self.model(xi)
        torch.autograd.grad(out.gather(1, self.t[:, None]).sum(), xi)

    def fwd(self) -> None:
        with torch.no_grad():
            self.model(self.x)


def min_passes(method: str, settings: dict) -> tuple[int, str]:
    if method == "integrated_gradients":
        return settings["n_steps"], "fb"
    if method == "smoothgrad":
        return settings["nt_samples"], "fb"
    if method == "gradient_shap":
        return settings["n_samples"], "fb"
    if method in ("deeplift", "guided_grad_cam"):
        return 2, "fb"
    if method == "occlusion":
        return settings["windows"] + 1, "f"
    return 1, "fb"


def bench(name: str, model: nn.Module, size: int, rounds: int) -> list[tuple]:
    """Paired rounds: the minimum passes run back to back, then the method; minima compared.

    Pairing and minima keep the comparison fair on a shared, loaded machine: both sides see
    the same conditions and the least-disturbed run of each is kept.
    """
    x, y = probe(size)
    model.train()  # as during training: attribute() must switch to eval and back itself
    rows = []
    for method in METHODS:

        def call(m: str = method) -> object:
            return attribute(model, x, m, target="label", labels=y)

        try:
            result = call()  # warm-up (imports, profile cache)
        except AttributionUnavailable as err:
            rows.append((name, method, None, None, None, None, err.reason))
            continue
        passes, kind = min_passes(method, result.settings)
        best_method = best_unit = float("inf")
        for _ in range(rounds):
            with Units(model, x) as units:
                one = units.fwd_bwd if kind == "fb" else units.fwd
                one()
                best_unit = min(best_unit, _timed(one, passes) / passes)
            best_method = min(best_method, _timed(call))
        rows.append(
            (
                name,
                method,
                best_method,
                f"{passes} {kind}",
                best_unit,
                best_method / (passes * best_unit),
                "",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds per method")
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet18"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (steadier on a busy machine; use 1 thread)",
    )
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = {
        "lenet5": (lambda: create("lenet5", in_channels=3, num_classes=9, input_size=32), 32),
        "resnet18": (lambda: create("resnet18", in_channels=3, num_classes=9, input_size=64), 64),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, 8 images, "
        f"{args.clock} clock"
    )
    header = f"{'model':9} {'method':21} {'method s':>9} {'passes':>8} {'unit s':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in args.models:
        build, size = configs[name]
        for model_name, method, seconds, passes, unit, ratio, reason in bench(
            name, build(), size, args.rounds
        ):
            if seconds is None:
                print(f"{model_name:9} {method:21} unavailable: {reason}")
                continue
            flag = " *" if method in GRADIENT_METHODS else ""
            if method in GRADIENT_METHODS:
                worst = max(worst, ratio)
            print(
                f"{model_name:9} {method:21} {seconds:9.4f} {passes:>8} {unit:9.5f} "
                f"{ratio:6.2f}{flag}"
            )
    print(f"* gradient methods (target <= 1.3); worst ratio {worst:.2f}")


if __name__ == "__main__":
    main()
