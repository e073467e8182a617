"""The surface every data module shares, checked on all registry entries."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz import data
from cnnviz.data import DATAMODULES, CnnvizDataModule, available, create

NAMES = ["shapes", "mnist", "fashion_mnist", "cifar10", "imagefolder", "go", "sentences"]


def _make(name: str, tmp_path: Path, writers: SimpleNamespace) -> CnnvizDataModule:
    small = {"batch_size": 4}
    if name == "shapes":
        return create(name, num_train=12, num_val=10, **small)
    if name in ("mnist", "fashion_mnist"):
        writers.mnist(tmp_path, folder="MNIST" if name == "mnist" else "FashionMNIST")
        return create(name, data_dir=str(tmp_path), **small)
    if name == "cifar10":
        writers.cifar(tmp_path)
        return create(name, data_dir=str(tmp_path), verify_integrity=False, **small)
    if name == "imagefolder":
        writers.image_folder(tmp_path / "imgs")
        return create(name, root=str(tmp_path / "imgs"), image_size=24, **small)
    if name == "go":
        return create(name, num_train=12, num_val=10, **small)
    return create(name, num_train=12, num_val=10, seq_len=20, vocab_size=60, **small)


@pytest.fixture(params=NAMES)
def module(request: pytest.FixtureRequest, tmp_path: Path, writers: SimpleNamespace) -> Callable:
    return lambda: _make(request.param, tmp_path, writers)


def test_registry() -> None:
    assert available() == NAMES == list(DATAMODULES)
    assert isinstance(create("Fashion-MNIST", data_dir="x"), data.FashionMNISTDataModule)
    with pytest.raises(ValueError, match=r"unknown data module 'svhn'.*shapes, mnist, fashion"):
        create("svhn")
    with pytest.raises(TypeError, match="`name`"):
        create(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        create("go", image_size=32)  # not an argument of GoDataModule


def test_common_surface(module: Callable) -> None:
    dm = module()
    assert isinstance(dm, CnnvizDataModule)
    assert dm.task in ("image", "go", "text")
    assert isinstance(dm.num_classes, int) and dm.num_classes == len(dm.class_names)
    assert all(isinstance(c, str) for c in dm.class_names)
    kwargs = dm.model_kwargs
    assert kwargs["num_classes"] == dm.num_classes and "input_size" in kwargs
    if dm.task == "text":
        assert dm.input_shape == (kwargs["input_size"],) and "vocab_size" in kwargs
    else:
        assert dm.input_shape[0] == kwargs["in_channels"]
        assert dm.input_shape[1:] == (kwargs["input_size"],) * 2

    torch.manual_seed(7)
    state = torch.get_rng_state()
    x, y = dm.probe(3)
    masks = dm.probe_masks(3)
    assert torch.equal(torch.get_rng_state(), state)
    assert tuple(x.shape) == (3, *dm.input_shape)
    assert y.dtype == torch.int64 and y.shape == (3,)
    assert ((y >= 0) & (y < dm.num_classes)).all()
    assert (masks is not None) == dm.has_masks == (type(dm).name == "shapes")
    x2, y2 = dm.probe(3)
    assert torch.equal(x, x2) and torch.equal(y, y2)

    if dm.task == "image":
        assert len(dm.mean) == len(dm.std) == dm.input_shape[0]
        shown = dm.denormalize(x)
        assert shown.shape == x.shape and shown.min() >= 0 and shown.max() <= 1
    else:
        assert not hasattr(dm, "denormalize")

    dm.setup("fit")
    xb, yb = next(iter(dm.train_dataloader()))
    assert tuple(xb.shape[1:]) == dm.input_shape and yb.dtype == torch.int64
    xv, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(xv[:3], x)  # the probe is the head of the validation loader


def test_denormalize_validates_input() -> None:
    dm = create("shapes")
    with pytest.raises(ValueError, match=r"`x`.*C=3"):
        dm.denormalize(torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="`x`"):
        dm.denormalize([0.0])
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(data.denormalize(x, [0.0] * 3, [1.0] * 3), x.clamp(0, 1))


def test_hyperparameters_are_saved() -> None:
    dm = create("shapes", image_size=48, num_train=10)
    assert dm.hparams["image_size"] == 48 and dm.hparams["num_train"] == 10


class _Tiny(pl.LightningModule):
    """Smallest model that fits any of the data modules' inputs."""

    def __init__(self, dm: CnnvizDataModule) -> None:
        super().__init__()
        if dm.task == "text":
            self.net = nn.Sequential(
                nn.Embedding(dm.model_kwargs["vocab_size"], 4),
                nn.Flatten(),
                nn.Linear(4 * dm.input_shape[0], dm.num_classes),
            )
        else:
            self.net = nn.Sequential(
                nn.Flatten(), nn.Linear(math.prod(dm.input_shape), dm.num_classes)
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm: CnnvizDataModule) -> list[torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    model = _Tiny(dm)
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
@pytest.mark.parametrize("name", ["shapes", "go", "sentences"])
def test_trainer_fit_is_reproducible_under_seed_everything(name: str) -> None:
    kwargs = {"num_train": 24, "num_val": 8, "batch_size": 4}
    if name == "sentences":
        kwargs.update(seq_len=20, vocab_size=60)
    first = _fit(create(name, **kwargs))
    second = _fit(create(name, **kwargs))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
