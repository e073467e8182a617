"""``ActivationMaps``: what each conv and pooling layer fires on, for fixed probe inputs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from cnnviz.analysis.capture import LayerCapture
from cnnviz.callbacks.base import Event, VizCallback, check_count
from cnnviz.callbacks.probe import Probe, check_probe, resolve_probe
from cnnviz.figures.activations import activation_mosaic, activations_figure
from cnnviz.figures.mosaic import normalise, to_uint8_rgb
from cnnviz.loggers import log_figure, wants_figures

__all__ = ["ActivationMaps"]


def _check_probe_argument(probe: Any) -> None:
    usage = "a tensor [N, ...] or a tuple (inputs [N, ...], labels [N])"
    parts = list(probe) if isinstance(probe, (tuple, list)) else [probe]
    if not 1 <= len(parts) <= 2 or not all(isinstance(p, torch.Tensor) for p in parts):
        raise TypeError(f"ActivationMaps: `probe` must be {usage}")
    x = parts[0]
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"ActivationMaps: `probe` must be {usage} with N >= 1; got inputs {tuple(x.shape)}"
        )
    if len(parts) == 2 and (parts[1].dim() != 1 or len(parts[1]) != len(x)):
        raise ValueError(
            f"ActivationMaps: `probe` labels must have shape ({len(x)},); "
            f"got {tuple(parts[1].shape)}"
        )


class ActivationMaps(VizCallback):
    """Run a fixed probe batch through the model at each event and record every layer's maps.

    For each selected conv and pooling layer the store gets the channel maps of each probe
    input (``maps``, float16, downsampled to ``max_size``), the channel indices, and per-channel
    ``mean``, ``max``, ``min`` and ``zero_fraction`` over all channels. Conv layers followed by
    an activation in the same ``nn.Sequential`` are read after it (what the unit fires).
    The model's softmax outputs on the probe are recorded as ``predictions``.

    The probe is the first ``num_probe`` validation samples (taken by index, no RNG drawn), or
    the tensors passed as ``probe``. The forward runs in eval mode with the RNG forked; modes are
    restored after.

    Args:
        probe: Inputs, or ``(inputs, labels)``; default: the first validation samples.
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
    """

    layer_kind = "all"

    def __init__(
        self,
        *,
        probe: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
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
    ) -> None:
        super().__init__(
            layers=layers,
            module=module,
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            log_on_start=log_on_start,
            store_dir=store_dir,
            log_to_loggers=log_to_loggers,
        )
        if probe is not None:
            _check_probe_argument(probe)
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
        self._probe: Probe | None = None
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
    def release(self) -> None:
        self._probe = None

    def _ensure_probe(self, trainer: pl.Trainer) -> Probe:
        if self._probe is None:
            probe = resolve_probe(trainer, self.probe, self.num_probe, "ActivationMaps")
            check_probe(self.target, probe.x, "ActivationMaps")
            self._probe = probe
            self.record_probe(trainer, probe)
        return self._probe

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:  # only global rank zero records; no collective is involved
            return
        probe = self._ensure_probe(trainer)
        device = self.module_device(self.target)
        x = probe.x.to(device)
        names = [i.name for i in self.selected]
        first_strongest = self.channel_select == "strongest" and not self._channels
        cap = LayerCapture(
            self.target,
            names,
            channels=None if first_strongest else self._channels,
            max_channels=None if first_strongest else self.max_channels,
            max_size=self.max_size,
            post_activation=self.post_activation,
        )
        try:
            with cap:
                logits = self.target(x)
        except (RuntimeError, ValueError) as err:
            raise ValueError(
                f"ActivationMaps: the probe batch of shape {tuple(x.shape)} does not fit the "
                f"model: {err}"
            ) from err
        out = logits[0] if isinstance(logits, (tuple, list)) else logits
        probs = torch.softmax(out.detach().float().flatten(1), dim=1).cpu().numpy()
        self.write("predictions", {"probs": probs}, event, meta={"class_names": probe.class_names})
        figures = self.log_to_loggers and wants_figures(trainer.loggers)
        for name in names:
            r = cap.results.get(name)
            if r is None:
                rank_zero_warn(f"ActivationMaps: layer {name} was not called by the forward pass")
                continue
            channels = r.channels.tolist()
            maps = r.maps
            if first_strongest:
                k = (
                    len(channels)
                    if self.max_channels is None
                    else min(self.max_channels, len(channels))
                )
                channels = sorted(torch.argsort(r.mean, descending=True)[:k].tolist())
                maps = r.maps[:, channels]
            self._channels.setdefault(name, channels)
            if r.nonfinite:
                rank_zero_warn(
                    f"ActivationMaps: {name} produced {r.nonfinite} NaN/Inf values at "
                    f"{event.label}; they are drawn blank"
                )
            maps_np = maps.float().numpy()
            self.write(
                "activations",
                {
                    "maps": maps_np.astype(np.float16),
                    "channels": np.asarray(channels),
                    "mean": r.mean.numpy(),
                    "max": r.max.numpy(),
                    "min": r.min.numpy(),
                    "zero_fraction": r.zero_fraction.numpy(),
                },
                event,
                layer=name,
                meta={
                    "shape": list(r.shape),
                    "read_from": cap.sources[name],
                    "nonfinite": r.nonfinite,
                    "layer_type": type(self.target.get_submodule(name)).__name__,
                },
            )
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


#: Probe inputs whose maps go to image loggers (TensorBoard); the store and report have all.
LOGGER_PROBE_IMAGES = 2


def _maps_image(maps: np.ndarray) -> np.ndarray:
    """One layer's maps as an ``[H, W, 3]`` uint8 image for TensorBoard.

    Rows are the first :data:`LOGGER_PROBE_IMAGES` probe inputs: TensorBoard checksums every
    byte in pure Python while holding the GIL, so each image costs training time.
    """
    img, _, _ = activation_mosaic(maps[:LOGGER_PROBE_IMAGES], scale="channel")
    return to_uint8_rgb(normalise(img))
