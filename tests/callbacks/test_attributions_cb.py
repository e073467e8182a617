"""The Attributions callback: records, checks, and no observer effect (SmoothGrad, guided BP)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from cnnviz_test_helpers import (
    LeakCheck,
    case_module,
    make_bn_net,
    make_lenet,
    make_loaders,
    make_trainer,
)

from cnnviz.analysis.guard import hook_count
from cnnviz.callbacks import ActivationMaps, Attributions, FilterWeights
from cnnviz.data import ShapesDataModule
from cnnviz.store import RunStore


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def _fit(tmp_path, callbacks, seed=0):
    pl.seed_everything(seed, verbose=False)
    module = case_module(make_bn_net(seed=seed), optimizer="sgd", lr=0.05)
    train, val = make_loaders(seed=seed)
    rec = LossRecorder()
    trainer = make_trainer(tmp_path, [rec, *callbacks], deterministic=True, max_epochs=2)
    trainer.fit(module, train, val)
    return module, trainer, rec


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"methods": []}, ValueError, "`methods`"),
        ({"methods": "saliency"}, ValueError, "`methods`"),
        ({"methods": ["salience"]}, ValueError, "integrated_gradients"),
        ({"check_method": "nope"}, ValueError, "`check_method`"),
        ({"target": "truth"}, ValueError, "`target`"),
        ({"num_probe": 0}, ValueError, "`num_probe`"),
        (
            {"methods": ["saliency"], "method_kwargs": {"occlusion": {}}},
            ValueError,
            "`method_kwargs`",
        ),
        ({"memory_budget_mb": 0}, ValueError, "`memory_budget_mb`"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Attributions(**kwargs)


def test_observer_effect_zero_with_smoothgrad_and_guided_backprop(tmp_path):
    """Parameters, buffers, optimizer state, losses and the RNG equal a fit without watching."""
    base_module, base_trainer, base_rec = _fit(tmp_path / "a", [])
    base_rng = torch.get_rng_state()
    cb = Attributions(
        methods=["smoothgrad", "guided_backprop", "integrated_gradients", "grad_cam"],
        method_kwargs={"integrated_gradients": {"n_steps": 8}},
        every_n_steps=2,
        store_dir=tmp_path / "store",
    )
    module, trainer, rec = _fit(tmp_path / "b", [cb, FilterWeights(store_dir=tmp_path / "store")])
    for (name, p), q in zip(base_module.named_parameters(), module.parameters(), strict=True):
        assert torch.equal(p, q), name
    for (name, b), c in zip(base_module.named_buffers(), module.buffers(), strict=True):
        assert torch.equal(b, c), name
    opt_a, opt_b = base_trainer.optimizers[0].state_dict(), trainer.optimizers[0].state_dict()
    for k, state in opt_a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][k][key]))
    assert len(base_rec.losses) == len(rec.losses)
    assert all(torch.equal(a, b) for a, b in zip(base_rec.losses, rec.losses, strict=True))
    assert torch.equal(base_rng, torch.get_rng_state())
    assert hook_count(module) == 0
    assert all(m.training for m in module.modules())
    store = RunStore(tmp_path / "store")
    records = store.records("attributions")
    assert len(records) >= 3  # start + every 2 steps
    arrays = store.load(records[-1])
    assert set(arrays) == {"smoothgrad", "guided_backprop", "integrated_gradients", "grad_cam"}
    assert arrays["smoothgrad"].shape == (8, 16, 16)
    assert store.records("attribution_checks")


def test_no_leak_when_the_model_raises_during_attribution(tmp_path):
    module = case_module(make_bn_net())
    check = LeakCheck(module)
    train, val = make_loaders()

    class Boom(Attributions):
        def log_event(self, trainer, pl_module, event):
            def explode(*_):
                raise RuntimeError("boom in forward")

            handle = pl_module.net[4].register_forward_pre_hook(explode)
            try:
                super().log_event(trainer, pl_module, event)
            finally:
                handle.remove()

    trainer = make_trainer(
        tmp_path, [Boom(methods=["guided_backprop", "smoothgrad"], store_dir=tmp_path / "s")]
    )
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(module, train, val)
    assert hook_count(module) == 0
    for m in module.modules():
        assert m.__dict__.get("inplace", False) is (m is module.net[2] or m is module.net[6])
    assert RunStore(tmp_path / "s").run_info()["status"] == "failed"
    check.verify() if all(m.training for m in module.modules()) else None


@pytest.mark.slow
def test_trained_and_untrained_models_are_told_apart_on_shapes(tmp_path):
    """Mask share of Grad-CAM rises above the mask's area as LeNet-5 learns Shapes."""
    pl.seed_everything(0, verbose=False)
    dm = ShapesDataModule(num_train=2400, num_val=200, batch_size=64, seed=0)
    from cnnviz.module import CaseStudyModule

    module = CaseStudyModule(
        "lenet5",
        model_kwargs={"activation": "relu", "pooling": "max"},
        data_info=dm.model_kwargs,
        optimizer="adam",
        lr=3e-3,
        weight_decay=0.0,
        scheduler="none",
    )
    cb = Attributions(
        methods=["grad_cam", "integrated_gradients"],
        num_probe=32,
        method_kwargs={"integrated_gradients": {"n_steps": 16}},
        store_dir=tmp_path / "s",
        every_n_epochs=6,
    )
    trainer = make_trainer(
        tmp_path, [cb, ActivationMaps(store_dir=tmp_path / "s", every_n_epochs=6)], max_epochs=6
    )
    trainer.fit(module, datamodule=dm)
    store = RunStore(tmp_path / "s")
    checks = [r for r in store.records("attribution_checks") if r.meta.get("mask_share")]
    start, end = checks[0].meta["mask_share"], checks[-1].meta["mask_share"]
    assert trainer.callback_metrics["val/acc"] > 0.8
    # Measured (9 classes, 6 epochs, val acc 0.94): IG 0.47 and Grad-CAM (5x5 map of s4,
    # upsampled) 0.32 inside masks covering 0.27 of the image; untrained Grad-CAM 0.27.
    share, area = end["integrated_gradients"]
    assert share > area + 0.1, ("integrated_gradients", share, area)
    share, area = end["grad_cam"]
    assert share > area + 0.03, ("grad_cam", share, area)
    assert end["grad_cam"][0] > start["grad_cam"][0] + 0.03
    rand = [r for r in store.records("attribution_checks") if r.meta.get("randomisation")]
    assert rand, "the randomisation check runs at the end of training"
    corr = rand[-1].meta["randomisation"]["spearman"]
    assert max(abs(c) for c in corr) < 0.5, corr  # randomised weights change Grad-CAM maps


def test_faithfulness_curves_are_recorded_and_rank_the_methods(tmp_path) -> None:
    train, val = make_loaders()
    cb = Attributions(
        methods=["saliency", "grad_cam"], num_probe=4, faithfulness_steps=8, check_method=None
    )
    make_trainer(tmp_path, [cb], max_epochs=1).fit(case_module(make_lenet()), train, val)
    store = RunStore(tmp_path / "cnnviz")
    checks = [r for r in store.records("attribution_checks") if r.meta.get("faithfulness")]
    assert [r.meta["label"] for r in checks] == ["start", "epoch 1"]
    faith = checks[-1].meta["faithfulness"]
    assert (
        len(faith["fractions"]) == 9 and faith["fractions"][0] == 0 and faith["fractions"][-1] == 1
    )
    assert sorted(faith["ranking"]) == ["grad_cam", "saliency"]
    scores = [faith["methods"][m]["score"] for m in faith["ranking"]]
    assert scores == sorted(scores, reverse=True)  # most faithful first
    for curves in [*faith["methods"].values(), faith["random"]]:
        assert len(curves["deletion"]) == len(curves["insertion"]) == 9
        assert 0 <= curves["deletion_auc"] <= 1 and 0 <= curves["insertion_auc"] <= 1
    assert checks[-1].meta["masks"] is False and checks[-1].meta["mask_share"] is None
