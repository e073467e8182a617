"""Output shapes of layers, and the stage outputs of a deep network (sensible default layers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.guard import HookSet, observe

__all__ = ["layer_shapes", "stage_layers"]


def layer_shapes(
    model: nn.Module,
    names: Sequence[str],
    run: Callable[[], Any],
) -> dict[str, tuple[int, ...]]:
    """The output shape of each named layer in one guarded forward pass.

    Args:
        model: The model.
        names: Qualified layer names.
        run: Runs the forward pass (e.g. ``lambda: model(x)``); called once inside
            :func:`~cnnviz.analysis.guard.observe` and ``torch.no_grad()``.

    Returns:
        ``{name: shape}`` for the layers that were called (first call), in call order.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    with observe(model), HookSet() as hooks, torch.no_grad():
        for name in names:

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                out = out[0] if isinstance(out, (tuple, list)) and out else out
                if isinstance(out, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(int(s) for s in out.shape)

            hooks.add(modules[name].register_forward_hook(hook))
        run()
    return shapes


def stage_layers(
    order: Sequence[str],
    shapes: dict[str, tuple[int, ...]],
    *,
    limit: int = 8,
    first: str | None = None,
) -> list[str]:
    """The stage outputs of a deep network: the last layer at each spatial resolution.

    A stage is a run of layers (in forward order) whose outputs share one spatial size; its last
    layer is what the stage hands on. The first conv layer (``first``) is kept too — its
    filters are the ones people can read. When there are more stages than ``limit``, evenly
    spaced ones are kept, always with the first and the last.

    Args:
        order: Layer names in forward order.
        shapes: Output shape per layer (layers without a shape are skipped).
        limit: The most layers to return.
        first: A layer to keep in any case (the first conv).

    Returns:
        Layer names in forward order.
    """
    stages: list[str] = []
    last_size: tuple[int, ...] | None = None
    for name in order:
        shape = shapes.get(name)
        if shape is None:
            continue
        size = tuple(shape[2:])
        if size != last_size or not stages:
            stages.append(name)
        else:
            stages[-1] = name
        last_size = size
    picks = list(dict.fromkeys([*([first] if first in shapes else []), *stages]))
    if len(picks) > limit:
        idx = sorted({round(i * (len(picks) - 1) / (limit - 1)) for i in range(limit)})
        picks = [picks[i] for i in idx]
    rank = {n: i for i, n in enumerate(order)}
    return sorted(picks, key=lambda n: rank.get(n, len(rank)))
