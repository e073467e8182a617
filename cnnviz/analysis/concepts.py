"""Per-pixel concept masks for Network Dissection: what a unit's top region is compared with.

A *concept* is a named set of pixels in every image (Bau et al. 2017 use the Broden data set:
objects, parts, scenes, materials, textures, colours). :func:`~cnnviz.analysis.dissect.dissect`
reads them through a :class:`ConceptSource`: a callable that takes one batch as the data yields
it and returns ``(model_input, masks)``, where ``masks`` is a ``bool`` tensor ``[N, K, H, W]`` in
the order of its :attr:`~ConceptSource.concepts`, a mapping ``{name: [N, H, W]}``, or a
:class:`ConceptBatch` — the concepts coded by groups of mutually exclusive concepts, one byte
per pixel and group, which is what counting uses (masks are coded on arrival). Three adapters
cover the common cases:

- :class:`ShapesConcepts` — the built-in Shapes data (batches ``(images, labels, masks)``): one
  concept per shape class (the object's pixels in images of that class), the object's edge (a
  thin band across the mask boundary) and interior (the mask eroded), the background, and hue
  bins (red, yellow, green, cyan, blue, magenta) of each pixel's colour;
- :class:`LabelMapConcepts` — data with per-pixel label maps (segmentation data sets): one
  concept per label value;
- :class:`MaskConcepts` — anything else: a function returning named masks.

Every concept has a *category* (:data:`CATEGORIES`: ``"object"``, ``"part"``, ``"colour"``,
``"scene"``, or any other string) for the report's "unique detectors per category".

Example:
    >>> source = ShapesConcepts.for_dataset(ShapesDataset(64, image_size=32))
    >>> [c.name for c in source.concepts][:3]
    ['circle', 'square', 'triangle']
    >>> images, coded = source((images, labels, fg_masks))  # a ConceptBatch
    >>> coded.masks().shape  # bool [N, K, H, W]
    torch.Size([64, 18, 32, 32])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CATEGORIES",
    "DEFAULT_HUES",
    "Concept",
    "ConceptBatch",
    "ConceptSource",
    "LabelMapConcepts",
    "MaskConcepts",
    "ShapesConcepts",
    "concept_batch",
    "with_masks",
]

#: The standard categories (Broden's, restricted to what cnnviz's data can provide). Sources may
#: use other strings; reports group by whatever categories occur.
CATEGORIES: tuple[str, ...] = ("object", "part", "colour", "scene")

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

_IMAGE_KEYS = ("image", "images", "input", "inputs", "x", "img", "pixel_values")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets")
_MASK_KEYS = ("mask", "masks", "foreground", "fg")
_LABEL_MAP_KEYS = ("label_map", "segmentation", "seg", "mask", "masks", "labels", "target")


@dataclass(frozen=True)
class Concept:
    """A named set of pixels: the thing a unit may detect.

    Attributes:
        name: Unique name within a source (``"ring"``, ``"edge"``, ``"red"``).
        category: Its kind, for counting detectors per category: one of :data:`CATEGORIES`
            (``"object"``, ``"part"``, ``"colour"``, ``"scene"``) or another non-empty string.
    """

    name: str
    category: str

    def __post_init__(self) -> None:
        for field, value in (("name", self.name), ("category", self.category)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Concept: `{field}` must be a non-empty str; got {value!r}")

    def as_dict(self) -> dict[str, str]:
        """``{"name": ..., "category": ...}`` (JSON-friendly)."""
        return {"name": self.name, "category": self.category}


@runtime_checkable
class ConceptSource(Protocol):
    """Turns a batch of the data into the model's input and per-pixel concept masks.

    Attributes:
        concepts: The concepts, in the order of the masks' second dimension. Fixed for the
            whole data set (every batch yields every concept; an absent concept is all-False).

    Calling it with one batch (whatever the data yields: a tuple, a dict...) returns
    ``(model_input, masks)``: the input passed to the model (``model(model_input)``), and
    either a ``bool`` tensor ``[N, K, H, W]`` (``K = len(concepts)``), a mapping
    ``{concept name: bool [N, H, W]}`` holding every concept, or a :class:`ConceptBatch`
    (the fastest: concepts already coded by exclusive groups). ``H, W`` is the resolution at
    which units are compared with concepts (the maps are upsampled to it).
    """

    concepts: tuple[Concept, ...]

    def __call__(self, batch: Any) -> tuple[Any, Tensor | Mapping[str, Tensor]]:
        """Return ``(model_input, masks)`` for one batch."""
        ...


def _as_concepts(owner: str, items: Any, default_category: str) -> tuple[Concept, ...]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise TypeError(
            f"{owner}: `concepts` must be a non-empty list of Concept objects, (name, category) "
            f"pairs or names; got {items!r}"
        )
    out = []
    for item in items:
        if isinstance(item, Concept):
            out.append(item)
        elif isinstance(item, str):
            out.append(Concept(item, default_category))
        elif isinstance(item, tuple) and len(item) == 2:
            out.append(Concept(*item))
        else:
            raise TypeError(
                f"{owner}: each concept must be a Concept, a (name, category) pair or a name; "
                f"got {item!r}"
            )
    names = [c.name for c in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{owner}: concept names must be unique; repeated: {duplicates}")
    return tuple(out)


@dataclass(frozen=True)
class ConceptBatch:
    """One batch's concepts, coded for counting: one small integer map per group of concepts.

    Concepts are split into *groups* whose members never share a pixel (for Shapes: the
    objects, the parts, the background, the colours), and each pixel gets one code per group:
    0 if no concept of the group holds it, else ``1 +`` the member's position in the group.
    Counting a pixel against every concept is then one histogram update per group, and the
    codes take ``G`` bytes per pixel instead of ``K`` masks.

    Attributes:
        codes: ``uint8 [G, N·H·W]`` (pixel ``n·H·W + y·W + x``).
        groups: The concept indices of each group (every concept in exactly one group).
        area: ``int64 [K]``: pixels of each concept in the batch.
        size: ``(H, W)``, the mask resolution.
        count: ``N``.

    Example:
        >>> batch = ConceptBatch.from_masks(masks)  # bool [N, K, H, W]
        >>> torch.equal(batch.masks(), masks)
        True
    """

    codes: Tensor
    groups: tuple[tuple[int, ...], ...]
    area: Tensor
    size: tuple[int, int]
    count: int

    @classmethod
    def from_masks(cls, masks: Tensor) -> ConceptBatch:
        """Code ``bool [N, K, H, W]`` masks (groups found greedily, in concept order).

        Raises:
            ValueError: If ``masks`` is not a 4-D tensor.
        """
        if not isinstance(masks, Tensor) or masks.dim() != 4:
            raise ValueError(
                "ConceptBatch: `masks` must be a bool tensor [N, K, H, W]; got "
                f"{getattr(masks, 'shape', type(masks).__name__)}"
            )
        m = masks if masks.dtype == torch.bool else masks != 0
        n, k, h, w = m.shape
        groups: list[list[int]] = []
        unions: list[Tensor] = []
        for concept in range(k):
            mask = m[:, concept]
            for members, union in zip(groups, unions, strict=True):
                if len(members) < 255 and not bool((union & mask).any()):
                    members.append(concept)
                    union |= mask
                    break
            else:
                groups.append([concept])
                unions.append(mask.clone())
        codes = []
        for members in groups:
            code = torch.zeros((n, h, w), dtype=torch.uint8, device=m.device)
            for position, concept in enumerate(members):
                code.masked_fill_(m[:, concept], position + 1)
            codes.append(code)
        return cls._build(codes, groups, k)

    @classmethod
    def from_codes(
        cls, codes: Sequence[Tensor], groups: Sequence[Sequence[int]], num_concepts: int
    ) -> ConceptBatch:
        """Build from one integer map ``[N, H, W]`` per group (0: none, ``i``: member ``i-1``).

        Args:
            codes: One map per group, all of the same shape.
            groups: The concept indices of each group; every index in ``range(num_concepts)``
                exactly once.
            num_concepts: ``K``.

        Raises:
            ValueError: If the groups do not partition the concepts, the maps' shapes differ,
                or a code exceeds its group's size.
        """
        owner = "ConceptBatch.from_codes"
        flat = sorted(c for g in groups for c in g)
        if flat != list(range(num_concepts)) or len(codes) != len(groups):
            raise ValueError(
                f"{owner}: `groups` must hold every concept index 0..{num_concepts - 1} exactly "
                f"once, with one code map per group; got {[list(g) for g in groups]} and "
                f"{len(codes)} maps"
            )
        shapes = {tuple(c.shape) for c in codes}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"{owner}: code maps must share one shape [N, H, W]; got {shapes}")
        for code, members in zip(codes, groups, strict=True):
            if code.is_floating_point() or (code.numel() and int(code.max()) > len(members)):
                raise ValueError(
                    f"{owner}: codes of a group with {len(members)} concepts must be integers "
                    f"in 0..{len(members)}"
                )
        return cls._build([c.to(torch.uint8) for c in codes], groups, num_concepts)

    @classmethod
    def _build(
        cls, codes: Sequence[Tensor], groups: Sequence[Sequence[int]], num_concepts: int
    ) -> ConceptBatch:
        n, h, w = codes[0].shape
        device = codes[0].device
        area = torch.zeros(num_concepts, dtype=torch.int64, device=device)
        for code, members in zip(codes, groups, strict=True):
            counts = torch.bincount(code.reshape(-1).long(), minlength=len(members) + 1)
            area[torch.tensor(list(members), device=device)] = counts[1:]
        stacked = torch.stack([c.reshape(-1) for c in codes])
        return cls(stacked, tuple(tuple(g) for g in groups), area, (h, w), n)

    @property
    def num_concepts(self) -> int:
        """``K``."""
        return int(self.area.shape[0])

    def image_areas(self) -> Tensor:
        """``int64 [N, K]``: pixels of each concept in each image."""
        n, k = self.count, self.num_concepts
        out = torch.zeros((n, k), dtype=torch.int64, device=self.codes.device)
        image = torch.arange(n, device=self.codes.device).repeat_interleave(
            self.size[0] * self.size[1]
        )
        for code, members in zip(self.codes, self.groups, strict=True):
            size = len(members) + 1
            counts = torch.bincount(image * size + code.long(), minlength=n * size)
            out[:, list(members)] = counts.view(n, size)[:, 1:]
        return out

    def masks(self) -> Tensor:
        """The masks, ``bool [N, K, H, W]``."""
        n, (h, w) = self.count, self.size
        out = torch.zeros((n, self.num_concepts, h, w), dtype=torch.bool, device=self.codes.device)
        for code, members in zip(self.codes, self.groups, strict=True):
            code = code.view(n, h, w)
            for position, concept in enumerate(members):
                out[:, concept] = code == position + 1
        return out

    def to(self, device: torch.device | str) -> ConceptBatch:
        """The batch on ``device``."""
        device = torch.device(device)
        if self.codes.device == device:
            return self
        return ConceptBatch(
            self.codes.to(device), self.groups, self.area.to(device), self.size, self.count
        )


def concept_batch(
    source: ConceptSource, batch: Any, *, owner: str = "concepts"
) -> tuple[Any, ConceptBatch]:
    """Call ``source`` on ``batch``, check what it returns and code the masks.

    Args:
        source: The concept source.
        batch: One batch of the data.
        owner: Name used in error messages.

    Returns:
        ``(model_input, concepts)``, the concepts as a :class:`ConceptBatch` in the order of
        ``source.concepts``.

    Raises:
        TypeError: If the source returns something other than ``(input, masks)``.
        ValueError: If the masks miss a concept, have the wrong shape, or a batch size other
            than the input's.
    """
    out = source(batch)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(
            f"{owner}: the concept source must return (model_input, masks); got "
            f"{type(out).__name__}"
        )
    inputs, masks = out
    names = [c.name for c in source.concepts]
    if isinstance(masks, ConceptBatch):
        coded = masks
        if coded.num_concepts != len(names):
            raise ValueError(
                f"{owner}: the concept source returned {coded.num_concepts} concepts; "
                f"`concepts` lists {len(names)}"
            )
    else:
        if isinstance(masks, Mapping):
            missing = [n for n in names if n not in masks]
            if missing:
                raise ValueError(
                    f"{owner}: the concept source returned no mask for {missing}; it must "
                    f"return one for every concept in `concepts` ({names})"
                )
            parts = [torch.as_tensor(masks[n]) for n in names]
            shapes = {tuple(p.shape) for p in parts}
            if len(shapes) != 1 or parts[0].dim() != 3:
                raise ValueError(
                    f"{owner}: every concept mask must be [N, H, W] with the same shape; got "
                    f"{sorted(shapes)}"
                )
            masks = torch.stack(parts, dim=1)
        if not isinstance(masks, Tensor) or masks.dim() != 4 or masks.shape[1] != len(names):
            raise ValueError(
                f"{owner}: concept masks must be a bool tensor [N, {len(names)}, H, W] (one "
                f"channel per concept), a mapping of [N, H, W] masks or a ConceptBatch; got "
                f"{getattr(masks, 'shape', type(masks).__name__)}"
            )
        coded = ConceptBatch.from_masks(masks)
    count = _batch_size(inputs)
    if count is not None and count != coded.count:
        raise ValueError(
            f"{owner}: the batch holds {count} inputs but {coded.count} concept masks; the "
            "concept source must return one mask per input"
        )
    return inputs, coded


def _batch_size(inputs: Any) -> int | None:
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0]) if inputs.dim() else None
    if isinstance(inputs, (tuple, list)) and inputs and isinstance(inputs[0], Tensor):
        return int(inputs[0].shape[0])
    return None


def _pick(batch: Any, keys: Sequence[str], index: int, what: str, owner: str) -> Any:
    if isinstance(batch, Mapping):
        for key in keys:
            if key in batch:
                return batch[key]
        raise ValueError(
            f"{owner}: cannot find the {what} in a batch with keys {sorted(map(str, batch))}; "
            f"expected one of {list(keys)}, or pass `unpack=`"
        )
    if isinstance(batch, (tuple, list)) and len(batch) > index:
        return batch[index]
    raise ValueError(
        f"{owner}: cannot find the {what} in a batch of type {type(batch).__name__}; expected "
        f"a tuple with it at position {index} or a dict, or pass `unpack=`"
    )


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


# ---------------------------------------------------------------------------------- user data
class LabelMapConcepts:
    """Concepts from per-pixel label maps (segmentation data): one concept per label value.

    Args:
        labels: ``{value: name or Concept}``, or a list of names/Concepts for values 0, 1, ...
            Values not listed (e.g. an ignore index such as 255) belong to no concept.
        category: Category of the concepts given by name only.
        unpack: ``unpack(batch) -> (model_input, label_map)`` with ``label_map`` an integer
            tensor ``[N, H, W]``; default: a batch ``(input, label_map, ...)`` or a dict with an
            ``image``/``input`` key and a ``label_map``/``segmentation``/``mask`` key.

    Example:
        >>> source = LabelMapConcepts({1: "person", 2: ("car", "object"), 7: ("road", "scene")})
        >>> inputs, masks = source((images, seg))  # masks: bool [N, 3, H, W]
    """

    def __init__(
        self,
        labels: Mapping[int, str | Concept | tuple[str, str]] | Sequence[str | Concept],
        *,
        category: str = "object",
        unpack: Callable[[Any], tuple[Any, Tensor]] | None = None,
    ) -> None:
        owner = "LabelMapConcepts"
        if isinstance(labels, Mapping):
            values = list(labels.keys())
            items = list(labels.values())
        elif isinstance(labels, Sequence) and not isinstance(labels, str):
            values = list(range(len(labels)))
            items = list(labels)
        else:
            raise TypeError(f"{owner}: `labels` must be a dict or a list; got {labels!r}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"{owner}: label values must be ints; got {values}")
        if unpack is not None and not callable(unpack):
            raise TypeError(f"{owner}: `unpack` must be callable; got {unpack!r}")
        self.concepts: tuple[Concept, ...] = _as_concepts(owner, items, category)
        self.values = tuple(values)
        self.unpack = unpack

    def __call__(self, batch: Any) -> tuple[Any, Tensor]:
        """Return ``(model_input, masks)``: one mask per listed label value."""
        owner = "LabelMapConcepts"
        if self.unpack is not None:
            inputs, label_map = self.unpack(batch)
        else:
            inputs = _pick(batch, _IMAGE_KEYS, 0, "input", owner)
            label_map = _pick(batch, _LABEL_MAP_KEYS, 1, "label map", owner)
        label_map = torch.as_tensor(label_map)
        if label_map.dim() == 4 and label_map.shape[1] == 1:
            label_map = label_map[:, 0]
        if label_map.dim() != 3 or label_map.is_floating_point():
            raise ValueError(
                f"{owner}: label maps must be integer tensors [N, H, W]; got "
                f"{label_map.dtype} {tuple(label_map.shape)}"
            )
        values = torch.tensor(self.values, device=label_map.device, dtype=label_map.dtype)
        return inputs, label_map[:, None] == values.view(1, -1, 1, 1)


class MaskConcepts:
    """Concepts from any data, through a function that returns named masks.

    Args:
        concepts: The concepts: Concept objects, ``(name, category)`` pairs, or names (given
            ``category``).
        unpack: ``unpack(batch) -> (model_input, masks)`` with ``masks`` a mapping
            ``{name: bool [N, H, W]}`` holding every concept, or a tensor ``[N, K, H, W]`` in
            the order of ``concepts``.
        category: Category of the concepts given by name only.

    Example:
        >>> source = MaskConcepts(
        ...     [("sky", "scene"), ("wheel", "part")],
        ...     lambda b: (b["image"], {"sky": b["sky"], "wheel": b["wheel"]}),
        ... )
    """

    def __init__(
        self,
        concepts: Sequence[Concept | tuple[str, str] | str],
        unpack: Callable[[Any], tuple[Any, Tensor | Mapping[str, Tensor]]],
        *,
        category: str = "object",
    ) -> None:
        if not callable(unpack):
            raise TypeError(f"MaskConcepts: `unpack` must be callable; got {unpack!r}")
        self.concepts: tuple[Concept, ...] = _as_concepts("MaskConcepts", concepts, category)
        self.unpack = unpack

    def __call__(self, batch: Any) -> tuple[Any, Tensor | Mapping[str, Tensor]]:
        """Return ``unpack(batch)``."""
        return self.unpack(batch)


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
