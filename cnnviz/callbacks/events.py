"""Small pieces every cnnviz callback uses: events, spreading, the guard of Lightning hooks."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import lightning.pytorch as pl

from cnnviz.callbacks.budget import DEFAULT_SHARE

if TYPE_CHECKING:
    from cnnviz.callbacks.base import VizCallback

__all__ = ["DEEP", "MAX_FAILURES", "Event", "guarded", "spread"]

#: A model with more layers of a callback's kind than this gets its stage outputs by default.
DEEP = 12
#: Failures in a row after which a callback turns itself off.
MAX_FAILURES = 3

F = TypeVar("F", bound=Callable[..., Any])


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


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """Up to ``count`` evenly spaced items, always including the first and the last."""
    if len(items) <= count:
        return list(items)
    if count == 1:
        return [items[-1]]
    picks = {round(i * (len(items) - 1) / (count - 1)) for i in range(count)}
    return [items[i] for i in sorted(picks)]


def layer_options(names: Sequence[str], auto: bool, least: int) -> list[list[str]]:
    """The layer lists a budget plan may watch, from all of ``names`` down.

    For layers cnnviz chose itself (``auto``), half of them and then ``least`` of them follow,
    evenly spread (always with the first and the last).
    """
    options = [list(names)]
    if auto and len(names) > least:
        options += [spread(names, max(least, len(names) // 2)), spread(names, least)]
    return options


def budget_default(budget: float | None) -> float | None:
    """``budget``, or the environment variable ``CNNVIZ_BUDGET`` when ``budget`` is the default.

    ``CNNVIZ_BUDGET=off`` (or ``none``/``0``) turns the default budget off; a number sets the
    default share.
    """
    env = os.environ.get("CNNVIZ_BUDGET", "").strip().lower()
    if budget != DEFAULT_SHARE or not env:
        return budget
    if env in ("off", "none", "0", "false"):
        return None
    try:
        share = float(env)
    except ValueError:
        return budget
    return share if 0 < share < 1 else budget


def same_kind(cut: str, earlier: Sequence[str]) -> bool:
    """Whether ``cut`` repeats an earlier note but for its "(first: ...)" label."""
    stem = cut.split(" (first: ")[0]
    return " (first: " in cut and any(e.split(" (first: ")[0] == stem for e in earlier)


def event_now(trainer: pl.Trainer | None) -> Event:
    """The trainer's position as an event (for records outside the callbacks' own events)."""
    if trainer is None or trainer.global_step == 0:
        return Event("start", 0 if trainer is None else trainer.current_epoch, 0)
    return Event("step", trainer.current_epoch, trainer.global_step)


def strict_default() -> bool:
    return os.environ.get("CNNVIZ_STRICT", "0") not in ("", "0", "false", "False")


def guarded(fn: F) -> F:
    """Run a Lightning hook of a cnnviz callback so that it never takes the fit down.

    The hook is skipped while the callback is off; an exception becomes a warning and an
    ``error`` record (or is raised with ``strict=True``).
    """

    @functools.wraps(fn)
    def wrapper(self: VizCallback, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> Any:
        if self.disabled is not None:
            return None
        try:
            return fn(self, trainer, *args, **kwargs)
        except Exception as err:
            self.failed(trainer, err, where=fn.__name__)
            return None

    return wrapper  # type: ignore[return-value]
