"""The surface every cnnviz data module shares, so the CLI can link any data set to any model.

Every data module exposes ``num_classes``, ``class_names``, ``task``, ``input_shape``,
``model_kwargs`` (the keyword arguments a :mod:`cnnviz.models` constructor needs to match the
data), ``probe(n, split)`` (the first ``n`` samples of a split, taken by index so the global RNG is
untouched) and ``probe_masks(n, split)`` (foreground masks where the data has them, else
``None``). Image modules add ``mean``, ``std`` and ``denormalize(x)``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cnnviz._checks import check_int as check_int_

__all__ = [
    "SPLITS",
    "CnnvizDataModule",
    "DatasetNotFoundError",
    "ImageDataModule",
    "denormalize",
]

#: The splits every data module provides.
SPLITS: tuple[str, ...] = ("train", "val")


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing and ``download`` is off (or impossible).

    The message says where the files were looked for and how to get them.

    Attributes:
        path: The directory where the files were expected.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


# ----------------------------------------------------------------------------- validation helpers


def check_int(owner: str, name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` if it is an ``int`` in ``[minimum, maximum]``, else raise naming ``name``.

    Raises:
        TypeError: If ``value`` is not an int (``bool`` is rejected).
        ValueError: If ``value`` is out of range.
    """
    return int(check_int_(owner, name, value, low=minimum, high=maximum))  # type: ignore[arg-type]


def check_float(
    owner: str, name: str, value: Any, low: float, high: float, *, open_low: bool = False
) -> float:
    """Return ``value`` as float if it lies in ``[low, high]`` (``(low, high]`` if ``open_low``).

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If ``value`` is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{owner}: `{name}` must be a number; got {type(value).__name__} {value!r}."
        )
    value = float(value)
    ok = (value > low if open_low else value >= low) and value <= high
    if not ok:
        bracket = "(" if open_low else "["
        raise ValueError(f"{owner}: `{name}` must be in {bracket}{low}, {high}]; got {value}.")
    return value


def check_seed(owner: str, seed: Any) -> int:
    """Return ``seed`` if it is an int (``bool`` rejected), else raise naming ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{owner}: `seed` must be an int; got {type(seed).__name__} {seed!r}.")
    return seed


def check_channels(owner: str, channels: Any) -> int:
    """Return ``channels`` if it is 1 or 3, else raise naming ``channels``."""
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"{owner}: `channels` must be 1 (grayscale) or 3 (RGB); got {channels!r}.")
    return int(channels)


def check_split(owner: str, split: Any) -> str:
    """Return ``split`` if it is ``"train"`` or ``"val"``, else raise listing the valid splits."""
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(
            f"{owner}: `split` must be one of {', '.join(repr(s) for s in SPLITS)}; got {split!r}."
        )
    return split


def check_stats(owner: str, name: str, value: Sequence[float], channels: int) -> tuple[float, ...]:
    """Return per-channel statistics as a tuple of ``channels`` floats (std entries must be > 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [float(value)] * channels
    if not isinstance(value, Sequence) or len(value) != channels:
        raise ValueError(
            f"{owner}: `{name}` must be a number or a sequence of {channels} numbers (one per "
            f"channel); got {value!r}."
        )
    out = tuple(float(v) for v in value)
    if name == "std" and any(v <= 0 for v in out):
        raise ValueError(f"{owner}: `std` entries must be > 0; got {out}.")
    return out


# ----------------------------------------------------------------------------------- denormalize


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo ``(x - mean) / std`` per channel and clamp to ``[0, 1]`` for display.

    Args:
        x: Normalized images, ``(C, H, W)`` or ``(N, C, H, W)``.
        mean: Per-channel mean used for normalization.
        std: Per-channel standard deviation used for normalization.

    Returns:
        A new tensor of the same shape with values in ``[0, 1]``.

    Raises:
        TypeError: If ``x`` is not a tensor.
        ValueError: If ``x`` has the wrong rank or channel count.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"denormalize: `x` must be a torch.Tensor; got {type(x).__name__}.")
    if x.dim() not in (3, 4) or x.shape[-3] != len(mean):
        raise ValueError(
            f"denormalize: `x` must have shape (C, H, W) or (N, C, H, W) with C={len(mean)}; "
            f"got {tuple(x.shape)}."
        )
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x * s + m).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------- base classes


class CnnvizDataModule(LightningDataModule):
    """Base of every cnnviz data module: loaders, probes and the model-linking properties.

    Subclasses implement :meth:`_build_dataset` and the properties ``num_classes``,
    ``class_names``, ``input_shape`` and ``model_kwargs``. Data sets are built lazily, once per
    split, the first time :meth:`dataset`, :meth:`setup`, a loader or a probe needs them.

    The training loader shuffles with ``shuffle=True`` and no private generator, so
    ``lightning.seed_everything`` governs the order; the validation loader does not shuffle.

    Args:
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes (``0`` loads in the main process).
    """

    #: ``"image"``, ``"go"`` or ``"text"``: which family of models and figures fits the data.
    task: ClassVar[str] = "image"

    def __init__(self, *, batch_size: int = 64, num_workers: int = 0) -> None:
        super().__init__()
        owner = type(self).__name__
        self.batch_size = check_int(owner, "batch_size", batch_size, 1)
        self.num_workers = check_int(owner, "num_workers", num_workers, 0)
        self._datasets: dict[str, Dataset] = {}

    # -- what subclasses provide ------------------------------------------------------------------

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of target classes."""

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Human-readable name of each class, indexed by label."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, without the batch dimension."""

    @property
    @abstractmethod
    def model_kwargs(self) -> dict[str, int]:
        """Keyword arguments a :mod:`cnnviz.models` constructor needs to match this data."""

    @abstractmethod
    def _build_dataset(self, split: str) -> Dataset:
        """Create the data set of ``split`` (``"train"`` or ``"val"``)."""

    # -- shared machinery -------------------------------------------------------------------------

    @property
    def has_masks(self) -> bool:
        """Whether :meth:`probe_masks` returns foreground masks (only the shapes data)."""
        return False

    def dataset(self, split: str = "train") -> Dataset:
        """Return the data set of ``split``, building it on first use.

        Args:
            split: ``"train"`` or ``"val"``.

        Returns:
            The map-style data set; ``ds[i]`` is ``(input, label)``.

        Raises:
            ValueError: If ``split`` is not ``"train"`` or ``"val"``.
            DatasetNotFoundError: For file-backed data whose files are missing.
        """
        split = check_split(type(self).__name__, split)
        if split not in self._datasets:
            self._datasets[split] = self._build_dataset(split)
        return self._datasets[split]

    def setup(self, stage: str) -> None:
        """Build the data sets the ``stage`` needs (``fit``: train and val; otherwise val)."""
        if stage == "fit":
            self.dataset("train")
        self.dataset("val")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled loader over the training split."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Loader over the validation split, in index order."""
        return self._loader("val", shuffle=False)

    def _probe_count(self, n: int, split: str) -> tuple[Dataset, int]:
        owner = f"{type(self).__name__}.probe"
        check_int(owner, "n", n, 1)
        ds = self.dataset(check_split(owner, split))
        return ds, min(n, len(ds))  # type: ignore[arg-type]

    def probe(self, n: int = 8, split: str = "val") -> tuple[Tensor, Tensor]:
        """Return the first ``n`` samples of ``split`` as a batch, taken by index.

        No DataLoader iterator is created and the global RNG state is left exactly as it was,
        so taking a probe during training does not change the training's random stream.

        Args:
            n: Number of samples (at most ``len(dataset)`` are returned).
            split: ``"train"`` or ``"val"``.

        Returns:
            ``(inputs, labels)``: inputs stacked to ``(n, *input_shape)``; labels ``int64``
            of shape ``(n,)``.

        Raises:
            ValueError: If ``n`` < 1 or ``split`` is unknown.
            DatasetNotFoundError: For file-backed data whose files are missing.

        Example:
            >>> dm = ShapesDataModule()
            >>> x, y = dm.probe(8)
            >>> x.shape
            torch.Size([8, 3, 32, 32])
        """
        ds, count = self._probe_count(n, split)
        with torch.random.fork_rng(devices=[]):
            items = [ds[i] for i in range(count)]
        inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
        labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
        return inputs, labels

    def probe_masks(self, n: int = 8, split: str = "val") -> Tensor | None:
        """Return foreground masks of the first ``n`` samples of ``split``, if the data has them.

        Only the shapes data has masks; every other module returns ``None`` (check
        :attr:`has_masks`).

        Args:
            n: Number of samples.
            split: ``"train"`` or ``"val"``.

        Returns:
            A ``bool`` tensor ``(n, H, W)``, or ``None`` when the data has no masks (then no
            data is read).

        Raises:
            ValueError: If ``n`` < 1 or ``split`` is unknown.
        """
        owner = f"{type(self).__name__}.probe_masks"
        check_int(owner, "n", n, 1)
        check_split(owner, split)
        return None


class ImageDataModule(CnnvizDataModule):
    """Base of the image data modules: normalization statistics and :meth:`denormalize`.

    Subclasses set ``self._channels``, ``self._image_size``, ``self._mean`` and ``self._std``.
    """

    task: ClassVar[str] = "image"
    _channels: int
    _image_size: int
    _mean: tuple[float, ...]
    _std: tuple[float, ...]

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean subtracted from images in ``[0, 1]``."""
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation images are divided by."""
        return self._std

    @property
    def in_channels(self) -> int:
        """Image channels (1 or 3)."""
        return self._channels

    @property
    def image_size(self) -> int:
        """Image height and width in pixels."""
        return self._image_size

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(channels, image_size, image_size)``."""
        return (self._channels, self._image_size, self._image_size)

    @property
    def model_kwargs(self) -> dict[str, int]:
        """``{"num_classes", "in_channels", "input_size"}`` for a cnnviz image model."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self._channels,
            "input_size": self._image_size,
        }

    def denormalize(self, x: Tensor) -> Tensor:
        """Map normalized images back to ``[0, 1]`` for display (see :func:`denormalize`)."""
        return denormalize(x, self._mean, self._std)
