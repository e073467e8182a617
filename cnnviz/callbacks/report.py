"""``Report``: the run's HTML report at the end of fit, and a live page while it trains."""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from cnnviz.callbacks.base import VizCallback
from cnnviz.callbacks.session import default_store_dir, session_for

__all__ = ["Report"]


class Report(Callback):
    """Build ``report.html`` from the run store at the end of fit (also when fit fails).

    With ``live=True``, ``report.html`` is a small live page while the fit trains: it shows
    each layer's newest filters and activation maps and the training curves, and updates
    itself from small data files in ``report_live/`` beside it (see
    :mod:`cnnviz.report.live`). After each logging event the data files of what changed are
    written on the run store's background thread — never on the training thread, and the
    work per event does not grow with the run's history. A thread of this callback copies the
    writer's heartbeat into the page's index every few seconds, so an open page notices a fit
    that was killed. At the end, the final single-file report replaces the live page once
    (an open live page then reloads itself).

    Only global rank zero writes. Put ``Report`` after every other cnnviz callback in
    ``callbacks=[...]``, so that it sees what they recorded at the same event.

    Args:
        live: Keep a live page while the fit trains.
        path: Output file (default ``<run_dir>/report.html``, where ``run_dir`` holds the
            store ``cnnviz/``).
        plotly_js: ``"inline"`` (works offline) or ``"cdn"`` (smaller file, needs network).
        every_n_epochs: With ``live``, update the page at most every n epochs (step events of
            the other callbacks also trigger an update).
        title: Page title (default: the model and data names).
        store_dir: The run store (default: the one the other cnnviz callbacks use, else
            ``<trainer.log_dir>/cnnviz``).
        progress: Print a progress line per section while building the final report.

    Example:
        >>> trainer = Trainer(callbacks=[FilterWeights(), ActivationMaps(), Report(live=True)])
    """

    #: Seconds between two copies of the writer's heartbeat into the live page's index.
    BEAT_SECONDS = 5.0

    def __init__(
        self,
        live: bool = False,
        path: str | os.PathLike[str] | None = None,
        plotly_js: Literal["inline", "cdn"] = "inline",
        every_n_epochs: int = 1,
        title: str | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> None:
        if not isinstance(live, bool):
            raise TypeError(f"Report: `live` must be a bool; got {live!r}")
        if plotly_js not in ("inline", "cdn"):
            raise ValueError(f"Report: `plotly_js` must be 'inline' or 'cdn'; got {plotly_js!r}")
        if (
            not isinstance(every_n_epochs, int)
            or isinstance(every_n_epochs, bool)
            or every_n_epochs < 1
        ):
            raise ValueError(
                f"Report: `every_n_epochs` must be a positive int; got {every_n_epochs!r}"
            )
        if not isinstance(progress, bool):
            raise TypeError(f"Report: `progress` must be a bool; got {progress!r}")
        self.live = live
        self.path = None if path is None else str(path)
        self.plotly_js = plotly_js
        self.every_n_epochs = every_n_epochs
        self.title = title
        self.store_dir = None if store_dir is None else str(store_dir)
        self.progress = progress
        self.target: Path | None = None
        self.store_root: Path | None = None
        self.builds = 0
        self.updates = 0
        self._viz: list[VizCallback] = []
        self._signature: tuple[Any, ...] | None = None
        self._warned = False
        self._live: Any = None
        self._pending: Future[Any] | None = None
        self._beat: threading.Thread | None = None
        self._beat_stop = threading.Event()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(path=self.path, store_dir=self.store_dir)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callbacks = list(trainer.callbacks)
        me = next(i for i, cb in enumerate(callbacks) if cb is self)
        late = [type(cb).__name__ for cb in callbacks[me + 1 :] if isinstance(cb, VizCallback)]
        if late:
            raise ValueError(
                f"Report: it must come after every cnnviz callback, but {', '.join(late)} "
                "follow it; move Report to the end of `callbacks=[...]`"
            )
        self._viz = [cb for cb in callbacks[:me] if isinstance(cb, VizCallback)]
        self._session = session_for(trainer)
        default = default_store_dir(trainer)  # every rank: log_dir may broadcast
        if not trainer.is_global_zero:
            self.target = None
            return
        root = self.store_dir
        if root is None:
            stores = [cb.store.root for cb in self._viz if cb.store is not None]
            root = str(stores[0]) if stores else default
        self.store_root = Path(root)
        self.target = Path(self.path) if self.path else self.store_root.parent / "report.html"
        self._signature = None

    # -- when ----------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run's callbacks switch to the store named in the checkpoint, which Lightning
        # restores after ``setup``: follow them.
        if self.target is not None and self.store_dir is None:
            stores = [cb.store.root for cb in self._viz if cb.store is not None]
            if stores and Path(stores[0]) != self.store_root:
                self.store_root = Path(stores[0])
                if not self.path:
                    self.target = self.store_root.parent / "report.html"
        if self.live and self.target is not None and self.store_root is not None:
            self._start_live(trainer)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._live is None:
            return
        step = trainer.global_step
        if any(cb.every_n_steps and step % cb.every_n_steps == 0 for cb in self._viz):
            self._schedule()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._live is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._schedule()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._end()  # a failed run still gets a page that says what happened

    # -- the live page -------------------------------------------------------------------------
    def _start_live(self, trainer: pl.Trainer) -> None:
        from cnnviz.report.live import LiveReport

        if self.target is None or self.store_root is None:
            return
        info = self._session.store(self.store_root).run_info()
        title = self.title or _title(info)
        try:
            self._live = LiveReport(self.store_root, self.target, title=title)
            self._live.start()
        except Exception as err:  # the report must never cost the training run
            self._live = None
            rank_zero_warn(
                f"Report: could not write the live page {self.target}: {type(err).__name__}: "
                f"{err}; the report is written at the end of fit"
            )
            return
        self._schedule()  # what the other callbacks recorded at train start
        self._beat_stop.clear()
        self._beat = threading.Thread(target=self._beat_loop, name="cnnviz-live", daemon=True)
        self._beat.start()

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(self.BEAT_SECONDS):
            live = self._live
            if live is None:
                return
            try:
                live.beat()
            except OSError:  # a full disk: the next update says so
                continue

    def _schedule(self) -> None:
        """Hand one live update to the store's background thread (one at a time)."""
        if self._live is None or self.store_root is None:
            return
        if self._pending is not None and not self._pending.done():
            return  # the pending update will read this event's records too
        store = self._session.store(self.store_root)
        self._pending = store.submit(self._live_update)

    def _live_update(self) -> None:
        live = self._live
        if live is None:
            return
        try:
            live.update()
            self.updates += 1
        except Exception as err:  # never fail the store's queue (the writes of others)
            if not self._warned:
                self._warned = True
                rank_zero_warn(
                    f"Report: the live page could not be updated: {type(err).__name__}: {err}"
                )

    def _stop_live(self) -> None:
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending.result(timeout=120)
            self._pending = None

    def _end(self) -> None:
        live = self._live
        self._stop_live()
        self._build(final=True)
        if live is not None:
            with contextlib.suppress(OSError):
                live.finish()  # open live pages reload: report.html is the final report now
            self._live = None

    # -- the final report ----------------------------------------------------------------------
    def _store_signature(self) -> tuple[Any, ...] | None:
        if self.store_root is None:
            return None
        sig: list[Any] = []
        for name in ("manifest.jsonl", "run.json"):
            try:
                st = os.stat(self.store_root / name)
                sig.append((st.st_mtime_ns, st.st_size))
            except OSError:
                sig.append(None)
        return tuple(sig)

    def _build(self, *, final: bool = True) -> None:
        if self.target is None or self.store_root is None:
            return
        # The other callbacks write in the background: reading through the shared store waits
        # for their pending writes (their errors stay theirs to raise).
        self._session.store(self.store_root).run_info()
        signature = self._store_signature()
        if signature == self._signature and self.target.exists() and self._live is None:
            return
        try:
            from cnnviz.report.build import build_report, write_atomic
            from cnnviz.report.html import message_page

            with self._session.budget.charge("report"):
                if signature is None or signature == (None, None):
                    write_atomic(
                        self.target,
                        message_page(
                            "cnnviz report",
                            "No cnnviz callback recorded anything for this run yet: add "
                            "FilterWeights, ActivationMaps or another cnnviz callback before "
                            "Report.",
                            {"store": str(self.store_root)},
                        ),
                    )
                else:
                    build_report(
                        self.store_root,
                        self.target,
                        plotly_js=self.plotly_js,
                        title=self.title,
                        progress=self.progress,
                    )
        except Exception as err:  # the report must never cost the training run
            if final or not self._warned:
                rank_zero_warn(
                    f"Report: could not write {self.target}: {type(err).__name__}: {err}. "
                    f"Rebuild it later with `cnnviz report {self.store_root.parent}`."
                )
                self._warned = True
            return
        self._signature = signature
        self.builds += 1
        if final:
            rank_zero_info(f"cnnviz report: {self.target.resolve()}")


def _title(info: dict[str, Any]) -> str:
    model = info.get("model") if isinstance(info.get("model"), str) else "model"
    data = info.get("data") if isinstance(info.get("data"), str) else None
    return f"cnnviz — {model}" + (f" on {data}" if data else "")
