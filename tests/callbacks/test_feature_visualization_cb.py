"""The FeatureVisualization callback: images at the end of fit, no observer effect, errors."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from cnnviz_test_helpers import (
    case_module,
    make_bn_net,
    make_conv1d_net,
    make_lenet,
    make_loaders,
    make_trainer,
)

from cnnviz.analysis.guard import hook_count
from cnnviz.callbacks import FeatureVisualization
from cnnviz.store import RunStore


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"objective": "max"}, ValueError, "`objective`"),
        ({"param": "wavelet"}, ValueError, "`param`"),
        ({"steps": 0}, ValueError, "`steps`"),
        ({"lr": -1.0}, ValueError, "`lr`"),
        ({"max_channels": 0}, ValueError, "`max_channels`"),
        ({"channels": 3}, ValueError, "`channels`"),
        ({"at_end": False}, ValueError, "nothing would ever be logged"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        FeatureVisualization(**kwargs)


def test_runs_once_at_the_end_and_writes_images(tmp_path):
    module = case_module(make_lenet())
    train, val = make_loaders()
    cb = FeatureVisualization(steps=16, max_channels=4, store_dir=tmp_path / "s")
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(module, train, val)
    store = RunStore(tmp_path / "s")
    records = store.records("featvis")
    assert sorted(r.layer for r in records) == ["net.0", "net.2", "net.3", "net.5"]
    assert {r.meta["label"] for r in records} == {"epoch 2"}  # the end, labelled as last epoch
    for record in records:
        arrays = store.load(record)
        assert arrays["images"].shape == (4, 16, 16, 3)
        assert np.isfinite(arrays["images"].astype(np.float32)).all()
        assert arrays["images"].min() >= 0.0 and arrays["images"].max() <= 1.0
        assert record.meta["channels"] == [0, 1, 2, 3]
    assert hook_count(module) == 0


def test_observer_effect_zero(tmp_path):
    def fit(callbacks):
        pl.seed_everything(0, verbose=False)
        module = case_module(make_bn_net(), optimizer="sgd", lr=0.05)
        train, val = make_loaders()
        trainer = make_trainer(tmp_path, callbacks, deterministic=True, max_epochs=2)
        trainer.fit(module, train, val)
        return module, torch.get_rng_state()

    base, base_rng = fit([])
    cb = FeatureVisualization(steps=8, max_channels=2, every_n_epochs=1, store_dir=tmp_path / "s")
    watched, rng = fit([cb])
    for a, b in zip(base.state_dict().values(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(base_rng, rng)
    assert all(m.training for m in watched.modules())
    assert len(RunStore(tmp_path / "s").records("featvis")) == 2 * 4  # 2 epochs x 4 layers


def test_sequence_models_are_skipped_with_a_warning(tmp_path):
    module = case_module(make_conv1d_net())
    train, val = make_loaders((4, 20), num_classes=3)
    cb = FeatureVisualization(steps=4, store_dir=tmp_path / "s", strict=False)
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.warns(
        UserWarning, match="FeatureVisualization is off for this fit: it needs image"
    ):
        trainer.fit(module, train, val)
    assert trainer.state.finished
    assert RunStore(tmp_path / "s").records("featvis") == []
    with pytest.raises(ValueError, match="FeatureVisualization: it needs image inputs"):
        strict = FeatureVisualization(steps=4, store_dir=tmp_path / "t", strict=True)
        make_trainer(tmp_path, [strict], max_epochs=1).fit(module, train, val)


def test_sigterm_during_feature_visualisation_stops_it_promptly(tmp_path, monkeypatch) -> None:
    """SIGTERM while the images are optimised: stop at the next step, keep what was done."""
    import os
    import signal

    from cnnviz.callbacks.progress import Progress

    sent = []
    original = Progress.update

    def update(self: Progress, n: int = 1) -> None:
        original(self, n)
        if not sent and self.done >= 3:  # a few steps in: the user's job scheduler stops us
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Progress, "update", update)
    module = case_module(make_lenet())
    train, val = make_loaders()
    cb = FeatureVisualization(steps=400, max_channels=2, store_dir=tmp_path / "s")
    with pytest.warns(UserWarning, match=r"stopped after .* the trainer was asked to stop"):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(module, train, val)
    assert sent
    store = RunStore(tmp_path / "s")
    records = store.records("featvis")
    # the first layer stopped after a few of its 400 steps; no later layer was begun
    assert len(records) <= 1
    for record in records:
        assert record.meta["stopped_at"] is not None and record.meta["stopped_at"] < 400
    assert store.run_info()["status"] in ("finished", "interrupted")
    assert signal.getsignal(signal.SIGTERM) is not None


def test_ctrl_c_during_feature_visualisation_leaves_a_consistent_store(tmp_path, monkeypatch):
    """Ctrl-C: Lightning shuts down (SystemExit); the store is flushed, marked, reported on."""
    import signal

    from cnnviz.callbacks.progress import Progress

    def update(self: Progress, n: int = 1) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "update", update)
    monkeypatch.setenv("CNNVIZ_AUTO_REPORT", "1")
    previous = signal.getsignal(signal.SIGINT)
    module = case_module(make_lenet())
    leak = hook_count(module)
    train, val = make_loaders()
    cb = FeatureVisualization(steps=50, max_channels=2)
    try:
        with pytest.raises(SystemExit):
            make_trainer(tmp_path, [cb], max_epochs=1).fit(module, train, val)
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT while it shuts down
    store = RunStore(tmp_path / "cnnviz")
    assert store.run_info()["status"] == "interrupted"
    assert (tmp_path / "report.html").is_file()
    assert hook_count(module) == leak
