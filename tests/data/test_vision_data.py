"""The torchvision data modules, run through torchvision's real loaders on tiny test-made files."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from cnnviz.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)

# ------------------------------------------------------------------------------------ MNIST


def test_mnist_reads_raw_idx_files_and_pads_to_32(tmp_path: Path, writers: SimpleNamespace) -> None:
    data = writers.mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=4)
    x, y = dm.probe(3)
    images, labels = data["val"]
    assert x.shape == (3, 1, 32, 32) and y.tolist() == labels[:3].tolist()
    raw = dm.denormalize(x)
    assert torch.allclose(raw[:, 0, 2:30, 2:30], torch.from_numpy(images[:3]) / 255.0, atol=1e-5)
    assert torch.all(raw[:, :, :2] == 0) and torch.all(raw[:, :, :, 30:] == 0)  # zero padding
    train = dm.dataset("train")
    assert len(train) == 12 and len(dm.dataset("val")) == 6
    xb, yb = next(iter(dm.val_dataloader()))
    assert xb.shape == (4, 1, 32, 32) and yb.dtype == torch.int64


@pytest.mark.parametrize(("size", "shape"), [(28, (1, 28, 28)), (64, (1, 64, 64))])
def test_mnist_native_and_resized(
    tmp_path: Path, size: int, shape: tuple[int, ...], writers: SimpleNamespace
) -> None:
    data = writers.mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), image_size=size)
    x, _ = dm.probe(2, split="train")
    assert x.shape[1:] == shape == dm.input_shape
    if size == 28:
        expected = torch.from_numpy(data["train"][0][:2]).float() / 255.0
        assert torch.allclose(dm.denormalize(x)[:, 0], expected, atol=1e-5)


def test_fashion_mnist_reads_gz_archives(tmp_path: Path, writers: SimpleNamespace) -> None:
    data = writers.mnist(tmp_path, folder="FashionMNIST", gz=True)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), image_size=28)
    x, y = dm.probe(4, split="train")
    assert y.tolist() == data["train"][1][:4].tolist()
    expected = torch.from_numpy(data["train"][0][:4]).float() / 255.0
    assert torch.allclose(dm.denormalize(x)[:, 0], expected, atol=1e-5)
    assert (tmp_path / "FashionMNIST/raw/train-images-idx3-ubyte").is_file()
    assert dm.class_names[0] == "T-shirt/top" and dm.num_classes == 10


def test_mnist_surface_works_without_files(tmp_path: Path) -> None:
    dm = MNISTDataModule(data_dir=str(tmp_path))
    assert dm.num_classes == 10 and dm.class_names == [str(d) for d in range(10)]
    assert dm.model_kwargs == {"num_classes": 10, "in_channels": 1, "input_size": 32}
    assert dm.task == "image" and not dm.has_masks
    assert dm.probe_masks(2) is None  # no masks, and nothing is read


@pytest.mark.parametrize("cls", [MNISTDataModule, FashionMNISTDataModule])
def test_mnist_missing_files_error(tmp_path: Path, cls: type) -> None:
    dm = cls(data_dir=str(tmp_path / "nowhere"))
    dm.prepare_data()  # download=False: nothing happens, no network
    with pytest.raises(DatasetNotFoundError) as info:
        dm.probe(2)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    folder = "FashionMNIST" if cls is FashionMNISTDataModule else "MNIST"
    assert str((tmp_path / "nowhere" / folder / "raw").resolve()) in msg
    assert "download=True" in msg and "--data.download true" in msg
    assert "train-images-idx3-ubyte" in msg
    assert err.path == str(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------- CIFAR-10


def test_cifar_reads_pickles_without_md5_check(tmp_path: Path, writers: SimpleNamespace) -> None:
    data = writers.cifar(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), verify_integrity=False, batch_size=5)
    assert len(dm.dataset("train")) == 20 and len(dm.dataset("val")) == 6
    x, y = dm.probe(6, split="train")
    flat, labels = data["train"]
    assert y.tolist() == labels[:6]
    expected = torch.from_numpy(flat[:6].reshape(6, 3, 32, 32)).float() / 255.0
    assert torch.allclose(dm.denormalize(x), expected, atol=1e-5)
    xb, _ = next(iter(dm.train_dataloader()))
    assert xb.shape == (5, 3, 32, 32)


def test_cifar_md5_check_is_on_by_default(cifar_dir: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(cifar_dir))
    with pytest.raises(RuntimeError, match=r"MD5 check.*verify_integrity=False"):
        dm.probe(2)


def test_cifar_extracts_a_tarball_placed_by_hand(tmp_path: Path, writers: SimpleNamespace) -> None:
    data = writers.cifar(tmp_path, as_tarball=True)
    assert not (tmp_path / "cifar-10-batches-py").exists()
    dm = CIFAR10DataModule(data_dir=str(tmp_path), verify_integrity=False, image_size=48)
    x, y = dm.probe(3)
    assert x.shape == (3, 3, 48, 48) and y.tolist() == data["val"][1][:3]


def test_cifar_missing_files_error(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    assert dm.class_names[:2] == ["airplane", "automobile"]
    assert dm.model_kwargs == {"num_classes": 10, "in_channels": 3, "input_size": 32}
    with pytest.raises(DatasetNotFoundError, match=r"--data\.download true") as info:
        dm.setup("fit")
    msg = str(info.value)
    assert str((tmp_path / "cifar-10-batches-py").resolve()) in msg
    assert "data_batch_1" in msg and "cifar-10-python.tar.gz" in msg


# ------------------------------------------------------------------------------ image folder


def test_image_folder_fraction_split(image_folder: Path, writers: SimpleNamespace) -> None:
    dm = ImageFolderDataModule(str(image_folder), image_size=32, val_fraction=0.4, seed=1)
    assert dm.class_names == sorted(writers.colours) and dm.num_classes == 3
    train, val = dm.dataset("train"), dm.dataset("val")
    assert isinstance(train, Subset) and isinstance(val, Subset)
    assert len(val) == 6 and len(train) == 9  # 2 of 5 per class
    assert not set(train.indices) & set(val.indices)
    labels = [val.dataset.targets[i] for i in val.indices]
    assert np.bincount(labels).tolist() == [2, 2, 2]
    again = ImageFolderDataModule(str(image_folder), image_size=32, val_fraction=0.4, seed=1)
    assert again.dataset("val").indices == val.indices
    other = ImageFolderDataModule(str(image_folder), image_size=32, val_fraction=0.4, seed=2)
    assert other.dataset("val").indices != val.indices
    x, y = dm.probe(6)
    assert x.shape == (6, 3, 32, 32)
    for img, label in zip(dm.denormalize(x), y, strict=True):
        colour = torch.tensor(writers.colours[dm.class_names[label]]) / 255.0
        assert torch.allclose(img.mean((1, 2)), colour, atol=1e-3)


def test_image_folder_train_val_subfolders_and_grayscale(
    tmp_path: Path, writers: SimpleNamespace
) -> None:
    writers.image_folder(tmp_path / "train", per_class=3)
    writers.image_folder(tmp_path / "val", per_class=2)
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, channels=1)
    assert dm.class_names == sorted(writers.colours)
    assert len(dm.dataset("train")) == 9 and len(dm.dataset("val")) == 6
    x, _ = dm.probe(2)
    assert x.shape == (2, 1, 16, 16) == (2, *dm.input_shape)
    assert dm.model_kwargs == {"num_classes": 3, "in_channels": 1, "input_size": 16}


def test_image_folder_errors(tmp_path: Path, writers: SimpleNamespace) -> None:
    with pytest.raises(DatasetNotFoundError, match="not found"):
        ImageFolderDataModule(str(tmp_path / "missing")).num_classes  # noqa: B018
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        ImageFolderDataModule(str(tmp_path / "empty")).class_names  # noqa: B018
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DatasetNotFoundError, match="at least one image"):
        ImageFolderDataModule(str(tmp_path / "empty")).probe(1)
    writers.image_folder(tmp_path / "one", per_class=1)
    with pytest.raises(ValueError, match="no validation images"):
        ImageFolderDataModule(str(tmp_path / "one")).probe(1)
    writers.image_folder(tmp_path / "mismatch" / "train", per_class=1)
    writers.image_folder(tmp_path / "mismatch" / "val", per_class=1)
    (tmp_path / "mismatch" / "val" / "extra").mkdir()
    with pytest.raises(ValueError, match="differ"):
        ImageFolderDataModule(str(tmp_path / "mismatch")).class_names  # noqa: B018


@pytest.mark.parametrize(
    ("cls", "kwargs", "error", "match"),
    [
        (MNISTDataModule, {"image_size": 4}, ValueError, "`image_size`"),
        (MNISTDataModule, {"download": "yes"}, TypeError, "`download`"),
        (MNISTDataModule, {"data_dir": 3}, TypeError, "`data_dir`"),
        (CIFAR10DataModule, {"verify_integrity": 1}, TypeError, "`verify_integrity`"),
        (ImageFolderDataModule, {"root": ".", "channels": 4}, ValueError, "`channels`"),
        (ImageFolderDataModule, {"root": ".", "val_fraction": 0.0}, ValueError, "`val_fraction`"),
        (ImageFolderDataModule, {"root": ".", "mean": [0.5, 0.5]}, ValueError, "`mean`"),
        (ImageFolderDataModule, {"root": ".", "std": 0.0}, ValueError, "`std`"),
    ],
)
def test_vision_modules_reject_bad_arguments(
    cls: type, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        cls(**kwargs)
