"""``ActivationMaps``: what each conv and pooling layer fires on, for fixed probe inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from cnnviz.analysis.capture import LayerCapture
from cnnviz.analysis.modelio import Spec
from cnnviz.callbacks.base import Event, VizCallback, check_count, layer_options
from cnnviz.callbacks.budget import DEFAULT_SHARE, Plan
from cnnviz.callbacks.probe import check_probe_argument
from cnnviz.figures.activations import activation_mosaic, activations_figure
from cnnviz.figures.mosaic import normalise, to_uint8_rgb
from cnnviz.loggers import log_figure, wants_figures
from cnnviz.recording import activations_record, predictions_record

__all__ = ["ActivationMaps"]


class ActivationMaps(VizCallback):
    """Run a fixed probe batch through the model at each event and record every layer's maps.

    For each selected conv and pooling layer the store gets the channel maps of each probe
    input (``maps``, downsampled to ``max_size``), the channel indices, and per-channel
    ``mean``, ``max``, ``min`` and ``zero_fraction`` over all channels. Conv layers are read
    after the normalisation and activation that follow them (what the unit fires); the record
    says which tensor was read. When the model's output holds class scores, their softmax on
    the probe is recorded as ``predictions``.

    The probe is the first ``num_probe`` validation samples (taken by index, no RNG drawn,
    collated as the loader would: tuples and dicts are fine), or the batch passed as ``probe``.
    The forward runs eagerly (also for a compiled model), in eval mode with the RNG forked; modes
    are restored after. Needs: a model that runs on the probe (else it turns itself off with
    one warning).

    Args:
        probe: A batch: a tensor, ``(inputs, labels)`` or a dict; default: the first
            validation samples.
        num_probe: Probe size when taken from the data.
        layers: Layer names or glob patterns (default: every conv and pooling layer).
        module: Submodule to watch (default: the LightningModule).
        every_n_epochs: Log every n epochs (default 1).
        every_n_steps: Log every n optimizer steps.
        max_channels: Channels kept per layer (``None``: all). Which ones: ``channel_select``.
        channel_select: ``"first"`` keeps channels ``0..max_channels-1``; ``"strongest"`` keeps
            the channels with the largest mean activation at the first event, fixed afterwards
            so the history compares the same channels.
        max_size: Maps larger than this per axis are area-downsampled on the device.
        post_activation: Read conv layers after their activation (see above).
        log_on_start: Also record before training.
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        log_to_loggers: Send images/figures to the trainer's loggers.
        probe_input: Where the input is in a batch (key, index or function; shared by all
            cnnviz callbacks).
        scores: Where the class scores are in the output (key, index or function; shared).
        budget: Share of the fit's time cnnviz may take; at its default settings (16
            channels, every layer) this callback keeps fewer channels and layers to stay
            within its part. ``None``: no budget.
        strict: Raise on failures instead of warning (tests).
    """

    layer_kind = "all"
    needs = frozenset({"probe", "forward"})

    def __init__(
        self,
        *,
        probe: Any = None,
        num_probe: int = 8,
        layers: str | Sequence[str] | None = None,
        module: str | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        max_channels: int | None = 16,
        channel_select: Literal["first", "strongest"] = "first",
        max_size: int | None = 32,
        post_activation: bool = True,
        log_on_start: bool = True,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
        probe_input: Spec = None,
        scores: Spec = None,
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
            scores=scores,
            budget=budget,
            strict=strict,
        )
        if probe is not None:
            check_probe_argument("ActivationMaps", probe)
        check_count("ActivationMaps", "num_probe", num_probe)
        check_count("ActivationMaps", "max_channels", max_channels, allow_none=True)
        if channel_select not in ("first", "strongest"):
            raise ValueError(
                "ActivationMaps: `channel_select` must be 'first' or 'strongest'; "
                f"got {channel_select!r}"
            )
        check_count("ActivationMaps", "max_size", max_size, allow_none=True)
        self.probe = probe
        self.num_probe = num_probe
        self.max_channels = max_channels
        self.channel_select = channel_select
        self.max_size = max_size
        self.post_activation = post_activation
        self._channels: dict[str, list[int]] = {}

    @override
    def _state_fields(self) -> dict[str, Any]:
        return {**super()._state_fields(), "channel_select": self.channel_select}

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"channels": dict(self._channels)}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._channels = {k: list(v) for k, v in state.get("channels", {}).items()}

    @override
    def plans(self, trainer: pl.Trainer, event: Event) -> list[Plan]:
        """Fewer channels (when ``max_channels`` is at its default), then fewer layers."""
        names = [i.name for i in self.selected]
        channel_options = [self.max_channels]
        if self.max_channels == _DEFAULT_CHANNELS and not self._channels:
            channel_options += [8, 4]
        plans = []
        for layers in layer_options(names, self._auto_layers, 2):
            for channels in channel_options:
                cuts = []
                if channels != self.max_channels:
                    cuts.append(f"keeps {channels} of {self.max_channels} channels per layer")
                if len(layers) < len(names):
                    cuts.append(f"records {len(layers)} of {len(names)} layers")
                width = channels or 64
                units = self.num_probe * (1 + len(layers) * width / 64)
                plans.append(Plan({"layers": layers, "channels": channels}, units, tuple(cuts)))
        return plans

    def _readouts(self, names: list[str], x: torch.Tensor) -> dict[str, Any] | None:
        """Where each layer is read (found once by data flow: after its norm and activation)."""
        if not self.post_activation or self.session is None or self.model_io is None:
            return None
        return self.session.readouts(self.target, names, self.model_io, self.probe_batch)

    @override
    def prior_seconds_per_unit(self) -> float | None:
        assert self.session is not None
        return self.session.unit_seconds.get("forward")

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:  # only global rank zero records; no collective is involved
            return
        probe = self.probe_batch
        io = self.model_io
        assert io is not None
        self.record_probe(trainer, probe)
        x = self.probe_inputs()
        names = list(self.plan.settings.get("layers", [i.name for i in self.selected]))
        max_channels = self.plan.settings.get("channels", self.max_channels)
        first_strongest = self.channel_select == "strongest" and not self._channels
        cap = LayerCapture(
            self.target,
            names,
            channels=None if first_strongest else self._channels,
            max_channels=None if first_strongest else max_channels,
            max_size=self.max_size,
            post_activation=self.post_activation,
            readouts=self._readouts(names, x),
        )
        with cap:
            out = io.forward(self.target, probe.batch, x)
        if io.has_scores:
            record = predictions_record(io.scores_of(out), class_names=probe.class_names)
            self.put(record, event)
        figures = self.log_to_loggers and wants_figures(trainer.loggers)
        for name in names:
            r = cap.results.get(name)
            if r is None:
                self.warn_once(f"call:{name}", f"layer {name} was not called by the forward pass")
                continue
            chosen = None
            if first_strongest:
                count = len(r.channels)
                k = count if max_channels is None else min(max_channels, count)
                chosen = sorted(torch.argsort(r.mean, descending=True)[:k].tolist())
            record = activations_record(
                r,
                readout=cap.readouts.get(name),
                layer_type=type(self.target.get_submodule(name)).__name__,
                channels=chosen,
            )
            channels = list(record.channels.tolist())
            self._channels.setdefault(name, channels)
            if r.nonfinite:
                self.warn_once(
                    f"nan:{name}",
                    f"{name} produced {r.nonfinite} NaN/Inf values at {event.label}; they are "
                    "drawn blank",
                )
            maps_np = record.maps
            self.put(record, event, layer=name)
            if self.log_to_loggers and trainer.loggers:
                log_figure(
                    trainer.loggers,
                    f"cnnviz/activations/{name}",
                    step=event.step,
                    image=partial(_maps_image, maps_np),  # drawn on the store's thread
                    submit=self.store.submit,
                    figure=(
                        (
                            lambda m=maps_np, n=name, c=channels: activations_figure(
                                [m], [event.label], layer=n, channels=c
                            )
                        )
                        if figures
                        else None
                    ),
                )


_DEFAULT_CHANNELS = 16


#: Probe inputs whose maps go to image loggers (TensorBoard); the store and report have all.
LOGGER_PROBE_IMAGES = 2


def _maps_image(maps: np.ndarray) -> np.ndarray:
    """One layer's maps as an ``[H, W, 3]`` uint8 image for TensorBoard.

    Rows are the first :data:`LOGGER_PROBE_IMAGES` probe inputs: TensorBoard checksums every
    byte in pure Python while holding the GIL, so each image costs training time.
    """
    img, _, _ = activation_mosaic(maps[:LOGGER_PROBE_IMAGES], scale="channel")
    return to_uint8_rgb(normalise(img))
