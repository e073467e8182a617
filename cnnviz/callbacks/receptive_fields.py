"""``ReceptiveFields``: the layer table, how far each unit sees, and its effective field."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
from typing_extensions import override

from cnnviz.analysis.layer_table import LayerRow, layer_table
from cnnviz.analysis.layers import select_layers
from cnnviz.analysis.modelio import ModelIOError, Spec
from cnnviz.analysis.parts import part_of
from cnnviz.analysis.receptive_field import (
    ReceptiveField,
    effective_receptive_field,
)
from cnnviz.callbacks.base import Event, VizCallback, check_count, spread
from cnnviz.callbacks.budget import DEFAULT_SHARE, Plan
from cnnviz.callbacks.probe import Probe, check_probe_argument
from cnnviz.figures.mosaic import normalise, to_uint8_rgb
from cnnviz.figures.receptive_field import erf_figure
from cnnviz.loggers import log_figure, wants_figures
from cnnviz.recording import (
    centre_unit,
    erf_record,
    layer_table_record,
    receptive_field_record,
)

__all__ = ["ReceptiveFields"]

# What can go wrong in an analysis of an arbitrary model: reported, never fatal to training.
_ANALYSIS_ERRORS = (
    ValueError,
    RuntimeError,
    TypeError,
    NotImplementedError,
    IndexError,
    KeyError,
    AttributeError,
)


class ReceptiveFields(VizCallback):
    """Record the layer table, each layer's receptive field and the effective receptive field.

    At the first event the store gets (rank zero only) one ``layer_table`` record — the
    lecture's arithmetic for every conv and pooling layer (output size written out, weight
    count written out, receptive field size and jump) — and one ``receptive_field`` record per
    selected layer: size, jump, start, the chosen unit and its input region (clipped to the
    image and unclipped), whether misaligned paths merge there, and a probe image to draw the
    region on. At every event each ERF layer gets an ``erf`` record: the mean absolute input
    gradient of the unit over the probe images (Luo et al. 2016), its radius, sigma and ratio
    to the theoretical field, so its growth over training can be followed.

    Nothing here changes training: the analyses run under :func:`cnnviz.analysis.guard.observe`
    (eval mode, RNG forked, parameters' ``.grad`` untouched, modes restored) and the probe is
    taken by index. 1-D models (sentence CNNs) get 1-D fields; their ERF maps are stored as
    ``[1, L]``. A model whose receptive fields cannot be computed (untraceable forward, an
    upsampling layer...) gets one warning and the records that are still possible (the table
    without fields, the ERF without its theoretical comparison); training is never stopped.

    Args:
        layers: Layers for ``receptive_field`` records (names or glob patterns; default: every
            conv and pooling layer). The table always covers every layer.
        module: Submodule to analyse (default: the LightningModule).
        every_n_epochs: ERF every n epochs (default 1).
        every_n_steps: ERF every n optimizer steps.
        probe: Inputs or ``(inputs, labels)``; default: the first ``num_probe`` validation
            samples. Its shape is the input shape of the table.
        num_probe: Probe size when taken from the data (the ERF averages over it).
        erf: Record effective receptive fields.
        erf_layers: Layers for the ERF (names or patterns); default: up to six evenly spaced
            selected layers, always the last.
        unit: The unit to describe: ``(i, j)`` (or ``(i,)``) for every layer, or a mapping
            ``{layer: unit}``; default (and for layers not in the mapping) the unit whose field
            is centred on the input.
        log_on_start: Also record before training (the ERF at initialisation).
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        log_to_loggers: Send ERF maps to the trainer's loggers.
        probe_input: Where the input is in a batch (key, index or function; shared by all
            cnnviz callbacks).
        budget: Share of the fit's time cnnviz may take; at the default ``erf_layers`` and
            ``num_probe`` this callback measures fewer layers and images to stay within its
            part. ``None``: no budget.
        strict: Raise on failures instead of warning (tests).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range; in ``setup``, if a layer name is unknown
            (the message lists the valid ones).

    Example:
        >>> trainer = Trainer(callbacks=[ReceptiveFields(), TopActivations()])
    """

    layer_kind = "all"

    def __init__(
        self,
        *,
        layers: str | Sequence[str] | None = None,
        module: str | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        probe: Any = None,
        num_probe: int = 8,
        erf: bool = True,
        erf_layers: str | Sequence[str] | None = None,
        unit: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
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
        check_count("ReceptiveFields", "num_probe", num_probe)
        if probe is not None:
            check_probe_argument("ReceptiveFields", probe)
        if not isinstance(erf, bool):
            raise TypeError(f"ReceptiveFields: `erf` must be True or False; got {erf!r}")
        if erf_layers is not None and not isinstance(erf_layers, (str, list, tuple)):
            raise TypeError("ReceptiveFields: `erf_layers` must be a name, a pattern or a list")
        self.unit = self._check_unit(unit)
        self.probe = probe
        self.num_probe = num_probe
        self.erf = erf
        self.erf_layers = erf_layers
        self._erf_names: list[str] = []
        self._rfs: dict[str, ReceptiveField] = {}
        self._units: dict[str, tuple[int, ...]] = {}
        self._rf_tried = False
        self._static_done = False
        self._input_parts: list[str] | None = None
        self._whole_failed = False

    @staticmethod
    def _check_unit(unit: Any) -> Any:
        def ok(u: Any) -> bool:
            return (
                isinstance(u, (tuple, list))
                and 1 <= len(u) <= 2
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in u)
            )

        if unit is None:
            return None
        if isinstance(unit, Mapping):
            bad = {k: v for k, v in unit.items() if not isinstance(k, str) or not ok(v)}
            if bad:
                raise TypeError(
                    f"ReceptiveFields: `unit` maps layer names to (i, j) or (i,); bad: {bad}"
                )
            return {k: tuple(v) for k, v in unit.items()}
        if not ok(unit):
            raise TypeError(
                f"ReceptiveFields: `unit` must be (i, j), (i,) or {{layer: unit}}; got {unit!r}"
            )
        return tuple(unit)

    @override
    def _state_fields(self) -> dict[str, Any]:
        return {**super()._state_fields(), "erf_layers": self.erf_layers}

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"static_done": self._static_done}

    @override
    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._static_done = bool(state.get("static_done", False))

    @override
    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = [info.name for info in self.selected]
        if isinstance(self.unit, dict):
            unknown = sorted(set(self.unit) - set(names))
            if unknown:
                raise ValueError(
                    f"ReceptiveFields: `unit` names layer(s) {unknown} that are not selected; "
                    f"selected layers are: {', '.join(names)}"
                )
        if not self.erf:
            self._erf_names = []
        elif self.erf_layers is None:
            self._erf_names = spread(names, 6)
        else:
            chosen = select_layers(self.target, self.erf_layers, "all", owner="ReceptiveFields")
            self._erf_names = [info.name for info in chosen]

    def _warn(self, key: str, message: str) -> None:
        self.warn_once(key, message)

    def _ensure_probe(self, trainer: pl.Trainer) -> Probe | None:
        """The probe, or ``None`` without data (the table can still use the declared shape)."""
        if self._probe is None and self.session is not None and "probe" not in self._warned:
            try:
                self._probe = self.session.probe(trainer, self.probe, self.num_probe, self.name)
                self.model_io = self.session.io(self.target, self._probe)
            except (ValueError, ModelIOError) as err:
                self._warn("probe", f"{err}; no effective receptive field or region image")
                self._probe = None
        return self._probe

    @override
    def plans(self, trainer: pl.Trainer, event: Event) -> list[Plan]:
        """Fewer ERF layers (when ``erf_layers`` is at its default), then fewer probe images."""
        names = self._erf_names
        layer_options = [names]
        if self.erf_layers is None and len(names) > 1:
            layer_options += [spread(names, 3), spread(names, 1)]
        n = self.num_probe
        image_options = [n] + ([k for k in (4, 1) if k < n] if n == 8 else [])
        plans = []
        for count in image_options:
            for layers in dict.fromkeys(tuple(x) for x in layer_options):
                cuts = []
                if len(layers) < len(names):
                    cuts.append(
                        f"measures the effective field of {len(layers)} of {len(names)} layers"
                    )
                if count < n:
                    cuts.append(f"averages the effective field over {count} of {n} probe images")
                units = 1 + count * len(layers)
                plans.append(
                    Plan({"erf_layers": list(layers), "images": count}, units, tuple(cuts))
                )
        plans.sort(key=lambda p: -p.units)
        return plans

    @override
    def prior_seconds_per_unit(self) -> float | None:
        assert self.session is not None
        return self.session.unit_seconds.get("backward")

    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None:  # only global rank zero analyses and writes; no collective
            return
        probe = self._ensure_probe(trainer)
        shape = tuple(probe.x.shape[1:]) if probe is not None else None
        shape = shape or getattr(self.target, "expected_input_shape", None)
        if shape is None:
            self._warn("shape", "no probe and no `expected_input_shape`: nothing to analyse")
            return
        shape = tuple(int(v) for v in shape)
        if not self._rf_tried:  # once: tracing the model is not free
            self._rf_tried = True
            self._rfs = self._fields(shape, probe)
        if not self._static_done and not self.store.records("layer_table", source=self.state_key):
            self._write_static(event, shape, probe)
        self._static_done = True
        if probe is not None and self.model_io is not None:
            self._write_erf(trainer, event, probe)

    # -- the whole model, or the parts of it that see the input -----------------------------
    def _whole(self) -> bool:
        """Whether the watched module's forward takes the input tensor."""
        return self.model_io is None or self.model_io.call == "input"

    def _parts(self, probe: Probe | None) -> list[str]:
        """The parts of the module analysed instead of the whole (empty: the whole)."""
        return self._input_parts or []

    def _fields(self, shape: tuple[int, ...], probe: Probe | None) -> dict[str, ReceptiveField]:
        """Receptive fields of the whole model, else of its parts that see the input."""
        assert self.session is not None
        fields, first, parts = self.session.fields(self.target, shape, probe, self.model_io)
        self._input_parts = parts
        self._whole_failed = bool(parts) or first is not None
        if not fields:
            why = first or "the model's forward takes the whole batch"
            self._warn(
                "rf",
                f"no theoretical receptive fields for this model: {why}. Pass `module=` for the "
                "submodule that takes the input tensor",
            )
        elif parts:
            self._warn(
                "rf-parts",
                f"receptive fields of {', '.join(parts)} only (the parts that see the input): "
                f"the whole module cannot be traced ({first or 'its forward takes the batch'})",
            )
        return fields

    def _unit_for(self, name: str, rf: ReceptiveField) -> tuple[int, ...]:
        wanted = self.unit.get(name) if isinstance(self.unit, dict) else self.unit
        if wanted is None:
            return centre_unit(rf)
        if len(wanted) != rf.ndim or not all(
            i < n for i, n in zip(wanted, rf.output_spatial, strict=True)
        ):
            raise ValueError(
                f"ReceptiveFields: `unit` {tuple(wanted)} is outside layer {name!r}'s output "
                f"{tuple(rf.output_spatial)}; pass {{layer: unit}} with a unit inside it"
            )
        return tuple(wanted)

    def _write_static(self, event: Event, shape: tuple[int, ...], probe: Probe | None) -> None:
        rows: list[LayerRow] = []
        error: Exception | None = None
        if self._whole() and not self._whole_failed:
            try:
                rows = layer_table(self.target, shape, receptive_field=False)
            except _ANALYSIS_ERRORS as err:
                error = err
        if not rows:
            for part in self._parts(probe):
                try:
                    sub = layer_table(self.target.get_submodule(part), shape, receptive_field=False)
                except _ANALYSIS_ERRORS as err:
                    error = error or err
                    continue
                rows += [dataclasses.replace(r, name=f"{part}.{r.name}") for r in sub]
        if not rows and error is not None:
            self._warn("table", f"no layer table for input shape {shape}: {error}")
        if rows:
            self.put(layer_table_record(rows, self._rfs), event)
        display = probe.display if probe is not None else None
        for info in self.selected:
            rf = self._rfs.get(info.name)
            if rf is None:
                continue
            unit = self._units.setdefault(info.name, self._unit_for(info.name, rf))
            image = display[0] if display is not None and rf.ndim == 2 else None
            self.put(receptive_field_record(rf, unit=unit, image=image), event, layer=info.name)

    def _write_erf(self, trainer: pl.Trainer, event: Event, probe: Probe) -> None:
        count = int(self.plan.settings.get("images", len(probe.x)))
        x = self.probe_inputs()[:count]
        figures = self.log_to_loggers and wants_figures(trainer.loggers)
        for name in self.plan.settings.get("erf_layers", self._erf_names):
            rf = self._rfs.get(name)
            unit = self._units.get(name)
            if unit is None and rf is not None:
                unit = self._units.setdefault(name, self._unit_for(name, rf))
            model, local_name = self.target, name
            if not self._whole() or self._whole_failed:
                part = part_of(name, self._parts(probe))
                if part is None:
                    self._warn(
                        f"erf:{name}",
                        f"no effective receptive field for {name!r}: it is not in a part of the "
                        "model that takes the input tensor; pass `module=`",
                    )
                    continue
                model, local_name = self.target.get_submodule(part), name[len(part) + 1 :]
            theo = None
            if rf is not None:
                theo = rf if model is self.target else dataclasses.replace(rf, name=local_name)
            try:
                res = effective_receptive_field(model, local_name, x, unit=unit, theoretical=theo)
            except _ANALYSIS_ERRORS as err:
                self._warn(f"erf:{name}", f"no effective receptive field for {name!r}: {err}")
                continue
            record = erf_record(res)
            emap = record.map
            region = None if record.region is None else list(record.region)
            self.put(record, event, layer=name)
            if self.log_to_loggers and trainer.loggers:
                log_figure(
                    trainer.loggers,
                    f"cnnviz/erf/{name}",
                    step=event.step,
                    image=partial(_erf_image, emap),
                    submit=self.store.submit if self.store is not None else None,
                    figure=(
                        partial(
                            erf_figure,
                            [emap],
                            [event.label],
                            layer=name,
                            radius=[res.radius],
                            region=region,
                        )
                        if figures
                        else None
                    ),
                )


def _erf_image(emap: np.ndarray) -> np.ndarray:
    """An ERF map as an ``[H, W, 3]`` uint8 grey image (for TensorBoard)."""
    return to_uint8_rgb(normalise(emap))
