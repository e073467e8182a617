"""The effective receptive field (Luo et al. 2016): the input gradient of the real model.

Luo, Li, Urtasun & Zemel, "Understanding the Effective Receptive Field in Deep Convolutional
Neural Networks" (NeurIPS 2016), take the gradient of one output unit with respect to the input
and show that its mass is far from uniform over the theoretical field: for a stack of ``n``
layers it tends to a Gaussian whose width grows like ``sqrt(n)`` while the theoretical field
grows like ``n``, so the effective field occupies a shrinking share of the theoretical one.

This module summarises that map by gradient *mass* inside the theoretical field (see
:class:`ERFResult`): the smallest share of the field's area that holds 90% of the mass. The
share is at most 1 by construction, so "effective / theoretical" can be read as a fraction.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.guard import HookSet, observe
from cnnviz.analysis.receptive_field.geometry import ReceptiveField, ReceptiveFieldError
from cnnviz.analysis.receptive_field.graph import receptive_fields
from cnnviz.analysis.receptive_field.measure import (
    _centre_unit,
    _check_layer_names,
    _embedding_of,
    _Stop,
)

__all__ = ["ERFResult", "effective_receptive_field"]


@dataclass(frozen=True)
class ERFResult:
    """Effective receptive field of one unit (Luo, Li, Urtasun & Zemel, NeurIPS 2016).

    **Definition.** Let ``g`` be :attr:`map`, the unit's mean absolute input gradient, and
    ``T`` the unit's theoretical field clipped to the input (``theoretical.region(*unit)``),
    of ``|T|`` positions. Sort the positions of ``T`` by ``g``, largest first, and count how
    many it takes to hold :attr:`mass_fraction` ``q`` (0.9 by default) of the gradient mass
    inside ``T``, the last position counted fractionally: that is :attr:`effective_area`. Then

    * :attr:`ratio` ``= effective_area / |T|``, the share of the theoretical field that holds
      ``q`` of the mass: ``0 < ratio <= 1`` by construction (exactly ``q`` for a flat
      gradient, less the more the mass concentrates);
    * :attr:`effective_size` ``= effective_area ** (1 / ndim)``: the side of the square of
      equal area for images, the length for sequences, comparable with the theoretical size;
    * :attr:`inside_fraction`: the share of all gradient mass that lies inside ``T`` (1 up to
      rounding wherever the theory holds; less flags a wrong theoretical field).

    For a Gaussian map of per-axis standard deviation ``s`` the 90% rule gives an area of
    ``2 pi s^2 ln 10 ~ 14.5 s^2`` in 2-D and a length of ``3.29 s`` in 1-D. Luo et al. quantify
    the size by thresholding the map relative to its peak instead; the mass rule needs no
    threshold, is independent of the gradient's scale and cannot exceed the theoretical field.
    (The summary used before, the diameter ``2r + 1`` of a disc around the centroid compared
    with the side of a square, could: 1.3 for a lone 5x5 conv.)

    Layers that see global context (:attr:`ReceptiveField.global_context`, e.g. after a
    squeeze-and-excitation gate) have the whole input as theoretical field, and ``T`` is that;
    :attr:`local_fraction` says how much of the mass lies in the local field.

    A map with NaN or Inf values, or with no mass inside ``T``, is not summarised: the summary
    fields are NaN (``ratio`` too, when a theoretical field exists) and :attr:`note` says why.

    Attributes:
        layer: Qualified name of the layer.
        unit: The output unit whose gradient was taken (row, column) or (position,).
        channel: The channel, or ``None`` when the unit's channels were summed.
        map: Mean over probe inputs of ``|d y / d x|``, summed over input channels: ``(H, W)``
            (``(L,)`` for sequences), float32 on the CPU.
        num_images: How many probe inputs were averaged.
        centroid: Mass-weighted centre of ``map`` per axis (input coordinates).
        mass_fraction: The share ``q`` of the mass used for :attr:`effective_area` and
            :attr:`radius` (0.9 by default).
        radius: Smallest Euclidean radius around the centroid holding ``mass_fraction`` of the
            whole map's mass, in pixels. A shape descriptor for drawing; not comparable with
            the theoretical size (a disc's diameter can exceed a square's side).
        sigma: Per-axis standard deviation of ``map`` as a distribution (the moment fit of a
            Gaussian).
        effective_size: ``effective_area ** (1 / ndim)``, in pixels (see above).
        theoretical: The layer's theoretical :class:`ReceptiveField`, or ``None`` when it is
            not available (see :attr:`note`); the summary then uses the whole input as ``T``.
        ratio: ``effective_area / |T|`` (at most 1), or ``None`` without a theoretical field.
        effective_area: Positions (pixels) of ``T`` holding ``mass_fraction`` of its mass,
            fractional.
        inside_fraction: Share of the map's mass inside ``T``; ``None`` without a theoretical
            field.
        local_fraction: Share of the map's mass inside the local field, for layers with global
            context; else ``None``.
        note: Why :attr:`theoretical` is missing or the summary is NaN, else ``""``.
    """

    layer: str
    unit: tuple[int, ...]
    channel: int | None
    map: torch.Tensor
    num_images: int
    centroid: tuple[float, ...]
    mass_fraction: float
    radius: float
    sigma: tuple[float, ...]
    effective_size: float
    theoretical: ReceptiveField | None
    ratio: float | None
    effective_area: float = math.nan
    inside_fraction: float | None = None
    local_fraction: float | None = None
    note: str = ""


def _area(flat: torch.Tensor, fraction: float) -> float:
    """Fractional number of positions, largest first, holding ``fraction`` of the mass."""
    ordered = torch.sort(flat, descending=True).values
    cum = torch.cumsum(ordered, 0)
    total = float(cum[-1])
    if total <= 0:
        return math.nan
    target = fraction * total
    k = min(int(torch.searchsorted(cum, torch.tensor(target, dtype=cum.dtype))), len(cum) - 1)
    before = float(cum[k - 1]) if k > 0 else 0.0
    value = float(ordered[k])
    return k + (min(max((target - before) / value, 0.0), 1.0) if value > 0 else 1.0)


def _slices(box: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(box[2 * a], box[2 * a + 1]) for a in range(len(box) // 2))


@dataclass(frozen=True)
class _Summary:
    centroid: tuple[float, ...]
    radius: float
    sigma: tuple[float, ...]
    area: float = math.nan
    ratio: float | None = None
    inside: float | None = None
    local: float | None = None
    note: str = ""


def _erf_summary(
    erf: torch.Tensor,
    fraction: float,
    theoretical: ReceptiveField | None,
    unit: tuple[int, ...],
) -> _Summary:
    """Summarise an ERF map against the unit's theoretical field (see :class:`ERFResult`)."""
    m = erf.double()
    nd = m.dim()
    nan = math.nan
    fitted = theoretical is not None and tuple(theoretical.input_spatial) == tuple(m.shape)
    whole = tuple(v for n in m.shape for v in (0, n))
    box = theoretical.region(*unit) if fitted else whole
    local_box = theoretical.region(*unit, local=True) if fitted and theoretical.local else None
    # NaN where a number is due but cannot be computed; None where none is due
    undefined = _Summary(
        (nan,) * nd,
        nan,
        (nan,) * nd,
        ratio=nan if fitted else None,
        inside=nan if fitted else None,
        local=nan if local_box else None,
    )
    bad = int((~torch.isfinite(m)).sum())
    if bad:
        why = (
            f"the gradient map has {bad} NaN/Inf values (an overflow, or a point where the "
            "model is not differentiable, such as sqrt at 0): no summary"
        )
        return replace(undefined, note=why)
    total = float(m.sum())
    if total <= 0:
        why = "the unit's input gradient is zero on every probe input: no summary"
        return replace(undefined, note=why)
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in m.shape], indexing="ij")
    centroid = tuple(float((m * g).sum() / total) for g in grids)
    sigma = tuple(
        math.sqrt(float((m * (g - c) ** 2).sum() / total))
        for g, c in zip(grids, centroid, strict=True)
    )
    dist = torch.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centroid, strict=True))).flatten()
    order = torch.argsort(dist)
    cum = torch.cumsum(m.flatten()[order], 0)
    k = int(torch.searchsorted(cum, torch.tensor(fraction * float(cum[-1]), dtype=cum.dtype)))
    radius = float(dist[order[min(k, dist.numel() - 1)]])
    described = replace(
        undefined,
        centroid=centroid,
        radius=radius,
        sigma=sigma,
        local=float(m[_slices(local_box)].sum()) / total if local_box else None,
    )
    inside = m[_slices(box)]
    mass = float(inside.sum())
    if inside.numel() == 0 or mass <= 0:
        why = "no gradient mass inside the theoretical field: no effective size"
        return replace(described, inside=0.0 if fitted else None, note=why)
    area = _area(inside.flatten(), fraction)
    return replace(
        described,
        area=area,
        ratio=area / inside.numel() if fitted else None,
        inside=mass / total if fitted else None,
    )


def _layer_name(model: nn.Module, layer: str | nn.Module) -> str:
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer and name:
                return name
        raise ValueError(
            f"`layer`: the given {type(layer).__name__} is not a submodule of the model; pass "
            "one of its submodules or its qualified name"
        )
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a qualified name or a submodule; got {layer!r}")
    _check_layer_names(model, [layer], "layer")
    return layer


def effective_receptive_field(
    model: nn.Module,
    layer: str | nn.Module,
    probe: torch.Tensor,
    channel: int | None = None,
    *,
    unit: Sequence[int] | None = None,
    mass_fraction: float = 0.9,
    batch_size: int | None = None,
    theoretical: ReceptiveField | None = None,
) -> ERFResult:
    """Effective receptive field of ``layer``'s centre unit over ``probe`` inputs.

    The real model (not a linearised copy) runs under
    :func:`~cnnviz.analysis.guard.observe` with gradients on: eval mode, RNG forked, parameters
    frozen (no ``.grad`` touched), modes restored; it works inside ``torch.inference_mode``. A
    hook (inside a :class:`~cnnviz.analysis.guard.HookSet`, removed even on error) captures the
    layer's output and stops the forward pass there. The map is summarised by gradient mass
    inside the unit's theoretical field (:class:`ERFResult` gives the definition).

    Args:
        model: The model.
        layer: Qualified name of the layer, or the submodule itself.
        probe: Inputs ``(N, C, H, W)``, ``(N, C, L)``, or ``(N, L)`` token ids (the gradient is
            then taken at the embedding output and summed over embedding dimensions).
        channel: Differentiate this output channel; ``None`` sums the unit's channels.
        unit: The output unit; default the unit whose theoretical field (its local field, for
            layers that see global context) is centred nearest the input's centre
            (``(n - 1) // 2`` per axis when the theoretical field is unknown).
        mass_fraction: The share of the gradient mass that :attr:`ERFResult.effective_area`
            and :attr:`ERFResult.radius` hold.
        batch_size: Process the probe in chunks of this many inputs (default: all at once).
        theoretical: The layer's theoretical field, when known (e.g. from one call of
            :func:`receptive_fields` for many layers); default: computed here (a trace).

    Returns:
        An :class:`ERFResult` with the map and its summary.

    Raises:
        TypeError: If ``probe`` is not a tensor or ``layer`` has the wrong type.
        ValueError: If ``layer`` is unknown (lists the conv/pool layers), ``channel`` or
            ``unit`` is out of range, ``probe`` is empty, or ``mass_fraction`` not in (0, 1].

    Example:
        >>> erf = effective_receptive_field(model, "features.10", images[:16])
        >>> erf.map.shape  # then erf.ratio (<= 1), erf.effective_size, erf.sigma summarise it
        torch.Size([224, 224])
    """
    name = _layer_name(model, layer)
    if not isinstance(probe, torch.Tensor):
        raise TypeError(f"`probe` must be a torch.Tensor batch; got {type(probe).__name__}")
    if probe.dim() < 2 or probe.shape[0] == 0:
        raise ValueError(
            f"`probe` must be a non-empty batch (N, C, H, W), (N, C, L) or (N, L); got shape "
            f"{tuple(probe.shape)}"
        )
    if isinstance(mass_fraction, bool) or not 0 < float(mass_fraction) <= 1:
        raise ValueError(f"`mass_fraction` must be in (0, 1]; got {mass_fraction!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"`batch_size` must be a positive int or None; got {batch_size!r}")
    tokens = not probe.is_floating_point()
    input_size = tuple(probe.shape[1:])
    note = ""
    if theoretical is not None and tuple(theoretical.input_shape) != input_size:
        raise ValueError(
            f"`theoretical` is the field for input {tuple(theoretical.input_shape)}, but the "
            f"probe's input is {input_size}"
        )
    if theoretical is None:
        try:
            theoretical = receptive_fields(model, input_size).get(name)
            if theoretical is None:
                note = f"{name!r} is not a conv or pooling layer"
        except ReceptiveFieldError as exc:
            note = f"no theoretical receptive field: {exc}"
    n = probe.shape[0]
    step = n if batch_size is None else int(batch_size)
    total: torch.Tensor | None = None
    chosen: tuple[int, ...] | None = tuple(unit) if unit is not None else None
    with observe(model, grad=True, extra_devices=[probe.device]):
        for begin in range(0, n, step):
            chunk = probe[begin : begin + step].detach().clone()
            grad_map, chosen = _erf_batch(model, name, chunk, channel, chosen, theoretical, tokens)
            total = grad_map if total is None else total + grad_map
    if total is None or chosen is None:  # unreachable: the probe holds at least one input
        raise ValueError("`probe` must be a non-empty batch")
    erf = (total / n).float().cpu()
    summary = _erf_summary(erf, float(mass_fraction), theoretical, chosen)
    return ERFResult(
        layer=name,
        unit=chosen,
        channel=channel,
        map=erf,
        num_images=n,
        centroid=summary.centroid,
        mass_fraction=float(mass_fraction),
        radius=summary.radius,
        sigma=summary.sigma,
        effective_size=summary.area ** (1 / erf.dim()),
        theoretical=theoretical,
        ratio=summary.ratio,
        effective_area=summary.area,
        inside_fraction=summary.inside,
        local_fraction=summary.local,
        note="; ".join(part for part in (note, summary.note) if part),
    )


def _default_unit(spatial: Sequence[int], theoretical: ReceptiveField | None) -> tuple[int, ...]:
    if theoretical is None or tuple(theoretical.output_spatial) != tuple(spatial):
        return _centre_unit(spatial)
    field = theoretical.local_field  # after a gate every unit's full field is the whole input
    unit = []
    for a, (n, size) in enumerate(zip(spatial, field.input_spatial, strict=True)):

        def distance(i: int, a: int = a, target: float = (size - 1) / 2) -> float:
            lo, hi = field._interval(a, i, clip=False)
            return abs((lo + hi - 1) / 2 - target)

        unit.append(min(range(n), key=distance))
    return tuple(unit)


def _erf_batch(
    model: nn.Module,
    name: str,
    x: torch.Tensor,
    channel: int | None,
    unit: tuple[int, ...] | None,
    theoretical: ReceptiveField | None,
    tokens: bool,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    captured: list[torch.Tensor] = []
    leaf: list[torch.Tensor] = []
    with HookSet() as hooks:
        if tokens:

            def embed_hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
                new = out.detach().clone().requires_grad_(True)
                leaf.append(new)
                return new

            hooks.add(_embedding_of(model).register_forward_hook(embed_hook))
        else:
            x.requires_grad_(True)

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                captured.append(out)
                raise _Stop

        hooks.add(model.get_submodule(name).register_forward_hook(hook))
        with contextlib.suppress(_Stop):
            model(x)
    if not captured:
        raise ValueError(
            f"`layer`: {name!r} was not called (or returned no tensor) in the forward pass; "
            "choose a layer on the path from input to output"
        )
    out = captured[0]
    spatial = tuple(out.shape[2:])
    if not spatial:
        raise ValueError(f"`layer`: {name!r} has no spatial output (shape {tuple(out.shape)})")
    if unit is None:
        unit = _default_unit(spatial, theoretical)
    if len(unit) != len(spatial) or not all(0 <= u < s for u, s in zip(unit, spatial, strict=True)):
        raise ValueError(f"`unit`: {tuple(unit)} is outside layer {name!r}'s output {spatial}")
    if channel is not None and (
        isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < out.shape[1]
    ):
        raise ValueError(
            f"`channel` must be an int in [0, {out.shape[1]}) for layer {name!r}; got {channel!r}"
        )
    picked = out[(slice(None), slice(None) if channel is None else channel, *unit)]
    wrt = leaf[0] if tokens else x
    (grad,) = torch.autograd.grad(picked.sum(), wrt)
    g = grad.abs()
    g = g.sum(dim=-1) if tokens else g.sum(dim=1)
    return g.sum(dim=0).double(), tuple(unit)
