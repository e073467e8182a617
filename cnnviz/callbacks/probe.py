"""The probe batch: a fixed set of inputs every callback looks at, taken without side effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate

from cnnviz.analysis.modelio import Spec, find_input, find_labels

__all__ = ["Probe", "check_probe_argument", "first_loader", "resolve_probe"]


@dataclass
class Probe:
    """Probe inputs and what is known about them.

    Attributes:
        batch: The probe as the data loader would yield it (a tensor, tuple or dict), on the CPU.
        x: The model input inside ``batch`` ``[N, ...]`` (on the CPU until moved).
        y: Labels ``[N]`` or ``None``.
        class_names: Names of the classes, if the data says.
        display: Images for people, ``[N, H, W, C]`` in [0, 1] (denormalised), or ``None``.
        masks: Foreground masks ``[N, H, W]`` where the data has them (Shapes).
        vocabulary: Token id to word, for token inputs whose data module has one.
    """

    batch: Any
    x: torch.Tensor
    y: torch.Tensor | None = None
    class_names: list[str] | None = None
    display: np.ndarray | None = None
    masks: torch.Tensor | None = None
    vocabulary: list[str] | None = None


def first_loader(loaders: Any) -> Any:
    """The first loader of ``trainer.val_dataloaders``-like values (list, tuple, dict or one)."""
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


def _from_dataset(dataset: Any, n: int, collate: Any) -> Any:
    count = min(n, len(dataset))
    with torch.random.fork_rng(devices=[]):  # random transforms must not shift training's RNG
        items = [dataset[i] for i in range(count)]
    return (collate or default_collate)(items)


def _display(datamodule: Any, x: torch.Tensor) -> np.ndarray | None:
    if x.dim() != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
        return None
    img = x.float()
    if hasattr(datamodule, "denormalize"):
        img = datamodule.denormalize(img)
    else:
        lo = img.amin(dim=(1, 2, 3), keepdim=True)
        hi = img.amax(dim=(1, 2, 3), keepdim=True)
        img = (img - lo) / (hi - lo).clamp_min(1e-12)
    return img.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def _vocabulary(datamodule: Any) -> list[str] | None:
    for name in ("vocabulary", "vocab", "itos"):
        words = getattr(datamodule, name, None)
        if callable(words):
            continue
        if isinstance(words, (list, tuple)) and words and all(isinstance(w, str) for w in words):
            return list(words)
    return None


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_detach(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


def check_probe_argument(owner: str, probe: Any) -> None:
    """Raise unless ``probe`` is a tensor, ``(inputs, labels)`` or a batch dict.

    Raises:
        TypeError: For another type.
        ValueError: For an empty batch or labels that do not match.
    """
    usage = "a tensor [N, ...], a tuple (inputs [N, ...], labels [N]) or a batch dict"
    if isinstance(probe, dict):
        if not any(isinstance(v, torch.Tensor) for v in probe.values()):
            raise TypeError(f"{owner}: `probe` must be {usage}; the dict holds no tensor")
        return
    parts = list(probe) if isinstance(probe, (tuple, list)) else [probe]
    if not 1 <= len(parts) <= 2 or not all(isinstance(p, torch.Tensor) for p in parts):
        raise TypeError(f"{owner}: `probe` must be {usage}")
    x = parts[0]
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"{owner}: `probe` must be {usage} with N >= 1; got inputs {tuple(x.shape)}"
        )
    if len(parts) == 2 and (parts[1].dim() != 1 or len(parts[1]) != len(x)):
        raise ValueError(
            f"{owner}: `probe` labels must have shape ({len(x)},); got {tuple(parts[1].shape)}"
        )


def resolve_probe(
    trainer: pl.Trainer,
    probe: Any,
    n: int,
    owner: str,
    *,
    probe_input: Spec = None,
) -> Probe:
    """The probe batch: the user's, else the first ``n`` validation (or training) samples.

    Samples are taken from the data set by index inside a forked RNG — never through a
    ``DataLoader`` iterator, whose creation draws from the global RNG and would change training —
    and collated with the loader's own ``collate_fn``, so the probe has the structure of the
    user's batches (a tuple, a dict...).

    Raises:
        ValueError: If no probe was given and the trainer has no map-style data set to take
            one from, or the input cannot be found in the batch (names ``probe_input=``).
    """
    dm = getattr(trainer, "datamodule", None)
    masks = None
    if probe is not None:
        batch = tuple(probe) if isinstance(probe, list) else probe
    elif dm is not None and hasattr(dm, "probe"):
        batch = tuple(dm.probe(n))
        if hasattr(dm, "probe_masks"):
            try:
                masks = dm.probe_masks(n)
            except (ValueError, NotImplementedError, AttributeError):
                masks = None
    else:
        loaders: Any = None
        if dm is not None:
            try:
                loaders = dm.val_dataloader()
            except (NotImplementedError, AttributeError, TypeError):
                loaders = None
        if not loaders:
            loaders = trainer.val_dataloaders or trainer.train_dataloader
        loader = first_loader(loaders)
        if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
            raise ValueError(
                f"{owner}: no probe batch: pass `probe=` (a tensor, (inputs, labels) or a batch "
                "dict) or give the trainer map-style validation data"
            )
        batch = _from_dataset(loader.dataset, n, loader.collate_fn)
    batch = _detach(batch)
    x, path = find_input(batch, probe_input)
    y = find_labels(batch, path)
    return Probe(
        batch=batch,
        x=x,
        y=None if y is None else torch.as_tensor(y).detach().clone(),
        class_names=getattr(dm, "class_names", None),
        display=_display(dm, x),
        masks=masks,
        vocabulary=_vocabulary(dm),
    )
