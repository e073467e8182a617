"""The time budget's decisions, with a fake clock (no timed assertions).

The slow cases users met — feature visualisation of timm resnet18 (160 s for 22 layers at only
16 steps), Attributions at ~21 s (resnet18) and ~190 s (efficientnet_b0) per event, TopActivations
on densenet121 (264 s for two validation batches) — become plans that fit the callback's share of
10% of the fit, sized from measured costs; explicit settings are never cut; ``budget=None``
turns it off.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from cnnviz.analysis.layers import LayerInfo
from cnnviz.callbacks import (
    ActivationMaps,
    Attributions,
    FeatureVisualization,
    FilterWeights,
    TopActivations,
)
from cnnviz.callbacks.base import Event
from cnnviz.callbacks.budget import DISPATCH_SECONDS, MARGIN, Budget, CostModel, Plan


@pytest.fixture(autouse=True)
def _budget_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNVIZ_BUDGET", raising=False)  # the suite turns the default off


class Clock:
    """A fake monotonic clock: ``advance`` moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def layers(n: int, kind: str = "conv") -> list[LayerInfo]:
    return [LayerInfo(name=f"l{i}", kind=kind, type="Conv2d", dims=2, order=i) for i in range(n)]


def trainer(step: int = 0, epoch: int = 0, max_epochs: int = 10) -> Any:
    return SimpleNamespace(
        global_step=step, current_epoch=epoch, max_epochs=max_epochs, world_size=1
    )


def session(clock: Clock, callbacks: list, *, step_seconds: float, steps: int, units: dict) -> Any:
    """A session-like object with a calibrated budget shared by ``callbacks``."""
    budget = Budget(0.1, clock=clock)
    for cb in callbacks:
        if cb.budget is not None:
            budget.register(cb.state_key, cb.budget_weight)
    budget.start(total_steps=steps)
    budget.calibrate(step_seconds)
    ns = SimpleNamespace(
        budget=budget,
        unit_seconds=units,
        total_steps=lambda trainer: steps,
    )
    for cb in callbacks:
        cb.session = ns
    return ns


# ------------------------------------------------------------------------------- the ledger
def test_allowance_is_a_share_of_the_projected_fit_spread_over_events() -> None:
    clock = Clock()
    budget = Budget(0.1, clock=clock)
    budget.register("a", 1.0)
    budget.register("b", 3.0)
    budget.start(total_steps=1000)
    assert budget.allowance("a", steps_done=0, events_left=10) is None  # nothing known yet
    budget.calibrate(0.2)  # 0.2 s a step: a 200 s fit, 20 s for cnnviz, a quarter for "a"
    keep = 1 - MARGIN  # a margin is held back for what no event can measure
    assert budget.allowance("a", steps_done=0, events_left=10) == pytest.approx(
        keep * 200 / 10 / 4 / 10
    )
    clock.advance(100.0)  # 500 steps took 100 s: the projection now comes from them
    assert budget.projected_train_seconds(500) == pytest.approx(200.0)
    with budget.charge("a"):
        clock.advance(2.0)
    assert budget.spent["a"] == pytest.approx(2.0)
    assert budget.train_seconds() == pytest.approx(100.0)  # cnnviz's own time is not training
    # a's share less what it spent (2 s), over its 5 remaining events
    assert budget.allowance("a", steps_done=500, events_left=5) == pytest.approx(
        (keep * 200 / 10 / 4 - 2.0) / 5
    )
    budget.reserve = 5.0  # kept for the final report: comes off everyone's share
    assert budget.allowance("a", steps_done=500, events_left=5) == pytest.approx(
        ((keep * 200 / 10 - 5.0) / 4 - 2.0) / 5
    )


def test_unspent_time_carries_over_and_overspending_is_paid_back() -> None:
    clock = Clock()
    budget = Budget(0.1, clock=clock)
    budget.register("a", 1.0)
    budget.start(total_steps=100)
    budget.calibrate(1.0)  # 100 s fit: 10 s for cnnviz, less the margin
    share = (1 - MARGIN) * 100 / 10
    first = budget.allowance("a", steps_done=0, events_left=10)
    assert first == pytest.approx(share / 10)
    budget.add("a", 5.0)  # one event overspent
    assert budget.allowance("a", steps_done=0, events_left=9) == pytest.approx((share - 5) / 9)
    budget.add("calibration", 1.0)  # time nobody owns comes off the share too
    assert budget.allowance("a", steps_done=0, events_left=9) == pytest.approx((share - 6) / 9)
    budget.add("a", 20.0)
    assert budget.allowance("a", steps_done=0, events_left=8) == 0.0


def test_choose_takes_the_first_plan_that_fits_and_postpones_otherwise() -> None:
    plans = [Plan({"n": 4}, 400.0), Plan({"n": 2}, 200.0, ("half",)), Plan({"n": 1}, 100.0)]
    budget = Budget(0.1)
    model = CostModel(prior=0.01)  # 1 s, 2 s, 4 s
    assert budget.choose(plans, model, allowance=5.0) is plans[0]
    assert budget.choose(plans, model, allowance=2.5) is plans[1]
    assert budget.choose(plans, model, allowance=0.5) is None
    assert budget.choose(plans, CostModel(), allowance=0.5) is plans[-1]  # no estimate: measure
    model.observe(100.0, 0.1)  # measured: ten times cheaper than the prior
    assert budget.choose(plans, model, allowance=0.5) is plans[0]


def test_budget_share_is_checked() -> None:
    with pytest.raises(ValueError, match=r"`share` must be a number in \(0, 1\)"):
        Budget(1.5)
    with pytest.raises(ValueError, match=r"FilterWeights: `budget` must be a number > 0"):
        FilterWeights(budget=0)


# ------------------------------------------------------------------- the slow cases, decided
def test_feature_visualisation_of_a_deep_net_is_sized_to_its_share() -> None:
    """timm resnet18 at 64 px: 160 s for 22 layers at 16 steps (~0.03 s per image-step)."""
    cb = FeatureVisualization(budget=0.1)
    cb.selected, cb._auto_layers = layers(22), True
    cb._counts = {f"l{i}": 64 for i in range(22)}
    clock = Clock()
    # a 10-minute fit: 3000 steps of 0.2 s; one image forward+backward costs 0.03 s
    ns = session(clock, [cb], step_seconds=0.2, steps=3000, units={"backward": 0.03})
    cb.cost.prior = cb.prior_seconds_per_unit()
    event = Event("epoch", 9, 3000)
    full = cb.plans(trainer(3000, 9), event)[0]
    assert full.settings == {"layers": [f"l{i}" for i in range(22)], "channels": 16, "steps": 256}
    assert cb.cost.estimate(full.units) == pytest.approx(0.03 * 256 * 16 * 22)  # ~45 minutes
    allowance = ns.budget.allowance(cb.state_key, steps_done=0, events_left=1)
    assert allowance == pytest.approx((1 - MARGIN) * 600 / 10)
    plan = ns.budget.choose(cb.plans(trainer(3000, 9), event), cb.cost, allowance)
    assert plan is not None and plan.cuts
    assert cb.cost.estimate(plan.units) <= allowance
    assert plan.settings["steps"] < 256 and len(plan.settings["layers"]) < 22


def test_explicit_settings_are_never_cut() -> None:
    cb = FeatureVisualization(steps=64, max_channels=3, layers=["l0", "l1"], budget=0.1)
    cb.selected = layers(2)
    cb._counts = {"l0": 8, "l1": 8}
    plans = cb.plans(trainer(), Event("epoch", 0, 10))
    assert len(plans) == 1 and plans[0].settings == {
        "layers": ["l0", "l1"],
        "channels": 3,
        "steps": 64,
    }
    assert not plans[0].cuts


def test_attributions_drop_the_costliest_methods_first() -> None:
    """timm efficientnet_b0: ~190 s per attribution event on 2 cores."""
    cb = Attributions(budget=0.1)
    cb._probe = SimpleNamespace(x=[0] * 8)
    clock = Clock()
    ns = session(clock, [cb], step_seconds=0.5, steps=2000, units={"backward": 0.25})
    cb.cost.prior = cb.prior_seconds_per_unit()
    event = Event("epoch", 0, 200)
    plans = cb.plans(trainer(200), event)
    full = plans[0]
    assert full.settings == {
        "methods": [
            "saliency",
            "integrated_gradients",
            "smoothgrad",
            "guided_backprop",
            "grad_cam",
        ],
        "images": 8,
        "faithfulness": True,
    }
    # one backward per image and method (IG: 50 steps, SmoothGrad: 16), one forward, and the
    # faithfulness curves: 2 x 17 forwards (about a third of a backward) per method and per
    # each of 3 random orderings
    faith = 2 * 17 * (5 + 3) / 3
    assert cb.cost.estimate(full.units) == pytest.approx(
        0.25 * 8 * (1 + 50 + 16 + 1 + 1 + 1 + faith)
    )
    allowance = ns.budget.allowance(cb.state_key, steps_done=0, events_left=11)
    plan = ns.budget.choose(plans, cb.cost, allowance)
    assert plan is not None
    assert cb.cost.estimate(plan.units) <= allowance
    assert "integrated_gradients" not in plan.settings["methods"]
    drops = [c.partition("(drops ")[2] for c in plan.cuts if "(drops " in c]
    assert drops and "integrated_gradients" in drops[0]
    assert "grad_cam" in plan.settings["methods"]  # the cheapest method stays
    assert not plan.settings["faithfulness"]  # the curves go before the maps do
    assert "measures no deletion/insertion curves" in plan.cuts


def test_top_activations_of_a_deep_net_watch_fewer_layers_and_channels() -> None:
    """torchvision densenet121 at 64 px: 264 s over two validation batches."""
    cb = TopActivations(budget=0.1)
    cb.selected, cb._auto_layers = layers(120), True
    clock = Clock()
    ns = session(clock, [cb], step_seconds=0.5, steps=1000, units={})
    plans = cb.plans(trainer(), Event("epoch", 0, 50))
    cb.cost.observe(plans[0].units, 264.0)  # measured: every layer, 16 channels
    allowance = ns.budget.allowance(cb.state_key, steps_done=0, events_left=10)
    assert allowance == pytest.approx((1 - MARGIN) * 500 / 10 / 10)  # a 500 s fit, 10 epochs
    plan = ns.budget.choose(plans, cb.cost, allowance)
    assert plan is not None and cb.cost.estimate(plan.units) <= allowance
    assert plan.settings == {"layers": ["l0", "l119"], "channels": 8}
    # a fit a quarter as long: even two layers at 4 channels do not fit; the epoch is skipped
    short = session(Clock(), [cb], step_seconds=0.25, steps=500, units={})
    allowance = short.budget.allowance(cb.state_key, steps_done=0, events_left=10)
    assert short.budget.choose(plans, cb.cost, allowance) is None


def test_no_budget_records_everything() -> None:
    cb = ActivationMaps(budget=None)
    cb.selected, cb._auto_layers = layers(30), True
    ns = session(Clock(), [cb], step_seconds=0.001, steps=10, units={"forward": 10.0})
    cb.session = ns
    plan = cb._choose(trainer(), Event("start", 0, 0))
    assert plan is not None and not plan.cuts
    assert len(plan.settings["layers"]) == 30 and plan.settings["channels"] == 16


def test_the_callbacks_share_by_weight() -> None:
    clock = Clock()
    cbs = [FilterWeights(), ActivationMaps(), Attributions(), FeatureVisualization()]
    ns = session(clock, cbs, step_seconds=1.0, steps=900, units={})
    total = ns.budget.allowance_total(0)
    assert total == pytest.approx((1 - MARGIN) * 90.0)  # 10% of 900 s of training, less margin
    shares = {
        type(cb).__name__: ns.budget.allowance(cb.state_key, steps_done=0, events_left=1)
        for cb in cbs
    }
    assert sum(shares.values()) == pytest.approx(total)
    assert shares["Attributions"] == pytest.approx(4 * shares["FilterWeights"])


def test_the_report_reserve_is_projected_to_the_records_of_the_whole_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cnnviz.callbacks.session import RunSession

    class FakeTrainer:
        callbacks = ()
        global_step = 0
        estimated_stepping_batches = 1000

    monkeypatch.setenv("CNNVIZ_AUTO_REPORT", "1")
    t = FakeTrainer()
    s = RunSession(t)  # type: ignore[arg-type]
    s.records_written = 50
    at_start = s.report_reserve(t)  # nothing to project from: the records so far
    t.global_step = 100  # a tenth of the fit: the end will hold ten times the records
    early = s.report_reserve(t)
    t.global_step = 1000
    at_end = s.report_reserve(t)
    assert at_start == pytest.approx(0.6 + 0.005 * 50) == at_end
    assert early == pytest.approx(0.6 + 0.005 * 500)
    monkeypatch.setenv("CNNVIZ_AUTO_REPORT", "0")  # no report at the end: nothing to keep
    assert s.report_reserve(t) == 0.0


def test_the_hook_dispatch_of_every_step_comes_off_the_allowance() -> None:
    """Six callbacks cost Lightning some hook dispatch at every step, before any event."""
    budget = Budget(0.1, clock=Clock())
    budget.register("a", 1.0)
    budget.start(total_steps=4000)
    budget.calibrate(0.011)  # a 44 s fit: 4.4 s for cnnviz, less the margin
    before = budget.allowance_total(0)
    budget.step_overhead = 6 * DISPATCH_SECONDS
    after = budget.allowance_total(0)
    assert before is not None and after is not None
    assert before - after == pytest.approx(4000 * 6 * DISPATCH_SECONDS)
    budget.step_overhead = 1.0  # more than the share: nothing is left, never a negative time
    assert budget.allowance_total(0) == 0.0


def test_the_store_threads_cpu_time_is_charged(tmp_path: Any) -> None:
    """Background writes share the cores with training: what they spend counts."""
    from cnnviz.callbacks.session import RunSession
    from cnnviz.store import RunStore

    store = RunStore(tmp_path / "cnnviz")

    def burn() -> None:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    store.submit(burn)
    store.flush()
    assert store.background_seconds >= 0.05

    class FakeTrainer:
        callbacks = ()

    s = RunSession(FakeTrainer())  # type: ignore[arg-type]
    s.stores["x"] = store
    s.charge_background()
    assert s.budget.spent["store"] == pytest.approx(store.background_seconds)
    s.charge_background()  # charged once, not at every call
    assert s.budget.spent["store"] == pytest.approx(store.background_seconds)
