"""Capture the outputs of selected layers for one probe batch, for one window only.

The hooks exist only inside the :class:`LayerCapture` window, which also runs the model under
:func:`cnnviz.analysis.guard.observe` (eval mode, RNG forked, modes restored). Each hook reduces the
output *on the device* (per-channel statistics, channel selection, spatial downsampling) and the
reduced tensors are copied to the host once, when the window closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.analysis.guard import HookSet, observe

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
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"`{argument}` must be a positive int or None; got {value!r}")
    if value < 1:
        raise ValueError(f"`{argument}` must be a positive int or None; got {value}")


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
        post_activation: For a conv layer directly followed (in the same ``nn.Sequential``,
            normalisation skipped) by an activation such as ReLU, capture the activation's
            output — what the layer "fires" — instead of the raw pre-activation. The layer
            keeps its own name; :attr:`sources` tells which module was read.
        to_host: Copy the reduced results to the CPU when the window closes.

    Example:
        >>> with LayerCapture(model, ["features.0"], max_channels=8) as cap:
        ...     model(probe)
        >>> cap.results["features.0"].maps.shape
        torch.Size([8, 8, 28, 28])
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
        from cnnviz.analysis.layers import CONV_TYPES, activation_after

        self.sources: dict[str, str] = {}
        for n in self.layers:
            after = None
            if post_activation and isinstance(modules[n], CONV_TYPES):
                after = activation_after(model, n)
            self.sources[n] = after or n
        self._modules = {n: modules[self.sources[n]] for n in self.layers}
        self.channels = dict(channels or {})
        self.max_channels = max_channels
        self.max_size = max_size
        self.eval_mode = eval_mode
        self.to_host = to_host
        self.results: dict[str, CapturedLayer] = {}
        self._hooks = HookSet()
        self._stack: contextlib.ExitStack | None = None

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in self.results:  # only the first call of a reused module
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
                return
            out = out.detach()
            stats = channel_stats(out)
            chosen = self.channels.get(name)
            if chosen is None:
                count = (
                    out.shape[1]
                    if self.max_channels is None
                    else min(out.shape[1], self.max_channels)
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

        return hook

    def __enter__(self) -> LayerCapture:
        self.results = {}
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(observe(self.model, eval_mode=self.eval_mode, freeze_params=False))
            stack.enter_context(torch.no_grad())
            stack.callback(self._hooks.remove)
            for name, module in self._modules.items():
                self._hooks.add(module.register_forward_hook(self._hook(name)))
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
        self._hooks.remove()


def capture_activations(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str],
    **kwargs: Any,
) -> tuple[dict[str, CapturedLayer], torch.Tensor]:
    """Run ``inputs`` through ``model`` once and return the selected layers' outputs.

    Args:
        model: The model.
        inputs: A probe batch on the model's device.
        layers: Layer names to capture.
        **kwargs: Passed to :class:`LayerCapture` (``max_channels``, ``max_size``...).

    Returns:
        ``(results, logits)``: the captured layers by name and the model's output, on the host.

    Example:
        >>> results, logits = capture_activations(model, probe, ["features.0"], max_size=32)
    """
    with LayerCapture(model, layers, **kwargs) as cap:
        logits = model(inputs)
    out = logits[0] if isinstance(logits, (tuple, list)) else logits
    if isinstance(out, torch.Tensor):
        out = out.detach()
        if kwargs.get("to_host", True):
            out = out.to("cpu")
    return cap.results, out
