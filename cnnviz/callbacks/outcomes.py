"""What a callback says about itself: what it cut for the budget, and its failures.

:class:`Outcomes` is the part of :class:`~cnnviz.callbacks.base.VizCallback` that turns a
property of the user's model or a failure inside an event into a warning said once and a
record in the store (``budget``, ``error``), and turns the callback off when it cannot go on —
or raises, with ``strict=True``.
"""

from __future__ import annotations

import traceback
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from cnnviz.callbacks.budget import DEFAULT_SHARE
from cnnviz.callbacks.events import MAX_FAILURES, Event, event_now, same_kind

__all__ = ["Outcomes"]


class Outcomes:
    """Budget notes, failures and turning off (a mixin of ``VizCallback``)."""

    name: str
    strict: bool
    disabled: str | None
    session: Any
    store: Any
    _warned: set[str]
    _said_cuts: tuple[str, ...]
    _failures: int

    def release(self) -> None:  # pragma: no cover - VizCallback's
        """Drop what the callback holds between events."""

    def write(self, kind: str, arrays: Any, event: Event, **kw: Any) -> None:  # pragma: no cover
        """Write a record (VizCallback's)."""

    def disable(self, trainer: pl.Trainer | None, reason: str) -> None:
        """Turn the callback off for the rest of the fit, with one warning naming ``reason``.

        Raises:
            ValueError: With ``strict=True``, instead of turning off.
        """
        name = type(self).__name__
        if self.strict:
            raise ValueError(f"{name}: {reason}")
        if self.disabled is None:
            self.disabled = reason
            rank_zero_warn(f"cnnviz: {name} is off for this fit: {reason}")
            self.release()
            if self.store is not None:
                where = event_now(trainer)
                self._write_error(where.label, where, "Disabled", f"turned off: {reason}")

    # -- budget notes and failures --------------------------------------------------------------
    def note_cut(self, *cuts: str, event: Event | None = None) -> None:
        """Say once what this callback leaves out (log and a ``budget`` record)."""
        said = tuple(dict.fromkeys((*self._said_cuts, *cuts)))
        said = tuple(c for i, c in enumerate(said) if not same_kind(c, said[:i]))
        if said == self._said_cuts:
            return
        new = [c for c in said if c not in self._said_cuts]
        self._said_cuts = said
        share = self.session.budget.share if self.session is not None else DEFAULT_SHARE
        rank_zero_info(
            f"cnnviz budget: {self.name} {'; '.join(new)} — to stay within {share:.0%} of the "
            "fit's time. Pass `budget=None`, or set these options explicitly, to get everything."
        )
        if self.store is not None:
            where = event or Event("start", 0, 0)
            self.write(
                "budget",
                None,
                where,
                meta={
                    "callback": self.name,
                    "decisions": list(said),
                    "settings": {"budget": None, "share": share},
                },
            )

    def _postponed(self, event: Event) -> None:
        self.note_cut(
            f"skips an event when its share of the budget is spent (first: {event.label})"
        )
        if self.store is not None:
            self.write(
                "budget",
                None,
                event,
                meta={
                    "callback": self.name,
                    "decisions": [*self._said_cuts, f"skipped {event.label}"],
                    "settings": {"budget": None},
                },
            )

    def failed(
        self,
        trainer: pl.Trainer | None,
        err: Exception,
        *,
        where: str,
        event: Event | None = None,
    ) -> None:
        """Handle a failure: raise with ``strict``, else warn once, record it, go on.

        After :data:`MAX_FAILURES` failures in a row the callback turns itself off.
        """
        if self.strict:
            raise err
        self.release()
        self._failures += 1
        message = f"{type(err).__name__}: {err}"
        key = f"{where.split(' ')[0]}:{type(err).__name__}"
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(
                f"cnnviz: {self.name} failed in {where}: {message}. Training goes on; the "
                "report shows the error. Pass `strict=True` to raise instead."
            )
        if self.store is not None:
            self._write_error(
                where,
                event or event_now(trainer),
                type(err).__name__,
                str(err),
                detail="".join(traceback.format_exception(err)),
            )
        if self._failures >= MAX_FAILURES and self.disabled is None:
            self.disable(trainer, f"it failed {self._failures} times in a row (last: {message})")

    def _write_error(
        self, where: str, event: Event | None, exception: str, message: str, *, detail: str = ""
    ) -> None:
        try:
            self.write(
                "error",
                None,
                event or Event("start", 0, 0),
                meta={
                    "callback": self.name,
                    "exception": exception,
                    "message": message,
                    "at": where,
                    "traceback": detail[-4000:],
                },
            )
        except Exception as err:  # the store itself may be what failed
            rank_zero_warn(f"cnnviz: {self.name} could not record its error: {err}")

    def warn_once(self, key: str, message: str) -> None:
        """A warning said once per fit and callback."""
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"{self.name}: {message}")
