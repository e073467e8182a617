"""``FeatureVisualization``: the image each filter wants to see, optimised from noise."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from cnnviz.callbacks.base import Event, VizCallback

__all__ = ["FeatureVisualization"]


class FeatureVisualization(VizCallback):
    """Optimise one input image per channel of the selected layers (Olah et al. 2017).

    By default it runs once, at the end of fit (``every_n_epochs=None``); set
    ``every_n_epochs`` to follow how the preferred images change during training. For each
    layer the store gets a ``featvis`` record: ``images`` ``[K, H, W, C]`` in ``[0, 1]`` and the
    reached ``activations``; the report shows them beside the filters and top-k patches of the
    same channels. The optimisation never updates the model's parameters and leaves modes,
    gradients, buffers and RNG streams as they were
    (:func:`cnnviz.analysis.featvis.visualize_channels`).

    Args:
        layers: Conv/pool layer names or glob patterns (default: every conv and pooling layer).
        channels: Channel indices per layer, or ``None`` for the first ``max_channels``.
        max_channels: Channels per layer when ``channels`` is ``None``.
        module: Submodule to visualise (default: the LightningModule).
        every_n_epochs: Also run every n epochs (default: only at the end of fit).
        at_end: Run at the end of fit.
        objective: ``"mean"`` of the channel's map or its ``"center"`` unit.
        param: ``"fourier"`` (natural-looking, default) or ``"pixel"``.
        steps: Optimisation steps (default 256; see the analysis module for why).
        lr: Adam learning rate.
        seed: Seed of the optimisation's own generator (the global RNG is untouched).
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        log_to_loggers: Send the images to the trainer's loggers.
    """

    layer_kind = "all"

    def __init__(
        self,
        *,
        layers: str | Sequence[str] | None = None,
        channels: Sequence[int] | None = None,
        max_channels: int = 16,
        module: str | None = None,
        every_n_epochs: int | None = None,
        at_end: bool = True,
        objective: Literal["mean", "center"] = "mean",
        param: Literal["fourier", "pixel"] = "fourier",
        steps: int = 256,
        lr: float = 0.05,
        seed: int = 0,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
    ) -> None:
        super().__init__(
            layers=layers,
            module=module,
            every_n_epochs=every_n_epochs,
            every_n_steps=None,
            log_on_start=False,
            log_at_end=at_end,
            store_dir=store_dir,
            log_to_loggers=log_to_loggers,
        )
        if objective not in ("mean", "center"):
            raise ValueError(
                f"FeatureVisualization: `objective` must be 'mean' or 'center'; got {objective!r}"
            )
        if param not in ("fourier", "pixel"):
            raise ValueError(
                f"FeatureVisualization: `param` must be 'fourier' or 'pixel'; got {param!r}"
            )
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"FeatureVisualization: `steps` must be a positive int; got {steps!r}")
        if not lr > 0:
            raise ValueError(f"FeatureVisualization: `lr` must be > 0; got {lr!r}")
        if not isinstance(max_channels, int) or max_channels < 1:
            raise ValueError(
                f"FeatureVisualization: `max_channels` must be a positive int; got {max_channels!r}"
            )
        if channels is not None and (
            isinstance(channels, (str, int))
            or not all(isinstance(c, int) and c >= 0 for c in channels)
        ):
            raise ValueError(
                "FeatureVisualization: `channels` must be a list of channel indices or None"
            )
        self.channels = None if channels is None else list(channels)
        self.max_channels = max_channels
        self.objective = objective
        self.param = param
        self.steps = steps
        self.lr = lr
        self.seed = seed

    def _channel_counts(self, shape: Sequence[int]) -> dict[str, int]:
        """Channels of every selected layer, from one guarded forward of a zero image."""
        import torch

        from cnnviz.analysis.capture import capture_activations

        x = torch.zeros(1, *shape, device=self.module_device(self.target))
        names = [i.name for i in self.selected]
        results, _ = capture_activations(self.target, x, names, max_channels=1, max_size=1)
        return {n: r.shape[1] for n, r in results.items()}

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:
            return
        from cnnviz.analysis.featvis import visualize_channels

        dm = getattr(trainer, "datamodule", None)
        shape = getattr(self.target, "expected_input_shape", None) or getattr(
            dm, "input_shape", None
        )
        if shape is None:  # a plain model: read the shape off one validation sample
            from cnnviz.callbacks.probe import resolve_probe

            shape = tuple(resolve_probe(trainer, None, 1, "FeatureVisualization").x.shape[1:])
        if shape is None or len(shape) != 3 or getattr(dm, "task", "image") == "text":
            if self.events <= 1:
                rank_zero_warn(
                    "FeatureVisualization: skipped; it optimises image inputs [C, H, W] and "
                    f"this model's input is {shape} (token models cannot be optimised this way)"
                )
            return
        mean = getattr(dm, "mean", None)
        std = getattr(dm, "std", None)
        counts = self._channel_counts(shape)
        for info in self.selected:
            if self.channels is not None:
                chosen = [c for c in self.channels if c < counts[info.name]]
            else:
                chosen = list(range(min(counts[info.name], self.max_channels)))
            result = visualize_channels(
                self.target,
                info.name,
                chosen,
                input_shape=shape,
                objective=self.objective,
                mean=mean,
                std=std,
                param=self.param,
                steps=self.steps,
                lr=self.lr,
                seed=self.seed,
            )
            images, acts, chans = result.images, result.activations, result.channels
            arrays: dict[str, Any] = {
                "images": images.permute(0, 2, 3, 1).numpy().astype(np.float16),
                "activations": acts.numpy(),
            }
            self.write(
                "featvis",
                arrays,
                event,
                layer=info.name,
                meta={
                    "channels": list(chans),
                    "objective": self.objective,
                    "param": self.param,
                    "steps": self.steps,
                    "seconds": result.seconds,
                },
            )
