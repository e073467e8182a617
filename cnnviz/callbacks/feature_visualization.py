"""``FeatureVisualization``: the image each filter wants to see, optimised from noise."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from typing_extensions import override

from cnnviz._checks import check_count, check_number
from cnnviz.analysis.modelio import ModelIO, Spec
from cnnviz.callbacks.base import Event, VizCallback, layer_options
from cnnviz.callbacks.budget import DEFAULT_SHARE, Plan
from cnnviz.callbacks.probe import Probe

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
        probe_input: Where the input is in a batch (key, index or function; shared by all
            cnnviz callbacks).
        budget: Share of the fit's time cnnviz may take; at the default ``steps``,
            ``max_channels`` and ``layers`` this callback optimises fewer steps, channels and
            layers to fit its part, sized from measured step costs. ``None``: no budget.
        strict: Raise on failures instead of warning (tests).

    Needs image inputs ``[N, C, H, W]`` and a model whose ``forward`` takes them; otherwise it
    turns itself off with one warning. Long runs show a progress bar and stop at the next
    layer when the trainer receives SIGTERM (what was done is kept).
    """

    layer_kind = "all"
    needs = frozenset({"probe", "forward", "image"})
    budget_weight = 1.5

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
        lr: float = 0.15,
        seed: int = 0,
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
            every_n_steps=None,
            log_on_start=False,
            log_at_end=at_end,
            store_dir=store_dir,
            log_to_loggers=log_to_loggers,
            probe_input=probe_input,
            budget=budget,
            strict=strict,
        )
        if objective not in ("mean", "center"):
            raise ValueError(
                f"FeatureVisualization: `objective` must be 'mean' or 'center'; got {objective!r}"
            )
        if param not in ("fourier", "pixel"):
            raise ValueError(
                f"FeatureVisualization: `param` must be 'fourier' or 'pixel'; got {param!r}"
            )
        check_count("FeatureVisualization", "steps", steps)
        check_number("FeatureVisualization", "lr", lr, low=0, low_open=True)
        check_count("FeatureVisualization", "max_channels", max_channels)
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
        self._counts: dict[str, int] | None = None

    @override
    def check_model(self, io: ModelIO, probe: Probe) -> str | None:
        problem = super().check_model(io, probe)
        if problem is None and io.call != "input":
            problem = (
                "the model's forward takes the whole batch; feature visualisation optimises "
                "an input tensor: pass `module=` for the submodule that takes the images"
            )
        return problem

    def _channel_counts(self) -> dict[str, int]:
        """Channels of every selected layer, from one guarded forward of the probe."""
        if self._counts is None:
            from cnnviz.analysis.stages import layer_shapes

            x = self.probe_inputs()[:1]
            names = [i.name for i in self.selected]
            shapes = layer_shapes(self.target, names, lambda: self.target(x))
            self._counts = {n: s[1] for n, s in shapes.items()}
        return self._counts

    @override
    def plans(self, trainer: pl.Trainer, event: Event) -> list[Plan]:
        """Fewer steps (at the default 256), channels (at the default 16), then layers."""
        counts = self._channel_counts()
        names = [i.name for i in self.selected if i.name in counts]
        step_options = [self.steps] + ([128, 64, 32] if self.steps == 256 else [])
        channel_options = [self.max_channels]
        if self.channels is None and self.max_channels == 16:
            channel_options += [8, 4]
        plans = []
        for layers in layer_options(names, self._auto_layers, 1):
            for channels in channel_options:
                for steps in step_options:
                    width = sum(
                        len(self.channels or [])
                        if self.channels is not None
                        else min(counts[n], channels)
                        for n in layers
                    )
                    cuts = []
                    if steps != self.steps:
                        cuts.append(f"optimises {steps} of {self.steps} steps")
                    if channels != self.max_channels:
                        cuts.append(f"{channels} of {self.max_channels} channels per layer")
                    if len(layers) < len(names):
                        cuts.append(f"{len(layers)} of {len(names)} layers")
                    plans.append(
                        Plan(
                            {"layers": layers, "channels": channels, "steps": steps},
                            steps * width,
                            tuple(cuts),
                        )
                    )
        plans.sort(key=lambda p: -p.units)
        return plans

    @override
    def prior_seconds_per_unit(self) -> float | None:
        assert self.session is not None
        return self.session.unit_seconds.get("backward")

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:
            return
        from cnnviz.analysis.featvis import visualize_layers
        from cnnviz.callbacks.progress import Progress

        assert self.model_io is not None
        dm = getattr(trainer, "datamodule", None)
        shape = self.model_io.input_shape
        mean = getattr(dm, "mean", None)
        std = getattr(dm, "std", None)
        counts = self._channel_counts()
        names = self.plan.settings.get("layers", [i.name for i in self.selected])
        max_channels = self.plan.settings.get("channels", self.max_channels)
        steps = self.plan.settings.get("steps", self.steps)
        names = [n for n in names if n in counts]
        channels: dict[str, list[int]] = {}
        for name in names:
            if self.channels is not None:
                channels[name] = [c for c in self.channels if c < counts[name]]
            else:
                channels[name] = list(range(min(counts[name], max_channels)))
        total = sum(-(-len(c) // max(1, len(c))) * steps for c in channels.values())
        with Progress(trainer, "feature visualisation", total=total, unit="step") as bar:
            done = [0]

            def progress(count: int) -> None:
                bar.update(count - done[0])
                done[0] = count

            results = visualize_layers(
                self.target,
                names,
                channels,
                input_shape=shape,
                objective=self.objective,
                mean=mean,
                std=std,
                param=self.param,
                steps=steps,
                lr=self.lr,
                seed=self.seed,
                should_stop=bar.stop_requested,
                progress=progress,
            )
        if len(results) < len(names) or any(r.stopped for r in results.values()):
            self.warn_once(
                "stopped",
                f"stopped after {len(results)} of {len(names)} layers: the trainer was asked "
                "to stop (SIGTERM); what was done is kept",
            )
        for name, result in results.items():
            if not len(result.channels):
                continue
            arrays: dict[str, Any] = {
                "images": result.images.permute(0, 2, 3, 1).numpy(),
                "activations": result.activations.numpy(),
            }
            readout = result.readout
            conv = readout is not None and readout.kind == "conv"
            self.write(
                "featvis",
                arrays,
                event,
                layer=name,
                meta={
                    "channels": list(result.channels),
                    "objective": self.objective,
                    "param": self.param,
                    "steps": steps,
                    "seconds": result.seconds,
                    "stage": readout.stage if conv else None,
                    "read_path": list(readout.path) if conv else [],
                    "units": None if result.units is None else list(result.units),
                    "units_reason": result.units_reason or None,
                    "same_as": result.same_as,
                    "stopped_at": result.stopped_at,
                },
            )
            if self.log_to_loggers and trainer.loggers:
                from functools import partial

                from cnnviz.figures.images import image_mosaic
                from cnnviz.loggers import log_figure

                log_figure(
                    trainer.loggers,
                    f"cnnviz/featvis/{name}",
                    step=event.step,
                    image=partial(lambda a: image_mosaic(a)[0], arrays["images"]),
                    submit=self.store.submit,
                )
