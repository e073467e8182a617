"""``FilterWeights``: what each conv filter looks like, epoch by epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from cnnviz.analysis.modelio import Spec
from cnnviz.callbacks.base import Event, VizCallback, check_count, guarded
from cnnviz.callbacks.budget import DEFAULT_SHARE
from cnnviz.figures.filters import filter_mosaic, filters_figure
from cnnviz.figures.mosaic import normalise, to_uint8_rgb
from cnnviz.loggers import log_figure, wants_figures

__all__ = ["FilterWeights"]


class FilterWeights(VizCallback):
    """Record every selected conv layer's filters, their norms and gradients at each event.

    For each layer the store gets ``weight`` (the first ``max_channels`` filters and their first
    ``max_in_channels`` input slices), ``norms`` (L2 norm of every full filter), and, when the
    event follows an optimizer step, ``grad`` and ``grad_norms`` read in
    ``on_before_optimizer_step`` (no hooks, nothing modified). Filters are flagged *dead* (norm
    below ``dead_tol``, or a zero gradient) or *unchanged* (relative change since the previous
    event below ``unchanged_tol``).

    Rule for drawing: the first conv layer that sees 3 channels is drawn in colour; deeper
    layers draw each filter as a row of its input-channel slices.

    Args:
        layers: Conv layer names or glob patterns (default: every conv layer).
        module: Submodule to watch (default: the LightningModule).
        every_n_epochs: Log every n epochs (default 1).
        every_n_steps: Log every n optimizer steps.
        max_channels: Filters recorded per layer: the first ``max_channels`` by index (stable
            across events, so a slider compares the same filters). ``None``: all.
        max_in_channels: Input-channel slices recorded per filter (norms use all of them).
        record_gradients: Record the weight gradients at the logged step.
        dead_tol: Norm under which a filter counts as dead.
        unchanged_tol: Relative change under which a filter counts as unchanged.
        log_on_start: Also record the initial filters.
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        log_to_loggers: Send images/figures to the trainer's loggers.
        probe_input: Where the input is in a batch (key, index or function; shared by all
            cnnviz callbacks); used to find a deep network's stage outputs.
        budget: Share of the fit's time cnnviz may take (see :class:`VizCallback`); ``None``
            for no budget.
        strict: Raise on failures instead of warning (tests).

    Example:
        >>> trainer = Trainer(callbacks=[FilterWeights(), ActivationMaps()])
    """

    layer_kind = "conv"
    budget_weight = 0.5

    def __init__(
        self,
        *,
        layers: str | Sequence[str] | None = None,
        module: str | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        max_channels: int | None = 64,
        max_in_channels: int = 16,
        record_gradients: bool = True,
        dead_tol: float = 1e-8,
        unchanged_tol: float = 1e-7,
        log_on_start: bool = True,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
        probe_input: Spec = None,
        budget: float | None = DEFAULT_SHARE,
        strict: bool | None = None,
    ) -> None:
        super().__init__(
            layers=layers,
            module=module,
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            log_on_start=log_on_start,
            store_dir=store_dir,
            log_to_loggers=log_to_loggers,
            probe_input=probe_input,
            budget=budget,
            strict=strict,
        )
        check_count("FilterWeights", "max_channels", max_channels, allow_none=True)
        check_count("FilterWeights", "max_in_channels", max_in_channels)
        for arg, tol in (("dead_tol", dead_tol), ("unchanged_tol", unchanged_tol)):
            if not isinstance(tol, (int, float)) or isinstance(tol, bool):
                raise TypeError(f"FilterWeights: `{arg}` must be a number >= 0; got {tol!r}")
            if not tol >= 0:
                raise ValueError(f"FilterWeights: `{arg}` must be a number >= 0; got {tol!r}")
        self.max_channels = max_channels
        self.max_in_channels = max_in_channels
        self.record_gradients = record_gradients
        self.dead_tol = dead_tol
        self.unchanged_tol = unchanged_tol
        self._grads: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._previous: dict[str, np.ndarray] = {}
        self._rgb: set[str] = set()

    @override
    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first = self.selected[0] if self.selected else None
        self._rgb = set()
        if first is not None and first.dims == 2 and first.settings.get("in_channels") == 3:
            from cnnviz.analysis.layers import list_layers

            if list_layers(self.target, "conv")[0].name == first.name:
                self._rgb.add(first.name)

    def _slice(self, tensor: torch.Tensor) -> torch.Tensor:
        k = (
            tensor.shape[0]
            if self.max_channels is None
            else min(tensor.shape[0], self.max_channels)
        )
        return tensor[:k, : self.max_in_channels]

    @override
    @guarded
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.record_gradients or self.store is None or not self.selected:
            return
        if not (self.step_due(trainer) or (trainer.is_last_batch and self.epoch_due(trainer))):
            return
        for info in self.selected:
            grad = self.target.get_submodule(info.name).weight.grad
            if grad is not None:  # stays on the device until the event
                g = grad.detach()
                self._grads[info.name] = (self._slice(g).clone(), g.flatten(1).norm(dim=1))

    @override
    def release(self) -> None:
        self._grads.clear()

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:
            self._grads.clear()
            return
        from cnnviz.recording import filters_record

        figures = self.log_to_loggers and wants_figures(trainer.loggers)
        for info in self.selected:
            grad = self._grads.pop(info.name, None) if event.tag != "start" else None
            record = filters_record(
                info.name,
                self.target.get_submodule(info.name),
                max_channels=self.max_channels,
                max_in_channels=self.max_in_channels,
                rgb=info.name in self._rgb,
                grad=grad,
                previous=self._previous_weight(info.name),
                dead_tol=self.dead_tol,
                unchanged_tol=self.unchanged_tol,
            )
            shown = record.weight
            self._previous[info.name] = shown
            if record.nonfinite:
                self.warn_once(
                    f"nan:{info.name}",
                    f"{info.name} has {record.nonfinite} NaN/Inf weight values at "
                    f"{event.label}; they are drawn blank",
                )
            self.put(record, event, layer=info.name)
            if self.log_to_loggers and trainer.loggers:
                rgb = info.name in self._rgb
                log_figure(
                    trainer.loggers,
                    f"cnnviz/filters/{info.name}",
                    step=event.step,
                    image=partial(_filter_image, shown, rgb),  # drawn on the store's thread
                    submit=self.store.submit,
                    figure=(
                        (
                            lambda s=shown, n=info.name, r=rgb: filters_figure(
                                [s], [event.label], layer=n, rgb=r
                            )
                        )
                        if figures
                        else None
                    ),
                )

    def _previous_weight(self, layer: str) -> np.ndarray | None:
        if layer in self._previous or self.store is None or not self._resumed:
            return self._previous.get(layer)
        # a run resumed from a checkpoint: the previous state is in the store
        records = self.store.records("filters", layer=layer, source=self.state_key)
        return self.store.load(records[-1])["weight"] if records else None  # resumed run


def _filter_image(weight: np.ndarray, rgb: bool) -> np.ndarray:
    """The filters of one layer as an ``[H, W, 3]`` uint8 image (for TensorBoard)."""
    img, _, _ = filter_mosaic(weight, rgb=rgb)
    return to_uint8_rgb(img if rgb else (normalise(img, symmetric=True) + 1) / 2)
