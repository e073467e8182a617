"""The probe batch: a fixed set of inputs every callback looks at, taken without side effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

__all__ = ["Probe", "check_probe", "resolve_probe"]


@dataclass
class Probe:
    """Probe inputs and what is known about them.

    Attributes:
        x: Inputs ``[N, ...]`` (on the CPU until moved).
        y: Labels ``[N]`` or ``None``.
        class_names: Names of the classes, if the data says.
        display: Images for people, ``[N, H, W, C]`` in [0, 1] (denormalised), or ``None``.
        masks: Foreground masks ``[N, H, W]`` where the data has them (Shapes).
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    class_names: list[str] | None = None
    display: np.ndarray | None = None
    masks: torch.Tensor | None = None


def _from_dataset(dataset: Any, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    count = min(n, len(dataset))
    with torch.random.fork_rng():  # random transforms must not shift training's RNG
        items = [dataset[i] for i in range(count)]
    batch = default_collate(items)
    if isinstance(batch, (list, tuple)):
        return batch[0], (
            batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        )
    if isinstance(batch, dict):
        x = batch.get("x", batch.get("input", batch.get("image")))
        return x, batch.get("y", batch.get("label"))
    return batch, None


def _display(datamodule: Any, x: torch.Tensor) -> np.ndarray | None:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        return None
    img = x.float()
    if hasattr(datamodule, "denormalize"):
        img = datamodule.denormalize(img)
    else:
        lo = img.amin(dim=(1, 2, 3), keepdim=True)
        hi = img.amax(dim=(1, 2, 3), keepdim=True)
        img = (img - lo) / (hi - lo).clamp_min(1e-12)
    return img.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()


def resolve_probe(
    trainer: pl.Trainer,
    probe: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None,
    n: int,
    owner: str,
) -> Probe:
    """The probe batch: the user's tensors, else the first ``n`` validation samples.

    Samples are taken from the data set by index inside a forked RNG — never through a
    ``DataLoader`` iterator, whose creation draws from the global RNG and would change training.

    Raises:
        ValueError: If no probe was given and the trainer has no validation (or training) data.
    """
    dm = getattr(trainer, "datamodule", None)
    if probe is not None:
        parts = list(probe) if isinstance(probe, (tuple, list)) else [probe]
        x, y = parts[0], (parts[1] if len(parts) > 1 else None)
        x = x.detach().clone()
        return Probe(
            x=x,
            y=None if y is None else y.detach().clone(),
            class_names=getattr(dm, "class_names", None),
            display=_display(dm, x),
        )
    x = y = masks = None
    if dm is not None and hasattr(dm, "probe"):
        x, y = dm.probe(n)
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
            except (NotImplementedError, AttributeError):
                loaders = None
        if loaders is None:
            loaders = trainer.val_dataloaders or trainer.train_dataloader
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if isinstance(loader, dict):
            loader = next(iter(loader.values()))
        if not isinstance(loader, DataLoader):
            raise ValueError(
                f"{owner}: no probe batch: pass `probe=` (a tensor or (inputs, labels)) or give "
                "the trainer validation data"
            )
        x, y = _from_dataset(loader.dataset, n)
    return Probe(
        x=x.detach().clone(),
        y=None if y is None else torch.as_tensor(y).detach().clone(),
        class_names=getattr(dm, "class_names", None),
        display=_display(dm, x),
        masks=masks,
    )


def check_probe(model: nn.Module, x: torch.Tensor, owner: str) -> None:
    """Raise a clear error if ``x`` cannot be the model's input (before any forward)."""
    expected = getattr(model, "expected_input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"{owner}: the probe batch has shape {tuple(x.shape)} but {type(model).__name__} "
            f"expects (N, {', '.join(map(str, expected))}); pass a matching `probe=`"
        )
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"{owner}: the probe batch must be [N, ...] with N >= 1; got {tuple(x.shape)}"
        )
