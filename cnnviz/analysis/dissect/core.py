"""The runners: :func:`dissect` (one layer) and :func:`dissect_layers` (several, same passes)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cnnviz._checks import check_count, check_int, check_number
from cnnviz.analysis.concepts import ConceptSource, concept_batch
from cnnviz.analysis.dissect.counts import DissectionCounts
from cnnviz.analysis.dissect.data import _cast, _first_inputs, _Plan, _plan, _to_device
from cnnviz.analysis.dissect.results import Dissection
from cnnviz.analysis.guard import observe
from cnnviz.analysis.readout import Readout, ReadoutHooks, find_readouts


class _StopForward(Exception):
    """Raised from a read hook once every dissected layer was read: ends the forward early."""


def _run_pass(
    plan: _Plan,
    readouts: Mapping[str, Readout],
    counts: dict[str, DissectionCounts],
    make: Callable[[str, Tensor, int], DissectionCounts] | None,
    names: Sequence[str],
) -> None:
    """One pass over the data: every named layer's maps go to its counts (made on first use)."""
    current: dict[str, Any] = {"batch": None, "done": set()}
    wanted = set(names)

    def on_output(name: str, tensor: Tensor) -> None:
        if name not in wanted or name in current["done"]:
            return
        current["done"].add(name)
        if name not in counts:
            if make is None:
                return
            counts[name] = make(name, tensor, current["batch"].count)
        counts[name].update(tensor, current["batch"])
        if plan.stop_early and current["done"] >= wanted:
            raise _StopForward

    with ReadoutHooks(plan.model, [readouts[n] for n in names], on_output) as hooks:
        for batch in plan.batches():
            inputs, coded = concept_batch(
                plan.source, _to_device(batch, plan.device), owner="dissect"
            )
            current["batch"] = coded.to(plan.device)
            current["done"] = set()
            with contextlib.suppress(_StopForward):
                plan.run(plan.model, _cast(inputs, plan.dtype))
            missing = sorted(wanted - current["done"])
            if missing:
                why = "; ".join(f"{n}: {hooks.skipped[n]}" for n in missing if n in hooks.skipped)
                raise ValueError(
                    f"dissect: no maps were read for layer(s) {missing} in a forward pass"
                    + (f" ({why})" if why else "")
                    + "; dissect layers the forward pass runs"
                )


def dissect_layers(
    model: nn.Module,
    layers: Sequence[str] | None,
    data: Any,
    concepts: ConceptSource | None = None,
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    bins: int = 1024,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    device: torch.device | str | None = None,
    sync: bool = False,
    group: Any = None,
    stop_early: bool = True,
    control: str = "",
) -> dict[str, Dissection]:
    """Dissect several layers in the same pass(es) over the data (see :func:`dissect`).

    Args:
        model: The model (any ``nn.Module``; not changed).
        layers: Qualified names of conv or pooling layers with 2-D maps; ``None``: every
            ``Conv2d`` and 2-D pooling layer.
        data: The data, see :func:`dissect`.
        concepts: The concept source, see :func:`dissect`.
        quantile: See :func:`dissect`.
        iou_threshold: See :func:`dissect`.
        batch_size: See :func:`dissect`.
        bins: See :func:`dissect`.
        forward: See :func:`dissect`.
        device: See :func:`dissect`.
        sync: See :func:`dissect`.
        group: See :func:`dissect`.
        stop_early: See :func:`dissect`.
        control: Stored in the results (``randomised_control`` sets it).

    Returns:
        ``{layer: Dissection}`` in the order of ``layers``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a layer is unknown (the message lists the valid names), has no 2-D
            maps, or the data is empty.
    """
    owner = "dissect"
    quantile = float(check_number(owner, "quantile", quantile, low=0.0, high=1.0, low_open=True))
    if quantile >= 1.0:
        raise ValueError(f"{owner}: `quantile` must be below 1; got {quantile!r}")
    iou_threshold = float(check_number(owner, "iou_threshold", iou_threshold, low=0.0, high=1.0))
    batch_size = int(check_count(owner, "batch_size", batch_size))
    bins = int(check_int(owner, "bins", bins, low=16, high=1 << 20))
    if not isinstance(stop_early, bool) or not isinstance(sync, bool):
        raise TypeError(f"{owner}: `stop_early` and `sync` must be True or False")
    plan = _plan(model, data, concepts, batch_size, forward, device, stop_early)
    if layers is None:
        names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) or type(m).__name__.endswith("Pool2d")
        ]
    elif isinstance(layers, str):
        names = [layers]
    else:
        names = list(layers)
    if not names:
        raise ValueError(
            f"{owner}: `layers` is empty and the model has no 2-D conv or pooling layer"
        )
    world = 1
    if sync:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size(group)
    num_concepts = len(plan.source.concepts)

    with observe(model, extra_devices=[plan.device]), torch.no_grad():
        first = _first_inputs(plan)
        example: Any = first
        if forward is not None or not isinstance(first, Tensor):
            example = lambda: plan.run(model, first)  # noqa: E731
        readouts = find_readouts(model, example, names)
        counts: dict[str, DissectionCounts] = {}

        def make(name: str, tensor: Tensor, batch_count: int) -> DissectionCounts:
            if tensor.dim() != 4:
                raise ValueError(
                    f"{owner}: layer {name!r} gives maps of shape {tuple(tensor.shape)}; "
                    "dissection needs 2-D maps [N, C, H, W]"
                )
            expected = plan.expected_images
            if expected is None and plan.sized:
                expected = len(data) * batch_count
            return DissectionCounts(
                int(tensor.shape[1]),
                num_concepts,
                quantile=quantile,
                bins=bins,
                expected_images=expected * world if expected else None,
                device=tensor.device,
            )

        _run_pass(plan, readouts, counts, make, names)
        missing = [n for n in names if n not in counts]
        if missing:
            raise ValueError(f"{owner}: `data` yielded no batches for {missing}")
        if sync:
            for name in names:
                counts[name].sync(group)
        seconds = {n: counts[n].refinement() for n in names}
        todo = {n: s for n, s in seconds.items() if s is not None}
        if todo:
            _run_pass(plan, readouts, todo, None, list(todo))  # type: ignore[arg-type]
            for name, second in todo.items():
                if sync:
                    second.sync(group)
                counts[name].absorb(second)
        return {
            name: counts[name].result(
                plan.source.concepts,
                layer=name,
                iou_threshold=iou_threshold,
                readout=readouts[name],
                passes=2 if name in todo else 1,
                control=control,
            )
            for name in names
        }


def dissect(
    model: nn.Module,
    layer: str,
    data: Any,
    concepts: ConceptSource | None = None,
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    bins: int = 1024,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    device: torch.device | str | None = None,
    sync: bool = False,
    group: Any = None,
    stop_early: bool = True,
) -> Dissection:
    """Network Dissection of one layer: each unit's threshold, best concept, IoU and runner-up.

    Each unit's maps are read after the normalisation and activation that follow its conv
    (:func:`~cnnviz.analysis.readout.find_readouts`), upsampled bilinearly to the masks'
    resolution, thresholded at the unit's top-``quantile`` value over the whole data set and
    compared with every concept by IoU (package docstring: algorithm and accuracy). One pass
    over the data when its length is known (a second one for the few units that need it), on
    ``device``, in memory independent of the data set's size. Runs under
    :func:`~cnnviz.analysis.guard.observe`: the model, its BatchNorm buffers, parameters'
    ``.grad`` and the global RNG streams are as before, and no hook is left, also on error.

    Args:
        model: The model (any ``nn.Module``; not changed).
        layer: Qualified name of a conv or pooling layer with 2-D maps.
        data: A ``Dataset`` (batched here with ``batch_size``, in index order; a
            ``ShapesDataset`` yields ``(images, labels, masks)``), a re-iterable of batches
            (a ``DataLoader``, a list; each batch goes to ``concepts``), or a
            :class:`CachedConcepts` (:func:`cache_concepts`: concepts coded once, for
            repeated dissections of the same images).
        concepts: A :class:`~cnnviz.analysis.concepts.ConceptSource` turning a batch into
            ``(model_input, masks)``; default: :class:`~cnnviz.analysis.concepts.ShapesConcepts`
            when ``data`` is a ``ShapesDataset`` (or a loader over one, through
            :func:`~cnnviz.analysis.concepts.with_masks`).
        quantile: Top share ``q`` of each unit's activations that forms its region (0.005).
        iou_threshold: IoU the best concept needs to label a unit (0.04).
        batch_size: Batch size when ``data`` is a ``Dataset``.
        bins: Histogram bins per unit (precision of the threshold; memory
            ``C · bins · (8 + 4 K)`` bytes).
        forward: ``forward(model, model_input)`` runs the model (default ``model(input)``).
        device: Where to count (default: the model's device); batches are moved there.
        sync: Merge the counts of every DDP rank (each rank passes its share of the data;
            call on every rank). All ranks get the same result.
        group: Process group for ``sync``.
        stop_early: End each forward pass once the layer was read (its output is unused).

    Returns:
        The layer's :class:`Dissection`.

    Raises:
        TypeError: If an argument has the wrong type (a one-shot iterator as ``data``, no
            ``concepts`` for data other than Shapes...).
        ValueError: If the layer is unknown (the message lists the valid names), has no 2-D
            maps, the data is empty or the maps are not finite.

    Example:
        >>> ds = ShapesDataset(1000, image_size=32, split="val")
        >>> result = dissect(model, "features.c3", ds)
        >>> print(result.summary())
        features.c3: 9/16 units labelled (IoU >= 0.04); unique detectors: object 4, ...
    """
    if not isinstance(layer, str):
        raise TypeError(
            f"dissect: `layer` must be a layer name (str); got {type(layer).__name__}. Use "
            "dissect_layers() for several layers"
        )
    return dissect_layers(
        model,
        [layer],
        data,
        concepts,
        quantile=quantile,
        iou_threshold=iou_threshold,
        batch_size=batch_size,
        bins=bins,
        forward=forward,
        device=device,
        sync=sync,
        group=group,
        stop_early=stop_early,
    )[layer]
