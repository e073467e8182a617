"""Capture the outputs of selected layers for one probe batch, for one window only.

The hooks exist only inside the :class:`LayerCapture` window, which also runs the model under
:func:`cnnviz.analysis.guard.observe` (eval mode, RNG forked, modes restored). Each hook reduces the
output *on the device* (per-channel statistics, channel selection, spatial downsampling) and the
reduced tensors are copied to the host once, when the window closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz._checks import check_count
from cnnviz.analysis.guard import observe
from cnnviz.analysis.layers import CONV_TYPES
from cnnviz.analysis.readout import Readout, ReadoutHooks, find_readouts, raw_readout

__all__ = ["CapturedLayer", "LayerCapture", "capture_activations", "channel_stats"]


@dataclass
class CapturedLayer:
    """What was captured for one layer.

    Attributes:
        name: Qualified layer name.
        shape: Full output shape ``(N, C, H, W)`` or ``(N, C, L)`` before any reduction.
        channels: Indices (into the layer's channels) of the maps kept.
        maps: ``[N, len(channels), h, w]`` (or ``[N, k, l]``), downsampled if asked.
        mean: Per-channel mean over probe images and positions, ``[C]``.
        max: Per-channel maximum, ``[C]``.
        min: Per-channel minimum, ``[C]``.
        zero_fraction: Per-channel fraction of exact zeros (dead ReLU units), ``[C]``.
        nonfinite: Number of NaN/Inf values in the full output.
    """

    name: str
    shape: tuple[int, ...]
    channels: torch.Tensor
    maps: torch.Tensor
    mean: torch.Tensor
    max: torch.Tensor
    min: torch.Tensor
    zero_fraction: torch.Tensor
    nonfinite: int

    def to(self, device: str | torch.device) -> CapturedLayer:
        """Move every tensor to ``device`` (one copy per tensor)."""
        return CapturedLayer(
            name=self.name,
            shape=self.shape,
            channels=self.channels.to(device),
            maps=self.maps.to(device),
            mean=self.mean.to(device),
            max=self.max.to(device),
            min=self.min.to(device),
            zero_fraction=self.zero_fraction.to(device),
            nonfinite=int(self.nonfinite),
        )


def channel_stats(output: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean, max, min and zero fraction of ``[N, C, ...]``, ignoring NaN/Inf.

    Runs on the tensor's device; returns ``[C]`` tensors plus a 0-d ``nonfinite`` count. When
    every value is finite (checked through the per-channel sums: one host synchronisation, at a
    logging event) it takes a fast path of plain reductions; otherwise NaN/Inf are masked out.
    """
    x = output.detach()
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    dims = (0, *range(2, x.dim()))
    size = x.numel() // x.shape[1]
    total = x.sum(dims)
    if bool(torch.isfinite(total).all()):  # a NaN or Inf anywhere makes its channel's sum so
        nonzero = x.sign().abs_().sum(dims)
        return {
            "mean": total / max(size, 1),
            "max": x.amax(dims),
            "min": x.amin(dims),
            "zero_fraction": (size - nonzero) / max(size, 1),  # exact counts, then divide
            "nonfinite": torch.zeros((), dtype=torch.long, device=x.device),
        }
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    finite = torch.isfinite(flat)
    safe = torch.where(finite, flat, torch.zeros((), device=flat.device))
    count = finite.sum(1).clamp_min(1)
    big = torch.finfo(flat.dtype).max
    return {
        "mean": safe.sum(1) / count,
        "max": torch.where(finite, flat, torch.full((), -big, device=flat.device)).amax(1),
        "min": torch.where(finite, flat, torch.full((), big, device=flat.device)).amin(1),
        "zero_fraction": (flat == 0).float().mean(1),
        "nonfinite": (~finite).sum(),
    }


def _check_size(argument: str, value: object) -> None:
    check_count(None, argument, value, allow_none=True)


def _downsample(maps: torch.Tensor, max_size: int | None) -> torch.Tensor:
    if max_size is None:
        return maps
    spatial = maps.shape[2:]
    if all(s <= max_size for s in spatial):
        return maps
    target = tuple(min(s, max_size) for s in spatial)
    if maps.dim() == 3:
        return F.adaptive_avg_pool1d(maps.float(), target[0])
    return F.adaptive_avg_pool2d(maps.float(), target)


class LayerCapture:
    """Context manager that hooks layers of ``model`` for one window and collects outputs.

    Inside the window the model runs under :func:`~cnnviz.analysis.guard.observe` (eval mode by
    default, RNG forked, no gradient). Leaving the window — normally or by exception — removes
    every hook and restores every module's mode.

    Conv layers are read where their :class:`~cnnviz.analysis.readout.Readout` says: after the
    normalisation and activation that follow them, whatever the module structure (found by
    data flow in one guarded forward pass of ``example_input``, see
    :func:`~cnnviz.analysis.readout.find_readouts`). Pooling layers are read as they are.

    Args:
        model: The model to watch.
        layers: Qualified names of the layers to hook, or one name (see
            :func:`cnnviz.list_layers`).
        channels: Per layer, the channel indices to keep; layers not in the mapping keep the
            first ``max_channels``.
        max_channels: Keep at most this many channels per layer (``None``: all).
        max_size: Downsample maps larger than this (per spatial axis) by area averaging.
        eval_mode: Run the window in eval mode (recommended; train mode would update BatchNorm
            statistics and draw dropout randomness).
        post_activation: Read conv layers after the activation that follows them — what the
            layer "fires" — instead of the raw conv output. Needs ``example_input`` or
            ``readouts``; without either, conv layers are read raw and their readout's
            ``reason`` says so. The layer keeps its own name; :attr:`sources` and
            :attr:`readouts` tell what was read.
        to_host: Copy the reduced results to the CPU when the window closes.
        example_input: A batch the model accepts, used (first samples only) to find where each
            conv layer is read, or a function that runs one forward pass (``lambda:
            model(batch)`` for models that take a dict batch); ``capture_activations`` passes
            its inputs.
        readouts: Readouts found earlier with ``find_readouts`` (a mapping or an iterable);
            used for the layers they cover, so no discovery pass is needed.

    Attributes:
        readouts: Per layer, the :class:`~cnnviz.analysis.readout.Readout` used.
        sources: Per layer, what was read, e.g. ``"layer1.0.relu (call 2)"``.
        results: Per layer, the :class:`CapturedLayer` (filled during the window).

    Raises:
        ValueError: If a layer is unknown (the message lists the valid names), a size is not
            positive, or the forward pass on ``example_input`` fails.
        TypeError: If a size or a readout has the wrong type.

    Example:
        >>> with LayerCapture(model, ["features.0"], max_channels=8, example_input=probe) as cap:
        ...     model(probe)
        >>> cap.results["features.0"].maps.shape
        torch.Size([8, 8, 28, 28])
        >>> cap.readouts["features.0"].describe()
        'read after features.1'
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        *,
        channels: Mapping[str, Sequence[int] | torch.Tensor] | None = None,
        max_channels: int | None = None,
        max_size: int | None = None,
        eval_mode: bool = True,
        post_activation: bool = True,
        to_host: bool = True,
        example_input: torch.Tensor | Sequence[torch.Tensor] | Callable[[], Any] | None = None,
        readouts: Mapping[str, Readout] | Iterable[Readout] | None = None,
    ) -> None:
        _check_size("max_channels", max_channels)
        _check_size("max_size", max_size)
        if isinstance(layers, str):
            layers = [layers]
        modules = dict(model.named_modules())
        unknown = [n for n in layers if n not in modules]
        if unknown:
            from cnnviz.analysis.layers import list_layers

            valid = ", ".join(i.name for i in list_layers(model))
            raise ValueError(f"`layers`: unknown layer(s) {unknown}; valid layers are: {valid}")
        self.model = model
        self.layers = list(layers)
        self.readouts = _plan_readouts(
            model, self.layers, modules, post_activation, example_input, readouts
        )
        self.sources: dict[str, str] = {n: r.source for n, r in self.readouts.items()}
        self.channels = dict(channels or {})
        self.max_channels = max_channels
        self.max_size = max_size
        self.eval_mode = eval_mode
        self.to_host = to_host
        self.results: dict[str, CapturedLayer] = {}
        self._hooks: ReadoutHooks | None = None
        self._stack: contextlib.ExitStack | None = None

    def _reduce(self, name: str, output: torch.Tensor) -> None:
        if name in self.results:  # only the first call of a reused module
            return
        if output.dim() not in (3, 4):
            return
        out = output.detach()
        stats = channel_stats(out)
        chosen = self.channels.get(name)
        if chosen is None:
            count = (
                out.shape[1] if self.max_channels is None else min(out.shape[1], self.max_channels)
            )
            index = torch.arange(count, device=out.device)
        else:
            index = torch.as_tensor(chosen, dtype=torch.long, device=out.device)
        maps = out.index_select(1, index)  # a copy: later in-place ops cannot change it
        maps = _downsample(maps, self.max_size)
        self.results[name] = CapturedLayer(
            name=name,
            shape=tuple(out.shape),
            channels=index,
            maps=maps,
            mean=stats["mean"],
            max=stats["max"],
            min=stats["min"],
            zero_fraction=stats["zero_fraction"],
            nonfinite=stats["nonfinite"],  # type: ignore[arg-type]  # made int on exit
        )

    def __enter__(self) -> LayerCapture:
        self.results = {}
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(observe(self.model, eval_mode=self.eval_mode, freeze_params=False))
            stack.enter_context(torch.no_grad())
            self._hooks = ReadoutHooks(self.model, self.readouts, self._reduce)
            stack.enter_context(self._hooks)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        if self.to_host and exc[0] is None:
            self.results = {n: r.to("cpu") for n, r in self.results.items()}
        else:
            for r in self.results.values():
                r.nonfinite = int(r.nonfinite)

    def remove(self) -> None:
        """Remove the hooks now (idempotent); the window's other state is restored on exit."""
        if self._hooks is not None:
            self._hooks.remove()


def _plan_readouts(
    model: nn.Module,
    layers: list[str],
    modules: dict[str, nn.Module],
    post_activation: bool,
    example_input: torch.Tensor | Sequence[torch.Tensor] | Callable[[], Any] | None,
    readouts: Mapping[str, Readout] | Iterable[Readout] | None,
) -> dict[str, Readout]:
    """Readouts for ``layers``: given ones first, then discovery, else raw (with the reason)."""
    given: dict[str, Readout] = {}
    if readouts is not None:
        items = list(readouts.values()) if isinstance(readouts, Mapping) else list(readouts)
        for r in items:
            if not isinstance(r, Readout):
                raise TypeError(
                    "`readouts` must hold Readout objects (from find_readouts); got "
                    f"{type(r).__name__}"
                )
            given[r.layer] = r
    plan: dict[str, Readout] = {}
    wanted: list[str] = []
    for name in layers:
        if not post_activation:
            plan[name] = raw_readout(model, name, reason="post_activation=False")
        elif name in given:
            plan[name] = given[name]
        elif isinstance(modules[name], CONV_TYPES) and example_input is not None:
            wanted.append(name)
        elif isinstance(modules[name], CONV_TYPES):
            reason = "no example_input or readouts given to find the activation after it"
            plan[name] = raw_readout(model, name, reason=reason)
        else:
            plan[name] = raw_readout(model, name)
    if wanted:
        plan.update(find_readouts(model, example_input, wanted))
    return {name: plan[name] for name in layers}


def capture_activations(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str],
    **kwargs: Any,
) -> tuple[dict[str, CapturedLayer], torch.Tensor]:
    """Run ``inputs`` through ``model`` once and return the selected layers' outputs.

    Conv layers are read after their activation (``post_activation=True``): ``inputs`` also
    serve as the example input that finds where (unless ``readouts`` or ``example_input`` are
    passed).

    Args:
        model: The model.
        inputs: A probe batch on the model's device.
        layers: Layer names to capture.
        **kwargs: Passed to :class:`LayerCapture` (``max_channels``, ``max_size``,
            ``readouts``...).

    Returns:
        ``(results, logits)``: the captured layers by name and the model's output, on the host.

    Example:
        >>> results, logits = capture_activations(model, probe, ["features.0"], max_size=32)
    """
    kwargs.setdefault("example_input", inputs)
    with LayerCapture(model, layers, **kwargs) as cap:
        logits = model(inputs)
    out = logits[0] if isinstance(logits, (tuple, list)) else logits
    if isinstance(out, torch.Tensor):
        out = out.detach()
        if kwargs.get("to_host", True):
            out = out.to("cpu")
    return cap.results, out
