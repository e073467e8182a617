"""Time every attribution method through cnnviz against Captum called directly.

For each model (LeNet-5 at 32 px, the case-study ResNet-18 at 64 px) and each method of
:func:`cnnviz.analysis.attribution.attribute`, on 8 probe images on the CPU:

* ``captum s``: Captum called the straightforward way a user would: the model in eval mode,
  parameters as they are (trainable), a plain target tensor, the same settings as cnnviz's
  defaults (``n_steps=50``, ``nt_samples=16``, ``n_samples=16``, the same noise level, baselines
  and occlusion windows) and ``internal_batch_size=None`` / ``perturbations_per_eval=1`` (the
  defaults);
* ``cnnviz s``: ``attribute(model, x, method, target=labels)`` on the model in *training* mode,
  as a callback sees it (cnnviz switches to eval mode and back, freezes parameters, forks the
  RNG, checks hooks... inside the timed call);
* ``pass``: the most samples cnnviz evaluates in one pass (from ``--memory-budget-mb``; Captum
  direct evaluates everything in one pass, whatever its memory);
* ``ratio`` = median cnnviz / median Captum (below 1: cnnviz is faster);
* ``min ratio`` = fastest cnnviz round / fastest Captum round (the least disturbed runs; on a
  busy machine the steadier estimate of the true cost);
* ``noise``: the interquartile range of the per-round ratios over their median, in percent
  (how far to trust the ratio on this machine).

Rounds are interleaved (each round times every method both ways, alternating which goes
first), after one untimed warm-up call of each; a timed sample of a fast method is a run of
calls lasting at least 50 ms (one LeNet-5 saliency call takes 2.5 ms: timed alone, its jitter
on a shared machine is larger than any difference worth measuring); medians over the rounds
are reported. Each
(model, method) is timed in a fresh Python process: in one process, a method's timings depend
on the memory the methods before it left mapped (measured: ResNet-18 SmoothGrad after
integrated gradients' 400-sample pass 1.07x, alone 0.90x); ``--same-process`` times all in one
(faster). Between fresh processes the ratio of two identical computations still moves by up to
2% (ResNet-18 saliency, five processes: 0.998-1.013); ``--processes 3`` times each method in
three and shows the run with the median ratio. Run it alone on the machine if you can; with
other load, raise ``--rounds``.

Usage::

    .venv/bin/python scripts/bench_attributions.py [--rounds 7] [--models lenet5 resnet18]
        [--threads 1] [--clock wall|cpu] [--methods saliency integrated_gradients ...]
        [--same-process] [--processes 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from cnnviz.analysis.attribution import METHODS, AttributionUnavailable, attribute
from cnnviz.models import create


def probe(size: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Shapes validation images (random images if the data is unavailable)."""
    try:
        from cnnviz.data.shapes import ShapesDataset

        ds = ShapesDataset(n, image_size=size, channels=3, split="val", seed=0)
        images, labels, _ = zip(*(ds.sample(i) for i in range(n)), strict=True)
        return torch.stack(images), torch.stack(labels)
    except ImportError:
        g = torch.Generator().manual_seed(0)
        return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 9


def direct_call(
    method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: nn.Module
) -> Callable[[], object]:
    """Captum as a user calls it, with cnnviz's default settings."""
    import captum.attr as ca

    size = tuple(x.shape[2:])
    window = (x.shape[1], *(max(1, s // 4) for s in size))
    strides = (x.shape[1], *(max(1, w // 2) for w in window[1:]))
    stdevs = 0.15 * float(x.max() - x.min())
    calls: dict[str, Callable[[], object]] = {
        "saliency": lambda: ca.Saliency(model).attribute(x, target=y, abs=True),
        "input_x_gradient": lambda: ca.InputXGradient(model).attribute(x, target=y),
        "integrated_gradients": lambda: ca.IntegratedGradients(model).attribute(
            x, target=y, n_steps=50
        ),
        "smoothgrad": lambda: ca.NoiseTunnel(ca.Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=16, stdevs=stdevs, target=y, abs=True
        ),
        "gradient_shap": lambda: ca.GradientShap(model).attribute(
            x, baselines=torch.cat([torch.zeros_like(x[:1]), x]), n_samples=16, target=y
        ),
        "deeplift": lambda: ca.DeepLift(model).attribute(x, target=y),
        "guided_backprop": lambda: ca.GuidedBackprop(model).attribute(x, target=y),
        "deconvolution": lambda: ca.Deconvolution(model).attribute(x, target=y),
        "occlusion": lambda: ca.Occlusion(model).attribute(
            x, sliding_window_shapes=window, strides=strides, baselines=0.0, target=y
        ),
        "grad_cam": lambda: ca.LayerAttribution.interpolate(
            ca.LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True),
            size,
            interpolate_mode="bilinear",
        ),
        "guided_grad_cam": lambda: ca.GuidedGradCam(model, layer).attribute(x, target=y),
    }
    return calls[method]


CLOCK = time.perf_counter


def _timed(fn: Callable[[], object], calls: int = 1) -> float:
    """Seconds per call of ``calls`` calls in a row."""
    t0 = CLOCK()
    for _ in range(calls):
        fn()
    return (CLOCK() - t0) / calls


MIN_SAMPLE_SECONDS = 0.05  # a timed sample of a fast method repeats it to last this long


def bench(
    name: str, model: nn.Module, size: int, methods: list[str], rounds: int, budget: float
) -> list[tuple]:
    """Median seconds both ways and the ratios, per method (interleaved rounds)."""
    x, y = probe(size)
    user = copy.deepcopy(model).eval()  # what a user hands to Captum
    model.train()  # as during training: attribute() switches to eval and back itself
    rows = []
    for method in methods:
        try:
            # warm-up (imports, profile cache)
            result = attribute(model, x, method, target=y, memory_budget_mb=budget)
        except AttributionUnavailable as err:
            rows.append((name, method, None, None, None, None, None, None, f"cnnviz: {err.reason}"))
            continue
        samples = result.settings["internal_batch_size"]
        layer = user.get_submodule(result.layer) if result.layer else None

        def ours(m: str = method) -> object:
            return attribute(model, x, m, target=y, memory_budget_mb=budget)

        theirs = direct_call(method, user, x, y, layer)  # type: ignore[arg-type]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs()
        except Exception as err:  # report what Captum says, time cnnviz alone
            times = [_timed(ours) for _ in range(rounds)]
            reason = f"Captum direct fails: {type(err).__name__}: {str(err).splitlines()[0][:70]}"
            median = statistics.median(times)
            rows.append((name, method, median, None, samples, None, None, None, reason))
            continue
        ours_t: list[float] = []
        theirs_t: list[float] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Captum warns on every direct call
            calls = max(1, round(MIN_SAMPLE_SECONDS / max(_timed(theirs), 1e-6)))
            for r in range(rounds):
                if r % 2:
                    theirs_t.append(_timed(theirs, calls))
                    ours_t.append(_timed(ours, calls))
                else:
                    ours_t.append(_timed(ours, calls))
                    theirs_t.append(_timed(theirs, calls))
        ratios = sorted(o / t for o, t in zip(ours_t, theirs_t, strict=True))
        ratio = statistics.median(ours_t) / statistics.median(theirs_t)
        q1, q3 = (statistics.quantiles(ratios, n=4)[i] for i in (0, 2)) if rounds >= 4 else (0, 0)
        noise = 100 * (q3 - q1) / statistics.median(ratios) if rounds >= 4 else float("nan")
        rows.append(
            (
                name,
                method,
                statistics.median(ours_t),
                statistics.median(theirs_t),
                samples,
                ratio,
                min(ours_t) / min(theirs_t),
                noise,
                "",
            )
        )
    return rows


def _rows(name: str, args: argparse.Namespace) -> list[tuple]:
    """The rows of one model: in this process, or each method in a fresh one."""
    if args.same_process:
        build, size = CONFIGS[name]
        return bench(name, build(), size, args.methods, args.rounds, args.memory_budget_mb)
    rows: list[tuple] = []
    for method in args.methods:
        runs = [_worker(name, method, args) for _ in range(args.processes)]
        timed = [r for r in runs if r[3] is not None]
        if len(timed) < len(runs) or len(runs) == 1:
            rows.append(runs[0])
            continue
        # the run whose ratio is the median of the processes' ratios
        rows.append(sorted(timed, key=lambda r: r[5])[len(timed) // 2])
    return rows


def _worker(name: str, method: str, args: argparse.Namespace) -> tuple:
    """One (model, method) timed in a fresh Python process: its row."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"--models={name}",
        f"--methods={method}",
        f"--rounds={args.rounds}",
        f"--threads={args.threads}",
        f"--memory-budget-mb={args.memory_budget_mb}",
        f"--clock={args.clock}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("ROWS ")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:120]
        return (name, method, None, None, None, None, None, None, f"failed: {tail}")
    return tuple(json.loads(lines[-1][5:])[0])


CONFIGS = {
    "lenet5": (lambda: create("lenet5", in_channels=3, num_classes=9, input_size=32), 32),
    "resnet18": (lambda: create("resnet18", in_channels=3, num_classes=9, input_size=64), 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per method")
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--memory-budget-mb",
        type=float,
        default=256,
        help="cnnviz's memory_budget_mb (its default: 256)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (steadier on a busy machine, one thread)",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="time every method in this process (later methods run on the memory earlier "
        "ones left mapped)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="time each method in this many fresh processes and show the one with the median "
        "ratio (a process's memory layout shifts a ratio by up to 2%%)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.worker:  # one model and method(s), rows as JSON for the parent
        name = args.models[0]
        build, size = CONFIGS[name]
        rows = bench(name, build(), size, args.methods, args.rounds, args.memory_budget_mb)
        print("ROWS " + json.dumps(rows))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, 8 images, "
        f"{args.rounds} interleaved rounds, medians, {args.clock} clock, cnnviz "
        f"memory_budget_mb={args.memory_budget_mb:g}, "
        + ("one process" if args.same_process else f"{args.processes} process(es) per method")
    )
    header = (
        f"{'model':9} {'method':21} {'cnnviz s':>9} {'captum s':>9} {'pass':>5} {'ratio':>6} "
        f"{'min ratio':>9} {'noise':>6}"
    )
    print(header)
    print("-" * len(header))
    worst = worst_min = 0.0
    for name in args.models:
        for row in _rows(name, args):
            model_name, method, ours, theirs, samples, ratio, min_ratio, noise, reason = row
            if theirs is None:
                shown = "-" if ours is None else f"{ours:9.4f}"
                passes = "-" if samples is None else str(samples)
                print(f"{model_name:9} {method:21} {shown:>9} {'-':>9} {passes:>5}  {reason}")
                continue
            worst, worst_min = max(worst, ratio), max(worst_min, min_ratio)
            print(
                f"{model_name:9} {method:21} {ours:9.4f} {theirs:9.4f} {samples:5d} {ratio:6.2f} "
                f"{min_ratio:9.2f} {noise:5.0f}%"
            )
    print(
        f"worst ratio {worst:.2f}, worst min ratio {worst_min:.2f} (target <= 1.00; noise: IQR "
        "of per-round ratios / median)"
    )


if __name__ == "__main__":
    main()
