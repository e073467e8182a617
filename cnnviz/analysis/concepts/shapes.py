"""Concepts of the built-in Shapes data: :class:`ShapesConcepts` and :func:`with_masks`.

Objects (one per shape class), parts (edge, interior), the background and hue bins, coded by
groups of mutually exclusive concepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnviz.analysis.concepts.core import (
    _IMAGE_KEYS,
    _LABEL_KEYS,
    _MASK_KEYS,
    Concept,
    ConceptBatch,
    _as_concepts,
    _pick,
)

#: Hue bins of :class:`ShapesConcepts`, in degrees: ``name -> (start, stop)``, half-open and
#: wrapping around 360 (red is ``[330, 360) ∪ [0, 30)``).
DEFAULT_HUES: dict[str, tuple[float, float]] = {
    "red": (330.0, 30.0),
    "yellow": (30.0, 90.0),
    "green": (90.0, 150.0),
    "cyan": (150.0, 210.0),
    "blue": (210.0, 270.0),
    "magenta": (270.0, 330.0),
}


# ------------------------------------------------------------------------------------- Shapes
def _per_channel(owner: str, name: str, value: Any, channels: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * channels
    if isinstance(value, Sequence) and len(value) == channels:
        return tuple(float(v) for v in value)
    raise ValueError(
        f"{owner}: `{name}` must be a number or {channels} numbers (one per channel); got {value!r}"
    )


def _hue_saturation_value(rgb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue in degrees ``[0, 360)``, saturation and value of ``[N, 3, H, W]`` colours in [0, 1]."""
    r, g, b = rgb.unbind(1)
    high = rgb.amax(dim=1)
    delta = high - rgb.amin(dim=1)
    safe = delta.clamp_min(1e-12)
    hue = torch.where(
        high == r,
        torch.remainder((g - b) / safe, 6.0),
        torch.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    saturation = delta / high.clamp_min(1e-12)  # 0 where high == 0 (then delta == 0)
    return hue * 60.0, saturation, high


def _hue_layout(
    hues: Mapping[str, tuple[float, float]],
) -> tuple[tuple[float, float, Tensor] | None, bool]:
    """How the hue bins lie on the wheel: ``(equal-bin layout or None, pairwise disjoint)``.

    The layout ``(start, width, lookup)`` is given when the bins are ``m`` contiguous arcs of
    ``360 / m`` degrees: the bin of hue ``h`` is then ``lookup[floor(((h - start) % 360) /
    width)]`` (``lookup`` holds ``1 +`` each arc's position in ``hues``).
    """
    arcs = []
    for position, (start, stop) in enumerate(hues.values()):
        start, stop = float(start) % 360.0, float(stop) % 360.0
        length = (stop - start) % 360.0 or 360.0
        arcs.append((start, length, position))
    points = sorted(a[0] for a in arcs)
    disjoint = all(
        (b[0] - a[0]) % 360.0 >= a[1] - 1e-9 and (a[0] - b[0]) % 360.0 >= b[1] - 1e-9
        for i, a in enumerate(arcs)
        for b in arcs[i + 1 :]
    )
    if not arcs or not disjoint:
        return None, disjoint
    width = 360.0 / len(arcs)
    ordered = sorted(arcs, key=lambda a: (a[0] - points[0]) % 360.0)
    equal = all(
        abs(a[1] - width) < 1e-9 and abs((a[0] - points[0]) % 360.0 - i * width) < 1e-9
        for i, a in enumerate(ordered)
    )
    if not equal:
        return None, disjoint
    lookup = torch.tensor([a[2] + 1 for a in ordered], dtype=torch.uint8)
    return (points[0], width, lookup), disjoint


def _dilate(mask: Tensor, width: int) -> Tensor:
    """Dilate ``bool [N, H, W]`` by a ``(2·width + 1)``-square (separably; outside is False)."""
    out = mask
    for dim in (2, 1):
        grown = out.clone()
        size = out.shape[dim]
        for shift in range(1, min(width, size - 1) + 1):
            grown.narrow(dim, shift, size - shift).logical_or_(out.narrow(dim, 0, size - shift))
            grown.narrow(dim, 0, size - shift).logical_or_(out.narrow(dim, shift, size - shift))
        out = grown
    return out


class ShapesConcepts:
    """Concepts of the built-in Shapes data, from ``(images, labels, masks)`` batches.

    Concepts, in this order:

    - ``object`` — one per shape class (``"circle"``, ``"ring"``...): the object's pixels in the
      images of that class (empty elsewhere);
    - ``part`` — ``"edge"``: a band of ``2 · edge_width`` pixels across the object's boundary
      (``edge_width`` inside and outside: the mask dilated minus the mask eroded, with a square
      structuring element); ``"interior"``: the mask eroded by ``edge_width``;
    - ``scene`` — ``"background"``: every pixel outside the object;
    - ``colour`` — one per hue bin of :data:`DEFAULT_HUES` (or ``hues``): pixels whose
      colour, after undoing the normalisation, has that hue, saturation of at least
      ``min_saturation`` and value of at least ``min_value`` (only for 3-channel images).

    Batches are ``(images, labels, masks)`` (what :func:`with_masks` yields, and what
    :func:`~cnnviz.analysis.dissect.dissect` makes of a ``ShapesDataset``) or dicts with
    ``image``/``label``/``mask`` keys; ``images`` are the model's (normalised) inputs, ``masks``
    the ``bool [N, H, W]`` foreground masks. Everything runs on the batch's device.

    Args:
        class_names: Shape name of each label (``dataset.class_names``).
        mean: Per-channel normalisation mean of the images (a number or one per channel).
        std: Per-channel normalisation standard deviation.
        channels: Image channels (colour concepts need 3).
        hues: Colour bins ``{name: (start, stop)}`` in degrees; ``None`` or ``{}`` for none.
        edge_width: Half-width of the edge band in pixels; ``None``: ``max(1, round(S / 32))``
            for images of side ``S`` (1 at 32 px, 2 at 64 px).
        min_saturation: Saturation below which a pixel has no hue (grey).
        min_value: Value (brightness) below which a pixel has no hue (black).

    Raises:
        TypeError: If ``class_names`` is not a list of names.
        ValueError: If an argument is out of range.

    Example:
        >>> source = ShapesConcepts.for_dataset(dataset)
        >>> loader = DataLoader(with_masks(dataset), batch_size=8)
        >>> images, coded = source(next(iter(loader)))  # coded.masks(): bool [8, K, H, W]
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.28,
        channels: int = 3,
        hues: Mapping[str, tuple[float, float]] | None = None,
        edge_width: int | None = None,
        min_saturation: float = 0.3,
        min_value: float = 0.15,
    ) -> None:
        owner = "ShapesConcepts"
        if channels not in (1, 3):
            raise ValueError(f"{owner}: `channels` must be 1 or 3; got {channels!r}")
        self.channels = channels
        self.mean = _per_channel(owner, "mean", mean, channels)
        self.std = _per_channel(owner, "std", std, channels)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{owner}: `std` must be positive; got {std!r}")
        if edge_width is not None and (
            isinstance(edge_width, bool) or not isinstance(edge_width, int) or edge_width < 1
        ):
            raise ValueError(
                f"{owner}: `edge_width` must be a positive int or None; got {edge_width!r}"
            )
        self.edge_width = edge_width
        for name, value in (("min_saturation", min_saturation), ("min_value", min_value)):
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{owner}: `{name}` must be in [0, 1]; got {value!r}")
        self.min_saturation = float(min_saturation)
        self.min_value = float(min_value)
        self.hues = dict(DEFAULT_HUES if hues is None else hues) if channels == 3 else {}
        for name, bounds in self.hues.items():
            if not (isinstance(bounds, tuple) and len(bounds) == 2):
                raise ValueError(
                    f"{owner}: `hues[{name!r}]` must be a (start, stop) pair in degrees; "
                    f"got {bounds!r}"
                )
        if isinstance(class_names, str) or not isinstance(class_names, Sequence):
            raise TypeError(f"{owner}: `class_names` must be a list of names; got {class_names!r}")
        self._wheel, self._disjoint = _hue_layout(self.hues)
        objects = [Concept(str(n), "object") for n in class_names]
        parts = [Concept("edge", "part"), Concept("interior", "part")]
        scene = [Concept("background", "scene")]
        colours = [Concept(n, "colour") for n in self.hues]
        self.concepts: tuple[Concept, ...] = _as_concepts(
            owner, [*objects, *parts, *scene, *colours], "object"
        )
        self.class_names = tuple(str(n) for n in class_names)

    @classmethod
    def for_dataset(cls, dataset: Any, **kwargs: Any) -> ShapesConcepts:
        """Build the source for a ``ShapesDataset`` (class names, normalisation, channels).

        Args:
            dataset: A ``cnnviz.data.ShapesDataset`` (or anything with ``class_names``, ``mean``,
                ``std`` and ``channels``).
            **kwargs: Further :class:`ShapesConcepts` arguments (``hues``, ``edge_width``...).
        """
        missing = [a for a in ("class_names", "mean", "std") if not hasattr(dataset, a)]
        if missing:
            raise TypeError(
                f"ShapesConcepts.for_dataset: `dataset` has no {missing}; pass a ShapesDataset "
                "or build ShapesConcepts(class_names, mean=..., std=...) yourself"
            )
        channels = int(getattr(dataset, "channels", len(dataset.mean)))
        return cls(
            list(dataset.class_names),
            mean=tuple(dataset.mean),
            std=tuple(dataset.std),
            channels=channels,
            **kwargs,
        )

    def __call__(self, batch: Any) -> tuple[Tensor, ConceptBatch]:
        """Return ``(images, concepts)`` for a batch ``(images, labels, masks)``."""
        owner = "ShapesConcepts"
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            raise ValueError(
                f"{owner}: the batch holds (images, labels) but no foreground masks (a "
                "DataLoader over a ShapesDataset yields those); build the loader over "
                "with_masks(dataset), or pass the ShapesDataset itself"
            )
        images = _pick(batch, _IMAGE_KEYS, 0, "images", owner)
        labels = _pick(batch, _LABEL_KEYS, 1, "labels", owner)
        foreground = _pick(batch, _MASK_KEYS, 2, "foreground masks", owner)
        return images, self.batch(images, labels, foreground)

    def masks(self, images: Tensor, labels: Tensor, foreground: Tensor) -> Tensor:
        """Concept masks of a batch, ``bool [N, K, H, W]`` in the order of :attr:`concepts`.

        Args:
            images: Normalised images ``[N, C, H, W]``.
            labels: Class indices ``[N]``.
            foreground: Object masks ``bool [N, H, W]``.

        Raises:
            ValueError: If the shapes do not match or a label is out of range.
        """
        return self.batch(images, labels, foreground).masks()

    def batch(self, images: Tensor, labels: Tensor, foreground: Tensor) -> ConceptBatch:
        """The batch's concepts, coded by group (what :meth:`__call__` returns).

        Args:
            images: Normalised images ``[N, C, H, W]``.
            labels: Class indices ``[N]``.
            foreground: Object masks ``bool [N, H, W]``.

        Raises:
            ValueError: If the shapes do not match or a label is out of range.
        """
        owner = "ShapesConcepts"
        if not (isinstance(foreground, Tensor) and foreground.dim() == 3):
            raise ValueError(
                f"{owner}: foreground masks must be a tensor [N, H, W]; got "
                f"{getattr(foreground, 'shape', type(foreground).__name__)}"
            )
        n, h, w = foreground.shape
        if not (isinstance(images, Tensor) and images.dim() == 4 and images.shape[0] == n):
            raise ValueError(
                f"{owner}: images must be [N, C, H, W] with N={n} (one per mask); got "
                f"{getattr(images, 'shape', type(images).__name__)}"
            )
        labels = torch.as_tensor(labels, device=foreground.device).reshape(-1).long()
        if labels.numel() != n:
            raise ValueError(f"{owner}: expected {n} labels (one per image); got {labels.numel()}")
        k = len(self.class_names)
        if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(
                f"{owner}: labels must be in [0, {k}) for class_names {list(self.class_names)}; "
                f"got values from {int(labels.min())} to {int(labels.max())}"
            )
        fg = foreground.to(torch.bool)
        width = self.edge_width or max(1, round(min(h, w) / 32))
        grown = _dilate(fg, width)
        shrunk = ~_dilate(~fg, width)
        objects = torch.where(fg, (labels + 1).to(torch.uint8).view(n, 1, 1), 0).to(torch.uint8)
        parts = (grown & ~shrunk).to(torch.uint8) + shrunk.to(torch.uint8) * 2
        codes = [objects, parts, (~fg).to(torch.uint8)]
        groups: list[list[int]] = [list(range(k)), [k, k + 1], [k + 2]]
        if self.hues:
            if images.shape[1] != 3 or tuple(images.shape[2:]) != (h, w):
                raise ValueError(
                    f"{owner}: colour concepts need RGB images of the masks' size {(h, w)}; got "
                    f"images of shape {tuple(images.shape)} (pass hues={{}} to skip colours)"
                )
            x = images.float()
            mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
            hue, sat, val = _hue_saturation_value((x * std + mean).clamp(0.0, 1.0))
            chroma = (sat >= self.min_saturation) & (val >= self.min_value)
            first = k + 3
            if self._wheel is not None:  # equal bins around the wheel: one division
                start, width, lookup = self._wheel
                index = torch.floor(torch.remainder(hue - start, 360.0) / width).long()
                index = index.clamp_(0, lookup.numel() - 1)
                code = torch.where(chroma, lookup.to(index.device)[index], 0).to(torch.uint8)
                codes.append(code)
                groups.append(list(range(first, first + len(self.hues))))
            else:
                bins = []
                for start, stop in self.hues.values():
                    inside = (
                        (hue >= start) & (hue < stop)
                        if start < stop
                        else (hue >= start) | (hue < stop)
                    )
                    bins.append(chroma & inside)
                if not self._disjoint:  # overlapping hue ranges: one group per colour
                    for i, inside in enumerate(bins):
                        codes.append(inside.to(torch.uint8))
                        groups.append([first + i])
                else:
                    code = torch.zeros((n, h, w), dtype=torch.uint8, device=fg.device)
                    for i, inside in enumerate(bins):
                        code.masked_fill_(inside, i + 1)
                    codes.append(code)
                    groups.append(list(range(first, first + len(bins))))
        return ConceptBatch._build(codes, groups, len(self.concepts))  # valid by construction


# ------------------------------------------------------------------------------ data helpers
class _WithMasks(Dataset):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.dataset.sample(index)


def with_masks(dataset: Any) -> Dataset:
    """A view of a ``ShapesDataset`` whose items are ``(image, label, mask)``.

    Use it to build a ``DataLoader`` (e.g. with a ``DistributedSampler``) whose batches
    :class:`ShapesConcepts` understands.

    Args:
        dataset: A ``ShapesDataset`` (anything with ``sample(i) -> (image, label, mask)``).

    Raises:
        TypeError: If ``dataset`` has no ``sample`` method.
    """
    if not callable(getattr(dataset, "sample", None)):
        raise TypeError(
            "with_masks: `dataset` must have sample(i) -> (image, label, mask), like "
            f"ShapesDataset; got {type(dataset).__name__}"
        )
    return _WithMasks(dataset)
