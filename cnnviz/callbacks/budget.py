"""A budget, not a bill: cnnviz measures its own cost and keeps it under a share of the fit.

By default every cnnviz callback of a fit shares one budget: cnnviz as a whole may add at most
``share`` (10%) to the fit's wall time — to the time the same fit takes without cnnviz, so that
the wall-time ratio with/without stays at most ``1 + share``. The :class:`Budget` keeps the
ledger — the time the fit spent training (wall time minus cnnviz's own), the time each callback
spent, the CPU time of the store's background thread — and projects the whole fit's training
time from the steps done so far (before the first step, from a calibration pass of one probe
batch). Each callback gets a share of the total allowance
(``share`` of the projected training time, less a margin, split by weight), spread over its
remaining events; unused time carries over.

At an event a callback offers :class:`Plan` s, from everything it would do at its defaults down
to the least useful thing worth doing, each with a cost in work units. A :class:`CostModel` per
callback turns units into seconds, learned from the callback's own past events (a prior from the
calibration before the first). :meth:`Budget.choose` picks the first plan that fits; when none
does, the event is postponed. What a callback left out is said once in the log and written to
the store (a ``budget`` record) for the report. Explicit settings are never cut: a callback
only offers cheaper plans along the knobs its user left at their defaults.

Everything reads time from ``clock`` (``time.perf_counter`` by default), so the decisions can be
tested with a fake clock.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_SHARE", "DISPATCH_SECONDS", "Budget", "CostModel", "Plan"]

#: The share of a fit's training time cnnviz may add to it by default.
DEFAULT_SHARE = 0.10
#: Part of the share held back for costs no event can measure (caches, the allocator, the
#: interpreter's own work). Measured: DenseNet-121 fits ran 2-4% of their training time slower
#: than the ledger explained (scripts/bench_zoo.py), so 30% of a 10% share.
MARGIN = 0.3
#: Seconds one cnnviz callback costs per training step outside its events: Lightning dispatches
#: six callback hooks a step (measured: 1.7 µs per hook and callback, through
#: ``_call_callback_hooks``), and the callback checks its cadence. On a model with short steps
#: (LeNet-5: ~11 ms) it is a real part of what cnnviz adds to the fit.
DISPATCH_SECONDS = 15e-6
# Before this many optimizer steps the projection of the fit's length uses the calibration.
_MIN_MEASURED_STEPS = 3


@dataclass(frozen=True)
class Plan:
    """One way to do an event's work.

    Attributes:
        settings: What the callback will do (its own keys: layers, channels, steps...).
        units: The work, in the callback's cost units (e.g. image forward-backward passes).
        cuts: What this plan leaves out compared with the callback's defaults, in words
            (``"8 of 16 channels"``); empty for the full plan.
    """

    settings: dict[str, Any]
    units: float
    cuts: tuple[str, ...] = ()


@dataclass
class CostModel:
    """Seconds per work unit of one callback, learned from its events.

    Attributes:
        prior: Seconds per unit before anything was measured (from the calibration).
        history: Recent measured seconds per unit (the estimate is their median).
    """

    prior: float | None = None
    history: list[float] = field(default_factory=list)

    def per_unit(self) -> float | None:
        """The current estimate of seconds per unit (``None`` when nothing is known)."""
        if self.history:
            recent = sorted(self.history[-5:])
            return recent[len(recent) // 2]
        return self.prior

    def estimate(self, units: float) -> float | None:
        """Seconds for ``units`` of work, or ``None`` when nothing is known yet."""
        per = self.per_unit()
        return None if per is None else per * units

    def observe(self, units: float, seconds: float) -> None:
        """Learn from an event that did ``units`` of work in ``seconds``."""
        if units > 0 and seconds >= 0 and math.isfinite(seconds):
            self.history.append(seconds / units)
            del self.history[:-20]


class Budget:
    """The time ledger of one fit and the allowance of each callback in it.

    Args:
        share: The most of the fit's wall time cnnviz may take, in (0, 1).
        clock: Seconds, monotonic (``time.perf_counter``); tests pass a fake one.

    Example:
        >>> budget = Budget(0.1)
        >>> budget.start(total_steps=1000)
        >>> with budget.charge("ActivationMaps"):
        ...     do_the_work()
    """

    def __init__(self, share: float = DEFAULT_SHARE, *, clock: Callable[[], float] | None = None):
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
            raise ValueError(f"Budget: `share` must be a number in (0, 1); got {share!r}")
        self.share = float(share)
        self.clock = clock or time.perf_counter
        self.started: float | None = None
        self.total_steps: int | None = None
        self.step_seconds_prior: float | None = None
        self.spent: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        #: Seconds kept for work at the end of the fit that no callback owns (the report).
        self.reserve = 0.0
        #: Seconds cnnviz costs every training step outside any event (hook dispatch).
        self.step_overhead = 0.0
        self._open: list[float] = []

    # -- the ledger --------------------------------------------------------------------------
    def register(self, owner: str, weight: float) -> None:
        """Take part in the budget with ``weight`` (shares are weights over their sum)."""
        self.weights[owner] = float(weight)
        self.spent.setdefault(owner, 0.0)

    def start(self, total_steps: int | None = None) -> None:
        """Start the clock of the fit (once); ``total_steps`` when known (at train start)."""
        if self.started is None:
            self.started = self.clock()
        if total_steps is not None:
            self.total_steps = total_steps if total_steps > 0 else None

    def calibrate(self, step_seconds: float) -> None:
        """Seconds one optimizer step is expected to take, before any was measured."""
        if step_seconds > 0 and math.isfinite(step_seconds):
            self.step_seconds_prior = step_seconds

    @contextlib.contextmanager
    def charge(self, owner: str) -> Iterator[None]:
        """Charge the time spent inside to ``owner`` (nested charges count once)."""
        begin = self.clock()
        self._open.append(begin)
        try:
            yield
        finally:
            self._open.pop()
            if not self._open:  # the outermost charge counts the whole window
                self.add(owner, self.clock() - begin)

    def add(self, owner: str, seconds: float) -> None:
        """Charge ``seconds`` of work done elsewhere (a background thread) to ``owner``."""
        if seconds > 0 and math.isfinite(seconds):
            self.spent[owner] = self.spent.get(owner, 0.0) + seconds

    @property
    def total_spent(self) -> float:
        """Seconds cnnviz spent so far."""
        return sum(self.spent.values())

    def train_seconds(self) -> float:
        """Seconds of the fit so far that cnnviz did not take."""
        if self.started is None:
            return 0.0
        return max(0.0, self.clock() - self.started - self.total_spent)

    def projected_train_seconds(self, steps_done: int) -> float | None:
        """The whole fit's training time, projected from the steps done (or the calibration).

        Returns ``None`` when there is nothing to project from. With an unknown number of steps
        the projection is the training time so far (pay as you go).
        """
        elapsed = self.train_seconds()
        if self.total_steps is None:
            return elapsed if elapsed > 0 else None
        if steps_done >= _MIN_MEASURED_STEPS and elapsed > 0:
            return elapsed * self.total_steps / steps_done
        if self.step_seconds_prior is not None:
            return max(elapsed, self.step_seconds_prior * self.total_steps)
        return None

    def allowance_total(self, steps_done: int) -> float | None:
        """Seconds cnnviz may take over the whole fit (``None``: unknown yet).

        ``share`` of the fit's projected training time (cnnviz's own time excluded), less a
        margin (:data:`MARGIN`) for what cannot be measured, less what must be kept for the end
        (:attr:`reserve`: the final report) and what cnnviz costs at every step of the fit
        (:attr:`step_overhead`: Lightning's hook dispatch).
        """
        projected = self.projected_train_seconds(steps_done)
        if projected is None:
            return None
        total = (1 - MARGIN) * self.share * projected
        steps = self.total_steps or steps_done  # the whole fit's, when known
        return max(0.0, total - self.reserve - self.step_overhead * steps)

    def allowance(self, owner: str, *, steps_done: int, events_left: int) -> float | None:
        """Seconds ``owner`` may spend on this event.

        That is its share of the whole allowance, less what it spent, spread over its
        ``events_left`` events (this one included). Returns ``None`` when nothing is known
        yet (no steps and no calibration).
        """
        total = self.allowance_total(steps_done)
        if total is None:
            return None
        weight = self.weights.get(owner, 0.0)
        weights = sum(self.weights.values()) or 1.0
        # what nobody in particular spent (calibration, the reports) comes off everyone's share
        shared = sum(v for k, v in self.spent.items() if k not in self.weights)
        mine = max(0.0, total - shared) * weight / weights
        left = mine - self.spent.get(owner, 0.0)
        return max(0.0, left) / max(1, events_left)

    def choose(
        self, plans: Sequence[Plan], model: CostModel, allowance: float | None
    ) -> Plan | None:
        """The first plan whose estimated cost fits ``allowance``.

        With no estimate yet (no measurement, no prior), or no known allowance, the cheapest
        plan runs (it measures the cost for the next decision). ``None`` when even the cheapest
        plan does not fit: the event is postponed.
        """
        if not plans:
            return None
        cheapest = plans[-1]
        if allowance is None:
            return cheapest
        for plan in plans:
            cost = model.estimate(plan.units)
            if cost is None:
                return cheapest
            if cost <= allowance:
                return plan
        return None

    def summary(self) -> dict[str, Any]:
        """The ledger as plain values (for the run facts and the report)."""
        return {
            "share": self.share,
            "train_seconds": round(self.train_seconds(), 3),
            "spent": {k: round(v, 3) for k, v in self.spent.items()},
            "total_spent": round(self.total_spent, 3),
        }
