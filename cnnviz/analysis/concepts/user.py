"""Concept sources for the user's own data: label maps and named masks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cnnviz.analysis.concepts.core import _IMAGE_KEYS, _LABEL_MAP_KEYS, Concept, _as_concepts, _pick


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
