"""Data modules for cnnviz: procedural data (default, offline) and torchvision data sets.

Every module shares the surface of :class:`~cnnviz.data.base.CnnvizDataModule`:
``num_classes``, ``class_names``, ``task``, ``input_shape``, ``model_kwargs``, ``probe(n, split)``
and ``probe_masks(n, split)``; image modules add ``mean``, ``std`` and ``denormalize(x)``.

Registry names: ``shapes`` (default), ``mnist``, ``fashion_mnist``, ``cifar10``,
``imagefolder``, ``go``, ``sentences``.

Example:
    >>> from cnnviz import data
    >>> dm = data.create("shapes", image_size=32)
    >>> dm.model_kwargs
    {'num_classes': 9, 'in_channels': 3, 'input_size': 32}
"""

from __future__ import annotations

from typing import Any

from cnnviz.data.base import (
    CnnvizDataModule,
    DatasetNotFoundError,
    ImageDataModule,
    denormalize,
)
from cnnviz.data.go import GO_PLANES, GoDataModule, GoDataset
from cnnviz.data.shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset
from cnnviz.data.text import SentenceDataModule, SentenceDataset
from cnnviz.data.vision import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
)

__all__ = [
    "DATAMODULES",
    "GO_PLANES",
    "SHAPE_NAMES",
    "CIFAR10DataModule",
    "CnnvizDataModule",
    "DatasetNotFoundError",
    "FashionMNISTDataModule",
    "GoDataModule",
    "GoDataset",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SentenceDataModule",
    "SentenceDataset",
    "ShapesDataModule",
    "ShapesDataset",
    "available",
    "create",
    "denormalize",
]

#: Registry name -> data module class.
DATAMODULES: dict[str, type[CnnvizDataModule]] = {
    "shapes": ShapesDataModule,
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "imagefolder": ImageFolderDataModule,
    "go": GoDataModule,
    "sentences": SentenceDataModule,
}


def available() -> list[str]:
    """Return the registry names of the data modules, in registry order."""
    return list(DATAMODULES)


def create(name: str, **kwargs: Any) -> CnnvizDataModule:
    """Build a data module by registry name.

    Args:
        name: One of :func:`available` (case-insensitive; ``-`` and ``_`` are interchangeable).
        **kwargs: Passed to the data module's constructor.

    Returns:
        The data module (no data is generated or read until it is needed).

    Raises:
        ValueError: If ``name`` is unknown; the message lists the valid names.
        TypeError: If ``name`` is not a string, or a keyword argument is not accepted.

    Example:
        >>> dm = create("go", num_train=1000)
        >>> dm.input_shape
        (48, 19, 19)
    """
    if not isinstance(name, str):
        raise TypeError(f"create: `name` must be a string; got {type(name).__name__} {name!r}.")
    key = name.strip().lower().replace("-", "_")
    if key not in DATAMODULES:
        raise ValueError(
            f"create: unknown data module {name!r} for `name`; valid names: "
            f"{', '.join(available())}."
        )
    return DATAMODULES[key](**kwargs)
