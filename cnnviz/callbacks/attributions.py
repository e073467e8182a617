"""``Attributions``: which input pixels drive the predictions on the probe images, over training."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from cnnviz.callbacks.base import Event, VizCallback
from cnnviz.callbacks.probe import Probe, check_probe, resolve_probe

__all__ = ["Attributions"]

DEFAULT_METHODS = ("saliency", "integrated_gradients", "smoothgrad", "guided_backprop", "grad_cam")


class Attributions(VizCallback):
    """Captum attributions of the probe images at each event, plus sanity/faithfulness checks.

    At each event, every method in ``methods`` explains the probe batch
    (:func:`cnnviz.analysis.attribution.attribute_many`: eval mode, frozen parameters, forked
    RNG, in-place activations handled, no hook left; methods that cannot run on the model are
    reported, not crashed on). The store gets one ``attributions`` record (a signed ``[N, H, W]``
    map per method) and one ``attribution_checks`` record with, where the data has object masks
    (Shapes), the share of positive attribution inside the mask next to the mask's area share.
    At the end of training it also runs the cascading model-randomisation check of Adebayo et
    al. (2018) for ``check_method``.

    Args:
        methods: Method names (see ``cnnviz.analysis.attribution.available_methods()``).
        target: ``"pred"``, ``"label"`` or a class index.
        probe: Inputs or ``(inputs, labels)``; default: the first ``num_probe`` validation
            samples.
        num_probe: Probe size when taken from the data.
        layer: Grad-CAM layer (default: the last conv/pool layer with spatial output).
        check_method: Method for the randomisation check at the end (``None``: skip it).
        method_kwargs: Per-method Captum options, e.g.
            ``{"integrated_gradients": {"n_steps": 32}}``.
        memory_budget_mb: Memory one attribution pass may use (chooses internal batch sizes).
        module: Submodule to explain (default: the LightningModule).
        every_n_epochs: Explain every n epochs (default 1).
        every_n_steps: Explain every n optimizer steps.
        log_on_start: Also explain the untrained model, so a trained and an untrained model
            can be told apart in the report.
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        log_to_loggers: Send overlays to the trainer's loggers.
    """

    def __init__(
        self,
        *,
        methods: Sequence[str] = DEFAULT_METHODS,
        target: str | int = "pred",
        probe: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
        num_probe: int = 8,
        layer: str | None = None,
        check_method: str | None = "grad_cam",
        method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        memory_budget_mb: float = 256,
        module: str | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_on_start: bool = True,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
    ) -> None:
        super().__init__(
            layers=None,
            module=module,
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            log_on_start=log_on_start,
            store_dir=store_dir,
            log_to_loggers=log_to_loggers,
        )
        from cnnviz.analysis.attribution import available_methods

        valid = available_methods()
        if isinstance(methods, str) or not methods:
            raise ValueError(
                "Attributions: `methods` must be a non-empty list of names from: "
                + ", ".join(valid)
            )
        unknown = [m for m in methods if m not in valid]
        if unknown:
            raise ValueError(
                f"Attributions: unknown method(s) {unknown}; choose from: {', '.join(valid)}"
            )
        if check_method is not None and check_method not in valid:
            raise ValueError(
                f"Attributions: unknown `check_method` {check_method!r}; "
                f"choose from: {', '.join(valid)}"
            )
        if not (target in ("pred", "label") or (isinstance(target, int) and target >= 0)):
            raise ValueError(
                f"Attributions: `target` must be 'pred', 'label' or a class index; got {target!r}"
            )
        if not isinstance(num_probe, int) or num_probe < 1:
            raise ValueError(f"Attributions: `num_probe` must be a positive int; got {num_probe!r}")
        extra = set(method_kwargs or {}) - set(methods)
        if extra:
            raise ValueError(
                f"Attributions: `method_kwargs` names methods not in `methods`: {sorted(extra)}"
            )
        if not memory_budget_mb > 0:
            raise ValueError(
                f"Attributions: `memory_budget_mb` must be > 0; got {memory_budget_mb}"
            )
        self.methods = list(methods)
        self.target_kind = target
        self.probe = probe
        self.num_probe = num_probe
        self.layer = layer
        self.check_method = check_method
        self.method_kwargs = {k: dict(v) for k, v in (method_kwargs or {}).items()}
        self.memory_budget_mb = memory_budget_mb
        self._probe: Probe | None = None

    @override
    def _state_fields(self) -> dict[str, Any]:
        return {**super()._state_fields(), "methods": tuple(self.methods)}

    @override
    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.layer is not None:
            from cnnviz.analysis.layers import resolve_module

            resolve_module(self.target, self.layer, argument="layer")

    @override
    def release(self) -> None:
        self._probe = None

    def _ensure_probe(self, trainer: pl.Trainer) -> Probe:
        if self._probe is None:
            probe = resolve_probe(trainer, self.probe, self.num_probe, "Attributions")
            check_probe(self.target, probe.x, "Attributions")
            if self.target_kind == "label" and probe.y is None:
                raise ValueError(
                    "Attributions: `target='label'` needs labels; pass `probe=(inputs, labels)`"
                )
            self._probe = probe
            self.record_probe(trainer, probe)
        return self._probe

    def _kwargs(self, probe: Probe) -> dict[str, Any]:
        kw: dict[str, Any] = {"target": self.target_kind, "memory_budget_mb": self.memory_budget_mb}
        if probe.y is not None:
            kw["labels"] = probe.y
        if self.layer is not None:
            kw["layer"] = self.layer
        return kw

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:
            return
        from cnnviz.analysis.attribution import AttributionUnavailable, attribute
        from cnnviz.analysis.sanity import mask_share

        probe = self._ensure_probe(trainer)
        x = probe.x.to(self.module_device(self.target))
        maps: dict[str, np.ndarray] = {}
        notes: dict[str, str] = {}
        unavailable: dict[str, str] = {}
        shares: dict[str, list[float]] = {}
        targets: list[int] | None = None
        layers: dict[str, str] = {}
        for method in self.methods:
            try:
                result = attribute(
                    self.target,
                    x,
                    method,
                    **self._kwargs(probe),
                    **self.method_kwargs.get(method, {}),
                )
            except AttributionUnavailable as err:
                unavailable[method] = err.reason
                continue
            a = result.attributions
            summed = a.sum(dim=1) if a.dim() == 4 else a
            maps[method] = summed.float().numpy()
            if targets is None:
                targets = result.targets.tolist()
            if result.note:
                notes[method] = result.note
            if result.layer is not None:
                layers[method] = result.layer
            if probe.masks is not None and a.dim() == 4:
                inside, area = mask_share(a, probe.masks)
                shares[method] = [float(inside.mean()), float(area.mean())]
        if unavailable and self.events <= 1:
            rank_zero_warn(f"Attributions: not available on this model: {unavailable}")
        self.write(
            "attributions",
            maps,
            event,
            meta={
                "methods": list(maps),
                "targets": targets,
                "notes": notes,
                "unavailable": unavailable,
                "layers": layers,
            },
        )
        self.write("attribution_checks", None, event, meta={"mask_share": shares})

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self._randomisation_check(trainer)
        finally:
            super().on_train_end(trainer, pl_module)

    def _randomisation_check(self, trainer: pl.Trainer) -> None:
        if self.store is None or self.check_method is None:
            return
        from cnnviz.analysis.attribution import AttributionUnavailable
        from cnnviz.analysis.sanity import model_randomisation_check

        probe = self._ensure_probe(trainer)
        x = probe.x.to(self.module_device(self.target))
        kwargs = self._kwargs(probe)
        kwargs.pop("memory_budget_mb")
        try:
            result = model_randomisation_check(
                self.target,
                x,
                self.check_method,
                **kwargs,
                **self.method_kwargs.get(self.check_method, {}),
            )
        except AttributionUnavailable as err:
            rank_zero_warn(f"Attributions: randomisation check skipped: {err}")
            return
        # After training, current_epoch counts the finished epochs: label it as the last one.
        event = Event("epoch", max(trainer.current_epoch - 1, 0), trainer.global_step)
        self.write(
            "attribution_checks",
            None,
            event,
            meta={
                "randomisation": {
                    "method": result.method,
                    "layers": result.layers,
                    "spearman": result.spearman_abs,
                    "spearman_signed": result.spearman_signed,
                }
            },
        )
