"""``ConceptDissection``: name what each unit detects, and when in training it appears."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset
from typing_extensions import override

from cnnviz._checks import check_choice, check_count, check_number
from cnnviz.analysis.modelio import ModelIO, Spec
from cnnviz.callbacks.base import Event, VizCallback, layer_options
from cnnviz.callbacks.budget import DEFAULT_SHARE, Plan
from cnnviz.callbacks.probe import Probe
from cnnviz.recording import dissection_record

__all__ = ["ConceptDissection"]

_DEFAULT_IMAGES = 512


class _FirstN(Dataset):
    """The first ``n`` samples of a data set, keeping what dissection reads off Shapes data."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset = dataset
        self.n = min(n, len(dataset))
        for name in ("class_names", "mean", "std", "channels"):
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))
        if callable(getattr(dataset, "sample", None)):
            self.sample = lambda i: dataset.sample(i)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.dataset[index]


class ConceptDissection(VizCallback):
    """Label each unit with the concept it detects (Network Dissection, Bau et al. 2017).

    At each event, every selected layer of the model is dissected over a fixed dissection set —
    the first ``num_images`` validation images with per-pixel concept masks: each unit's map
    (read after the conv's norm and activation) is upsampled to the mask size and thresholded
    at its top ``quantile`` (0.5%) over the set, and the unit is labelled with the concept whose
    masks overlap that region best (intersection over union); a unit whose best IoU reaches
    ``iou_threshold`` (0.04, as in the paper) counts as a detector. One streaming pass per event
    (:func:`cnnviz.analysis.dissect.dissect_layers`), bounded memory, on the device, under the
    usual guarantees (eval mode, RNG forked, no ``.grad``, no hook left). The concepts of the set
    are computed once.

    The built-in Shapes data carries its concepts (the shape classes, object edge, interior,
    background, colour bins). Other data: pass ``concepts=`` (a
    :class:`~cnnviz.analysis.concepts.ConceptSource`, e.g. ``LabelMapConcepts`` for
    segmentation label maps or ``MaskConcepts`` for named masks) and ``data=`` (the images);
    without concepts the callback turns itself off with one warning.

    At the end of training the same dissection runs on a randomised copy of the trained model
    (``control``: re-initialised or permuted weights; the user's model is not touched), the
    paper's baseline: what is learned against what is chance. The store gets one ``dissection``
    record per layer and event (the control's with ``control`` set).

    Args:
        layers: Layer names or glob patterns (default: every conv layer; the stage outputs of a
            deep network).
        module: Submodule to dissect (default: the LightningModule).
        every_n_epochs: Dissect every n epochs (default 1).
        data: The dissection images (a ``Dataset`` or re-iterable of batches); default: the
            validation data set.
        concepts: The concept source; default: Shapes concepts for Shapes data.
        num_images: Images of the dissection set (the first ones).
        quantile: The top quantile of each unit's activations that is its region.
        iou_threshold: The IoU that makes a unit a detector.
        control: The randomised control at the end: ``"reinit"``, ``"permute"`` or ``None``.
        batch_size: Images per pass of the model.
        log_on_start: Also dissect the untrained model.
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        probe_input: Where the input is in a batch (shared by all cnnviz callbacks).
        budget: Share of the fit's time cnnviz may take; at the default ``num_images`` and
            ``layers`` this callback dissects fewer images and layers, or skips events, to stay
            within its part. ``None``: no budget.
        strict: Raise on failures instead of warning (tests).

    Example:
        >>> trainer = Trainer(callbacks=[ConceptDissection(layers=["net.features.c3"])])
    """

    layer_kind = "conv"
    needs = frozenset({"probe", "forward", "image"})
    budget_weight = 1.0

    def __init__(
        self,
        *,
        layers: str | Sequence[str] | None = None,
        module: str | None = None,
        every_n_epochs: int | None = 1,
        data: Any = None,
        concepts: Any = None,
        num_images: int = _DEFAULT_IMAGES,
        quantile: float = 0.005,
        iou_threshold: float = 0.04,
        control: Literal["reinit", "permute"] | None = "reinit",
        batch_size: int = 64,
        log_on_start: bool = True,
        store_dir: str | os.PathLike[str] | None = None,
        probe_input: Spec = None,
        budget: float | None = DEFAULT_SHARE,
        strict: bool | None = None,
    ) -> None:
        super().__init__(
            layers=layers,
            module=module,
            every_n_epochs=every_n_epochs,
            every_n_steps=None,
            log_on_start=log_on_start,
            store_dir=store_dir,
            log_to_loggers=False,
            probe_input=probe_input,
            budget=budget,
            strict=strict,
        )
        name = "ConceptDissection"
        check_count(name, "num_images", num_images)
        check_number(name, "quantile", quantile, low=0, high=1, low_open=True)
        check_number(name, "iou_threshold", iou_threshold, low=0, high=1)
        check_count(name, "batch_size", batch_size)
        if control is not None:
            check_choice(name, "control", control, ("reinit", "permute"))
        if concepts is not None and not (
            callable(concepts) and isinstance(getattr(concepts, "concepts", None), tuple)
        ):
            raise TypeError(
                f"{name}: `concepts` must be a ConceptSource (callable, with a `concepts` tuple), "
                "e.g. cnnviz.analysis.concepts.LabelMapConcepts; got "
                f"{type(concepts).__name__}"
            )
        self.data = data
        self.concepts = concepts
        self.num_images = num_images
        self.quantile = float(quantile)
        self.iou_threshold = float(iou_threshold)
        self.control = control
        self.batch_size = batch_size
        self._cached: dict[int, Any] = {}
        self._trainer: pl.Trainer | None = None

    @override
    def _state_fields(self) -> dict[str, Any]:
        return {**super()._state_fields(), "quantile": self.quantile}

    # -- the dissection set ----------------------------------------------------------------
    def _dataset(self, trainer: pl.Trainer) -> Any:
        if self.data is not None:
            return self.data
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and callable(getattr(dm, "dataset", None)):
            return dm.dataset("val")
        from cnnviz.callbacks.probe import first_loader

        loader = first_loader(trainer.val_dataloaders)
        return getattr(loader, "dataset", None)

    @override
    def check_model(self, io: ModelIO, probe: Probe) -> str | None:
        problem = super().check_model(io, probe)
        if problem:
            return problem
        from cnnviz.analysis.dissect import _default_source

        trainer = self._trainer
        data = self._dataset(trainer) if trainer is not None else None
        if data is None:
            return "no dissection images: pass `data=` (images with concept masks)"
        if self.concepts is None and _default_source(_FirstN(data, 1)) is None:
            return (
                "the data has no per-pixel concept masks; pass `concepts=` (a ConceptSource "
                "such as cnnviz.analysis.concepts.LabelMapConcepts) and `data=`"
            )
        return None

    @override
    def prepare(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        super().prepare(trainer)

    def _cached_set(self, trainer: pl.Trainer, count: int) -> Any:
        """The first ``count`` dissection images with their concepts coded (once)."""
        if count not in self._cached:
            from cnnviz.analysis.dissect import cache_concepts

            data = self._dataset(trainer)
            if isinstance(data, Dataset) and hasattr(data, "__len__"):
                data = _FirstN(data, count)
            self._cached[count] = cache_concepts(data, self.concepts, batch_size=self.batch_size)
        return self._cached[count]

    # -- the budget -------------------------------------------------------------------------
    @override
    def plans(self, trainer: pl.Trainer, event: Event) -> list[Plan]:
        """Fewer images (at the default ``num_images``), then fewer layers."""
        names = [i.name for i in self.selected]
        image_options = [self.num_images]
        if self.num_images == _DEFAULT_IMAGES:
            image_options += [256, 128]
        plans = []
        for layers in layer_options(names, self._auto_layers, 2):
            for count in image_options:
                cuts = []
                if count != self.num_images:
                    cuts.append(f"dissects over {count} of {self.num_images} images")
                if len(layers) < len(names):
                    cuts.append(f"dissects {len(layers)} of {len(names)} layers")
                units = count * (1 + 0.25 * len(layers))
                plans.append(Plan({"layers": layers, "images": count}, units, tuple(cuts)))
        plans.sort(key=lambda p: -p.units)
        return plans

    @override
    def prior_seconds_per_unit(self) -> float | None:
        assert self.session is not None
        return self.session.unit_seconds.get("forward")

    # -- the events -------------------------------------------------------------------------
    def _dissect(self, trainer: pl.Trainer, model: torch.nn.Module, control: str = "") -> Any:
        from cnnviz.analysis.dissect import dissect_layers

        names = self.plan.settings.get("layers", [i.name for i in self.selected])
        count = int(self.plan.settings.get("images", self.num_images))
        io = self.model_io
        assert io is not None
        forward = None
        if not io.output_is_scores or io.call != "input":

            def forward(m: torch.nn.Module, x: Any) -> Any:
                return io.forward(m, self.probe_batch.batch, x)

        return dissect_layers(
            model,
            names,
            self._cached_set(trainer, count),
            quantile=self.quantile,
            iou_threshold=self.iou_threshold,
            batch_size=self.batch_size,
            forward=forward,
            control=control,
        )

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:  # rank zero dissects its own pass; no collective
            return
        for name, result in self._dissect(trainer, self.target).items():
            self.put(dissection_record(result), event, layer=name)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            if self.session is not None and self.control is not None and self.events:
                with self.session.budget.charge(self.state_key):
                    self._control(trainer)
        finally:
            super().on_train_end(trainer, pl_module)

    def _control(self, trainer: pl.Trainer) -> None:
        """The paper's baseline: the same dissection of a randomised copy of the model."""
        if self.store is None or self.disabled is not None or self.model_io is None:
            return
        from cnnviz.analysis.dissect import randomised_copy

        try:
            copy = randomised_copy(self.target, mode=self.control or "reinit", seed=0)
            results = self._dissect(trainer, copy, control=self.control or "reinit")
        except Exception as err:
            self.failed(trainer, err, where="the randomised control")
            return
        event = Event("epoch", max(trainer.current_epoch - 1, 0), trainer.global_step)
        for name, result in results.items():
            self.put(dissection_record(result), event, layer=name)
