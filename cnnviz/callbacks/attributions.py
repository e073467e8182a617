"""``Attributions``: which input pixels drive the predictions on the probe images, over training."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from typing_extensions import override

from cnnviz.analysis.modelio import ModelIO, Spec
from cnnviz.callbacks.base import Event, VizCallback, check_count, guarded
from cnnviz.callbacks.budget import DEFAULT_SHARE, Plan
from cnnviz.callbacks.probe import Probe, check_probe_argument

__all__ = ["Attributions"]

DEFAULT_METHODS = ("saliency", "integrated_gradients", "smoothgrad", "guided_backprop", "grad_cam")
DEFAULT_PROBE = 8
# Model evaluations per input of each method at its defaults (what an event costs).
_EXPANSION = {
    "integrated_gradients": ("n_steps", 50),
    "smoothgrad": ("nt_samples", 16),
    "gradient_shap": ("n_samples", 16),
    "occlusion": (None, 49),
    "deeplift": (None, 2),
}


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
        check_steps: The check randomises every layer from the top down, and compares the maps
            at most this many times, at evenly spaced depths (``None``: after every layer).
        faithfulness: At each event, measure each method's deletion and insertion curves
            (Petsiuk et al. 2018) on the probe images against random maps, so the report can
            rank the methods for this model.
        faithfulness_steps: Steps of those curves (the input removed or inserted in this many
            equal parts).
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
        probe_input: Where the input is in a batch (key, index or function; shared by all
            cnnviz callbacks).
        scores: Where the class scores are in the output (key, index or function; shared).
        budget: Share of the fit's time cnnviz may take; at the default ``methods`` and
            ``num_probe`` this callback drops the costliest methods and explains fewer probe
            images to stay within its part. ``None``: no budget.
        strict: Raise on failures instead of warning (tests).

    Needs class scores in the model's output (found automatically or through ``scores=``);
    without them it turns itself off with one warning. Token-id inputs (sentence CNNs) are
    explained per token through the embedding layer.
    """

    layer_kind = "none"
    needs = frozenset({"probe", "forward", "scores"})
    budget_weight = 2.0

    def __init__(
        self,
        *,
        methods: Sequence[str] = DEFAULT_METHODS,
        target: str | int = "pred",
        probe: Any = None,
        num_probe: int = DEFAULT_PROBE,
        layer: str | None = None,
        check_method: str | None = "grad_cam",
        check_steps: int | None = 12,
        faithfulness: bool = True,
        faithfulness_steps: int = 16,
        method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        memory_budget_mb: float = 256,
        module: str | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_on_start: bool = True,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
        probe_input: Spec = None,
        scores: Spec = None,
        budget: float | None = DEFAULT_SHARE,
        strict: bool | None = None,
    ) -> None:
        super().__init__(
            layers=None,
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
            check_probe_argument("Attributions", probe)
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
        check_count("Attributions", "num_probe", num_probe)
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
        check_count("Attributions", "check_steps", check_steps, allow_none=True)
        check_count("Attributions", "faithfulness_steps", faithfulness_steps)
        self.check_method = check_method
        self.check_steps = check_steps
        self.faithfulness = bool(faithfulness)
        self.faithfulness_steps = faithfulness_steps
        self.method_kwargs = {k: dict(v) for k, v in (method_kwargs or {}).items()}
        self.memory_budget_mb = memory_budget_mb

    @override
    def _state_fields(self) -> dict[str, Any]:
        return {**super()._state_fields(), "methods": tuple(self.methods)}

    @override
    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.layer is not None:
            from cnnviz.analysis.layers import resolve_module

            resolve_module(self.target, self.layer, argument="layer")

    @override
    def check_model(self, io: ModelIO, probe: Probe) -> str | None:
        problem = super().check_model(io, probe)
        if problem:
            return problem
        if self.target_kind == "label" and probe.y is None:
            return "`target='label'` needs labels in the probe batch; pass `probe=(inputs, labels)`"
        if io.input_kind == "other":
            return (
                f"it explains image, sequence or token inputs; the model's input has shape "
                f"{tuple(probe.x.shape)}"
            )
        return None

    def _faith_cost(self, methods: Sequence[str]) -> float:
        """Model evaluations of the faithfulness curves, in backward-pass units (about 1/3)."""
        if not self.faithfulness:
            return 0.0
        return 2 * (self.faithfulness_steps + 1) * (len(methods) + 3) / 3

    def _cost(self, methods: Sequence[str]) -> int:
        total = 0
        for method in methods:
            key, default = _EXPANSION.get(method, (None, 1))
            kwargs = self.method_kwargs.get(method, {})
            total += int(kwargs.get(key, default)) if key else default
        return total

    @override
    def plans(self, trainer: pl.Trainer, event: Event) -> list[Plan]:
        """Drop the costliest default methods first, then explain fewer probe images."""
        n = len(self.probe_batch.x)
        method_options = [list(self.methods)]
        if tuple(self.methods) == DEFAULT_METHODS:
            by_cost = sorted(self.methods, key=lambda m: -self._cost([m]))
            kept = list(self.methods)
            for method in by_cost[:-1]:
                kept = [m for m in kept if m != method]
                method_options.append(kept)
        image_options = [n]
        if self.num_probe == DEFAULT_PROBE:
            image_options += [k for k in (4, 2) if k < n]
        faith_options = [self.faithfulness] + ([False] if self.faithfulness else [])
        plans = []
        for count in image_options:
            for methods in method_options:
                for faith in faith_options:
                    cuts = []
                    dropped = [m for m in self.methods if m not in methods]
                    if dropped:
                        cuts.append(f"runs {', '.join(methods)} (drops {', '.join(dropped)})")
                    if count < n:
                        cuts.append(f"explains {count} of {n} probe images")
                    if self.faithfulness and not faith:
                        cuts.append("measures no deletion/insertion curves")
                    extra = self._faith_cost(methods) if faith else 0.0
                    units = count * (self._cost(methods) + 1 + extra)
                    settings = {"methods": methods, "images": count, "faithfulness": faith}
                    plans.append(Plan(settings, units, tuple(cuts)))
        plans.sort(key=lambda p: -p.units)
        return plans

    @override
    def prior_seconds_per_unit(self) -> float | None:
        assert self.session is not None
        return self.session.unit_seconds.get("backward")

    def _inputs(self, count: int | None = None) -> tuple[torch.Tensor, Any, dict[str, Any]]:
        """The probe inputs, the forward function and the keyword arguments of ``attribute``."""
        probe = self.probe_batch
        io = self.model_io
        assert io is not None
        x = self.probe_inputs()
        kw: dict[str, Any] = {"target": self.target_kind}
        if probe.y is not None:
            kw["labels"] = probe.y
        if self.layer is not None:
            kw["layer"] = self.layer
        batch = probe.batch
        if count is not None and count < len(x):
            x, batch = x[:count], _slice_batch(batch, count)
            if "labels" in kw:
                kw["labels"] = kw["labels"][:count]
        forward = io.scores_fn(self.target, batch)
        if forward is not None:
            kw["forward"] = forward
        return x, forward, kw

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:
            return
        from cnnviz.analysis.attribution import AttributionUnavailable, attribute
        from cnnviz.analysis.sanity import mask_share

        probe = self.probe_batch
        self.record_probe(trainer, probe)
        methods = list(self.plan.settings.get("methods", self.methods))
        count = int(self.plan.settings.get("images", len(probe.x)))
        x, _, common = self._inputs(count)
        maps: dict[str, np.ndarray] = {}
        notes: dict[str, str] = {}
        unavailable: dict[str, str] = {}
        shares: dict[str, list[float]] = {}
        targets: list[int] | None = None
        layers: dict[str, str] = {}
        results: dict[str, Any] = {}
        for method in methods:
            try:
                result = attribute(
                    self.target,
                    x,
                    method,
                    **common,
                    memory_budget_mb=self.memory_budget_mb,
                    **self.method_kwargs.get(method, {}),
                )
            except AttributionUnavailable as err:
                unavailable[method] = err.reason
                continue
            results[method] = result
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
                inside, area = mask_share(a, probe.masks[: len(a)])
                shares[method] = [float(inside.mean()), float(area.mean())]
        if unavailable:
            self.warn_once("unavailable", f"not available on this model: {unavailable}")
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
                "input_kind": None if self.model_io is None else self.model_io.input_kind,
            },
        )
        checks: dict[str, Any] = {
            "mask_share": shares if probe.masks is not None else None,
            "masks": probe.masks is not None,
        }
        if self.plan.settings.get("faithfulness", self.faithfulness) and results and targets:
            checks["faithfulness"] = self._faithfulness(x, results, targets, common)
        self.write("attribution_checks", None, event, meta=checks)
        if self.log_to_loggers and trainer.loggers and maps and probe.display is not None:
            from functools import partial

            from cnnviz.loggers import log_figure

            log_figure(
                trainer.loggers,
                "cnnviz/attributions",
                step=event.step,
                image=partial(_overlay_mosaic, probe.display[: len(x)], maps),
                submit=self.store.submit,
            )

    def _faithfulness(
        self,
        x: torch.Tensor,
        results: dict[str, Any],
        targets: list[int],
        common: dict[str, Any],
    ) -> dict[str, Any]:
        """Deletion/insertion curves of each method against random maps (Petsiuk et al. 2018)."""
        from cnnviz.analysis.faithfulness import deletion_insertion

        res = deletion_insertion(
            self.target,
            x,
            results,
            target=torch.as_tensor(targets),
            steps=self.faithfulness_steps,
            forward=common.get("forward"),
            memory_budget_mb=self.memory_budget_mb,
        )

        def curves(c: Any, score: float | None) -> dict[str, Any]:
            return {
                "deletion": c.deletion.mean(0).tolist(),
                "insertion": c.insertion.mean(0).tolist(),
                "deletion_auc": c.mean_deletion_auc,
                "insertion_auc": c.mean_insertion_auc,
                "score": score,
            }

        return {
            "fractions": res.fractions.tolist(),
            "methods": {m: curves(c, res.method_score(m)) for m, c in res.methods.items()},
            "random": curves(res.random, 0.0),
            "random_spread": float(res.random_deletion_auc.float().std()),
            "ranking": [m for m, _ in res.ranking()],
            "score": res.score,
            "deletion_baseline": str(res.settings.get("deletion_baseline")),
            "insertion_baseline": str(res.settings.get("insertion_baseline")),
        }

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            if self.session is not None:
                with self.session.budget.charge(self.state_key):
                    self._randomisation_check(trainer)
        finally:
            super().on_train_end(trainer, pl_module)

    @guarded
    def _randomisation_check(self, trainer: pl.Trainer) -> None:
        if self.store is None or self.check_method is None or self.model_io is None:
            return
        from cnnviz.analysis.attribution import AttributionUnavailable
        from cnnviz.analysis.sanity import model_randomisation_check

        assert self.session is not None
        budget = self.session.budget
        if self.budget is not None and self.events:
            # the check re-runs the method once per randomised layer: is there time left?
            left = budget.allowance(self.state_key, steps_done=trainer.global_step, events_left=1)
            per_event = self.cost.estimate(
                len(self.probe_batch.x) * self._cost([self.check_method])
            )
            layers = sum(
                1 for m in self.target.modules() if next(m.parameters(False), None) is not None
            )
            layers = min(layers, self.check_steps or layers)
            if left is not None and per_event is not None and per_event * layers > left:
                self.note_cut(
                    "skips the end-of-fit randomisation check (no time left in its share)"
                )
                return
        x, _, kwargs = self._inputs()
        try:
            result = model_randomisation_check(
                self.target,
                x,
                self.check_method,
                max_steps=self.check_steps,
                **kwargs,
                **self.method_kwargs.get(self.check_method, {}),
            )
        except AttributionUnavailable as err:
            self.warn_once("randomisation", f"randomisation check skipped: {err}")
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


def _slice_batch(value: Any, count: int) -> Any:
    """The batch of the first ``count`` samples (per-sample tensors sliced)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) >= count:
        return value[:count]
    if isinstance(value, dict):
        return {k: _slice_batch(v, count) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_slice_batch(v, count) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_slice_batch(v, count) for v in value)
    return value


def _overlay_mosaic(display: np.ndarray, maps: dict[str, np.ndarray]) -> np.ndarray:
    """Rows: probe images; columns: the image, then each method's map over it (TensorBoard)."""
    from cnnviz.figures.images import image_mosaic

    tiles = []
    for i, image in enumerate(display):
        rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
        tiles.append(rgb)
        for a in maps.values():
            heat = np.abs(a[i])
            heat = heat / max(float(heat.max()), 1e-12)
            red = np.stack([heat, np.zeros_like(heat), np.zeros_like(heat)], axis=-1)
            tiles.append(np.clip(0.5 * rgb + 0.8 * red, 0, 1))
    return image_mosaic(np.stack(tiles), columns=1 + len(maps))[0]
