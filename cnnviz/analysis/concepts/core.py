"""The generic concept types: :class:`Concept`, :class:`ConceptSource`, :class:`ConceptBatch`.

Also :func:`concept_batch` (call a source, check what it returns, code the masks) and the
helpers the sources share to find the images, labels and masks in a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

#: The standard categories (Broden's, restricted to what cnnviz's data can provide). Sources may
#: use other strings; reports group by whatever categories occur.
CATEGORIES: tuple[str, ...] = ("object", "part", "colour", "scene")

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
        """``int64 [N, K]``: pixels of each concept in each image.

        Computed once per batch (a cached batch is dissected at every event); do not modify.
        """
        cached = self.__dict__.get("_image_areas")
        if cached is None:
            cached = self._image_areas_uncached()
            object.__setattr__(self, "_image_areas", cached)  # frozen: a cache, not a field
        return cached

    def _image_areas_uncached(self) -> Tensor:
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
