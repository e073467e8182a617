"""Duplicate detection: selected pools whose image would be another selected layer's."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.featvis._reading import _Plan
from cnnviz.analysis.featvis._settings import _Settings
from cnnviz.analysis.featvis.result import Units
from cnnviz.analysis.guard import HookSet
from cnnviz.analysis.readout import ReadoutHooks


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _pool_window(module: nn.Module, in_hw: tuple[int, ...]) -> tuple[Any, Any, Any] | None:
    """``(kernel, stride, padding)`` of a 2-D max/avg pool, adaptive ones where exact."""
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = module.output_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        out = tuple(n if o is None else int(o) for o, n in zip(size, in_hw, strict=True))
        if any(n % o for n, o in zip(in_hw, out, strict=True)):
            return None  # bins of unequal width
        kernel = tuple(n // o for n, o in zip(in_hw, out, strict=True))
        return kernel, kernel, (0, 0)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if _pair(getattr(module, "dilation", 1)) != (1, 1):
            return None
        kernel = _pair(module.kernel_size)
        return kernel, _pair(module.stride or module.kernel_size), _pair(module.padding)
    return None


def _repeats(
    module: nn.Module,
    in_hw: tuple[int, ...],
    out_hw: tuple[int, ...],
    units: Units | None,
    source_units: Units | None,
    objective: str,
) -> bool:
    """Whether a pool of a layer's read map has that layer's image (see :func:`duplicate_layers`).

    ``units`` are the pool's averaged units, ``source_units`` the layer's.
    """
    window = _pool_window(module, in_hw)
    if window is None or units is None or source_units is None:
        return False
    kernel, stride, padding = window
    if kernel == stride == (1, 1) and padding == (0, 0) and out_hw == in_hw:
        return True  # the map itself
    if objective == "center":
        return False
    covers = all(k - p >= n for k, p, n in zip(kernel, padding, in_hw, strict=True))
    if out_hw == (1, 1) and covers:
        return True  # a global pool of the layer's whole map
    if not isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return False
    if kernel != stride or padding != (0, 0):
        return False
    # Windows side by side: the pool's mean over its units is the layer's mean over theirs.
    top, bottom, left, right = units
    covered = (top * kernel[0], bottom * kernel[0], left * kernel[1], right * kernel[1])
    return covered == source_units


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def _find_duplicates(model: nn.Module, cfg: _Settings, plans: dict[Any, _Plan]) -> dict[str, str]:
    """One forward pass: which selected pools pass another selected layer's read tensor on."""
    modules = dict(model.named_modules())
    readouts = [p.readout for p in plans.values() if p.readout is not None]
    pools = {
        p.layer: modules[p.layer]
        for p in plans.values()
        if p.readout is not None and p.readout.kind == "pool" and p.layer in modules
    }
    if not pools or len(readouts) < 2:
        return {}
    reads: list[tuple[str, torch.Tensor]] = []  # strong references: addresses stay unique
    seen: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
    outputs: dict[str, tuple[int, ...]] = {}

    def before(name: str, args: tuple[Any, ...]) -> None:
        if name not in seen and args and isinstance(args[0], torch.Tensor):
            seen[name] = (args[0], tuple(args[0].shape[2:]))

    def after(name: str, output: Any) -> None:
        output = output[0] if isinstance(output, (tuple, list)) and output else output
        if name not in outputs and isinstance(output, torch.Tensor):
            outputs[name] = tuple(output.shape[2:])

    with contextlib.ExitStack() as stack:
        hooks = stack.enter_context(HookSet())
        for name, module in pools.items():
            hooks.add(module.register_forward_pre_hook(lambda _m, a, n=name: before(n, a)))
            hooks.add(module.register_forward_hook(lambda _m, _a, o, n=name: after(n, o)))
        stack.enter_context(ReadoutHooks(model, readouts, lambda n, t: reads.append((n, t))))
        stack.enter_context(torch.no_grad())
        with contextlib.suppress(Exception):  # what ran before a failure is enough
            model(cfg.grey())
    found: dict[str, str] = {}
    for name, (tensor, in_hw) in seen.items():
        source = next((n for n, t in reads if n != name and _same_tensor(t, tensor)), None)
        if source is None:
            continue
        units, source_units = plans[name].units, plans[source].units
        if _repeats(pools[name], in_hw, outputs.get(name, ()), units, source_units, cfg.objective):
            found[name] = source
    for name in list(found):  # a chain (conv -> identity pool -> global pool): the first
        source, hops = found[name], 0
        while source in found and hops < len(found):
            source, hops = found[source], hops + 1
        found[name] = source
    return found
