"""The run session: what the cnnviz callbacks of one fit share.

One :class:`RunSession` per ``Trainer`` (created by the first cnnviz callback's ``setup``) owns
the run stores, the run's identity and facts, the probe batches and how to call the model on
them (:class:`~cnnviz.analysis.modelio.ModelIO`), the time budget and its calibration, the
per-epoch metrics record, and the end of the run: flushing, the run's final status and the
default report. The callbacks hold a reference to it; nothing lives in module globals but the
weak table that finds a trainer's session.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from cnnviz.analysis.guard import observe
from cnnviz.analysis.modelio import ModelIO, ModelIOError, Spec, cast_input, resolve_io
from cnnviz.callbacks.budget import DEFAULT_SHARE, DISPATCH_SECONDS, Budget
from cnnviz.callbacks.probe import Probe, resolve_probe
from cnnviz.store import RunStore

if TYPE_CHECKING:
    from cnnviz.callbacks.base import VizCallback

__all__ = ["RunSession", "default_store_dir", "session_for"]

_SESSIONS: weakref.WeakKeyDictionary[pl.Trainer, RunSession] = weakref.WeakKeyDictionary()


def session_for(trainer: pl.Trainer) -> RunSession:
    """The session of ``trainer`` (created on first use)."""
    session = _SESSIONS.get(trainer)
    if session is None:
        session = _SESSIONS[trainer] = RunSession(trainer)
    return session


def default_store_dir(trainer: pl.Trainer) -> str:
    """``<trainer.log_dir>/cnnviz``, or ``<default_root_dir>/cnnviz`` without a logger.

    ``trainer.log_dir`` may broadcast under DDP, so this must be called on every rank.
    """
    log_dir = trainer.log_dir or trainer.default_root_dir
    return os.path.join(log_dir, "cnnviz")


def _describe_spec(spec: Spec) -> str:
    return getattr(spec, "__qualname__", None) or repr(spec)


class RunSession:
    """What the cnnviz callbacks of one fit share.

    Args:
        trainer: The trainer (held weakly).
        clock: The budget's clock (tests pass a fake one).
    """

    def __init__(self, trainer: pl.Trainer, *, clock: Callable[[], float] | None = None):
        self._trainer = weakref.ref(trainer)
        self.run_id = uuid.uuid4().hex[:12]
        self.callbacks: list[VizCallback] = []
        self.stores: dict[str, RunStore] = {}
        self.budget = Budget(DEFAULT_SHARE, clock=clock)
        self.probe_input: Spec = None
        self.scores: Spec = None
        self.unit_seconds: dict[str, float] = {}
        self._probes: dict[Any, Probe] = {}
        self._io: dict[Any, ModelIO | ModelIOError] = {}
        self._recorded: set[str] = set()
        self._metrics: dict[str, tuple[int, int]] = {}
        self._prepared = False
        self._finished = False
        self._readouts: dict[Any, Any] = {}
        #: Records written by the callbacks (sizes the time kept for the final report).
        self.records_written = 0
        self._background_charged = 0.0
        self.started = time.time()
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._opened: set[str] = set()
        self._resumed = False

    @property
    def trainer(self) -> pl.Trainer | None:
        """The trainer, while it exists."""
        return self._trainer()

    # -- set-up --------------------------------------------------------------------------------
    def register(self, callback: VizCallback) -> None:
        """Add ``callback`` (in ``setup``): its model adapters and its budget weight.

        Raises:
            ValueError: If two callbacks set different ``probe_input`` or ``scores``.
        """
        if callback not in self.callbacks:
            self.callbacks.append(callback)
        self.budget.start()  # the fit's clock: set-up work counts too
        # Lightning dispatches every hook of every callback at every step (with a profiler
        # context each), whether the callback does anything then or not
        self.budget.step_overhead = DISPATCH_SECONDS * len(self.callbacks)
        for name in ("probe_input", "scores"):
            mine = getattr(callback, name)
            if mine is None:
                continue
            theirs = getattr(self, name)
            if theirs is not None and theirs is not mine and theirs != mine:
                raise ValueError(
                    f"{type(callback).__name__}: `{name}`={_describe_spec(mine)} differs from "
                    f"{_describe_spec(theirs)} set on another cnnviz callback of this Trainer; "
                    f"`{name}` is shared by all cnnviz callbacks: set it once"
                )
            setattr(self, name, mine)
        if callback.budget is not None:
            self.budget.share = min(self.budget.share, callback.budget)
            self.budget.register(callback.state_key, callback.budget_weight)

    def store(self, root: str | os.PathLike[str], *, write: bool = False) -> RunStore:
        """The session's :class:`RunStore` at ``root`` (one instance per directory).

        With ``write``, the store is opened for this run: it takes the writer lease.

        Raises:
            StoreBusyError: When another live fit writes to that store (pass another
                ``store_dir``).
        """
        key = str(Path(root).resolve())
        if key not in self.stores:
            self.stores[key] = RunStore(key)
        store = self.stores[key]
        if write and key not in self._opened:
            store.open_writer(self.run_id)
            self._opened.add(key)
        return store

    def resume(self, trainer: pl.Trainer, previous: str | None, run: str | None = None) -> None:
        """Continue a checkpoint's history in this fit's stores, once (at train start).

        The checkpoint's callbacks wrote to ``previous``. When this fit writes elsewhere (a new
        log directory), their records up to the resume step are copied in first, so each run
        directory holds its whole history; either way a new segment starts at the resume step,
        and the records of the abandoned branch after it are superseded. The fit goes on as the
        checkpoint's run (``run``), so readers show its history as one run.
        """
        if self._resumed:
            return
        self._resumed = True
        from cnnviz.store import copy_history

        if run and run != self.run_id:
            for store in self.active_stores():  # reopen the stores as the continued run
                key = str(store.root.resolve())
                if key in self._opened:
                    store.close()
                    self._opened.discard(key)
            self.run_id = run
            for store in self.active_stores():
                self.store(store.root, write=True)

        step = int(trainer.global_step)
        for store in self.active_stores():
            here = store.root.resolve()
            copied = 0
            if previous and Path(previous).resolve() != here and Path(previous).is_dir():
                copied = copy_history(previous, store.root, step)
            store.begin_segment(
                step,
                epoch=trainer.current_epoch,
                checkpoint=None if trainer.ckpt_path is None else str(trainer.ckpt_path),
            )
            if copied:
                rank_zero_info(
                    f"cnnviz: resumed at step {step}; {copied} records of the history up to it "
                    f"were copied from {previous} into {store.root}, where this fit goes on"
                )
            else:
                rank_zero_info(f"cnnviz: resumed at step {step}; the history goes on in {here}")

    def start_heartbeat(self, every: float = 10.0) -> None:
        """Refresh the stores' heartbeat from a daemon thread while the fit runs.

        A live report page says the writer stopped responding when the heartbeat gets old
        (the process was killed); the training thread pays nothing for it.
        """
        if self._beat is not None:
            return

        def beat() -> None:
            while not self._beat_stop.wait(every):
                for store in self.active_stores():
                    with contextlib.suppress(OSError):  # the next write reports a broken store
                        store.heartbeat(force=True)

        self._beat = threading.Thread(target=beat, name="cnnviz-heartbeat", daemon=True)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        """Stop the heartbeat thread (idempotent)."""
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None

    def active_stores(self) -> list[RunStore]:
        """The stores the callbacks write to (not those they left for a resumed run's)."""
        seen: dict[int, RunStore] = {}
        for cb in self.callbacks:
            if cb.store is not None:
                seen.setdefault(id(cb.store), cb.store)
        return list(seen.values())

    # -- the probe and the model ---------------------------------------------------------------
    def probe(self, trainer: pl.Trainer, given: Any, n: int, owner: str) -> Probe:
        """The probe batch (shared by callbacks that take the same one)."""
        key = ("given", id(given)) if given is not None else ("data", n)
        if key not in self._probes:
            self._probes[key] = resolve_probe(
                trainer, given, n, owner, probe_input=self.probe_input
            )
        return self._probes[key]

    def io(self, target: nn.Module, probe: Probe) -> ModelIO:
        """How to call ``target`` on ``probe`` (one guarded forward, then cached).

        Raises:
            ModelIOError: If the model cannot run on the probe (the message names the fix).
        """
        key = (id(target), id(probe))
        if key not in self._io:
            try:
                with observe(target), torch.no_grad():
                    self._io[key] = resolve_io(
                        target, probe.batch, probe_input=self.probe_input, scores=self.scores
                    )
            except ModelIOError as err:
                self._io[key] = err
        found = self._io[key]
        if isinstance(found, ModelIOError):
            raise found
        return found

    def calibrate(self, trainer: pl.Trainer, target: nn.Module, probe: Probe, io: ModelIO) -> None:
        """Time one forward and one forward-backward of the probe, once per fit.

        The results are the budget's first estimate of a training step (scaled to the training
        batch size) and the callbacks' first cost estimates per image, until their own events
        are measured. Nothing the model owns changes (no ``.grad``, modes restored).
        """
        if self._prepared:
            return
        self._prepared = True
        with self.budget.charge("calibration"):
            x = cast_input(probe.x, target)
            n = max(1, x.shape[0])
            try:
                with observe(target), torch.no_grad():
                    begin = time.perf_counter()
                    io.forward(target, probe.batch, x)
                    forward = time.perf_counter() - begin
                with observe(target, grad=True, freeze_params=False):
                    params = [p for p in target.parameters() if p.requires_grad]
                    begin = time.perf_counter()
                    out = io.forward(target, probe.batch, x)
                    value = io.scores_of(out).float().sum() if io.has_scores else _any_sum(out)
                    if params and value is not None and value.requires_grad:
                        torch.autograd.grad(value, params, allow_unused=True)
                    backward = time.perf_counter() - begin
            except Exception as err:  # calibration is a nicety: never fatal
                rank_zero_warn(f"cnnviz: could not time the probe pass ({err}); budget uses time")
                return
        self.unit_seconds = {"forward": forward / n, "backward": backward / n}
        batch = _train_batch_size(trainer) or n
        self.budget.calibrate(backward / n * batch)

    def readouts(
        self, target: nn.Module, names: list[str], io: ModelIO, probe: Probe
    ) -> dict[str, Any]:
        """Where each of ``names`` is read: after its norm and activation (found once, shared)."""
        from cnnviz.analysis.readout import find_readouts

        cache = self._readouts.setdefault((id(target), id(probe)), {})
        missing = [n for n in names if n not in cache]
        if missing:
            x = cast_input(probe.x[:2], target)
            cache.update(find_readouts(target, lambda: io.forward(target, probe.batch, x), missing))
        return {n: cache[n] for n in names}

    def fields(
        self,
        target: nn.Module,
        shape: tuple[int, ...],
        probe: Probe | None,
        io: ModelIO | None,
    ) -> tuple[dict[str, Any], Exception | None, list[str]]:
        """Receptive fields for ``shape`` (once per fit, shared by the callbacks).

        Of the whole module when its forward takes the input tensor and can be traced, else of
        the parts of it that see the input (:mod:`cnnviz.analysis.parts`).

        Returns:
            ``(fields by layer, the error that stopped the whole trace or None, the parts
            used — empty when the whole module was traced)``.
        """
        key = ("fields", id(target), tuple(shape))
        if key not in self._readouts:
            from cnnviz.analysis.parts import input_parts, renamed
            from cnnviz.analysis.receptive_field import receptive_fields

            errors = (ValueError, RuntimeError, TypeError, NotImplementedError, LookupError)
            first: Exception | None = None
            found: dict[str, Any] = {}
            parts: list[str] = []
            if io is None or io.call == "input":
                try:
                    found = receptive_fields(target, shape)
                except errors as err:
                    first = err
            if not found and probe is not None and io is not None:
                x = cast_input(probe.x[:1], target)
                try:
                    parts = input_parts(target, x, lambda: io.forward(target, probe.batch, x))
                except errors as err:
                    first = first or err
                for part in parts:
                    try:
                        sub = receptive_fields(target.get_submodule(part), shape)
                    except errors as err:
                        first = first or err
                        continue
                    found.update({f"{part}.{k}": renamed(v, f"{part}.") for k, v in sub.items()})
            self._readouts[key] = (found, first, parts)
        return self._readouts[key]

    def charge_background(self) -> None:
        """Charge what the stores' background threads spent since the last call (``"store"``)."""
        total = sum(store.background_seconds for store in self.stores.values())
        if total > self._background_charged:
            self.budget.add("store", total - self._background_charged)
            self._background_charged = total

    def report_reserve(self, trainer: pl.Trainer) -> float:
        """Seconds to keep for the report built at the end (none when no report is built)."""
        from cnnviz.callbacks.report import Report

        auto = os.environ.get("CNNVIZ_AUTO_REPORT", "1") != "0"
        if not auto and not any(isinstance(cb, Report) for cb in trainer.callbacks):
            return 0.0
        records = float(self.records_written)
        total, done = self.total_steps(trainer), int(getattr(trainer, "global_step", 0) or 0)
        if total is not None and 0 < done < total:  # the records the whole fit will have written
            records *= total / done
        return 0.6 + 0.005 * records  # measured in a fit: 2.5 s for 345 records (LeNet-5)

    def total_steps(self, trainer: pl.Trainer) -> int | None:
        """The fit's optimizer steps, when known."""
        try:
            steps = trainer.estimated_stepping_batches
        except Exception:  # e.g. no training data yet
            return None
        if steps is None or not (0 < float(steps) < float("inf")):
            return None
        return int(steps)

    # -- records -------------------------------------------------------------------------------
    def record_run(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, cb: VizCallback
    ) -> None:
        """Write the run-level facts to ``cb``'s store once (at train start)."""
        store = cb.store
        if store is None or str(store.root) in self._recorded:
            return
        self._recorded.add(str(store.root))
        from cnnviz.analysis.layers import list_layers

        target = cb.target
        dm = getattr(trainer, "datamodule", None)
        io = cb.model_io
        store.update_run(
            status="running",
            run=self.run_id,
            pid=os.getpid(),
            started=self.started,
            model=getattr(pl_module, "model_name", type(target).__name__),
            module=type(pl_module).__name__,
            data=None if dm is None else type(dm).__name__,
            class_names=getattr(dm, "class_names", None),
            input_shape=list(io.input_shape)
            if io is not None
            else getattr(target, "expected_input_shape", None),
            input_kind=None if io is None else io.input_kind,
            num_parameters=sum(p.numel() for p in target.parameters()),
            layers=[
                {"name": i.name, "type": i.type, "kind": i.kind, "describe": i.describe()}
                for i in list_layers(target)
            ],
            max_epochs=trainer.max_epochs,
            precision=str(getattr(trainer, "precision", "")),
            budget_share=self.budget.share if self.budget.weights else None,
            error=None,
        )

    def write_metrics(self, trainer: pl.Trainer, cb: VizCallback) -> None:
        """Record the epoch's logged metrics once per store (whichever callback comes first)."""
        store = cb.store
        if store is None:
            return
        key = str(store.root)
        mark = (trainer.current_epoch, trainer.global_step)
        if self._metrics.get(key) == mark:
            return
        self._metrics[key] = mark
        values = {}
        for name, value in trainer.callback_metrics.items():
            if (isinstance(value, torch.Tensor) and value.numel() == 1) or isinstance(
                value, (int, float)
            ):
                values[name] = float(value)
        from cnnviz.callbacks.base import Event

        event = Event("epoch", trainer.current_epoch, trainer.global_step)
        store.write_async(
            "metrics",
            None,
            source="cnnviz",
            epoch=event.epoch,
            step=event.step,
            meta={**event.meta(), "values": values},
        )

    # -- the end -------------------------------------------------------------------------------
    def finish(self, trainer: pl.Trainer, cb: VizCallback, *, error: BaseException | None) -> None:
        """End the run once, from the last cnnviz callback: flush, status, default report."""
        if self._finished or not self.callbacks or cb is not self.callbacks[-1]:
            return
        self._finished = True
        self.stop_heartbeat()
        for store in self.active_stores():
            late = store.flush(raise_errors=False)
            if late is not None:
                rank_zero_warn(f"cnnviz: a write to {store.root} failed: {late!r}")
            try:
                store.update_run(
                    epochs=trainer.current_epoch,
                    budget=self.budget.summary(),
                    finished=time.time(),
                )
            except OSError as err:  # the run's directory may be what failed
                rank_zero_warn(f"cnnviz: could not record the run's end in {store.root}: {err}")
        self._default_report(trainer)
        for store in self.active_stores():
            if error is None:
                status, text = "finished", None
            else:
                interrupted = isinstance(error, KeyboardInterrupt) or type(error).__name__ in (
                    "SIGTERMException",
                )
                status, text = "interrupted" if interrupted else "failed", f"{error}"
                text = f"{type(error).__name__}: {text}"
            try:
                store.close(status=status, error=text)
            except OSError as err:
                rank_zero_warn(f"cnnviz: could not record the run's end in {store.root}: {err}")
        self._opened.clear()

    def _default_report(self, trainer: pl.Trainer) -> None:
        """Write ``report.html`` beside each store when the fit has no ``Report`` callback.

        Set the environment variable ``CNNVIZ_AUTO_REPORT=0`` to turn it off; attach
        :class:`~cnnviz.callbacks.Report` for live updates or other settings.
        """
        from cnnviz.callbacks.report import Report

        if os.environ.get("CNNVIZ_AUTO_REPORT", "1") == "0":
            return
        if any(isinstance(cb, Report) for cb in trainer.callbacks):
            return
        for store in self.active_stores():
            target = store.root.parent / "report.html"
            try:
                from cnnviz.report.build import build_report

                with self.budget.charge("report"):
                    build_report(store.root, target, progress=False)
            except Exception as err:  # the report must never cost the training run
                rank_zero_warn(
                    f"cnnviz: could not write {target}: {type(err).__name__}: {err}. "
                    f"Rebuild it with `cnnviz report {store.root.parent}`."
                )
                continue
            rank_zero_info(f"cnnviz report: {target.resolve()}")


def _any_sum(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        parts = [_any_sum(o) for o in out]
        parts = [p for p in parts if p is not None]
        return sum(parts) if parts else None  # type: ignore[return-value]
    return None


def _train_batch_size(trainer: pl.Trainer) -> int | None:
    from cnnviz.callbacks.probe import first_loader

    loader = first_loader(getattr(trainer, "train_dataloader", None))
    size = getattr(loader, "batch_size", None)
    if size is None:
        sampler = getattr(loader, "batch_sampler", None)
        size = getattr(sampler, "batch_size", None)
    return int(size) if isinstance(size, int) and size > 0 else None
