"""The receptive-field record and the interval arithmetic behind it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

# One path group along one axis: (jump, padding, size). Unit i sees the half-open interval
# [i*jump - padding, i*jump - padding + size). A jump of 0 means "the same region for every unit"
# (after a global pool, a flatten, or a broadcast of a 1-wide map).
Group = tuple[int, int, int]
Axis = tuple[Group, ...]
# Internal form: (jump, padding, extent) with extent the rightmost offset, inclusive.
_G = tuple[int, int, int]
# Per axis and output unit: the half-open input interval the unit actually reads, or None.
Table = tuple["tuple[int, int] | None", ...]


class ReceptiveFieldError(ValueError):
    """The model cannot be analysed: tracing failed or a layer's spatial effect is unknown."""


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceptiveField:
    """Theoretical receptive field of one layer, per spatial axis (``(H, W)`` or ``(L,)``).

    Attributes:
        name: Qualified module name (``features.0``).
        type: Module class name (``Conv2d``, ``MaxPool2d``...).
        size: Receptive field size per axis, in input pixels (unclipped).
        jump: Effective stride per axis: distance in input pixels between neighbouring units.
        padding: Effective padding per axis: unit 0's region starts at input coordinate
            ``-padding``.
        input_shape: The model input shape without batch (``(C, H, W)``, ``(C, L)`` or ``(L,)``).
        output_shape: The layer's output shape without batch (``(C, H, W)`` or ``(C, L)``).
        misaligned: ``True`` when, on some path into this layer, branches with different jumps
            or different centre offsets were merged (added or concatenated).
        misaligned_at: Where those merges happened (``"layer1.0:add"``).
        exact: ``False`` when the unclipped geometry (``size``, ``jump``, ``padding``,
            ``region(clip=False)``) is a conservative superset: after an adaptive pool whose
            input size is not a multiple of its output size (bins of unequal width), or circular
            padding. Clipped regions are always exact.
        groups: Per axis, the path groups ``(jump, padding, size)`` whose hull is the unclipped
            field: unit ``i`` of a group sees ``[i*jump - padding, i*jump - padding + size)``.
            One group unless paths with different jumps merged.
        clipped: Per axis and output unit, the input interval the unit actually reads (or
            ``None``: only padding); ``region(clip=True)`` looks it up.
        global_context: ``True`` when a *global-context path* joins the layer's input: a value
            that is the same for every position (a global pool, a mean over the spatial axes,
            a 1x1 map interpolated back) merged with a map that still depends on position, as in
            a squeeze-and-excitation gate (``x * sigmoid(fc(mean(x)))``). The field above is
            then the full one, usually the whole input; :attr:`local` is the informative one.
            The flag carries on downstream: every layer after such a merge has it. A layer that
            only sees pooled values (the first gate's own 1x1 convs, the global pool of a plain
            network) sees no *local* path beside a global one: its field is the whole input and
            the flag is ``False``; after an earlier gate it is ``True`` with a local field that
            is also the whole input.
        global_context_at: Where global-context paths joined (``"blocks.0.0.se:mul"``).
        local: With :attr:`global_context`, the field along local paths only: every
            global-context path cut, so it is the field of the conv/pool stack that the gates
            modulate. Its own ``global_context`` is ``False``. ``None`` when
            :attr:`global_context` is ``False`` (the field is local already).

    With a single group per axis the unclipped region of unit ``i`` is
    ``[i * jump - padding, i * jump - padding + size)``. With several (misaligned jumps),
    ``region`` is the exact hull and ``size`` its largest extent over the layer's units. The
    clipped region is computed unit by unit, so it is exact at the borders too: it leaves out
    input pixels that no path reaches, e.g. the last rows when a stride does not fit, or a
    window that covers only an earlier layer's padding.

    ``region(..., local=True)``, ``center(..., local=True)``, :attr:`local_field`,
    :attr:`local_size` and :attr:`local_jump` read the local field and fall back to the full one
    when the layer sees no global context, so a reader can always show "the local field" plus,
    where :attr:`global_context` is set, a note that the units also see the whole input through
    a gate. Pick "the centre unit" by the local field: every full field after a gate is the
    whole input, so all units' full fields have the same centre.

    Example:
        >>> rf = receptive_fields(torchvision.models.vgg16(), (3, 224, 224))["features.28"]
        >>> rf.size, rf.jump, rf.region(0, 0, clip=False)
        ((196, 196), (16, 16), (-90, 106, -90, 106))
    """

    name: str
    type: str
    size: tuple[int, ...]
    jump: tuple[int, ...]
    padding: tuple[int, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    misaligned: bool = False
    misaligned_at: tuple[str, ...] = ()
    exact: bool = True
    groups: tuple[Axis, ...] = field(default=(), repr=False)
    clipped: tuple[Table, ...] = field(default=(), repr=False, compare=False)
    global_context: bool = False
    global_context_at: tuple[str, ...] = ()
    local: ReceptiveField | None = field(default=None, repr=False)

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 for images, 1 for sequences)."""
        return len(self.size)

    @property
    def start(self) -> tuple[int, ...]:
        """Input coordinate where unit 0's (unclipped) region starts, per axis (``-padding``)."""
        return tuple(-p for p in self.padding)

    @property
    def local_field(self) -> ReceptiveField:
        """The field along local paths: :attr:`local`, or this field when it is local."""
        return self.local if self.local is not None else self

    @property
    def local_size(self) -> tuple[int, ...]:
        """Size per axis of the local field (equal to :attr:`size` without global context)."""
        return self.local_field.size

    @property
    def local_jump(self) -> tuple[int, ...]:
        """Jump per axis of the local field (equal to :attr:`jump` without global context)."""
        return self.local_field.jump

    @property
    def input_spatial(self) -> tuple[int, ...]:
        """Spatial size of the model input (``(H, W)`` or ``(L,)``)."""
        return tuple(self.input_shape[-self.ndim :])

    @property
    def output_spatial(self) -> tuple[int, ...]:
        """Spatial size of the layer output (``(H, W)`` or ``(L,)``)."""
        return tuple(self.output_shape[-self.ndim :])

    def _check_index(self, index: Sequence[Any]) -> tuple[int, ...]:
        axes = "(i, j)" if self.ndim == 2 else "(i)"
        if len(index) != self.ndim:
            raise ValueError(
                f"`index`: layer {self.name!r} has {self.ndim} spatial axes; call region{axes} "
                f"with {self.ndim} unit indices, got {len(index)}"
            )
        out = []
        for axis, (i, n) in enumerate(zip(index, self.output_spatial, strict=True)):
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"`index`: unit indices must be ints; got {i!r} on axis {axis}")
            if not 0 <= i < n:
                raise ValueError(
                    f"`index`: unit {i} is outside layer {self.name!r}'s output of size {n} "
                    f"on axis {axis}; use 0 <= index < {n}"
                )
            out.append(i)
        return tuple(out)

    def _interval(self, axis: int, i: int, clip: bool) -> tuple[int, int]:
        groups = self.groups[axis]
        lo = min(i * s - p for s, p, _ in groups)
        hi = max(i * s - p + r for s, p, r in groups)
        if not clip:
            return lo, hi
        table = self.clipped[axis]
        span = table[i] if len(table) > 1 else table[0]
        if span is None:  # the unit reads only padding: an empty region at its place
            edge = min(max(lo, 0), self.input_spatial[axis])
            return edge, edge
        return span

    def region(self, *index: int, clip: bool = True, local: bool = False) -> tuple[int, ...]:
        """Input region seen by output unit ``index``, half-open like a slice.

        Args:
            *index: The unit: ``(i, j)`` (row, column) for 2-D layers, ``(i,)`` for 1-D.
            clip: Return what the unit actually reads (default): the field clipped to the
                input, minus border pixels no path reaches (a stride that does not fit drops
                the last rows); empty (``start == stop``) for a unit that sees only padding.
                With ``clip=False`` it is the geometric field, which may start below 0 or end
                beyond the input (the part in the padding).
            local: Return the region of the local field (global-context paths cut; see
                :attr:`global_context`). The same as the full region when the layer sees no
                global context.

        Returns:
            ``(top, bottom, left, right)`` for 2-D, ``(start, stop)`` for 1-D: rows
            ``top..bottom-1`` and columns ``left..right-1``.

        Raises:
            ValueError: If the number of indices is wrong or an index is outside the output.

        Example:
            >>> rf.region(0, 0)            # clipped to the image
            (0, 106, 0, 106)
        """
        units = self._check_index(index)
        source = self.local_field if local else self
        out: list[int] = []
        for axis, i in enumerate(units):
            out += source._interval(axis, i, clip)
        return tuple(out)

    def padding_share(self, *index: int) -> float:
        """The share of unit ``index``'s (local) field that lies outside the input.

        Zero padding is most of what a shallow unit near the border sees: 5 of 9 pixels for a
        corner unit of a 3x3 conv with padding 1.
        """
        full = self.region(*index, clip=False, local=True)
        inside = self.region(*index, clip=True, local=True)
        area = seen = 1
        for a in range(0, len(full), 2):
            area *= full[a + 1] - full[a]
            seen *= max(0, inside[a + 1] - inside[a])
        return float(1 - seen / area) if area > 0 else 0.0

    def interior_mask(self) -> torch.Tensor:
        """``[h, w]`` (``[l]`` in 1-D) bool: units whose (local) field lies inside the input."""
        axes = []
        for axis in range(self.ndim):
            keep = []
            for i in range(self.output_spatial[axis]):
                index = [0] * self.ndim
                index[axis] = i
                full = self.region(*index, clip=False, local=True)
                start, stop = full[2 * axis], full[2 * axis + 1]
                keep.append(start >= 0 and stop <= self.input_spatial[axis])
            axes.append(torch.tensor(keep))
        if self.ndim == 1:
            return axes[0]
        return axes[0][:, None] & axes[1][None, :]

    def center(self, *index: int, local: bool = False) -> tuple[float, ...]:
        """Centre of unit ``index``'s unclipped region (or local region), per axis."""
        box = self.region(*index, clip=False, local=local)
        return tuple((box[2 * a] + box[2 * a + 1] - 1) / 2 for a in range(self.ndim))

    def _geometry(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "jump": list(self.jump),
            "padding": list(self.padding),
            "misaligned": self.misaligned,
            "misaligned_at": list(self.misaligned_at),
            "exact": self.exact,
            "groups": [[list(g) for g in axis] for axis in self.groups],
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists and numbers) for JSON manifests.

        ``"local"`` holds the local field's ``size``, ``jump``, ``padding``, ``misaligned``,
        ``misaligned_at``, ``exact`` and ``groups`` when :attr:`global_context` is set, else
        ``None``.
        """
        return {
            "name": self.name,
            "type": self.type,
            **self._geometry(),
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "global_context": self.global_context,
            "global_context_at": list(self.global_context_at),
            "local": self.local._geometry() if self.local is not None else None,
        }


# --------------------------------------------------------------------------------------------
# Geometry state carried along the graph
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    """What a graph value knows about its dependence on the input's spatial axes.

    ``axes[a]`` are path groups ``(jump, padding, extent)`` (extent = rightmost offset,
    inclusive) along input axis ``a``; ``tables[a]`` the exact interval each unit reads (one
    entry when all units read the same); ``layout[a]`` is the tensor dimension that indexes
    input axis ``a``, or ``layout is None`` when the value has no spatial structure left (every
    unit sees the same region: after a flatten, a global reduction...). ``context_at`` names the
    merges where global-context paths joined (see :attr:`ReceptiveField.global_context`).
    """

    axes: tuple[tuple[_G, ...], ...]
    tables: tuple[Table, ...]
    layout: tuple[int, ...] | None
    misaligned_at: frozenset[str] = frozenset()
    exact: bool = True
    context_at: frozenset[str] = frozenset()

    @property
    def is_global(self) -> bool:
        return self.layout is None


def _normalize(groups: Sequence[_G]) -> tuple[_G, ...]:
    """Merge groups with equal jump into their hull; sorted, largest jump first."""
    merged: dict[int, tuple[int, int]] = {}
    for s, p, e in groups:
        if s in merged:
            p0, e0 = merged[s]
            merged[s] = (max(p0, p), max(e0, e))
        else:
            merged[s] = (p, e)
    return tuple((s, p, e) for s, (p, e) in sorted(merged.items(), reverse=True))


def _through(axis: Sequence[_G], kernel: int, stride: int, pad: int) -> tuple[_G, ...]:
    """Apply a sliding window (effective kernel, stride, left padding) to one axis."""
    return _normalize([(s * stride, p + pad * s, e + (kernel - 1 - pad) * s) for s, p, e in axis])


def _collapse(axis: Sequence[_G], n: int) -> tuple[_G, ...]:
    """Hull of all ``n`` units of each group as jump-0 groups (every unit sees all of it)."""
    return _normalize([(0, p, (n - 1) * s + e) for s, p, e in axis])


def _hull(spans: Any) -> tuple[int, int] | None:
    lo = hi = None
    for span in spans:
        if span is None:
            continue
        lo = span[0] if lo is None else min(lo, span[0])
        hi = span[1] if hi is None else max(hi, span[1])
    return None if lo is None else (lo, hi)


def _fold(j: int, n: int, mode: str) -> int | None:
    """Input unit read at padded position ``j`` (outside ``0..n-1``) for a padding mode."""
    if mode == "reflect":
        period = 2 * (n - 1) if n > 1 else 1
        j = j % period
        return j if j < n else period - j
    if mode == "replicate":
        return min(max(j, 0), n - 1)
    if mode == "circular":
        return j % n
    return None  # zeros / constant


def _table_window(
    prev: Table, n_out: int, kernel: int, stride: int, pad: int, dilation: int, mode: str
) -> Table:
    """Exact intervals after a window: the hull of the valid taps' intervals, unit by unit."""
    n_in = len(prev)
    out = []
    for i in range(n_out):
        start = i * stride - pad
        taps = []
        for t in range(kernel):
            j = start + t * dilation
            if not 0 <= j < n_in:
                j = _fold(j, n_in, mode)
                if j is None:
                    continue
            taps.append(prev[j])
        out.append(_hull(taps))
    return tuple(out)


def _table_bins(prev: Table, n_out: int) -> Table:
    """Exact intervals after an adaptive pool (PyTorch's bins ``floor(i*n/o) .. ceil``)."""
    n = len(prev)
    return tuple(_hull(prev[(i * n) // n_out : -(-((i + 1) * n) // n_out)]) for i in range(n_out))


def _tuple(value: Any, n: int) -> tuple[Any, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(value) if len(value) == n else tuple(value) * n
    return (value,) * n


def _adaptive(n: int, o: int) -> tuple[int, int, bool]:
    """Kernel, stride and exactness of an adaptive pool from ``n`` to ``o`` along one axis.

    PyTorch's bin ``i`` covers ``[floor(i*n/o), ceil((i+1)*n/o))``. With ``n % o == 0`` that is a
    window of ``n/o`` with stride ``n/o``; otherwise stride ``floor(n/o)`` and kernel
    ``n - (o-1)*floor(n/o)`` cover every bin (a conservative superset).
    """
    if n % o == 0:
        return n // o, n // o, True
    s = n // o
    return n - (o - 1) * s, s, n == 1


def _fixed(axes: Sequence[Sequence[_G]]) -> bool:
    """True when every group on every axis has jump 0: each unit sees the same region."""
    return all(g[0] == 0 for axis in axes for g in axis)


def _implied_pad(n_in: int, n_out: int, kernel: int, stride: int, dilation: int) -> int:
    """Left padding of a window whose output size says it padded "same"-style.

    For layers that pad at run time (timm's ``Conv2dSame``, ``MaxPool2dSame``: TensorFlow's
    ``SAME``): the total padding is the least that yields ``n_out`` units, half of it (rounded
    down) on the left, as both PyTorch's ``padding="same"`` and TensorFlow do.
    """
    total = max((n_out - 1) * stride + dilation * (kernel - 1) + 1 - n_in, 0)
    return total // 2


def _slide(
    state: _State,
    n_out: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int] | None,
    mode: str = "zeros",
    adaptive: bool = False,
) -> _State:
    """A sliding window per axis (``kernel`` taps ``dilation`` apart, ``stride``, left pad)."""
    dilation = dilation or (1,) * len(kernel)
    axes, tables = [], []
    for a in range(len(kernel)):
        keff = dilation[a] * (kernel[a] - 1) + 1
        axes.append(_through(state.axes[a], keff, stride[a], pad[a]))
        if adaptive:
            tables.append(_table_bins(state.tables[a], n_out[a]))
        else:
            tables.append(
                _table_window(
                    state.tables[a], n_out[a], kernel[a], stride[a], pad[a], dilation[a], mode
                )
            )
    return replace(state, axes=tuple(axes), tables=tuple(tables))
