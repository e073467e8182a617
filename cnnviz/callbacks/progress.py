"""Progress of long cnnviz work outside the training steps, and stopping it when asked.

Work that takes more than about two seconds (feature visualisation, an own pass over the
validation data, the final report) shows a ``tqdm`` bar naming what runs ("cnnviz: feature
visualisation 3/6 layers") when the trainer shows a progress bar, or a log line every few
seconds when it does not. :meth:`Progress.stop_requested` tells the work to stop at its next
checkpoint when the trainer received SIGTERM (Lightning's signal handler only sets a flag);
Ctrl-C raises ``KeyboardInterrupt`` as usual, and the guards restore the model on the way out.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["Progress"]

#: Seconds before anything is shown.
DELAY = 2.0
#: Seconds between log lines when there is no progress bar.
LOG_EVERY = 5.0


class Progress:
    """A progress display for one piece of long work.

    Args:
        trainer: The trainer (its progress-bar setting, rank and SIGTERM flag are read).
        what: What runs, e.g. ``"feature visualisation"``.
        total: Units of work.
        unit: Name of a unit (``"layer"``).

    Example:
        >>> with Progress(trainer, "feature visualisation", total=6, unit="layer") as bar:
        ...     for layer in layers:
        ...         if bar.stop_requested():
        ...             break
        ...         work(layer)
        ...         bar.update(1)
    """

    def __init__(self, trainer: pl.Trainer | None, what: str, *, total: int, unit: str) -> None:
        self.trainer = trainer
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self._bar: Any = None
        self._start = time.monotonic()
        self._last_log = self._start

    def __enter__(self) -> Progress:
        trainer = self.trainer
        quiet = trainer is not None and not trainer.is_global_zero
        bar = trainer is not None and getattr(trainer, "progress_bar_callback", None) is not None
        if bar and not quiet:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=self.total,
                    desc=f"cnnviz: {self.what}",
                    unit=self.unit,
                    delay=DELAY,
                    leave=False,
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            except ImportError:  # pragma: no cover - tqdm comes with Lightning
                self._bar = None
        self._quiet = quiet
        return self

    def update(self, n: int = 1) -> None:
        """Count ``n`` units done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if not self._quiet and now - self._start > DELAY and now - self._last_log > LOG_EVERY:
            self._last_log = now
            rank_zero_info(f"cnnviz: {self.what} {self.done}/{self.total} {self.unit}s")

    def stop_requested(self) -> bool:
        """Whether the trainer was asked to stop (SIGTERM)."""
        return bool(self.trainer is not None and getattr(self.trainer, "received_sigterm", False))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
