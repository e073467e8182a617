"""``Report``: write the run's HTML report at the end of fit, and live while it trains."""

from __future__ import annotations

import os
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

    With ``live=True`` the report is rewritten atomically (temporary file + ``os.replace``)
    after each logging event of the other cnnviz callbacks, and the page reloads itself every
    5 s while the run's status is ``running``; open it in a browser and watch it train, as in
    the ConvNetJS demo. A rebuild happens only when the store changed since the last one.

    Only global rank zero writes. Put ``Report`` after every other cnnviz callback in
    ``callbacks=[...]``, so that it sees what they recorded at the same event.

    Args:
        live: Rewrite the report after logging events (and let the page reload itself).
        path: Output file (default ``<run_dir>/report.html``, where ``run_dir`` holds the
            store ``cnnviz/``).
        plotly_js: ``"inline"`` (works offline) or ``"cdn"`` (smaller file, needs network).
        every_n_epochs: With ``live``, rebuild at most every n epochs (step events of the
            other callbacks also trigger a rebuild).
        title: Page title (default: the model and data names).
        store_dir: The run store (default: the one the other cnnviz callbacks use, else
            ``<trainer.log_dir>/cnnviz``).

    Example:
        >>> trainer = Trainer(callbacks=[FilterWeights(), ActivationMaps(), Report(live=True)])
    """

    def __init__(
        self,
        live: bool = False,
        path: str | os.PathLike[str] | None = None,
        plotly_js: Literal["inline", "cdn"] = "inline",
        every_n_epochs: int = 1,
        title: str | None = None,
        store_dir: str | os.PathLike[str] | None = None,
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
        self.live = live
        self.path = None if path is None else str(path)
        self.plotly_js = plotly_js
        self.every_n_epochs = every_n_epochs
        self.title = title
        self.store_dir = None if store_dir is None else str(store_dir)
        self.target: Path | None = None
        self.store_root: Path | None = None
        self.builds = 0
        self._viz: list[VizCallback] = []
        self._signature: tuple[Any, ...] | None = None
        self._warned = False

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
        if self.live:
            self._build(final=False)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.live or self.target is None:
            return
        step = trainer.global_step
        if any(cb.every_n_steps and step % cb.every_n_steps == 0 for cb in self._viz):
            self._build(final=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.live and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._build(final=False)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._build(final=True)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._build(final=True)  # a failed run still gets a page that says what happened

    # -- what ----------------------------------------------------------------------------------
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

    def _build(self, *, final: bool) -> None:
        if self.target is None or self.store_root is None:
            return
        # The other callbacks write in the background: reading through the shared store waits
        # for their pending writes (their errors stay theirs to raise).
        self._session.store(self.store_root).run_info()
        signature = self._store_signature()
        if signature == self._signature and self.target.exists():
            return
        try:
            from cnnviz.report.build import build_report, write_atomic
            from cnnviz.report.html import message_page

            if signature is None or signature == (None, None):
                write_atomic(
                    self.target,
                    message_page(
                        "cnnviz report",
                        "No cnnviz callback recorded anything for this run yet: add FilterWeights, "
                        "ActivationMaps or another cnnviz callback before Report.",
                        {"store": str(self.store_root)},
                    ),
                )
            else:
                build_report(
                    self.store_root,
                    self.target,
                    plotly_js=self.plotly_js,
                    title=self.title,
                    live=self.live,
                    progress=False,
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
