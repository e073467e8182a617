"""What feature visualisation returns: :class:`FeatVisResult` and the option types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from cnnviz.analysis.readout import Readout

Objective = Literal["mean", "center"]
Param = Literal["fourier", "pixel"]
Units = tuple[int, int, int, int]  # (top, bottom, left, right), half-open


@dataclass
class FeatVisResult:
    """Optimised images for a set of channels of one layer (or for class logits).

    Attributes:
        images: ``[K, C, H, W]`` float32 on the CPU, in ``[0, 1]`` pixel space: row ``k`` is the
            image for ``channels[k]``. Apply :meth:`normalized` for the model's input space.
        activations: ``[K]`` float32: the objective of each channel for its final image,
            measured without random transforms (for a copied result, on this layer).
        channels: The channel (or class) indices, in the order of ``images``. Shorter than
            requested when the run was stopped before some batches began.
        layer: Qualified name of the layer, or ``None`` for the model's logits.
        objective: ``"mean"``, ``"center"`` or ``"logit"``.
        param: ``"fourier"`` or ``"pixel"``.
        mean: ``[C]`` per-channel mean used to normalise the image before the model.
        std: ``[C]`` per-channel standard deviation used likewise.
        history: ``[T, K]`` objective of each channel during optimisation (with transforms);
            ``NaN`` where a batch stopped before that step. For a copied result, the history of
            the :attr:`same_as` layer's objective.
        history_steps: The ``T`` step indices at which ``history`` was recorded.
        seconds: Wall-clock time of the optimisation (of the copy, for a copied result).
        steps: Optimisation steps per image (requested; see :attr:`stopped_at`).
        lr: Adam learning rate (see :mod:`cnnviz.analysis.featvis` for the relative ``eps``).
        seed: Seed of the generator for initialisation and transforms.
        readout: Where the layer's maps were read (:class:`~cnnviz.analysis.readout.Readout`:
            ``readout.describe()`` says it in words, ``readout.pre_activation`` marks a conv read
            before any activation, ``readout.as_dict()`` is JSON-friendly); ``None`` for logits.
        units: ``(top, bottom, left, right)``, half-open: the output positions of the read map
            that the objective averages (interior units, or the centre unit); ``None`` for
            logits.
        units_reason: Why those units, in words (``"interior units: receptive field inside the
            image"``, ``"centre unit: ..."``, ``"all units: receptive fields unknown ..."``).
        same_as: The layer whose images these are, when this layer was not optimised itself
            because its image would be the same (:func:`duplicate_layers`); else ``None``.
        stopped_at: ``None`` when every returned image got all ``steps``; otherwise the steps
            done by the last returned batch when ``should_stop`` asked to stop (earlier batches
            completed; later ones were left out of :attr:`channels`).
    """

    images: torch.Tensor
    activations: torch.Tensor
    channels: list[int]
    layer: str | None
    objective: str
    param: str
    mean: torch.Tensor
    std: torch.Tensor
    history: torch.Tensor
    history_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    lr: float = 0.0
    seed: int = 0
    readout: Readout | None = None
    units: Units | None = None
    units_reason: str = ""
    same_as: str | None = None
    stopped_at: int | None = None

    @property
    def stopped(self) -> bool:
        """``True`` when ``should_stop`` ended the optimisation early."""
        return self.stopped_at is not None

    @property
    def pre_activation(self) -> bool:
        """``True`` for a conv layer whose maps were read before any activation."""
        return self.readout is not None and self.readout.pre_activation

    def normalized(self) -> torch.Tensor:
        """Return ``(images - mean) / std``: the images in the model's input space."""
        shape = (1, -1, 1, 1)
        return (self.images - self.mean.view(shape)) / self.std.view(shape)
