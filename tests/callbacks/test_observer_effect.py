"""Watching must not change training, and nothing may leak, also when something raises."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from cnnviz_test_helpers import (
    LeakCheck,
    PlainModule,
    case_module,
    make_bn_net,
    make_lenet,
    make_loaders,
    make_trainer,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from cnnviz.analysis.guard import hook_count
from cnnviz.callbacks import ActivationMaps, FilterWeights
from cnnviz.store import RunStore


class LossRecorder(pl.Callback):
    """Keeps every training step's loss."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


class Outcome:
    """Everything a fit leaves behind that watching must not change."""

    def __init__(self, module: pl.LightningModule, trainer: pl.Trainer, rec: LossRecorder):
        self.params = {n: p.detach().clone() for n, p in module.named_parameters()}
        self.buffers = {n: b.clone() for n, b in module.named_buffers()}
        self.optimizer = trainer.optimizers[0].state_dict()
        self.metrics = {k: v.clone() for k, v in trainer.callback_metrics.items()}
        self.losses = rec.losses
        self.rng = torch.get_rng_state()

    def assert_identical(self, other: Outcome) -> None:
        assert self.params.keys() == other.params.keys()
        for name, value in self.params.items():
            assert torch.equal(value, other.params[name]), name
        assert self.buffers.keys() == other.buffers.keys()
        for name, value in self.buffers.items():
            assert torch.equal(value, other.buffers[name]), name
        assert self.optimizer["param_groups"] == other.optimizer["param_groups"]
        mine, theirs = self.optimizer["state"], other.optimizer["state"]
        assert mine.keys() == theirs.keys() and mine
        for index, state in mine.items():
            assert state.keys() == theirs[index].keys()
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(theirs[index][key]))
        assert self.metrics.keys() == other.metrics.keys() and "val/loss" in self.metrics
        for key, value in self.metrics.items():
            assert torch.equal(value, other.metrics[key]), key
        assert len(self.losses) == len(other.losses) == 12
        assert all(torch.equal(a, b) for a, b in zip(self.losses, other.losses, strict=True))
        assert torch.equal(self.rng, other.rng)


MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "lenet": (make_lenet, {"optimizer": "sgd", "scheduler": "cosine"}),
    "bn_dropout": (make_bn_net, {"optimizer": "adam", "lr": 1e-3}),
}


def _fit(root, model: str, callbacks: list[pl.Callback], **trainer_kw: Any) -> tuple[Outcome, Any]:
    make_net, module_kw = MODELS[model]
    pl.seed_everything(1234)
    module = case_module(make_net(seed=0), **module_kw)
    if model == "bn_dropout":
        module.net[5].eval()  # mixed modes: a frozen BatchNorm
    check = LeakCheck(module)
    train, val = make_loaders(n_train=64, shuffle=True)  # 4 batches, reshuffled each epoch
    rec = LossRecorder()
    trainer = make_trainer(
        root,
        [*callbacks, rec],
        max_epochs=3,
        deterministic=True,
        num_sanity_val_steps=1,
        **trainer_kw,
    )
    trainer.fit(module, train, val)
    check.verify()
    return Outcome(module, trainer, rec), trainer


_BASELINES: dict[str, Outcome] = {}


def _baseline(tmp_path_factory, model: str) -> Outcome:
    if model not in _BASELINES:
        _BASELINES[model] = _fit(tmp_path_factory.mktemp(f"base-{model}"), model, [])[0]
    return _BASELINES[model]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("cadence", ["epoch", "step"])
def test_fit_is_bit_identical_with_the_callbacks(tmp_path, tmp_path_factory, model, cadence):
    steps = 2 if cadence == "step" else None
    callbacks = [
        FilterWeights(every_n_steps=steps),
        ActivationMaps(every_n_steps=steps, num_probe=4),
    ]
    logger = (TensorBoardLogger if cadence == "epoch" else CSVLogger)(tmp_path)
    watched, trainer = _fit(tmp_path, model, callbacks, logger=logger)
    _baseline(tmp_path_factory, model).assert_identical(watched)
    store = RunStore(trainer.log_dir + "/cnnviz")
    expected = 4 if cadence == "epoch" else 7  # start + 3 epochs, or start + steps 2..12
    assert len(store.records("filters", layer="net.0")) == expected
    assert len(store.records("activations", layer="net.0")) == expected
    assert store.run_info()["status"] == "finished"


class NaiveProbe(pl.Callback):
    """What cnnviz must not do: a forward pass on the probe in the module's current mode."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with torch.no_grad():
            pl_module(trainer.val_dataloaders.dataset.tensors[0][:4])


def test_the_comparison_detects_a_disturbing_observer(tmp_path, tmp_path_factory) -> None:
    disturbed, _ = _fit(tmp_path, "bn_dropout", [NaiveProbe()])
    with pytest.raises(AssertionError):
        _baseline(tmp_path_factory, "bn_dropout").assert_identical(disturbed)


# ------------------------------------------------------------------------------ no leaks
def _failing_fit(tmp_path, module: pl.LightningModule, callbacks: list[pl.Callback], match: str):
    train, val = make_loaders()
    check = LeakCheck(module)
    with pytest.raises(Exception, match=match):
        make_trainer(tmp_path, callbacks, max_epochs=2).fit(module, train, val)
    check.verify()
    assert hook_count(module) == 0
    run = RunStore(tmp_path / "cnnviz").run_info()
    assert run["status"] == "failed"
    return run


class FailingFilters(FilterWeights):
    """Raises after writing its records at the first epoch event."""

    def log_event(self, trainer, pl_module, event) -> None:
        super().log_event(trainer, pl_module, event)
        if event.tag == "epoch":
            raise RuntimeError("log_event failed")


class FailingInsideCapture(ActivationMaps):
    """Asks for a channel that does not exist: the capture hook raises during the forward."""

    def on_setup(self, trainer, pl_module) -> None:
        self._channels = {"net.3": [99]}


def _mixed_module() -> pl.LightningModule:
    module = case_module(make_bn_net())
    module.net[1].eval()
    module.net[10].eval()
    return module


def test_no_leak_when_log_event_raises(tmp_path) -> None:
    cbs = [FailingFilters(), ActivationMaps(num_probe=2)]
    run = _failing_fit(tmp_path, _mixed_module(), cbs, "log_event failed")
    assert run["error"] == "RuntimeError: log_event failed"


def test_no_leak_when_the_capture_hook_raises(tmp_path) -> None:
    cbs = [FilterWeights(), FailingInsideCapture(num_probe=2)]
    run = _failing_fit(tmp_path, _mixed_module(), cbs, "index|out of")
    assert "99" in run["error"] or "index" in run["error"].lower()


class ProbeHater(nn.Module):
    """Fails on a batch of the probe's size once training has run for an epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_bn_net()
        self.epoch_done = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.epoch_done and x.shape[0] == 3:
            raise RuntimeError("forward failed on the probe")
        return self.net(x)


class MarkEpochAtEnd(pl.Callback):
    """Placed before the cnnviz callbacks: the epoch event's probe forward then fails."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.net.epoch_done = True


def test_no_leak_when_the_model_raises_on_the_probe(tmp_path) -> None:
    module = case_module(ProbeHater())
    module.net.net[5].eval()
    cbs = [MarkEpochAtEnd(), FilterWeights(), ActivationMaps(num_probe=3)]
    run = _failing_fit(tmp_path, module, cbs, "forward failed on the probe")
    assert "forward failed on the probe" in run["error"]
    store = RunStore(tmp_path / "cnnviz")
    assert [r.meta["label"] for r in store.records("activations", layer="net.net.0")] == ["start"]


class ExplodingModule(PlainModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == 4:
            raise RuntimeError("training_step failed")
        return super().training_step(batch, batch_idx)


def test_no_leak_when_training_step_raises(tmp_path) -> None:
    module = ExplodingModule()
    module.features[2].eval()
    cbs = [FilterWeights(every_n_steps=1), ActivationMaps(every_n_steps=1, num_probe=2)]
    run = _failing_fit(tmp_path, module, cbs, "training_step failed")
    assert run["error"] == "RuntimeError: training_step failed"
    assert all(not cb._grads for cb in cbs[:1])
    # nothing held between events is on the model's device: the probe stays on the CPU
    assert cbs[1]._probe is not None and cbs[1]._probe.x.device.type == "cpu"
