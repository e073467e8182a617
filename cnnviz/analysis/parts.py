"""Analyse the parts of a model that see its input, when the whole model cannot be analysed.

Receptive fields and the layer table trace the model's ``forward`` with ``torch.fx``; the
effective receptive field calls it with an input tensor. A user's ``LightningModule`` often
cannot be traced as a whole — its ``forward`` takes the batch dict, or branches on a tensor's
``dim()`` in the head — while the backbone that sees the input can. :func:`input_parts` finds,
from one guarded forward, the outermost submodules that are called with the model input itself;
their layers' fields are the model's fields (the input reaches them unchanged), named by their
full path.

Example:
    >>> parts = input_parts(module, x, lambda: module({"image": x}))
    >>> parts
    ['backbone']
    >>> fields = receptive_fields_by_parts(module, (3, 32, 32), x, lambda: module({"image": x}))
    >>> fields["backbone.0.conv"].size
    (3, 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.guard import HookSet, observe
from cnnviz.analysis.receptive_field import (
    ReceptiveField,
    ReceptiveFieldError,
    receptive_fields,
)

__all__ = ["input_parts", "part_of", "receptive_fields_by_parts", "renamed"]


def input_parts(model: nn.Module, x: torch.Tensor, run: Callable[[], Any]) -> list[str]:
    """The outermost submodules of ``model`` whose ``forward`` receives ``x`` itself.

    Args:
        model: The model.
        x: The input tensor that ``run`` passes on (the very object).
        run: One forward pass of ``model`` that hands ``x`` to it (in a batch or as is).

    Returns:
        Qualified names, in call order; the root (``""``) is never among them.
    """
    found: list[str] = []
    with observe(model), HookSet() as hooks, torch.no_grad():
        for name, module in model.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                inside = any(name.startswith(f + ".") for f in found)
                if args and args[0] is x and not inside and name not in found:
                    found.append(name)

            hooks.add(module.register_forward_pre_hook(hook))
        run()
    return found


def part_of(layer: str, parts: Sequence[str]) -> str | None:
    """The part that holds ``layer`` (``"backbone"`` for ``"backbone.0.conv"``), if any."""
    for part in parts:
        if layer == part or layer.startswith(part + "."):
            return part
    return None


def renamed(rf: ReceptiveField, prefix: str) -> ReceptiveField:
    """``rf`` with ``prefix`` before its name (and its local field's)."""
    local = None if rf.local is None else renamed(rf.local, prefix)
    return dataclasses.replace(rf, name=f"{prefix}{rf.name}", local=local)


def receptive_fields_by_parts(
    model: nn.Module,
    input_size: Sequence[int],
    x: torch.Tensor,
    run: Callable[[], Any],
    *,
    whole: bool = True,
) -> dict[str, ReceptiveField]:
    """Receptive fields of ``model``, or of its parts that see the input when it cannot be traced.

    Args:
        model: The model.
        input_size: The input shape without the batch dimension.
        x: An input tensor that ``run`` hands to the model unchanged.
        run: One forward pass of ``model`` with ``x``.
        whole: Try the whole model first (``False``: its forward does not take a tensor).

    Returns:
        ``{layer: field}`` named by the full path in ``model``.

    Raises:
        ReceptiveFieldError: When neither the model nor any part that sees the input can be
            traced (the first error).
    """
    first: Exception | None = None
    if whole:
        try:
            return receptive_fields(model, input_size)
        except (ReceptiveFieldError, ValueError, RuntimeError, TypeError, LookupError) as err:
            first = err
    fields: dict[str, ReceptiveField] = {}
    for part in input_parts(model, x, run):
        try:
            sub = receptive_fields(model.get_submodule(part), input_size)
        except (ReceptiveFieldError, ValueError, RuntimeError, TypeError, LookupError) as err:
            first = first or err
            continue
        fields.update({f"{part}.{k}": renamed(v, f"{part}.") for k, v in sub.items()})
    if not fields:
        raise ReceptiveFieldError(
            f"no receptive fields: {first or 'no submodule receives the input tensor'}"
        )
    return fields
