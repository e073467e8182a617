"""Record builders shared by the callbacks and ``cnnviz inspect``.

Analysis results become typed store records with one rule each (which filters, which unit,
how a table row reads).

Every function here returns a record of :mod:`cnnviz.store.records` without writing it: the
caller puts it with its own header (writer, layer, event). Tensors are copied to the host.

Example:
    >>> rec = filters_record("features.0", model.features[0], max_channels=64)
    >>> store.put(rec, writer="inspect", layer="features.0", event="start", label="start")
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cnnviz.store.records import (
    ActivationsRecord,
    AttributionsRecord,
    ConceptInfo,
    DissectionRecord,
    ErfRecord,
    ErrorRecord,
    FiltersRecord,
    LayerTableRecord,
    PredictionsRecord,
    ProbeRecord,
    ReceptiveFieldRecord,
    TableRow,
    TopkRecord,
)

if TYPE_CHECKING:
    from cnnviz.analysis.attribution import AttributionResult
    from cnnviz.analysis.capture import CapturedLayer
    from cnnviz.analysis.layer_table import LayerRow
    from cnnviz.analysis.receptive_field import ERFResult, ReceptiveField
    from cnnviz.analysis.topk import TopKActivations

__all__ = [
    "activations_record",
    "attributions_record",
    "centre_unit",
    "dissection_record",
    "erf_record",
    "error_record",
    "filters_record",
    "layer_table_record",
    "predictions_record",
    "probe_record",
    "receptive_field_record",
    "table_row",
    "topk_record",
]


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        t = t.detach().to("cpu", copy=True)
        if t.is_floating_point():
            t = t.float()
        return t.numpy()
    return np.asarray(t)


def centre_unit(field: ReceptiveField | Sequence[int]) -> tuple[int, ...]:
    """The unit described by default: the one whose field is centred on the input.

    One rule for the receptive-field records, the ERF and ``inspect``: per axis, the unit whose
    unclipped (local) field centre is nearest the input's centre (the lower index on a tie);
    without a
    receptive field (only the output size), ``(n - 1) // 2``, which is the same unit for a plain
    stack of convolutions.

    Args:
        field: A layer's :class:`~cnnviz.analysis.receptive_field.ReceptiveField`, or its
            output spatial size.

    Returns:
        The unit index per spatial axis.
    """
    if isinstance(field, (tuple, list)):
        return tuple((int(n) - 1) // 2 for n in field)
    rf = field
    unit = []
    for a in range(rf.ndim):

        def offset(i: int, a: int = a) -> float:
            index = [0] * rf.ndim
            index[a] = i
            # the local field: after a gate every unit's full field is the whole input
            return abs(rf.center(*index, local=True)[a] - (rf.input_spatial[a] - 1) / 2)

        unit.append(min(range(rf.output_spatial[a]), key=offset))
    return tuple(unit)


def probe_record(
    x: torch.Tensor | np.ndarray,
    *,
    y: torch.Tensor | np.ndarray | None = None,
    display: np.ndarray | torch.Tensor | None = None,
    masks: torch.Tensor | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> ProbeRecord:
    """The probe inputs (and what is known about them)."""
    xs = _np(x)
    return ProbeRecord(
        x=xs,
        y=None if y is None else _np(y).reshape(-1),
        display=None if display is None else _np(display),
        masks=None if masks is None else _np(masks),
        class_names=None if class_names is None else tuple(str(c) for c in class_names),
        shape=tuple(int(s) for s in xs.shape),
    )


def predictions_record(
    logits: torch.Tensor, *, class_names: Sequence[str] | None = None
) -> PredictionsRecord:
    """Softmax probabilities of the model's outputs (a tuple output: its first element)."""
    out = logits[0] if isinstance(logits, (tuple, list)) else logits
    probs = torch.softmax(out.detach().float().flatten(1), dim=1)
    return PredictionsRecord(
        probs=_np(probs),
        class_names=None if class_names is None else tuple(str(c) for c in class_names),
    )


def filters_record(
    name: str,
    module: nn.Module,
    *,
    max_channels: int | None = 64,
    max_in_channels: int = 16,
    rgb: bool = False,
    grad: tuple[torch.Tensor, torch.Tensor] | None = None,
    previous: np.ndarray | None = None,
    dead_tol: float = 1e-8,
    unchanged_tol: float = 1e-7,
) -> FiltersRecord:
    """A conv layer's filters: the first ``max_channels`` × ``max_in_channels`` slices.

    Args:
        name: The layer's qualified name (for messages).
        module: The conv module.
        max_channels: Filters kept (by index, stable across events); ``None``: all.
        max_in_channels: Input-channel slices kept per filter (norms use all).
        rgb: Draw in colour (the first conv layer on 3-channel input).
        grad: ``(sliced gradient, per-filter gradient norms)`` of the logged step.
        previous: The kept weights of the previous event (for ``unchanged``).
        dead_tol: Norm under which a filter counts as dead.
        unchanged_tol: Relative change under which a filter counts as unchanged.

    Raises:
        ValueError: If ``module`` has no 3-D or 4-D ``weight``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (3, 4):
        raise ValueError(f"`module` {name!r} has no conv weight [K, C, k...]")
    w = weight.detach()
    k = w.shape[0] if max_channels is None else min(w.shape[0], max_channels)
    # A copy: on the CPU ``.numpy()`` would alias the live parameter.
    shown = w[:k, :max_in_channels].to("cpu", torch.float32, copy=True).numpy()
    norms = w.flatten(1).float().norm(dim=1).cpu().numpy()
    grad_arr = grad_norms = None
    dead = norms < dead_tol
    if grad is not None:
        grad_arr = _np(grad[0])
        grad_norms = _np(grad[1])
        dead[: len(grad_norms)] |= grad_norms == 0
    unchanged: list[int] = []
    if previous is not None and previous.shape == shown.shape:
        change = np.abs(shown - previous).reshape(len(shown), -1).max(1)
        scale = np.abs(previous).reshape(len(previous), -1).max(1) + 1e-12
        unchanged = np.flatnonzero(change / scale < unchanged_tol).tolist()
    nonfinite = int((~np.isfinite(shown)).sum() + (~np.isfinite(norms)).sum())
    return FiltersRecord(
        weight=shown,
        norms=norms,
        grad=grad_arr,
        grad_norms=grad_norms,
        full_shape=tuple(int(s) for s in w.shape),
        channels=tuple(range(len(shown))),
        rgb=bool(rgb),
        dead=tuple(int(i) for i in np.flatnonzero(dead)),
        unchanged=tuple(unchanged),
        nonfinite=nonfinite,
        layer_type=type(module).__name__,
        bias=getattr(module, "bias", None) is not None,
    )


def activations_record(
    captured: CapturedLayer,
    *,
    read_from: str | None = None,
    layer_type: str | None = None,
    channels: Sequence[int] | None = None,
    readout: Any = None,
) -> ActivationsRecord:
    """One layer's captured maps and per-channel statistics.

    Args:
        captured: What :class:`~cnnviz.analysis.capture.LayerCapture` kept for the layer.
        read_from: The module actually read (the activation after a conv).
        layer_type: The layer's class name.
        channels: Keep only these of the captured channels (positions in ``captured.channels``
            order are looked up by channel index), e.g. the strongest ones.
        readout: The layer's :class:`~cnnviz.analysis.readout.Readout` (where a conv was
            read: its ``stage`` and path are recorded; ``read_from`` defaults to its source).
    """
    conv = readout is not None and getattr(readout, "kind", None) == "conv"
    if read_from is None and readout is not None:
        read_from = readout.source
    kept = [int(c) for c in captured.channels.tolist()]
    maps = captured.maps
    if channels is not None:
        where = {c: i for i, c in enumerate(kept)}
        missing = [c for c in channels if c not in where]
        if missing:
            raise ValueError(f"`channels` {missing} were not captured; captured: {kept}")
        maps = maps[:, [where[c] for c in channels]]
        kept = [int(c) for c in channels]
    return ActivationsRecord(
        maps=_np(maps),
        channels=np.asarray(kept, dtype=np.int64),
        mean=_np(captured.mean),
        max=_np(captured.max),
        min=_np(captured.min),
        zero_fraction=_np(captured.zero_fraction),
        shape=tuple(int(s) for s in captured.shape),
        read_from=read_from,
        nonfinite=int(captured.nonfinite),
        layer_type=layer_type,
        stage=readout.stage if conv else None,
        read_path=tuple(str(p) for p in readout.path) if conv else (),
    )


def _padding(pads: Sequence[Sequence[int]] | None) -> tuple[Any, ...] | None:
    if pads is None:
        return None
    return tuple(int(p[0]) if p[0] == p[1] else (int(p[0]), int(p[1])) for p in pads)


def _ints(values: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def table_row(row: LayerRow, rf: ReceptiveField | None = None) -> TableRow:
    """One layer-table row in the store's form (the one conversion of ``LayerRow``).

    Args:
        row: A row of :func:`~cnnviz.analysis.layer_table.layer_table`.
        rf: The layer's receptive field (default: the row's own, if it has one).
    """
    rf = rf if rf is not None else getattr(row, "receptive_field", None)
    return TableRow(
        name=row.name,
        type=row.type,
        kind=row.kind,
        input_shape=_ints(row.input_shape),
        output_shape=_ints(row.output_shape),
        kernel=_ints(row.kernel_size),
        stride=_ints(row.stride),
        padding=_padding(row.padding),
        dilation=_ints(row.dilation),
        output_arithmetic=row.output_arithmetic,
        weights_arithmetic=row.params_arithmetic,
        params=int(row.params),
        fits=bool(row.fits),
        rf_size=None if rf is None else _ints(rf.size),
        rf_jump=None if rf is None else _ints(rf.jump),
        rf_start=None if rf is None else _ints(rf.start),
    )


def layer_table_record(
    rows: Sequence[LayerRow], fields: Mapping[str, ReceptiveField] | None = None
) -> LayerTableRecord:
    """The layer table, with each layer's receptive field from ``fields`` when given."""
    fields = fields or {}
    return LayerTableRecord(rows=tuple(table_row(r, fields.get(r.name)) for r in rows))


def receptive_field_record(
    rf: ReceptiveField,
    *,
    unit: Sequence[int] | None = None,
    image: np.ndarray | None = None,
) -> ReceptiveFieldRecord:
    """A layer's receptive field and the region ``unit`` (default :func:`centre_unit`) sees.

    Args:
        rf: The layer's receptive field.
        unit: The unit to describe.
        image: A probe image ``[H, W, C]`` to draw the region on (2-D layers only).
    """
    u = tuple(int(i) for i in unit) if unit is not None else centre_unit(rf)
    return ReceptiveFieldRecord(
        region_image=None if image is None or rf.ndim != 2 else np.asarray(image),
        size=_ints(rf.size) or (),
        jump=_ints(rf.jump) or (),
        start=_ints(rf.start),
        padding=_ints(rf.padding),
        unit=u,
        region=_ints(rf.region(*u)),
        region_unclipped=_ints(rf.region(*u, clip=False)),
        misaligned=bool(rf.misaligned),
        misaligned_at=tuple(str(m) for m in rf.misaligned_at),
        exact=bool(rf.exact),
        layer_type=rf.type,
        output_shape=_ints(rf.output_shape),
        global_context=bool(rf.global_context),
        global_context_at=tuple(str(m) for m in rf.global_context_at),
        local_size=_ints(rf.local_size) if rf.global_context else None,
        local_jump=_ints(rf.local_jump) if rf.global_context else None,
        local_region=_ints(rf.region(*u, local=True)) if rf.global_context else None,
        local_region_unclipped=(
            _ints(rf.region(*u, clip=False, local=True)) if rf.global_context else None
        ),
    )


def _as_2d(box: Sequence[int]) -> tuple[int, ...]:
    """A 1-D region ``(start, stop)`` as ``(0, 1, start, stop)`` on a 1-row map."""
    return (0, 1, *box) if len(box) == 2 else tuple(box)


def erf_record(res: ERFResult) -> ErfRecord:
    """An effective receptive field; 1-D maps are stored as ``[1, L]`` with 2-D geometry."""
    emap = _np(res.map)
    one_d = emap.ndim == 1
    emap = emap[None] if one_d else emap
    theo = res.theoretical
    region = None if theo is None else _as_2d(theo.region(*res.unit, local=True))
    return ErfRecord(
        map=emap,
        radius=_finite(res.radius),
        sigma=tuple(float(s) for s in ((0.0, *res.sigma) if one_d else res.sigma)),
        ratio=_finite(res.ratio),
        theoretical=region,
        region=region,
        theoretical_size=None if theo is None else _ints(theo.local_size),
        effective_size=_finite(res.effective_size),
        unit=_ints(res.unit),
        centroid=tuple(float(c) for c in ((0.0, *res.centroid) if one_d else res.centroid)),
        mass_fraction=float(res.mass_fraction),
        num_images=int(res.num_images),
        note=res.note or None,
        effective_area=_finite(res.effective_area),
        inside_fraction=_finite(res.inside_fraction),
        local_fraction=_finite(res.local_fraction),
    )


def _finite(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` for NaN/Inf/None (JSON has no NaN)."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def attributions_record(results: Mapping[str, AttributionResult | str]) -> AttributionsRecord:
    """Attributions of several methods (``attribute_many``'s result: a result or a reason).

    Maps are summed over input channels: ``[N, H, W]``.
    """
    maps: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    layers: dict[str, str] = {}
    targets: tuple[int, ...] | None = None
    for method, res in results.items():
        if isinstance(res, str):
            unavailable[method] = res
            continue
        a = res.attributions
        maps[method] = _np(a.sum(dim=1) if a.dim() == 4 else a)
        if targets is None:
            targets = tuple(int(t) for t in res.targets.tolist())
        if res.note:
            notes[method] = res.note
        if res.layer:
            layers[method] = res.layer
    return AttributionsRecord(
        maps=maps,
        methods=tuple(maps),
        targets=targets,
        notes=notes,
        unavailable=unavailable,
        layers=layers,
    )


def error_record(callback: str, error: BaseException, *, at: str | None = None) -> ErrorRecord:
    """A callback's failure at an event, with its traceback."""
    return ErrorRecord(
        callback=callback,
        exception=type(error).__name__,
        message=str(error),
        at=at,
        traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
    )


def dissection_record(result: Any) -> DissectionRecord:
    """The record of a :class:`~cnnviz.analysis.dissect.Dissection` (one layer)."""
    meta = result.meta()
    readout = meta.get("readout") or {}
    conv = readout.get("kind") == "conv"
    return DissectionRecord(
        **result.as_arrays(),
        concepts=tuple(ConceptInfo(c["name"], c["category"]) for c in meta["concepts"]),
        quantile=float(meta["quantile"]),
        iou_threshold=float(meta["iou_threshold"]),
        pixels=int(meta["pixels"]),
        images=int(meta["images"]),
        mask_size=tuple(int(v) for v in meta["mask_size"]),
        map_size=tuple(int(v) for v in meta["map_size"]),
        bins=int(meta["bins"]),
        passes=int(meta["passes"]),
        stage=readout.get("stage") if conv else None,
        read_path=tuple(str(p) for p in readout.get("path", ())) if conv else (),
        control=str(meta.get("control") or ""),
        labelled_units=int(meta["labelled_units"]),
        detectors={k: tuple(v) for k, v in meta["detectors"].items()},
        detector_counts={k: int(v) for k, v in meta["detector_counts"].items()},
    )


def topk_record(
    top: TopKActivations,
    rf: ReceptiveField | None,
    get_raw: Any,
    get_image: Any,
    *,
    pad_value: float = 0.5,
    max_patch_size: int | None = 64,
    num_channels: int | None = None,
    readout: Any = None,
    layer_type: str | None = None,
    interior_only: bool = False,
) -> TopkRecord:
    """One layer's top-k activations with the input patch (or tokens) each unit saw.

    Args:
        top: The layer's streaming top-k.
        rf: Its receptive field (``None``: values only, no patches).
        get_raw: Sample index to the raw model input ``(C, H, W)``/``(C, L)``/``(L,)``.
        get_image: Sample index to the input as shown to people (in [0, 1]).
        pad_value: Display value of the parts of a field outside the image.
        max_patch_size: Patches are downsampled (as they are cut) to at most this per axis.
        num_channels: Channels of the layer (default: those kept).
        readout: The layer's readout (its ``stage`` and source are recorded).
        layer_type: The layer's class name.
        interior_only: Only units whose field lies inside the image were ranked.

    Raises:
        ValueError: When the patches cannot be cut (the field does not fit the inputs).
    """
    kk = int(top.count.max())
    values = top.values[:, :kk].float().cpu().numpy()
    samples = top.samples[:, :kk].cpu().numpy()
    flat = top.positions[:, :kk].cpu().numpy()
    samples = np.where(np.isfinite(values), samples, -1)  # masked units (interior_only)
    positions = np.stack(np.unravel_index(np.maximum(flat, 0), top.spatial_shape), axis=-1)
    positions[samples < 0] = -1
    conv = readout is not None and getattr(readout, "kind", None) == "conv"
    fields: dict[str, Any] = {
        "values": np.where(samples >= 0, values, np.nan).astype(np.float32),
        "samples": samples,
        "positions": positions,
        "channels": tuple(range(top.num_channels)),
        "k": kk,
        "num_channels": num_channels or top.num_channels,
        "read_from": None if readout is None else readout.source,
        "layer_type": layer_type,
        "rf_size": None if rf is None else _ints(rf.size),
        "interior_only": bool(interior_only),
        "stage": readout.stage if conv else None,
    }
    if rf is None or not (samples >= 0).any():
        return TopkRecord(**fields)
    share = np.full(samples.shape, np.nan, dtype=np.float32)
    for c, j in zip(*np.nonzero(samples >= 0), strict=True):
        share[c, j] = rf.padding_share(*(int(p) for p in positions[c, j]))
    fields["padding"] = share
    raw = get_raw(int(samples[samples >= 0][0]))
    tokens = not raw.is_floating_point()
    pad = -1.0 if tokens else pad_value
    crops = [
        top.patches(c, rf, get_image, pad_value=pad, max_size=max_patch_size)
        for c in range(len(values))
    ]
    if tokens:
        out = np.full((len(crops), kk, *crops[0].shape[1:]), -1, dtype=np.int64)
        for c, crop in enumerate(crops):
            out[c, : len(crop)] = crop.numpy()
        return TopkRecord(**fields, tokens=out)
    patches, scale = _stack_patches(crops, kk, pad_value, max_patch_size)
    # the crops were downsampled as they were cut (topk.patches); the stack may add more
    scale *= crops[0].shape[-1] / rf.size[-1]
    return TopkRecord(**fields, patches=patches, patch_scale=float(scale))


def _stack_patches(
    crops: list[torch.Tensor], kk: int, pad_value: float, max_size: int | None
) -> tuple[np.ndarray, float]:
    """Per-channel crops ``[m, C, h, w]`` (or ``[m, C, l]``) as ``[C, k, h, w(, 3)]``."""
    import torch.nn.functional as F

    first = crops[0]
    spatial = tuple(first.shape[2:]) if first.dim() == 4 else tuple(first.shape[1:])
    scale = 1.0
    if max_size is not None and max(spatial) > max_size:
        scale = max_size / max(spatial)
        spatial = tuple(max(1, round(s * scale)) for s in spatial)
    colour = first.dim() == 4 and first.shape[1] == 3
    out = np.full((len(crops), kk, *spatial, *((3,) if colour else ())), pad_value)
    for c, crop in enumerate(crops):
        img = crop.float()
        if img.dim() == 4 and tuple(img.shape[2:]) != spatial:
            img = F.interpolate(img, size=spatial, mode="area")
        elif img.dim() == 3 and tuple(img.shape[1:]) != spatial:  # 1-D: rows are channels
            img = F.interpolate(img[:, None], size=spatial, mode="area")[:, 0]
        if img.dim() == 4:
            img = img.permute(0, 2, 3, 1) if colour else img[:, 0]
        out[c, : len(img)] = img.numpy()
    return out.astype(np.float32), scale
