"""Torchvision data sets as cnnviz data modules: MNIST, Fashion-MNIST, CIFAR-10, image folders.

Nothing is downloaded unless ``download=True`` (CLI: ``--data.download true``), and then only in
``prepare_data`` (global rank zero per node). Without the files, building a split raises
:class:`~cnnviz.data.base.DatasetNotFoundError` saying where the files were looked for and how
to get them. ``num_classes``, ``class_names``, ``input_shape`` and ``model_kwargs`` of MNIST,
Fashion-MNIST and CIFAR-10 are known without the files; :class:`ImageFolderDataModule` reads its
class names from the folder names, so it needs the folder. ``probe`` needs the files.

The ``"train"`` split is the official training set and ``"val"`` the official test set.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.error import URLError

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.datasets.utils import extract_archive

from cnnviz.data.base import (
    DatasetNotFoundError,
    ImageDataModule,
    check_channels,
    check_float,
    check_int,
    check_seed,
    check_stats,
)

__all__ = [
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
]

_MIN_SIZE, _MAX_SIZE = 8, 1024
_CLI_HINT = "pass download=True (CLI: --data.download true) on a machine with internet access"


def _check_data_dir(owner: str, data_dir: Any) -> Path:
    if not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(
            f"{owner}: `data_dir` must be a path (str or os.PathLike); got "
            f"{type(data_dir).__name__} {data_dir!r}."
        )
    return Path(data_dir).expanduser()


def _check_bool(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: `{name}` must be True or False; got {value!r}.")
    return value


def _atomic_gunzip(source: Path, target: Path) -> None:
    """Decompress ``source`` to ``target`` through a temporary file (safe if run twice)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with gzip.open(source, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _TorchvisionDataModule(ImageDataModule):
    """Shared code of the MNIST-like and CIFAR-10 modules (train / test splits of torchvision)."""

    name: ClassVar[str]
    _default_size: ClassVar[int]
    _classes: ClassVar[tuple[str, ...]]
    _stats: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]]

    def __init__(
        self,
        *,
        data_dir: str | os.PathLike,
        download: bool,
        image_size: int,
        channels: int,
        batch_size: int,
        num_workers: int,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        owner = type(self).__name__
        self.data_dir = _check_data_dir(owner, data_dir)
        self.download = _check_bool(owner, "download", download)
        self._image_size = check_int(owner, "image_size", image_size, _MIN_SIZE, _MAX_SIZE)
        self._channels = channels
        self._mean, self._std = self._stats

    @property
    def num_classes(self) -> int:
        """10."""
        return len(self._classes)

    @property
    def class_names(self) -> list[str]:
        """The data set's class names, indexed by label."""
        return list(self._classes)

    # -- subclass hooks ---------------------------------------------------------------------------

    def _missing_files(self) -> list[Path]:
        """Files the torchvision loader needs that are absent (after offline fix-ups)."""
        raise NotImplementedError

    def _not_found_message(self, missing: list[Path]) -> str:
        raise NotImplementedError

    def _torchvision_dataset(self, train: bool, download: bool) -> Dataset:
        raise NotImplementedError

    def _resize(self) -> list[Any]:
        if self._image_size == self._default_size:
            return []
        return [transforms.Resize((self._image_size, self._image_size))]

    # -- shared machinery -------------------------------------------------------------------------

    def transform(self) -> transforms.Compose:
        """The transform applied to every image: resize/pad, to tensor, normalize."""
        return transforms.Compose(
            [*self._resize(), transforms.ToTensor(), transforms.Normalize(self._mean, self._std)]
        )

    def prepare_data(self) -> None:
        """Download the files when ``download=True`` and they are missing (needs internet)."""
        if not self.download or not self._missing_files():
            return
        try:
            for train in (True, False):
                self._torchvision_dataset(train, download=True)
        except (RuntimeError, URLError, OSError) as err:
            raise DatasetNotFoundError(
                f"{type(self).__name__}: downloading failed ({err}). "
                + self._not_found_message(self._missing_files()),
                str(self.data_dir),
            ) from err

    def _build_dataset(self, split: str) -> Dataset:
        missing = self._missing_files()
        if missing and self.download:
            self.prepare_data()
            missing = self._missing_files()
        if missing:
            raise DatasetNotFoundError(self._not_found_message(missing), str(self.data_dir))
        return self._torchvision_dataset(split == "train", download=False)


# ------------------------------------------------------------------------------------ MNIST-like


class _MNISTLike(_TorchvisionDataModule):
    _tv_class: ClassVar[type[datasets.MNIST]]
    _source: ClassVar[str]
    _default_size = 28
    _files: ClassVar[tuple[str, ...]] = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )

    @property
    def raw_folder(self) -> Path:
        """Where torchvision reads the idx files: ``<data_dir>/<MNIST|FashionMNIST>/raw``."""
        return self.data_dir / self._tv_class.__name__ / "raw"

    def _resize(self) -> list[Any]:
        if self._image_size == 28:
            return []
        if self._image_size == 32:  # LeNet-5's input: MNIST padded by 2 pixels, as in the paper
            return [transforms.Pad(2)]
        return [transforms.Resize((self._image_size, self._image_size))]

    def _missing_files(self) -> list[Path]:
        missing = []
        for name in self._files:
            path = self.raw_folder / name
            gz = path.with_name(name + ".gz")
            if not path.is_file() and gz.is_file():
                _atomic_gunzip(gz, path)  # torchvision reads the decompressed files only
            if not path.is_file():
                missing.append(path)
        return missing

    def _not_found_message(self, missing: list[Path]) -> str:
        names = ", ".join(p.name for p in missing)
        return (
            f"{type(self).__name__}: {self._tv_class.__name__} not found: missing {names} in "
            f"{self.raw_folder.resolve()}. To get it, {_CLI_HINT}, or copy the four idx files "
            f"({', '.join(self._files)}; the .gz archives also work) from {self._source} into "
            f"{self.raw_folder.resolve()}."
        )

    def _torchvision_dataset(self, train: bool, download: bool) -> Dataset:
        return self._tv_class(
            str(self.data_dir), train=train, transform=self.transform(), download=download
        )


class MNISTDataModule(_MNISTLike):
    """MNIST handwritten digits (1 x 28 x 28, padded to 32 x 32 by default for LeNet-5).

    Files: ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or the same
    names with ``.gz``, decompressed on first use), as torchvision expects.

    Args:
        data_dir: Root folder of the data sets.
        download: Download missing files in ``prepare_data`` (needs internet).
        image_size: 28 (native), 32 (zero-padded by 2, LeNet-5's input) or any other size
            (resized).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``image_size`` is outside 8..1024 or another argument is out of range.

    Example:
        >>> dm = MNISTDataModule(data_dir="./data", download=True)  # on a connected machine
        >>> dm.model_kwargs
        {'num_classes': 10, 'in_channels': 1, 'input_size': 32}
    """

    name: ClassVar[str] = "mnist"
    _tv_class = datasets.MNIST
    _source = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    _classes = tuple(str(d) for d in range(10))
    _stats = ((0.1307,), (0.3081,))

    def __init__(
        self,
        data_dir: str = "./data",
        download: bool = False,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            download=download,
            image_size=image_size,
            channels=1,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        self.save_hyperparameters()


class FashionMNISTDataModule(_MNISTLike):
    """Fashion-MNIST clothing images (1 x 28 x 28, padded to 32 x 32 by default).

    Files: ``<data_dir>/FashionMNIST/raw/`` with the MNIST file names. Arguments as
    :class:`MNISTDataModule`.

    Args:
        data_dir: Root folder of the data sets.
        download: Download missing files in ``prepare_data`` (needs internet).
        image_size: 28 (native), 32 (zero-padded by 2) or any other size (resized).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
    """

    name: ClassVar[str] = "fashion_mnist"
    _tv_class = datasets.FashionMNIST
    _source = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    _classes = tuple(datasets.FashionMNIST.classes)
    _stats = ((0.2860,), (0.3530,))

    def __init__(
        self,
        data_dir: str = "./data",
        download: bool = False,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            download=download,
            image_size=image_size,
            channels=1,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        self.save_hyperparameters()


# -------------------------------------------------------------------------------------- CIFAR-10


class _UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 loader with the MD5 checks of the batch files switched off.

    Only the expected checksums are replaced by ``None`` (torchvision then checks that each file
    exists); reading and decoding are torchvision's own code. Used by
    ``CIFAR10DataModule(verify_integrity=False)``.
    """

    train_list: ClassVar[list[list[str | None]]] = [
        [name, None] for name, _ in datasets.CIFAR10.train_list
    ]
    test_list: ClassVar[list[list[str | None]]] = [
        [name, None] for name, _ in datasets.CIFAR10.test_list
    ]
    meta: ClassVar[dict[str, str | None]] = {**datasets.CIFAR10.meta, "md5": None}


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 (3 x 32 x 32 colour images of 10 classes).

    Files: ``<data_dir>/cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``,
    ``test_batch`` and ``batches.meta`` (python pickle format), as torchvision expects; a
    ``<data_dir>/cifar-10-python.tar.gz`` placed there by hand is extracted on first use.

    torchvision verifies the MD5 checksum of every batch file. ``verify_integrity=False`` skips
    only that check (the files are still read by ``torchvision.datasets.CIFAR10``'s code), for
    re-packed or test-made files in the same format.

    Args:
        data_dir: Root folder of the data sets.
        download: Download missing files in ``prepare_data`` (needs internet).
        image_size: 32 (native) or any other size (resized).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        verify_integrity: Check the files' MD5 checksums (torchvision's default behaviour).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``image_size`` is outside 8..1024 or another argument is out of range.

    Example:
        >>> dm = CIFAR10DataModule(data_dir="./data", download=True)  # on a connected machine
        >>> dm.class_names[:3]
        ['airplane', 'automobile', 'bird']
    """

    name: ClassVar[str] = "cifar10"
    _default_size = 32
    _classes = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    _stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    _source = "https://www.cs.toronto.edu/~kriz/cifar.html"

    def __init__(
        self,
        data_dir: str = "./data",
        download: bool = False,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        verify_integrity: bool = True,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            download=download,
            image_size=image_size,
            channels=3,
            batch_size=batch_size,
            num_workers=num_workers,
        )
        self.verify_integrity = _check_bool(
            "CIFAR10DataModule", "verify_integrity", verify_integrity
        )
        self.save_hyperparameters()

    @property
    def batches_folder(self) -> Path:
        """``<data_dir>/cifar-10-batches-py``, where torchvision reads the batch files."""
        return self.data_dir / datasets.CIFAR10.base_folder

    def _missing_files(self) -> list[Path]:
        names = [n for n, _ in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list]
        names.append(datasets.CIFAR10.meta["filename"])
        missing = [p for p in (self.batches_folder / n for n in names) if not p.is_file()]
        archive = self.data_dir / datasets.CIFAR10.filename
        if missing and archive.is_file():
            extract_archive(str(archive), str(self.data_dir))
            missing = [p for p in missing if not p.is_file()]
        return missing

    def _not_found_message(self, missing: list[Path]) -> str:
        names = ", ".join(p.name for p in missing)
        return (
            f"CIFAR10DataModule: CIFAR-10 not found: missing {names} in "
            f"{self.batches_folder.resolve()}. To get it, {_CLI_HINT}, or download "
            f"{datasets.CIFAR10.filename} (python version) from {self._source} and put it in "
            f"{self.data_dir.resolve()} (it is extracted on first use)."
        )

    def _torchvision_dataset(self, train: bool, download: bool) -> Dataset:
        cls = datasets.CIFAR10 if self.verify_integrity or download else _UncheckedCIFAR10
        try:
            return cls(
                str(self.data_dir), train=train, transform=self.transform(), download=download
            )
        except RuntimeError as err:
            if download:
                raise
            raise RuntimeError(
                f"CIFAR10DataModule: the files in {self.batches_folder.resolve()} failed "
                "torchvision's MD5 check (corrupted, or not the official CIFAR-10 files). "
                "Delete them and download again, or pass verify_integrity=False (CLI: "
                "--data.verify_integrity false) to read them without the check."
            ) from err


# ---------------------------------------------------------------------------------- image folder


class ImageFolderDataModule(ImageDataModule):
    """Any folder of class-labelled images, in torchvision's ``ImageFolder`` layout.

    Layouts:

    * ``root/train/<class>/*.png`` and ``root/val/<class>/*.png``: the two splits as given;
    * ``root/<class>/*.png`` (or only ``root/train/<class>/``): the validation split is a
      deterministic, per-class stratified fraction ``val_fraction`` of each class, chosen with a
      private generator seeded by ``seed`` (the global RNG is not used).

    Images are resized (shorter side) and centre-cropped to ``image_size``, converted to
    ``channels`` channels and normalized with ``mean``/``std`` (ImageNet statistics by default).

    Args:
        root: The data folder.
        image_size: Output height and width (224 for AlexNet/VGG, 32 for LeNet-5...).
        channels: 3 (RGB) or 1 (grayscale).
        val_fraction: Fraction of each class held out when there is no ``val`` folder.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the train/val split.
        mean: Per-channel normalization mean (default: ImageNet's).
        std: Per-channel normalization standard deviation (default: ImageNet's).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range.

    Example:
        >>> dm = ImageFolderDataModule("photos", image_size=224)
        >>> dm.class_names  # the sub-folder names, sorted
        ['cat', 'dog']
    """

    name: ClassVar[str] = "imagefolder"

    def __init__(
        self,
        root: str,
        image_size: int = 224,
        channels: int = 3,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        owner = "ImageFolderDataModule"
        self.root = _check_data_dir(owner, root)
        self._image_size = check_int(owner, "image_size", image_size, _MIN_SIZE, _MAX_SIZE)
        self._channels = check_channels(owner, channels)
        self.val_fraction = check_float(
            owner, "val_fraction", val_fraction, 0.0, 0.9, open_low=True
        )
        self.seed = check_seed(owner, seed)
        default_mean = (0.485, 0.456, 0.406) if self._channels == 3 else (0.449,)
        default_std = (0.229, 0.224, 0.225) if self._channels == 3 else (0.226,)
        mean = default_mean if mean is None else mean
        std = default_std if std is None else std
        self._mean = check_stats(owner, "mean", mean, self._channels)
        self._std = check_stats(owner, "std", std, self._channels)
        self._classes: list[str] | None = None
        self.save_hyperparameters()

    # -- layout -----------------------------------------------------------------------------------

    def _split_dirs(self) -> tuple[Path, Path | None]:
        """Return ``(train_dir, val_dir)``; ``val_dir`` is None when split by fraction."""
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"ImageFolderDataModule: folder {self.root.resolve()} not found. Put the images "
                f"at {self.root.resolve()}/<class_name>/<image>.png (one sub-folder per class), "
                "or in train/<class_name>/ and val/<class_name>/ sub-folders.",
                str(self.root),
            )
        train, val = self.root / "train", self.root / "val"
        if train.is_dir() and val.is_dir():
            return train, val
        return (train if train.is_dir() else self.root), None

    def _find_classes(self, directory: Path) -> list[str]:
        try:
            classes, _ = find_classes(str(directory))
        except FileNotFoundError as err:
            raise DatasetNotFoundError(
                f"ImageFolderDataModule: no class sub-folders in {directory.resolve()}. Put the "
                f"images at {directory.resolve()}/<class_name>/<image>.png, one sub-folder per "
                f"class (extensions: {', '.join(IMG_EXTENSIONS)}).",
                str(directory),
            ) from err
        return classes

    @property
    def class_names(self) -> list[str]:
        """The class sub-folder names, sorted (reads the folder on first use)."""
        if self._classes is None:
            train_dir, val_dir = self._split_dirs()
            classes = self._find_classes(train_dir)
            if val_dir is not None and self._find_classes(val_dir) != classes:
                raise ValueError(
                    f"ImageFolderDataModule: the class folders of {train_dir} ({classes}) and "
                    f"{val_dir} ({self._find_classes(val_dir)}) differ; give both the same "
                    "class sub-folders."
                )
            self._classes = classes
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        """Number of class sub-folders (reads the folder on first use)."""
        return len(self.class_names)

    def transform(self) -> transforms.Compose:
        """Resize, centre-crop, channel conversion, to tensor, normalize."""
        steps: list[Any] = [
            transforms.Resize(self._image_size),
            transforms.CenterCrop(self._image_size),
        ]
        if self._channels == 1:
            steps.append(transforms.Grayscale(num_output_channels=1))
        steps += [transforms.ToTensor(), transforms.Normalize(self._mean, self._std)]
        return transforms.Compose(steps)

    def _folder(self, directory: Path) -> datasets.ImageFolder:
        self.class_names  # noqa: B018  (validates the layout with a clear message)
        try:
            return datasets.ImageFolder(str(directory), transform=self.transform())
        except FileNotFoundError as err:
            raise DatasetNotFoundError(
                f"ImageFolderDataModule: {err} Put at least one image ({', '.join(IMG_EXTENSIONS)})"
                f" in every class sub-folder of {directory.resolve()}.",
                str(directory),
            ) from err

    def split_indices(self, targets: Sequence[int]) -> tuple[list[int], list[int]]:
        """Deterministic stratified split of sample indices into ``(train, val)``.

        Each class with ``n >= 2`` images gives ``max(1, round(val_fraction * n))`` of them (at
        most ``n - 1``) to validation, chosen by a generator seeded with ``seed``.

        Args:
            targets: The label of every sample.

        Returns:
            Sorted train indices and sorted validation indices.
        """
        gen = torch.Generator().manual_seed(self.seed)
        labels = torch.as_tensor(list(targets), dtype=torch.int64)
        train: list[int] = []
        val: list[int] = []
        for cls in range(int(labels.max()) + 1 if len(labels) else 0):
            idx = torch.nonzero(labels == cls).flatten()
            n = len(idx)
            k = 0 if n < 2 else min(n - 1, max(1, round(self.val_fraction * n)))
            perm = idx[torch.randperm(n, generator=gen)]
            val += perm[:k].tolist()
            train += perm[k:].tolist()
        return sorted(train), sorted(val)

    def _build_dataset(self, split: str) -> Dataset:
        train_dir, val_dir = self._split_dirs()
        if val_dir is not None:
            return self._folder(train_dir if split == "train" else val_dir)
        full = self._folder(train_dir)
        train_idx, val_idx = self.split_indices(full.targets)
        if not val_idx:
            raise ValueError(
                f"ImageFolderDataModule: no validation images: every class in "
                f"{train_dir.resolve()} has fewer than 2 images. Add images, or give explicit "
                "train/ and val/ sub-folders."
            )
        return Subset(full, train_idx if split == "train" else val_idx)
