"""What every cnnviz callback shares: cadence, layer selection, safety, the budget, state.

Subclasses implement :meth:`VizCallback.log_event`, which the base calls at each logging event
(before training starts, every ``every_n_epochs`` epochs or every ``every_n_steps`` steps). Between
events the hooks below cost an integer comparison.

Never take the user's training down: in ``on_train_start`` each callback checks what it needs
from the model (a tensor forward, class scores, image inputs...) and turns itself off with one
warning naming the reason and the fix when that does not hold; a failure inside an event is a
warning and an ``error`` record (an error card in the report), and after three failures in a row
the callback turns itself off. Only clear misconfiguration (an unknown layer name, a bad
argument) raises — or everything, with ``strict=True`` (or the environment variable
``CNNVIZ_STRICT=1``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from typing_extensions import override

from cnnviz._checks import check_count, check_flag, check_number
from cnnviz.analysis.guard import eager
from cnnviz.analysis.layers import LayerInfo, list_layers, resolve_module, select_layers
from cnnviz.analysis.modelio import (
    ModelIO,
    ModelIOError,
    Spec,
    cast_input,
    model_device,
    scoped,
)
from cnnviz.callbacks.budget import DEFAULT_SHARE, CostModel, Plan
from cnnviz.callbacks.events import (
    DEEP,
    Event,
    budget_default,
    guarded,
    layer_options,
    spread,
    strict_default,
)
from cnnviz.callbacks.outcomes import Outcomes
from cnnviz.callbacks.probe import Probe
from cnnviz.callbacks.session import RunSession, default_store_dir, session_for
from cnnviz.store import RunStore

__all__ = ["DEEP", "Event", "VizCallback", "check_count", "guarded", "layer_options", "spread"]


class VizCallback(Outcomes, Callback):
    """Base of the cnnviz callbacks.

    Args:
        layers: Layer names or glob patterns to watch (``None``: every layer of the callback's
            kind — the stage outputs for a network with more than 12 such layers). Resolved in
            ``setup``; an unknown name raises ``ValueError`` listing the valid ones.
        module: Submodule of the LightningModule to watch, by qualified name (``"net"``), or
            ``None`` for the LightningModule itself.
        every_n_epochs: Log at the end of every n-th training epoch (``None`` or 0: never).
        every_n_steps: Log every n optimizer steps (``None`` or 0: never).
        log_on_start: Also log once before training starts, so the history starts at the
            initial weights.
        log_at_end: Also log once when training ends, unless an event just happened at that
            step (``FeatureVisualization`` logs only then by default).
        store_dir: Where the run store lives; default ``<trainer.log_dir>/cnnviz``.
        log_to_loggers: Also send figures/images to the trainer's loggers.
        probe_input: Where the model input is in a batch: a dict key (``"image"``), an index,
            or a function of the batch. ``None``: found automatically. Shared by all cnnviz
            callbacks of the trainer (set it on any one).
        scores: Where the class scores are in the model's output: a key (``"logits"``), an
            index, or a function of the output. ``None``: found automatically. Shared too.
        budget: The share of the fit's wall time that cnnviz as a whole may take (default
            0.1); the callback then cuts what it does at its default settings to stay within
            its part, and says what it cut. ``None``: no budget — everything, whatever it costs.
            Settings at other values than their defaults are never cut. The environment
            variable ``CNNVIZ_BUDGET`` (a share, or ``off``) changes the default.
        strict: Raise on any failure instead of warning and going on (default ``False``, or
            the environment variable ``CNNVIZ_STRICT=1``).
    """

    #: Which layers the callback watches by default: "conv", "pool", "all" or "none".
    layer_kind: ClassVar[str] = "all"
    #: This callback's part of the shared budget, relative to the others'.
    budget_weight: ClassVar[float] = 1.0
    #: What the callback needs from the model: "probe" (a probe batch), "forward" (to run the
    #: model on it), "scores" (class scores in the output), "float_input" (an input that can be
    #: perturbed or optimised), "image" (inputs [N, C, H, W]).
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        *,
        layers: str | Sequence[str] | None = None,
        module: str | None = None,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_on_start: bool = True,
        log_at_end: bool = False,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
        probe_input: Spec = None,
        scores: Spec = None,
        budget: float | None = DEFAULT_SHARE,
        strict: bool | None = None,
    ) -> None:
        name = type(self).__name__
        for arg, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name}: `{arg}` must be an int or None; got {value!r}")
            if value is not None and value < 0:
                raise ValueError(f"{name}: `{arg}` must be >= 0 (0 or None turns it off)")
        if not every_n_epochs and not every_n_steps and not log_on_start and not log_at_end:
            raise ValueError(
                f"{name}: nothing would ever be logged; set `every_n_epochs`, `every_n_steps` "
                "or `log_on_start=True`"
            )
        if layers is not None and not isinstance(layers, (str, list, tuple)):
            raise TypeError(f"{name}: `layers` must be a name, a pattern or a list of them")
        if module is not None and not isinstance(module, str):
            raise TypeError(f"{name}: `module` must be a submodule name (str) or None")
        for arg, spec in (("probe_input", probe_input), ("scores", scores)):
            if spec is not None and not (
                callable(spec) or isinstance(spec, str) or type(spec) is int
            ):
                raise TypeError(
                    f"{name}: `{arg}` must be a key (str), an index (int), a function or None; "
                    f"got {spec!r}"
                )
        check_number(name, "budget", budget, low=0, high=1, low_open=True, allow_none=True)
        if budget is not None and budget >= 1:
            raise ValueError(f"{name}: `budget` must be a share of the fit's time in (0, 1)")
        if strict is not None:
            check_flag(name, "strict", strict)
        self.layers = layers
        self.module = module
        self.every_n_epochs = every_n_epochs or 0
        self.every_n_steps = every_n_steps or 0
        self.log_on_start = log_on_start
        self.log_at_end = log_at_end
        self.store_dir = None if store_dir is None else str(store_dir)
        self.log_to_loggers = log_to_loggers
        self.probe_input = probe_input
        self.scores = scores
        budget = budget_default(budget)
        self.budget = None if budget is None else float(budget)
        self.strict = strict_default() if strict is None else strict
        self.selected: list[LayerInfo] = []
        self.store: RunStore | None = None
        self.session: RunSession | None = None
        self.disabled: str | None = None
        self.events = 0
        self.plan: Plan = Plan({}, 1.0)
        self.cost = CostModel()
        self.model_io: ModelIO | None = None
        self._probe: Probe | None = None
        self._last_step = -1
        self._resumed_store: str | None = None
        self._resumed_run: str | None = None
        self._target: nn.Module | None = None
        self._state_key: str | None = None
        self._failures = 0
        self._warned: set[str] = set()
        self._said_cuts: tuple[str, ...] = ()
        self._auto_layers = False
        self._resumed = False

    # -- identity and state ----------------------------------------------------------------------
    def _state_fields(self) -> dict[str, Any]:
        return {"layers": self.layers, "module": self.module}

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads the key around every hook call (profiler names): compute it once.
        # The fields are constructor settings, fixed after ``__init__``.
        if self._state_key is None:
            self._state_key = self._generate_state_key(**self._state_fields())
        return self._state_key

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "last_step": self._last_step,
            "store_dir": None if self.store is None else str(self.store.root),
            "run": None if self.session is None else self.session.run_id,
            **self.extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = int(state_dict.get("events", 0))
        self._last_step = int(state_dict.get("last_step", -1))
        self._resumed_store = state_dict.get("store_dir")
        self._resumed_run = state_dict.get("run")
        self.load_extra_state(state_dict)
        # Lightning restores callback state *after* ``setup``; at train start the session
        # continues the checkpoint's history (copied into this fit's store when it differs).
        self._resumed = True

    def extra_state(self) -> dict[str, Any]:
        """Subclass state to checkpoint (plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def target(self) -> nn.Module:
        """The module being watched (valid after ``setup``); an eager view if it is compiled."""
        if self._target is None:
            raise RuntimeError(f"{type(self).__name__} is used before `setup` ran")
        return self._target

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.session = session_for(trainer)
        self.disabled = None
        self._failures = 0
        # Compiled parts are seen through an eager view; a watched submodule keeps its full
        # name ("backbone.0"), as in the user's LightningModule.
        inner = eager(resolve_module(eager(pl_module), self.module, argument="module"))
        self._target = scoped(inner, self.module)
        self.session.register(self)
        if self.layers is None and self.layer_kind != "none":
            kind = {"conv": "conv", "pool": "pooling", "all": "conv or pooling"}[self.layer_kind]
            found = list_layers(self._target, self.layer_kind)  # type: ignore[arg-type]
            if not found:
                self.disable(
                    trainer,
                    f"the model ({type(self._target).__name__}) has no {kind} layer "
                    "(cnnviz watches nn.Conv1d/nn.Conv2d and pooling layers); pass `module=` "
                    "for the submodule that has them",
                )
            self.selected = found
            self._auto_layers = True
        elif self.layer_kind != "none":
            self.selected = select_layers(
                self._target,
                self._qualified(self.layers),
                self.layer_kind,  # type: ignore[arg-type]
                owner=type(self).__name__,
            )
        # Every rank reads trainer.log_dir (it may broadcast), whatever the local file system says.
        default = default_store_dir(trainer) if self.store_dir is None else None
        root = self.store_dir or default
        self.store = self.session.store(root, write=True) if trainer.is_global_zero else None
        if self.disabled is None:
            self.on_setup(trainer, pl_module)

    def _qualified(self, layers: str | Sequence[str]) -> str | list[str]:
        """Names as given, or prefixed with ``module.`` when only that matches (``"0"``)."""
        if not self.module:
            return layers if isinstance(layers, str) else list(layers)
        import fnmatch

        names = [n for n, _ in self.target.named_modules()]
        out = []
        for pattern in [layers] if isinstance(layers, str) else list(layers):
            hits = fnmatch.filter(names, pattern) or [n for n in names if n == pattern]
            out.append(pattern if hits else f"{self.module}.{pattern}")
        return out

    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Subclass hook after layers and store are resolved."""

    # -- what the model needs -------------------------------------------------------------------
    def prepare(self, trainer: pl.Trainer) -> None:
        """Resolve the probe and how to call the model, and check this callback's needs.

        Called once at train start, when the data loaders exist and the model has its final
        device and precision. Turns the callback off (one warning) when the model lacks what
        it needs. A deep network's default layers become its stage outputs here.
        """
        if self.disabled is not None or self.model_io is not None:
            return
        deep = self._auto_layers and len(self.selected) > DEEP
        if not self.needs and not deep:
            return
        assert self.session is not None
        try:
            probe = self.session.probe(
                trainer, getattr(self, "probe", None), getattr(self, "num_probe", 8), self.name
            )
            io = self.session.io(self.target, probe)
        except (ModelIOError, ValueError) as err:
            if self.needs:
                self.disable(trainer, str(err))
            else:  # layers only: spread them evenly without a forward pass
                before = len(self.selected)
                self.selected = spread(self.selected, 8)
                self.note_cut(f"watches {len(self.selected)} of {before} layers (evenly spaced)")
            return
        self._probe, self.model_io = probe, io
        problem = self.check_model(io, probe) if self.needs else None
        if problem:
            self.disable(trainer, problem)
            return
        self.session.calibrate(trainer, self.target, probe, io)
        if deep:
            self._stage_defaults(probe)

    def check_model(self, io: ModelIO, probe: Probe) -> str | None:
        """Why this callback cannot run on the model, or ``None`` (subclasses extend)."""
        if "scores" in self.needs and not io.has_scores:
            return str(io.scores_problem)
        if "image" in self.needs and io.input_kind != "image":
            return (
                f"it needs image inputs [N, C, H, W]; the model's input is "
                f"{io.input_kind} {tuple(probe.x.shape)}"
            )
        if "float_input" in self.needs and io.input_kind == "tokens":
            return "it optimises or perturbs the input, and this model's input is token ids"
        return None

    def _stage_defaults(self, probe: Probe) -> None:
        """Default layers of a deep network: its stage outputs (and the first conv)."""
        from cnnviz.analysis.stages import layer_shapes, stage_layers

        assert self.model_io is not None
        io, target = self.model_io, self.target
        x = cast_input(probe.x, target)
        names = [i.name for i in self.selected]
        shapes = layer_shapes(target, names, lambda: io.forward(target, probe.batch, x))
        convs = [i.name for i in self.selected if i.kind == "conv"]
        keep = set(stage_layers(names, shapes, first=convs[0] if convs else None))
        before = len(self.selected)
        self.selected = [i for i in self.selected if i.name in keep]
        self.note_cut(
            f"watches {len(self.selected)} of {before} layers (the stage outputs of a deep "
            "network); pass `layers=` to choose others"
        )

    @property
    def name(self) -> str:
        """The callback's class name."""
        return type(self).__name__

    @property
    def probe_batch(self) -> Probe:
        """The probe (valid after ``prepare``)."""
        if self._probe is None:
            raise RuntimeError(f"{self.name}: the probe is used before train start")
        return self._probe

    def probe_inputs(self) -> torch.Tensor:
        """The probe input on the model's device, in its dtype and memory format."""
        return cast_input(self.probe_batch.x, self.target)

    # -- cadence --------------------------------------------------------------------------------
    def step_due(self, trainer: pl.Trainer) -> bool:
        """Whether the optimizer step about to happen will be followed by a step event."""
        return bool(self.every_n_steps) and (trainer.global_step + 1) % self.every_n_steps == 0

    def epoch_due(self, trainer: pl.Trainer) -> bool:
        """Whether the current epoch ends with an epoch event."""
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def events_left(self, trainer: pl.Trainer, event: Event) -> int:
        """How many events this callback still expects, the one at hand included."""
        count = 1 if event.tag == "start" else 0
        max_epochs = trainer.max_epochs
        if self.every_n_epochs and max_epochs is not None and max_epochs > 0:
            first = trainer.current_epoch
            count += sum(1 for e in range(first, max_epochs) if (e + 1) % self.every_n_epochs == 0)
        if self.every_n_steps and self.session is not None:
            total = self.session.total_steps(trainer)
            if total is not None:
                count += max(0, total - trainer.global_step) // self.every_n_steps + 1
        if self.log_at_end:
            count += 1
        return max(1, count)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is None or self.disabled is not None:
            return
        with self.session.budget.charge("setup"):
            try:
                self.prepare(trainer)
            except Exception as err:  # never take the fit down for a property of the model
                self.failed(trainer, err, where="on_train_start")
        self.session.budget.start(self.session.total_steps(trainer))
        if self.store is not None:
            if self._resumed:
                self.session.resume(trainer, self._resumed_store, self._resumed_run)
            self.session.record_run(trainer, pl_module, self)
            self.session.start_heartbeat()
        if self.log_on_start and self.events == 0 and trainer.global_step == 0:
            self._fire(trainer, pl_module, Event("start", trainer.current_epoch, 0))

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self._fire(trainer, pl_module, Event("step", trainer.current_epoch, step))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is not None:
            self.session.write_metrics(trainer, self)
        # A step event at this very step already recorded this state (and took its gradients).
        if self.epoch_due(trainer) and trainer.global_step != self._last_step:
            self._fire(
                trainer, pl_module, Event("epoch", trainer.current_epoch, trainer.global_step)
            )

    # -- one event -----------------------------------------------------------------------------
    def plans(self, trainer: pl.Trainer, event: Event) -> list[Plan]:
        """Ways to do this event's work, from everything (first) to the least (last).

        The base offers one plan; subclasses offer cheaper ones along the knobs their user
        left at the defaults.
        """
        return [Plan({}, 1.0)]

    def prior_seconds_per_unit(self) -> float | None:
        """Seconds per work unit before the first event is measured (subclasses)."""
        return None

    def _choose(self, trainer: pl.Trainer, event: Event) -> Plan | None:
        plans = self.plans(trainer, event)
        if self.budget is None or self.session is None:
            return plans[0]
        if self.cost.prior is None:
            self.cost.prior = self.prior_seconds_per_unit()
        self.session.charge_background()
        self.session.budget.reserve = self.session.report_reserve(trainer)
        allowance = self.session.budget.allowance(
            self.state_key,
            steps_done=trainer.global_step,
            events_left=self.events_left(trainer, event),
        )
        return self.session.budget.choose(plans, self.cost, allowance)

    def _fire(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        self._last_step = event.step
        if self.disabled is not None or self.session is None:
            return
        budget = self.session.budget
        with budget.charge(self.state_key):
            try:
                plan = self._choose(trainer, event)
                if plan is None:
                    self._postponed(event)
                    return
                self.plan = plan
                if plan.cuts:
                    self.note_cut(*plan.cuts, event=event)
                begin = budget.clock()
                self.events += 1
                self.log_event(trainer, pl_module, event)
                self.cost.observe(plan.units, budget.clock() - begin)
                self._failures = 0
            except Exception as err:
                self.failed(trainer, err, where=f"the {event.label} event", event=event)

    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        """Record what the callback watches at ``event`` (subclasses)."""
        raise NotImplementedError

    # -- the end --------------------------------------------------------------------------------
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.log_at_end and trainer.global_step != self._last_step:
            # After training, current_epoch counts the finished epochs: label it the last one.
            epoch = max(trainer.current_epoch - 1, 0)
            self._fire(trainer, pl_module, Event("epoch", epoch, trainer.global_step))
        if self.store is not None:  # before Lightning finalizes the loggers
            late = self.store.flush(raise_errors=False)
            if late is not None:
                self.failed(trainer, late, where="a store write")  # type: ignore[arg-type]

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.release()
        if self.session is not None:
            self.session.finish(trainer, self, error=None)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning does not call teardown when fit raises. cnnviz holds no hook between
        # events, so only the record of the failure and the report are left to write.
        self.release()
        if self.session is not None:
            self.session.finish(trainer, self, error=exception)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.release()
        if self.store is not None:
            self.store.flush(raise_errors=False)

    def release(self) -> None:
        """Drop references to device tensors and hooks held between events (subclasses)."""

    # -- helpers for subclasses ------------------------------------------------------------------
    def write(self, kind: str, arrays: dict[str, Any] | None, event: Event, **kw: Any) -> None:
        """Write a record to the store (rank zero only; a no-op elsewhere)."""
        if self.store is None:
            return
        if self.session is not None:
            self.session.records_written += 1
        meta = {**event.meta(), **kw.pop("meta", {})}
        self.store.write_async(  # encoded and written off the training thread
            kind,
            arrays,
            source=self.state_key,
            epoch=event.epoch,
            step=event.step,
            meta=meta,
            **kw,
        )

    def put(self, record: Any, event: Event, *, layer: str | None = None) -> None:
        """Write a typed record (:mod:`cnnviz.store.records`) at ``event`` (rank zero only)."""
        if self.store is None:
            return
        if self.session is not None:
            self.session.records_written += 1
        self.store.put_async(  # validated now, encoded and written off the training thread
            record,
            writer=self.state_key,
            layer=layer,
            epoch=event.epoch,
            step=event.step,
            event=event.tag,
            label=event.label,
        )

    def record_probe(self, trainer: pl.Trainer, probe: Probe) -> None:
        """Write ``probe`` to the store once: skipped when the store already holds the same inputs.

        Several callbacks share one probe record (the first to need it writes it), and a resumed
        run continues its store without a duplicate.
        """
        if self.store is None:
            return
        import numpy as np

        x = probe.x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
        for record in reversed(self.store.records("probe")):
            stored = self.store.load(record).get("x")
            if stored is not None and stored.shape == x.shape and np.array_equal(stored, x):
                return
        from cnnviz.recording import probe_record

        record = probe_record(
            probe.x,
            y=probe.y,
            display=probe.display,
            masks=probe.masks,
            class_names=probe.class_names,
        )
        if probe.vocabulary is not None:
            record = dataclasses.replace(record, vocabulary=tuple(probe.vocabulary))
        self.put(record, Event("start", trainer.current_epoch, trainer.global_step))

    @staticmethod
    def module_device(module: nn.Module) -> torch.device:
        """The device of ``module``'s first parameter or buffer (CPU if it has none)."""
        return model_device(module)
