"""What every cnnviz callback shares: cadence, layer selection, the run store, rank zero, state.

Subclasses implement :meth:`VizCallback.log_event`, which the base calls at each logging event
(before training starts, every ``every_n_epochs`` epochs or every ``every_n_steps`` steps). Between
events the hooks below cost an integer comparison.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from cnnviz.analysis.layers import LayerInfo, LayerKind, resolve_module, select_layers
from cnnviz.callbacks.probe import Probe
from cnnviz.store import RunStore

__all__ = ["Event", "VizCallback", "check_count", "store_for"]

_STORES: dict[str, RunStore] = {}
_METRICS_WRITTEN: dict[str, tuple[int, int]] = {}  # store root -> (epoch, step) last written


def store_for(root: str | os.PathLike[str]) -> RunStore:
    """The shared :class:`RunStore` of ``root`` (one instance per directory and process)."""
    key = str(Path(root).resolve())
    if key not in _STORES:
        _STORES[key] = RunStore(key)
    return _STORES[key]


def default_store_dir(trainer: pl.Trainer) -> str:
    """``<trainer.log_dir>/cnnviz``, or ``<default_root_dir>/cnnviz`` without a logger.

    ``trainer.log_dir`` may broadcast under DDP, so this must be called on every rank.
    """
    log_dir = trainer.log_dir or trainer.default_root_dir
    return os.path.join(log_dir, "cnnviz")


def check_count(owner: str, argument: str, value: Any, *, allow_none: bool = False) -> None:
    """Raise unless ``value`` is a positive int (or ``None`` when ``allow_none``).

    Raises:
        TypeError: For a value that is not an int (``bool`` included).
        ValueError: For an int below 1.
    """
    if value is None and allow_none:
        return
    expected = "a positive int or None" if allow_none else "a positive int"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{owner}: `{argument}` must be {expected}; got {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: `{argument}` must be {expected}; got {value!r}")


class Event:
    """When a logging event happens: ``tag`` is ``start``, ``epoch`` or ``step``."""

    __slots__ = ("epoch", "label", "step", "tag")

    def __init__(self, tag: str, epoch: int, step: int) -> None:
        self.tag = tag
        self.epoch = epoch
        self.step = step
        self.label = {"start": "start", "epoch": f"epoch {epoch + 1}", "step": f"step {step}"}[tag]

    def meta(self) -> dict[str, Any]:
        """The event as record metadata."""
        return {"event": self.tag, "label": self.label}


class VizCallback(Callback):
    """Base of the cnnviz callbacks.

    Args:
        layers: Layer names or glob patterns to watch (``None``: every layer of the callback's
            kind). Resolved in ``setup``; an unknown name raises ``ValueError`` listing the valid
            ones.
        module: Submodule of the LightningModule to watch, by qualified name (``"net"``), or
            ``None`` for the LightningModule itself.
        every_n_epochs: Log at the end of every n-th training epoch (``None`` or 0: never).
        every_n_steps: Log every n optimizer steps (``None`` or 0: never).
        log_at_end: Also log once when training ends, unless an event just happened at that
            step (``FeatureVisualization`` logs only then by default).
        log_on_start: Also log once before training starts, so the history starts at the
            initial weights.
        store_dir: Where the run store lives; default ``<trainer.log_dir>/cnnviz``.
        log_to_loggers: Also send figures/images to the trainer's loggers.
    """

    #: Which layers the callback watches by default: "conv", "pool" or "all".
    layer_kind: LayerKind = "all"

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
        self.layers = layers
        self.module = module
        self.every_n_epochs = every_n_epochs or 0
        self.every_n_steps = every_n_steps or 0
        self.log_on_start = log_on_start
        self.log_at_end = log_at_end
        self.store_dir = None if store_dir is None else str(store_dir)
        self.log_to_loggers = log_to_loggers
        self.selected: list[LayerInfo] = []
        self.store: RunStore | None = None
        self.events = 0
        self._last_step = -1
        self._resumed_store: str | None = None
        self._target: nn.Module | None = None
        self._state_key: str | None = None

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
            **self.extra_state(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = int(state_dict.get("events", 0))
        self._last_step = int(state_dict.get("last_step", -1))
        self._resumed_store = state_dict.get("store_dir")
        self.load_extra_state(state_dict)
        # Lightning restores callback state *after* ``setup``: a resumed run continues the
        # history of the store named in the checkpoint (when it still exists), not a new one
        # under the new run's log_dir. Run facts are written at train start, after this.
        resumed = self._usable_resumed_store()
        if self.store is not None and self.store_dir is None and resumed is not None:
            self.store = store_for(resumed)

    def _usable_resumed_store(self) -> str | None:
        root = self._resumed_store
        return root if root is not None and os.path.isdir(root) else None

    def extra_state(self) -> dict[str, Any]:
        """Subclass state to checkpoint (plain values)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def target(self) -> nn.Module:
        """The module being watched (valid after ``setup``)."""
        if self._target is None:
            raise RuntimeError(f"{type(self).__name__} is used before `setup` ran")
        return self._target

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._target = resolve_module(pl_module, self.module, argument="module")
        self.selected = select_layers(
            self._target, self.layers, self.layer_kind, owner=type(self).__name__
        )
        # Every rank reads trainer.log_dir (it may broadcast), whatever the local file system says.
        default = default_store_dir(trainer) if self.store_dir is None else None
        root = self.store_dir or self._usable_resumed_store() or default
        self.store = store_for(root) if trainer.is_global_zero else None
        self.on_setup(trainer, pl_module)

    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Subclass hook after layers and store are resolved."""

    def _record_run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the run-level facts (at train start: after a checkpoint's state is loaded)."""
        if self.store is not None:
            from cnnviz.analysis.layers import list_layers

            dm = getattr(trainer, "datamodule", None)
            self.store.update_run(
                status="running",
                model=getattr(pl_module, "model_name", type(self._target).__name__),
                module=type(pl_module).__name__,
                data=None if dm is None else type(dm).__name__,
                class_names=getattr(dm, "class_names", None),
                input_shape=getattr(self._target, "expected_input_shape", None),
                num_parameters=sum(p.numel() for p in self._target.parameters()),
                layers=[info.describe() for info in list_layers(self._target)],
                max_epochs=trainer.max_epochs,
            )

    # -- cadence --------------------------------------------------------------------------------
    def step_due(self, trainer: pl.Trainer) -> bool:
        """Whether the optimizer step about to happen will be followed by a step event."""
        return bool(self.every_n_steps) and (trainer.global_step + 1) % self.every_n_steps == 0

    def epoch_due(self, trainer: pl.Trainer) -> bool:
        """Whether the current epoch ends with an epoch event."""
        return bool(self.every_n_epochs) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_run(trainer, pl_module)
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
        self._write_metrics(trainer)
        # A step event at this very step already recorded this state (and took its gradients).
        if self.epoch_due(trainer) and trainer.global_step != self._last_step:
            self._fire(
                trainer, pl_module, Event("epoch", trainer.current_epoch, trainer.global_step)
            )

    def _write_metrics(self, trainer: pl.Trainer) -> None:
        """Record the epoch's logged metrics once per store (whichever callback comes first)."""
        if self.store is None:
            return
        key = str(self.store.root)
        mark = (trainer.current_epoch, trainer.global_step)
        if _METRICS_WRITTEN.get(key) == mark:
            return
        _METRICS_WRITTEN[key] = mark
        values = {}
        for name, value in trainer.callback_metrics.items():
            if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(
                value, (int, float)
            ):
                values[name] = float(value)
        event = Event("epoch", trainer.current_epoch, trainer.global_step)
        self.store.write_async(
            "metrics",
            None,
            source="cnnviz",
            epoch=event.epoch,
            step=event.step,
            meta={**event.meta(), "values": values},
        )

    def _fire(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        self._last_step = event.step
        self.events += 1
        self.log_event(trainer, pl_module, event)

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
            self.store.flush()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.store is not None:
            self.store.flush()
            self.store.update_run(status="finished", epochs=trainer.current_epoch)
            self._default_report(trainer)

    def _default_report(self, trainer: pl.Trainer) -> None:
        """Write ``report.html`` beside the store when the fit has no ``Report`` callback.

        Done once, by the last cnnviz callback (the others have flushed by then). Set the
        environment variable ``CNNVIZ_AUTO_REPORT=0`` to turn it off; attach
        :class:`~cnnviz.callbacks.Report` for live updates or other settings.
        """
        from cnnviz.callbacks.report import Report

        if os.environ.get("CNNVIZ_AUTO_REPORT", "1") == "0" or self.store is None:
            return
        ours = [cb for cb in trainer.callbacks if isinstance(cb, (VizCallback, Report))]
        if any(isinstance(cb, Report) for cb in ours) or ours[-1] is not self:
            return
        target = self.store.root.parent / "report.html"
        try:
            from cnnviz.report.build import build_report

            build_report(self.store.root, target, progress=False)
        except Exception as err:  # the report must never cost the training run
            rank_zero_warn(
                f"cnnviz: could not write {target}: {type(err).__name__}: {err}. "
                f"Rebuild it with `cnnviz report {self.store.root.parent}`."
            )
            return
        rank_zero_info(f"cnnviz report: {target.resolve()}")

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Lightning does not call teardown when fit raises. cnnviz holds no hook between
        # events, so only the record of the failure is left to write.
        self.release()
        if self.store is not None:
            try:
                # keep what was recorded before the failure
                late = self.store.flush(raise_errors=False)
                if late is not None:
                    rank_zero_warn(f"{type(self).__name__}: a store write failed too: {late!r}")
                self.store.update_run(
                    status="failed", error=f"{type(exception).__name__}: {exception}"
                )
            except OSError as err:  # the run's directory may be what failed
                rank_zero_warn(f"{type(self).__name__}: could not record the failure: {err}")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.release()
        if self.store is not None:
            self.store.flush()

    def release(self) -> None:
        """Drop references to device tensors held between events (subclasses extend)."""

    # -- helpers for subclasses ------------------------------------------------------------------
    def write(self, kind: str, arrays: dict[str, Any] | None, event: Event, **kw: Any) -> None:
        """Write a record to the store (rank zero only; a no-op elsewhere)."""
        if self.store is None:
            return
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

    def record_probe(self, trainer: pl.Trainer, probe: Probe) -> None:
        """Write ``probe`` to the store once: skipped when the store already holds the same inputs.

        Several callbacks share one probe record (the first to need it writes it), and a resumed
        run continues its store without a duplicate.
        """
        if self.store is None:
            return
        x = probe.x.detach().cpu()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
        for record in reversed(self.store.records("probe")):
            stored = self.store.load(record).get("x")
            if stored is not None and stored.shape == x.shape and np.array_equal(stored, x):
                return
        arrays = {"x": probe.x, "y": probe.y, "display": probe.display, "masks": probe.masks}
        self.write(
            "probe",
            {k: v for k, v in arrays.items() if v is not None},
            Event("start", trainer.current_epoch, trainer.global_step),
            meta={"class_names": probe.class_names, "shape": list(probe.x.shape)},
        )

    @staticmethod
    def module_device(module: nn.Module) -> torch.device:
        """The device of ``module``'s first parameter or buffer (CPU if it has none)."""
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
        return torch.device("cpu")
