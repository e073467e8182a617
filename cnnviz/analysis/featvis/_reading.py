"""Reading the objective: the layer's read tensor, its units, and one plan per layer.

:class:`_Reader` runs the model and returns the tensor read for a layer (stopping the forward
there); :func:`_units` picks the interior units from the receptive fields; :func:`_plans`
finds, per layer, the readout, the map's size and the units the objective averages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.featvis._relu import _ReLUMode
from cnnviz.analysis.featvis._settings import _OWNER, _Settings
from cnnviz.analysis.featvis.result import Units
from cnnviz.analysis.guard import HookSet
from cnnviz.analysis.readout import Readout, ReadoutHooks, find_readouts


class _Stop(Exception):
    """Raised by the read hook to end the forward pass once the target tensor was read."""


@dataclass
class _Plan:
    """What is read for one layer and which units of it the objective averages."""

    layer: str | None
    readout: Readout | None
    count: int
    units: Units | None
    reason: str
    functional_relu: bool


class _Reader:
    """Runs the model and returns the tensor read for one layer (or the logits).

    Hooks are installed on ``__enter__`` and removed on ``__exit__``; each run stops the
    forward pass as soon as the tensor was read.
    """

    def __init__(self, model: nn.Module, readout: Readout | None) -> None:
        self.model = model
        self.readout = readout
        self._box: list[torch.Tensor] = []
        self._hooks: ReadoutHooks | None = None

    def __enter__(self) -> _Reader:
        if self.readout is not None:
            hooks = ReadoutHooks(self.model, [self.readout], self._on_output)
            self._hooks = hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.remove()

    def _on_output(self, _layer: str, tensor: torch.Tensor) -> None:
        if not self._box:
            self._box.append(tensor)
            raise _Stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.readout is None:
            out = self.model(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"{_OWNER}: layer=None optimises class logits, but the model returned {got}, "
                    "not [N, classes]; name a conv or pooling `layer` instead."
                )
            return out
        self._box.clear()
        with contextlib.suppress(_Stop):
            self.model(x)
        if not self._box:
            raise ValueError(
                f"{_OWNER}: layer {self.readout.layer!r} (read at {self.readout.source}) was not "
                "called in the model's forward pass; choose a layer that the forward uses."
            )
        out = self._box.pop()
        if out.dim() != 4:
            raise ValueError(
                f"{_OWNER}: the tensor read for layer {self.readout.layer!r} "
                f"({self.readout.source}) is not a [N, C, H, W] map (shape {tuple(out.shape)}); "
                "choose a 2-D conv or pooling layer."
            )
        return out


def _objective(out: torch.Tensor, channels: torch.Tensor, units: Units | None) -> torch.Tensor:
    """Per row ``k``: the mean of channel ``channels[k]`` over ``units`` (the logit if ``None``)."""
    rows = torch.arange(out.shape[0], device=out.device)
    if units is None:
        return out[rows, channels].float()
    top, bottom, left, right = units
    return out[rows, channels, top:bottom, left:right].float().mean(dim=(1, 2))


def _discover(
    model: nn.Module, x: torch.Tensor, layers: list[str]
) -> tuple[dict[str, Readout], Exception | None]:
    """Readouts of ``layers``; a forward failing after them does not stop the discovery."""
    failures: list[Exception] = []

    def run() -> None:
        try:
            model(x)
        except Exception as err:  # kept: re-raised if the layer's tensor is not reached
            failures.append(err)

    return find_readouts(model, run, layers), (failures[0] if failures else None)


def _fields(model: nn.Module, shape: tuple[int, int, int]) -> tuple[dict[str, Any], str]:
    """Receptive fields of every layer, or ``{}`` and why they could not be computed."""
    from cnnviz.analysis.receptive_field import receptive_fields

    try:
        return receptive_fields(model, shape), ""
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as err:
        return {}, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _units(
    objective: str, rf: Any, out_hw: tuple[int, int], in_hw: tuple[int, ...], error: str
) -> tuple[Units, str]:
    """The units of a read map that the objective averages, and why (see the module docs)."""
    if objective == "center":
        return _centre(out_hw), "centre unit (objective='center')"
    if rf is None or rf.ndim != 2 or tuple(rf.output_spatial) != out_hw:
        why = error or "the layer has no receptive-field record for this read"
        return _all(out_hw), f"all units: receptive fields unknown ({why})"
    axes: list[tuple[int, int]] = []
    centred: list[str] = []
    for axis, (count, size) in enumerate(zip(out_hw, in_hw, strict=True)):
        inside = []
        for i in range(count):
            index = [0, 0]
            index[axis] = i
            box = rf.region(*index, clip=False, local=True)
            if box[2 * axis] >= 0 and box[2 * axis + 1] <= size:
                inside.append(i)
        if not inside:
            axes.append((count // 2, count // 2 + 1))
            centred.append(("rows", "columns")[axis])
            continue
        axes.append((inside[0], inside[-1] + 1))
    units: Units = (*axes[0], *axes[1])
    if len(centred) == 2:
        return units, "centre unit: no unit's receptive field lies inside the image"
    if centred:
        return units, (
            f"centre of the {centred[0]}: no unit's receptive field lies inside the image along "
            f"the {centred[0]}"
        )
    if units == _all(out_hw):
        return units, "all units: every receptive field lies inside the image"
    return units, "interior units: receptive field inside the image"


def _centre(out_hw: tuple[int, int]) -> Units:
    h, w = out_hw[0] // 2, out_hw[1] // 2
    return h, h + 1, w, w + 1


def _all(out_hw: tuple[int, int]) -> Units:
    return 0, out_hw[0], 0, out_hw[1]


def _plans(model: nn.Module, cfg: _Settings, layers: Sequence[str | None]) -> dict[Any, _Plan]:
    """Find each layer's readout, the read map's size and the units to average (guarded)."""
    x0 = cfg.grey()
    names = [layer for layer in layers if layer is not None]
    readouts, failure = _discover(model, x0, names) if names else ({}, None)
    fields, error = ({}, "")
    if names and cfg.objective != "center":
        fields, error = _fields(model, cfg.shape)
    plans: dict[Any, _Plan] = {}
    for layer in layers:
        readout = readouts.get(layer) if layer is not None else None
        counter = _ReLUMode(count_only=True)
        with HookSet() as hooks, torch.no_grad():
            counter.track(model, hooks)
            try:
                with counter, _Reader(model, readout) as read:
                    out = read(x0)
            except (RuntimeError, ValueError, TypeError) as err:
                if str(err).startswith(_OWNER) and failure is None:
                    raise
                cause = failure if failure is not None else err
                raise ValueError(
                    f"{_OWNER}: the model does not accept an input of shape {cfg.shape} "
                    f"(`input_shape`): {cause}"
                ) from cause
        if readout is None:
            plans[layer] = _Plan(None, None, int(out.shape[1]), None, "", counter.calls > 0)
            continue
        out_hw = (int(out.shape[2]), int(out.shape[3]))
        units, reason = _units(cfg.objective, fields.get(layer), out_hw, cfg.shape[1:], error)
        plans[layer] = _Plan(layer, readout, int(out.shape[1]), units, reason, counter.calls > 0)
    return plans
