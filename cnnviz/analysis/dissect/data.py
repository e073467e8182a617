"""What a dissection reads: the data and its concepts, resolved once, and cached concepts.

Turns ``data`` (a ``Dataset``, a re-iterable of batches or :class:`CachedConcepts`) and the
concept source into a batch-iterator factory and a plan for the passes;
:func:`cache_concepts` codes a data set's concepts once for repeated dissections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset, default_collate

from cnnviz._checks import check_count
from cnnviz.analysis.concepts import (
    Concept,
    ConceptBatch,
    ConceptSource,
    ShapesConcepts,
    concept_batch,
)
from cnnviz.analysis.modelio import model_device, model_dtype


def _is_shapes(data: Any) -> bool:
    return callable(getattr(data, "sample", None)) and hasattr(data, "class_names")


def _default_source(data: Any) -> ConceptSource | None:
    if isinstance(data, CachedConcepts):
        return data
    candidates = [data, getattr(data, "dataset", None)]
    candidates.append(getattr(candidates[-1], "dataset", None))
    for item in candidates:
        if item is not None and _is_shapes(item):
            return ShapesConcepts.for_dataset(item)
    return None


def _dataset_batches(dataset: Dataset, batch_size: int) -> Callable[[], Iterator[Any]]:
    get = dataset.sample if _is_shapes(dataset) else dataset.__getitem__  # type: ignore[attr-defined]
    total = len(dataset)  # type: ignore[arg-type]

    def batches() -> Iterator[Any]:
        for start in range(0, total, batch_size):
            yield default_collate([get(i) for i in range(start, min(total, start + batch_size))])

    return batches


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        moved = {k: _to_device(v, device) for k, v in value.items()}
        try:
            return type(value)(moved)  # type: ignore[call-arg]
        except TypeError:
            return moved
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _cast(inputs: Any, dtype: torch.dtype | None) -> Any:
    if dtype is not None and isinstance(inputs, Tensor) and inputs.is_floating_point():
        return inputs.to(dtype)
    return inputs


@dataclass
class _Plan:
    """Everything a pass needs, resolved once."""

    model: nn.Module
    source: ConceptSource
    batches: Callable[[], Iterator[Any]]
    run: Callable[[nn.Module, Any], Any]
    device: torch.device
    dtype: torch.dtype | None
    stop_early: bool
    expected_images: int | None
    sized: bool


def _resolve_data(
    data: Any, concepts: ConceptSource | None, batch_size: int, owner: str
) -> tuple[ConceptSource, Callable[[], Iterator[Any]], int | None, bool]:
    """The concept source, a batch-iterator factory, the images expected and whether sized."""
    source = concepts if concepts is not None else _default_source(data)
    if source is None:
        raise TypeError(
            f"{owner}: `concepts` is required unless `data` is a ShapesDataset; pass a "
            "ConceptSource such as ShapesConcepts, LabelMapConcepts or MaskConcepts "
            "(cnnviz.analysis.concepts)"
        )
    if not callable(source) or not isinstance(getattr(source, "concepts", None), tuple):
        raise TypeError(
            f"{owner}: `concepts` must be a ConceptSource (callable, with a `concepts` tuple); "
            f"got {type(source).__name__}"
        )
    if isinstance(data, IterableDataset):
        raise TypeError(
            f"{owner}: `data` is an IterableDataset of samples; wrap it in a DataLoader so it "
            "yields batches"
        )
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return source, _dataset_batches(data, batch_size), len(data), True  # type: ignore[arg-type]
    if isinstance(data, Iterable):
        if isinstance(data, Iterator):  # iter() itself may draw from the RNG (DataLoader)
            raise TypeError(
                f"{owner}: `data` is an iterator, which can be read only once; pass a "
                "re-iterable (a list of batches, a DataLoader) or a Dataset"
            )
        return source, lambda: iter(data), None, hasattr(data, "__len__")
    raise TypeError(
        f"{owner}: `data` must be a Dataset or an iterable of batches; got {type(data).__name__}"
    )


def _plan(
    model: nn.Module,
    data: Any,
    concepts: ConceptSource | None,
    batch_size: int,
    forward: Callable[[nn.Module, Any], Any] | None,
    device: torch.device | str | None,
    stop_early: bool,
) -> _Plan:
    owner = "dissect"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: `model` must be an nn.Module; got {type(model).__name__}")
    if forward is not None and not callable(forward):
        raise TypeError(f"{owner}: `forward` must be callable as forward(model, inputs)")
    source, batches, expected, sized = _resolve_data(data, concepts, batch_size, owner)
    target = torch.device(device) if device is not None else model_device(model)
    return _Plan(
        model=model,
        source=source,
        batches=batches,
        run=forward or (lambda m, x: m(x)),
        device=target,
        dtype=model_dtype(model),
        stop_early=stop_early,
        expected_images=expected,
        sized=sized,
    )


class CachedConcepts:
    """A data set with its concepts coded once: both the data and the concept source.

    Made by :func:`cache_concepts`. Iterating it yields ``(model_input, ConceptBatch)`` pairs;
    calling it with such a pair returns it unchanged. Pass it as ``data`` (``concepts`` may be
    left out) to dissect the same images again and again — every few epochs, the randomised
    control, one layer after another — without recomputing their concepts.

    Attributes:
        concepts: The concepts of the source it was made with.
        images: Number of images held.
    """

    def __init__(self, items: list[tuple[Any, ConceptBatch]], concepts: tuple[Concept, ...]):
        self.items = items
        self.concepts = concepts
        self.images = sum(coded.count for _, coded in items)

    def __iter__(self) -> Iterator[tuple[Any, ConceptBatch]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, batch: tuple[Any, ConceptBatch]) -> tuple[Any, ConceptBatch]:
        """Return ``batch``: it already is ``(model_input, concepts)``."""
        return batch


def cache_concepts(
    data: Any,
    concepts: ConceptSource | None = None,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> CachedConcepts:
    """Read ``data`` once and code its concepts, for repeated dissections of the same images.

    Holds the model inputs and the concept codes (``G`` bytes per mask pixel, ``G`` groups of
    exclusive concepts: 4 for Shapes) on ``device``. The global RNG is forked while the data is
    read (a shuffling ``DataLoader`` changes nothing).

    Args:
        data: As for :func:`dissect`.
        concepts: As for :func:`dissect` (default: Shapes concepts for Shapes data).
        batch_size: Batch size when ``data`` is a ``Dataset``.
        device: Where to keep the batches (default: the CPU).

    Returns:
        A :class:`CachedConcepts` to pass as ``data``.

    Example:
        >>> cached = cache_concepts(ShapesDataset(1000, image_size=32, split="val"))
        >>> for epoch_model in checkpoints:
        ...     results = dissect_layers(epoch_model, layers, cached)
    """
    owner = "cache_concepts"
    batch_size = int(check_count(owner, "batch_size", batch_size))
    source, batches, _, _ = _resolve_data(data, concepts, batch_size, owner)
    target = torch.device(device) if device is not None else torch.device("cpu")
    items = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for batch in batches():
            inputs, coded = concept_batch(source, _to_device(batch, target), owner=owner)
            items.append((inputs, coded.to(target)))
    if not items:
        raise ValueError(f"{owner}: `data` yielded no batches")
    return CachedConcepts(items, tuple(source.concepts))


def _first_inputs(plan: _Plan) -> Any:
    for batch in plan.batches():
        inputs, _ = concept_batch(plan.source, _to_device(batch, plan.device), owner="dissect")
        return _cast(inputs, plan.dtype)
    raise ValueError("dissect: `data` yielded no batches")
