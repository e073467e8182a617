"""Tiny data files in the real torchvision formats, written by the tests themselves."""

from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_TRAIN = [f"data_batch_{k}" for k in range(1, 6)]


def _idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">iiii", 0x0803, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(
    root: Path, folder: str = "MNIST", n_train: int = 12, n_val: int = 6, gz: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write idx-ubyte files under ``root/folder/raw`` (``.gz`` only if ``gz``); return the data."""
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("val", n_val)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for name, payload in zip(
            MNIST_FILES[split], (_idx_images(images), _idx_labels(labels)), strict=True
        ):
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (raw / name).write_bytes(payload)
        data[split] = (images, labels)
    return data


def write_cifar(
    root: Path, per_batch: int = 4, n_val: int = 6, as_tarball: bool = False
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write CIFAR-10 python pickles under ``root/cifar-10-batches-py`` (or as the .tar.gz)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = [], []
    for k, name in enumerate(CIFAR_TRAIN):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [(k * per_batch + j) % 10 for j in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        train_data.append(data)
        train_labels += labels
    val = rng.integers(0, 256, size=(n_val, 3072), dtype=np.uint8)
    val_labels = [j % 10 for j in range(n_val)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": val, "labels": val_labels, "batch_label": "test"}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)
    if as_tarball:
        with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname=folder.name)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return {"train": (np.concatenate(train_data), train_labels), "val": (val, val_labels)}


CLASS_COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def write_image_folder(root: Path, per_class: int = 5, size: int = 40) -> None:
    """Write solid-colour PNGs to ``root/<class>/<k>.png``, one colour per class."""
    for name, colour in CLASS_COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            Image.new("RGB", (size + k, size), colour).save(root / name / f"{k}.png")


@pytest.fixture
def writers() -> SimpleNamespace:
    """The file writers of this module, for tests that need their own layout."""
    return SimpleNamespace(
        mnist=write_mnist,
        cifar=write_cifar,
        image_folder=write_image_folder,
        colours=CLASS_COLOURS,
    )


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    write_mnist(tmp_path)
    write_mnist(tmp_path, folder="FashionMNIST", gz=True)
    return tmp_path


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    write_cifar(tmp_path)
    return tmp_path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    write_image_folder(root)
    return root
