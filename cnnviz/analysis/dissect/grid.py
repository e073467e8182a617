"""The numerics under the counts: bilinear upsampling and the power-of-two histogram grid.

:func:`upsample` is ``F.interpolate(..., mode="bilinear", align_corners=False)`` as two small
matrix products (the matrices cached per size and device); :func:`_grid` fits each unit's bin
grid to its range, :func:`_rebin` moves counts exactly onto a coarser or shifted grid, and
:func:`_rank` is the ``⌈q·n⌉`` of a quantile.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Scaled activations stay below 2**_MANTISSA, so bin indices are exact in float32.
_MANTISSA = 23
#: Smallest grid exponent (2**-e must be a finite float32).
_E_MIN = -126


# --------------------------------------------------------------------------------- upsampling
@functools.lru_cache(maxsize=64)
def _interpolation_matrix(src: int, dst: int) -> Tensor:
    """``[dst, src]`` matrix of 1-D linear interpolation (``align_corners=False``) on the CPU."""
    eye = torch.eye(src, dtype=torch.float32).unsqueeze(0)
    return F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T.contiguous()


_DEVICE_MATRICES: dict[tuple[int, int, str], Tensor] = {}


def _matrix(src: int, dst: int, device: torch.device) -> Tensor:
    key = (src, dst, str(device))
    found = _DEVICE_MATRICES.get(key)
    if found is None:
        if len(_DEVICE_MATRICES) > 64:
            _DEVICE_MATRICES.clear()
        found = _DEVICE_MATRICES[key] = _interpolation_matrix(src, dst).to(device)
    return found


@functools.lru_cache(maxsize=64)
def _cell_sizes(src: int, dst: int) -> tuple[int, ...]:
    """Output pixels whose interpolation starts at each source pixel (``i0`` of each output).

    Output pixel ``y`` mixes source pixels ``i0`` and ``min(i0 + 1, src - 1)``; this counts the
    outputs of each ``i0`` (the edges take the clamped outputs too).
    """
    first = (_interpolation_matrix(src, dst) > 0).float().argmax(dim=1)
    return tuple(int(v) for v in torch.bincount(first, minlength=src).tolist())


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (``align_corners=False``) of ``[..., h, w]`` maps to ``size``.

    The same interpolation as ``F.interpolate(..., mode="bilinear", align_corners=False)``
    (to float32 rounding), computed as two small matrix products, and always a new float32
    tensor. Each map's result depends only on that map.

    Args:
        maps: ``[..., h, w]`` tensor.
        size: ``(H, W)``.

    Returns:
        ``[..., H, W]`` float32.
    """
    h, w = maps.shape[-2:]
    x = maps.float()
    if (h, w) == tuple(size):
        return x.clone()
    rows = _matrix(h, size[0], x.device)
    cols = _matrix(w, size[1], x.device)
    return torch.matmul(torch.matmul(rows, x), cols.T)


# ------------------------------------------------------------------------------- grid helpers
def _frexp_exponent(x: Tensor) -> Tensor:
    return torch.frexp(x).exponent.to(torch.int64)


def _grid(vmin: Tensor, vmax: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Exponent ``e`` and origin ``o`` of the bin grid for each channel's ``[vmin, vmax]``.

    Bin ``j`` covers ``[(o + j)·2^e, (o + j + 1)·2^e)``. ``e`` is the smallest exponent (at
    least :data:`_E_MIN`, and such that ``|v|·2^-e < 2^23``) for which ``vmin`` and ``vmax``
    fall at most ``bins - 1`` bins apart; it only grows when the range grows, so a grid is a
    function of the range alone (merging equals one pass). ``o = floor(vmin·2^-e)``.
    """
    lo, hi = vmin.double(), vmax.double()
    empty = ~(hi >= lo)
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    span = hi - lo
    magnitude = torch.maximum(lo.abs(), hi.abs())
    e_mag = _frexp_exponent(magnitude) - _MANTISSA
    e_span = _frexp_exponent(span) - 1 - math.ceil(math.log2(bins))
    e = torch.maximum(torch.where(span > 0, e_span, e_mag), e_mag).clamp_min(_E_MIN)
    for _ in range(6):
        scale = torch.ldexp(torch.ones_like(lo), -e)
        fits = torch.floor(hi * scale) - torch.floor(lo * scale) <= bins - 1
        e = torch.where(fits, e, e + 1)
    origin = torch.floor(lo * torch.ldexp(torch.ones_like(lo), -e)).to(torch.int64)
    zero = torch.zeros_like(e)
    return torch.where(empty, zero, e), torch.where(empty, zero, origin)


def _floor_div_pow2(x: Tensor, d: Tensor) -> Tensor:
    """``floor(x / 2**d)`` for int64 ``x`` and ``d >= 0`` (arithmetic shift)."""
    return torch.bitwise_right_shift(x, d)


def _rebin(
    hist: Tensor,
    joint: Tensor | None,
    floor: Tensor,
    old: tuple[Tensor, Tensor],
    new: tuple[Tensor, Tensor],
    bins: int,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Move counts from grid ``old = (e, o)`` to the coarser or shifted grid ``new``.

    Exact: every old bin lies inside one new bin (new exponents are at least the old ones and
    both grids are aligned to powers of two). ``floor`` (bins at or above it are complete) is
    mapped to the first new bin that receives no incomplete old bin.
    """
    e_old, o_old = old
    e_new, o_new = new
    d = (e_new - e_old).clamp(0, 63)  # shifts past 63 bits: same result, defined everywhere
    j = torch.arange(bins, device=hist.device, dtype=torch.int64)
    target = _floor_div_pow2(o_old[:, None] + j[None, :], d[:, None]) - o_new[:, None]
    target = target.clamp(0, bins - 1)  # only empty bins can fall outside
    new_hist = torch.zeros_like(hist).scatter_add_(1, target, hist)
    new_joint = None
    if joint is not None and joint.shape[1]:
        index = target[:, :, None].expand(-1, -1, joint.shape[2])
        new_joint = torch.zeros_like(joint).scatter_add_(1, index, joint)
    elif joint is not None:
        new_joint = joint
    last_incomplete = _floor_div_pow2(o_old + floor - 1, d) - o_new
    new_floor = torch.where(
        floor <= 0,
        torch.zeros_like(floor),
        torch.where(floor >= bins, torch.full_like(floor, bins), last_incomplete + 1),
    ).clamp(0, bins)
    return new_hist, new_joint, new_floor


def _rank(quantile: float, pixels: int) -> int:
    """``⌈q·n⌉`` (at least 1), robust to the rounding of ``q·n``."""
    return max(1, math.ceil(quantile * pixels - 1e-9 * max(1.0, quantile * pixels)))
