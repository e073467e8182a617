import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnviz.module import CaseStudyModule


def _loader(n=32, classes=3, size=32, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_wraps_registry_model_with_data_info():
    m = CaseStudyModule("lenet5", data_info={"num_classes": 9, "in_channels": 3, "input_size": 32})
    assert m.expected_input_shape == (3, 32, 32)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 9)


def test_model_kwargs_override_data_info():
    m = CaseStudyModule(
        "lenet5", model_kwargs={"num_classes": 4}, data_info={"num_classes": 9, "in_channels": 3}
    )
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_wraps_any_module_and_trains(tmp_path):
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    m = CaseStudyModule(net, optimizer="adam", lr=1e-2, scheduler="step", step_size=1)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(m, _loader(), _loader(seed=1))
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert key in trainer.callback_metrics


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "lenet6"}, ValueError, "lenet5"),
        ({"model": 3}, TypeError, "`model`"),
        ({"optimizer": "rmsprop"}, ValueError, "`optimizer`"),
        ({"scheduler": "poly"}, ValueError, "`scheduler`"),
        ({"lr": 0.0}, ValueError, "`lr`"),
        ({"momentum": 1.5}, ValueError, "`momentum`"),
        ({"weight_decay": -1.0}, ValueError, "`weight_decay`"),
        ({"label_smoothing": 1.0}, ValueError, "`label_smoothing`"),
        ({"model": nn.Linear(2, 2), "model_kwargs": {"x": 1}}, ValueError, "`model_kwargs`"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        CaseStudyModule(**kwargs)


def test_wrong_input_size_is_a_clear_error():
    m = CaseStudyModule("lenet5", data_info={"num_classes": 9, "in_channels": 3})
    with pytest.raises(ValueError, match="32, 32"):
        m(torch.zeros(1, 3, 28, 28))


@pytest.mark.parametrize("opt,sched", [("sgd", "cosine"), ("adamw", "onecycle"), ("adam", "none")])
def test_recipes_configure(tmp_path, opt, sched):
    m = CaseStudyModule(
        "lenet5", data_info={"num_classes": 3, "in_channels": 3}, optimizer=opt, scheduler=sched
    )
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    before = [p.detach().clone() for p in m.parameters()]
    trainer.fit(m, _loader(), _loader(seed=1))
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters(), strict=True))
