"""Receptive fields: analytical (graph walk), measured (gradient support) and effective (Luo).

Three views of "how far does a unit see":

* :func:`receptive_fields` computes, for every conv and pooling layer, the theoretical receptive
  field by walking the ``torch.fx`` graph of the model (Araujo, Norris & Sim, "Computing Receptive
  Fields of Convolutional Neural Networks", Distill 2019). Per spatial axis and layer ``l``::

      r_l = r_{l-1} + (k_l - 1) * S_{l-1}     (size;   k_l = d_l * (kernel - 1) + 1 with dilation)
      S_l = S_{l-1} * s_l                     (jump, the effective stride)
      P_l = P_{l-1} + p_l * S_{l-1}           (effective padding)

  so output unit ``i`` sees the input interval ``[i * S - P, i * S - P + r - 1]``. Where paths
  merge (ResNet additions, Inception concatenations) the largest field over all paths is taken
  (the hull of the intervals), and merges of paths with different jumps or centres are flagged
  as *misaligned*.
* :func:`measure_receptive_field` measures it independently: on the linearised model (max pools
  become average pools, activations and normalisation identities, every weight a positive
  constant; done by a ``TorchFunctionMode`` during one guarded forward pass, the model's own
  weights are not used) the input gradient of a unit is non-zero exactly on its receptive field.
* :func:`effective_receptive_field` is the effective receptive field of Luo et al. (2016): the
  mean absolute input gradient of a layer's centre unit over real probe images, on the real model.

Regions are half-open, like Python slices: ``(top, bottom, left, right)`` means rows
``top .. bottom - 1`` and columns ``left .. right - 1``, so ``image[..., top:bottom, left:right]``
is the patch.
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.overrides import TorchFunctionMode
from torchvision.ops import stochastic_depth

from cnnviz.analysis.guard import HookSet, model_devices, observe
from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES

__all__ = [
    "ERFResult",
    "MeasuredReceptiveField",
    "ReceptiveField",
    "ReceptiveFieldError",
    "effective_receptive_field",
    "measure_receptive_field",
    "measure_receptive_fields",
    "receptive_fields",
]

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

    With a single group per axis the unclipped region of unit ``i`` is
    ``[i * jump - padding, i * jump - padding + size)``. With several (misaligned jumps),
    ``region`` is the exact hull and ``size`` its largest extent over the layer's units. The
    clipped region is computed unit by unit, so it is exact at the borders too: it leaves out
    input pixels that no path reaches, e.g. the last rows when a stride does not fit, or a
    window that covers only an earlier layer's padding.

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

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 for images, 1 for sequences)."""
        return len(self.size)

    @property
    def start(self) -> tuple[int, ...]:
        """Input coordinate where unit 0's (unclipped) region starts, per axis (``-padding``)."""
        return tuple(-p for p in self.padding)

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

    def region(self, *index: int, clip: bool = True) -> tuple[int, ...]:
        """Input region seen by output unit ``index``, half-open like a slice.

        Args:
            *index: The unit: ``(i, j)`` (row, column) for 2-D layers, ``(i,)`` for 1-D.
            clip: Return what the unit actually reads (default): the field clipped to the
                input, minus border pixels no path reaches (a stride that does not fit drops
                the last rows); empty (``start == stop``) for a unit that sees only padding.
                With ``clip=False`` it is the geometric field, which may start below 0 or end
                beyond the input (the part in the padding).

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
        out: list[int] = []
        for axis, i in enumerate(units):
            out += self._interval(axis, i, clip)
        return tuple(out)

    def center(self, *index: int) -> tuple[float, ...]:
        """Centre of unit ``index``'s unclipped region, in input coordinates, per axis."""
        box = self.region(*index, clip=False)
        return tuple((box[2 * a] + box[2 * a + 1] - 1) / 2 for a in range(self.ndim))

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists and numbers) for JSON manifests."""
        return {
            "name": self.name,
            "type": self.type,
            "size": list(self.size),
            "jump": list(self.jump),
            "padding": list(self.padding),
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "misaligned": self.misaligned,
            "misaligned_at": list(self.misaligned_at),
            "exact": self.exact,
            "groups": [[list(g) for g in axis] for axis in self.groups],
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
    unit sees the same region: after a flatten, a global reduction...).
    """

    axes: tuple[tuple[_G, ...], ...]
    tables: tuple[Table, ...]
    layout: tuple[int, ...] | None
    misaligned_at: frozenset[str] = frozenset()
    exact: bool = True

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


# --------------------------------------------------------------------------------------------
# Operation tables
# --------------------------------------------------------------------------------------------

_ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Tanhshrink,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Threshold,
    nn.Tanh,
    nn.Sigmoid,
)
_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
)
_DROPOUT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_PASS_MODULES = (
    *_ACTIVATION_MODULES,
    *_NORM_MODULES,
    *_DROPOUT_MODULES,
    nn.Identity,
    nn.ChannelShuffle,
    nn.Softmax2d,
)
_ADAPTIVE_MODULES = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_SOFTMAX_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU)
_PAD_MODULES = (
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.CircularPad1d,
    nn.CircularPad2d,
)


def _pad_mode(module: nn.Module) -> str:
    if isinstance(module, (nn.ReflectionPad1d, nn.ReflectionPad2d)):
        return "reflect"
    if isinstance(module, (nn.ReplicationPad1d, nn.ReplicationPad2d)):
        return "replicate"
    if isinstance(module, (nn.CircularPad1d, nn.CircularPad2d)):
        return "circular"
    return "zeros"


_PASS_FUNCTIONS: set[Any] = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.isub,
    operator.mul,
    operator.imul,
    operator.truediv,
    operator.itruediv,
    operator.neg,
    operator.pow,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.neg,
    torch.abs,
    torch.exp,
    torch.sqrt,
    torch.pow,
    torch.clamp,
    torch.clip,
    torch.relu,
    torch.relu_,
    torch.sigmoid,
    torch.tanh,
    torch.where,
    torch.maximum,
    torch.minimum,
    F.relu,
    F.relu_,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.sigmoid,
    F.tanh,
    F.logsigmoid,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    F.batch_norm,
    F.group_norm,
    F.instance_norm,
    F.layer_norm,
    F.local_response_norm,
    stochastic_depth,  # torchvision: drops whole samples (identity in eval)
}
_PASS_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "neg",
    "abs",
    "exp",
    "sqrt",
    "pow",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "contiguous",
    "clone",
    "detach",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type_as",
    "requires_grad_",
}
_RESHAPE = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.mean, torch.sum}
_RESHAPE |= {torch.amax, torch.amin, torch.max, torch.min, torch.std, torch.var, torch.logsumexp}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "mean", "sum"}
_RESHAPE_METHODS |= {"amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "unflatten"}
_TRANSPOSE = {torch.transpose, torch.swapaxes, torch.swapdims, torch.permute, torch.movedim}
_TRANSPOSE_METHODS = {"transpose", "swapaxes", "swapdims", "permute", "movedim"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_SPLIT = {torch.split, torch.chunk, torch.tensor_split, torch.narrow, torch.unbind}
_SPLIT_METHODS = {"split", "chunk", "tensor_split", "narrow", "unbind"}

_FUNC_POOLS: dict[Any, tuple[str, tuple[str, ...]]] = {
    F.max_pool1d: ("max", ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    F.max_pool2d: ("max", ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    F.avg_pool1d: ("avg", ("kernel_size", "stride", "padding", "ceil_mode")),
    F.avg_pool2d: ("avg", ("kernel_size", "stride", "padding", "ceil_mode")),
    F.lp_pool1d: ("lp", ("norm_type", "kernel_size", "stride", "ceil_mode")),
    F.lp_pool2d: ("lp", ("norm_type", "kernel_size", "stride", "ceil_mode")),
    F.adaptive_avg_pool1d: ("adaptive", ("output_size",)),
    F.adaptive_avg_pool2d: ("adaptive", ("output_size",)),
    F.adaptive_max_pool1d: ("adaptive", ("output_size", "return_indices")),
    F.adaptive_max_pool2d: ("adaptive", ("output_size", "return_indices")),
}
_FUNC_CONVS = {
    F.conv1d: ("weight", "bias", "stride", "padding", "dilation", "groups"),
    F.conv2d: ("weight", "bias", "stride", "padding", "dilation", "groups"),
}


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


def _module_desc(name: str, module: nn.Module | None) -> str:
    return f"{name!r} ({type(module).__name__})" if module is not None else repr(name)


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that remembers which module was being traced when tracing failed."""

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if not hasattr(exc, "_cnnviz_module"):
                try:
                    where = self.path_of_module(m)
                except NameError:
                    where = "<unregistered>"
                with contextlib.suppress(AttributeError):  # exceptions with __slots__
                    exc._cnnviz_module = (where, type(m).__name__)  # type: ignore[attr-defined]
            raise


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where, kind = getattr(exc, "_cnnviz_module", ("", type(model).__name__))
        place = f"module {where!r} ({kind})" if where else f"the forward of {kind}"
        raise ReceptiveFieldError(
            f"`model`: torch.fx could not trace {place}: {type(exc).__name__}: {exc}. Receptive "
            "fields need a traceable graph; remove data-dependent Python control flow from that "
            "forward (or wrap the offending function with torch.fx.wrap)."
        ) from exc
    return fx.GraphModule(tracer.root, graph)


def _node_label(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack.values()))[0] if stack else ""
    return f"{owner}:{node.name}" if owner else node.name


# --------------------------------------------------------------------------------------------
# The graph walk
# --------------------------------------------------------------------------------------------


class _Walker(fx.Interpreter):
    """Runs the traced graph once (for shapes) and propagates the geometry state node by node."""

    def __init__(self, gm: fx.GraphModule, nd: int, tokens: bool) -> None:
        super().__init__(gm)
        self.nd = nd
        self.tokens = tokens
        self.standard = tuple(range(2, 2 + nd))
        self.states: dict[fx.Node, _State | None] = {}
        self.shapes: dict[fx.Node, Any] = {}
        self.records: dict[str, tuple[nn.Module, _State, tuple[int, ...]]] = {}

    # -- helpers -------------------------------------------------------------------------
    def _fail(self, node: fx.Node, why: str) -> ReceptiveFieldError:
        if node.op == "call_module":
            what = f"layer {_module_desc(str(node.target), self.module.get_submodule(node.target))}"
        else:
            target = getattr(node.target, "__name__", str(node.target))
            owner = _node_label(node)
            what = f"operation {target!r} (graph node {owner!r})"
        return ReceptiveFieldError(
            f"`model`: cannot compute receptive fields through {what}: {why}. Supported: "
            "convolutions, pooling, padding, element-wise and channel-wise operations (+, *, "
            "activations, normalisation, dropout, concatenation along channels), flatten."
        )

    def _inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
        return [n for n in found if self.states.get(n) is not None]

    @staticmethod
    def _rank(value: Any) -> int | None:
        return value.dim() if isinstance(value, torch.Tensor) else None

    def _merge(self, node: fx.Node, inputs: list[fx.Node], out: Any) -> _State:
        """Union of input states for an element-wise / channel-wise merge (with broadcasting)."""
        states = [self.states[n] for n in inputs]
        spatial = [(n, s) for n, s in zip(inputs, states, strict=True) if not s.is_global]
        layouts = {s.layout for _, s in spatial}
        if len(layouts) > 1:
            raise self._fail(node, "its inputs index the spatial axes in different dimensions")
        layout = next(iter(layouts)) if layouts else None
        if len(states) == 1:
            s = states[0]
            return _State(s.axes, s.tables, layout, s.misaligned_at, s.exact)
        axes: list[list[_G]] = [[] for _ in range(self.nd)]
        tables: list[list[Table]] = [[] for _ in range(self.nd)]
        out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        signatures = set()
        for n, s in zip(inputs, states, strict=True):
            shape = self.shapes.get(n)
            adjusted = []
            for a in range(self.nd):
                groups, table = s.axes[a], s.tables[a]
                if (
                    layout is not None
                    and s.layout is not None
                    and out_shape is not None
                    and isinstance(shape, tuple)
                    and shape[s.layout[a]] == 1
                    and out_shape[layout[a]] > 1
                ):
                    groups = _collapse(groups, 1)  # broadcast: every unit sees unit 0's region
                adjusted.append(groups)
                axes[a].extend(groups)
                tables[a].append(table)
            # (jump, 2 * centre offset) of the translating paths: equal means aligned
            signature = frozenset(
                (a, g[0], g[2] - g[1]) for a in range(self.nd) for g in adjusted[a] if g[0] > 0
            )
            if signature:
                signatures.add(signature)
        misaligned = frozenset().union(*(s.misaligned_at for s in states))
        if len(signatures) > 1:
            misaligned |= {_node_label(node)}
        merged_tables = []
        for a in range(self.nd):
            length = max(len(t) for t in tables[a])
            merged_tables.append(
                tuple(_hull(t[i] if len(t) > 1 else t[0] for t in tables[a]) for i in range(length))
            )
        return _State(
            axes=tuple(_normalize(a) for a in axes),
            tables=tuple(merged_tables),
            layout=layout,
            misaligned_at=misaligned,
            exact=all(s.exact for s in states),
        )

    def _globalize(self, inputs: list[fx.Node]) -> _State:
        axes: list[list[_G]] = [[] for _ in range(self.nd)]
        tables: list[list[Table]] = [[] for _ in range(self.nd)]
        for n in inputs:
            s = self.states[n]
            shape = self.shapes.get(n)
            for a in range(self.nd):
                tables[a].append(s.tables[a])
                if s.is_global or not isinstance(shape, tuple):
                    axes[a].extend(s.axes[a])
                else:
                    axes[a].extend(_collapse(s.axes[a], shape[s.layout[a]]))
        states = [self.states[n] for n in inputs]
        return _State(
            axes=tuple(_normalize(a) for a in axes),
            tables=tuple((_hull(span for t in ts for span in t),) for ts in tables),
            layout=None,
            misaligned_at=frozenset().union(*(s.misaligned_at for s in states)),
            exact=all(s.exact for s in states),
        )

    def _window(
        self,
        node: fx.Node,
        state: _State,
        in_shape: Any,
        out: Any,
        kernel: Sequence[int],
        stride: Sequence[int],
        pad: Sequence[int],
        dilation: Sequence[int] | None = None,
        *,
        exact: bool = True,
        mode: str = "zeros",
        adaptive: bool = False,
    ) -> _State:
        """Sliding window per axis: ``kernel`` taps ``dilation`` apart, ``stride``, left pad."""
        if state.is_global:
            return state
        if isinstance(out, (tuple, list)):
            out = out[0]
        if state.layout != self.standard or self._rank(out) != 2 + self.nd:
            raise self._fail(
                node,
                f"it expects (N, C, {'H, W' if self.nd == 2 else 'L'}) input with the spatial "
                "axes last",
            )
        dilation = dilation or (1,) * self.nd
        axes, tables = [], []
        for a in range(self.nd):
            keff = dilation[a] * (kernel[a] - 1) + 1
            axes.append(_through(state.axes[a], keff, stride[a], pad[a]))
            n_out = out.shape[2 + a]
            if adaptive:
                tables.append(_table_bins(state.tables[a], n_out))
            else:
                tables.append(
                    _table_window(
                        state.tables[a], n_out, kernel[a], stride[a], pad[a], dilation[a], mode
                    )
                )
        return _State(
            tuple(axes), tuple(tables), state.layout, state.misaligned_at, state.exact and exact
        )

    def _conv_like(
        self,
        node: fx.Node,
        state: _State,
        in_shape: Any,
        out: Any,
        weight_shape: Sequence[int],
        stride: Any,
        padding: Any,
        dilation: Any,
        mode: str = "zeros",
    ) -> _State:
        nd = self.nd
        k = tuple(weight_shape[2:])
        if len(k) != nd:
            raise self._fail(node, f"a {len(k)}-D convolution on {nd}-D input")
        d = _tuple(dilation, nd)
        if isinstance(padding, str):
            # 'same': PyTorch pads d*(k-1) in total, half of it (rounded down) on the left
            pads = tuple(
                0 if padding == "valid" else di * (ki - 1) // 2 for di, ki in zip(d, k, strict=True)
            )
        else:
            pads = _tuple(padding, nd)
        return self._window(
            node, state, in_shape, out, k, _tuple(stride, nd), pads, d,
            exact=mode != "circular", mode=mode,
        )  # fmt: skip

    def _pool(
        self, node: fx.Node, kind: str, state: _State, in_shape: Any, out: Any, opts: Mapping
    ) -> _State:
        nd = self.nd
        value = out[0] if isinstance(out, (tuple, list)) else out
        if kind == "adaptive":
            if state.is_global:
                return state
            if not isinstance(in_shape, tuple) or self._rank(value) != 2 + nd:
                raise self._fail(node, "unexpected input/output shapes for adaptive pooling")
            triples = [_adaptive(in_shape[2 + a], value.shape[2 + a]) for a in range(nd)]
            return self._window(
                node,
                state,
                in_shape,
                value,
                [t[0] for t in triples],
                [t[1] for t in triples],
                [0] * nd,
                exact=all(t[2] for t in triples),
                adaptive=True,
            )
        k = _tuple(opts["kernel_size"], nd)
        stride = opts.get("stride")
        s = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else stride
        p = _tuple(opts.get("padding", 0), nd)
        d = _tuple(opts.get("dilation", 1), nd)
        return self._window(node, state, in_shape, value, k, _tuple(s, nd), p, d)

    def _pad(
        self,
        node: fx.Node,
        state: _State,
        in_shape: Any,
        out: Any,
        pad: Sequence[int],
        mode: str = "zeros",
    ) -> _State:
        if state.is_global:
            return state
        nd = self.nd
        lefts = []
        for a in range(nd):
            i = 2 * (nd - 1 - a)
            lefts.append(int(pad[i]) if i < len(pad) else 0)
        return self._window(
            node, state, in_shape, out, [1] * nd, [1] * nd, lefts,
            exact=mode != "circular", mode=mode,
        )  # fmt: skip

    def _transpose(self, node: fx.Node, state: _State, rank: int | None) -> _State:
        if state.is_global:
            return state
        if rank is None:
            raise self._fail(node, "not applied to a tensor")
        name = getattr(node.target, "__name__", str(node.target))
        args = list(node.args[1:])
        kwargs = dict(node.kwargs)
        perm = list(range(rank))
        if name in ("transpose", "swapaxes", "swapdims"):
            d0 = args[0] if args else kwargs.get("dim0", kwargs.get("axis0"))
            d1 = args[1] if len(args) > 1 else kwargs.get("dim1", kwargs.get("axis1"))
            d0, d1 = d0 % rank, d1 % rank
            perm[d0], perm[d1] = perm[d1], perm[d0]
        elif name == "permute":
            dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            perm = [int(d) % rank for d in (dims or kwargs.get("dims"))]
        else:  # movedim
            src = _tuple(args[0] if args else kwargs.get("source"), 1)
            dst = _tuple(args[1] if len(args) > 1 else kwargs.get("destination"), 1)
            src = tuple(d % rank for d in src)
            perm = [-1] * rank
            for s_, d_ in zip(src, dst, strict=True):
                perm[d_ % rank] = s_
            rest = iter(d for d in range(rank) if d not in src)
            perm = [p if p >= 0 else next(rest) for p in perm]
        where = {old: new for new, old in enumerate(perm)}
        layout = tuple(where[d] for d in state.layout)
        return _State(state.axes, state.tables, layout, state.misaligned_at, state.exact)

    def _dim_arg(self, node: fx.Node, pos: int, default: Any = 0) -> Any:
        if len(node.args) > pos:
            return node.args[pos]
        return node.kwargs.get("dim", node.kwargs.get("axis", default))

    def _channel_op(
        self, node: fx.Node, inputs: list[fx.Node], dim: Any, rank: int | None, out: Any
    ) -> _State:
        spatial = [self.states[n] for n in inputs if not self.states[n].is_global]
        if rank is not None and isinstance(dim, int) and spatial:
            d = dim % rank
            if any(d in s.layout for s in spatial):
                raise self._fail(node, f"it works along dimension {dim}, a spatial axis")
        return self._merge(node, inputs, out)

    def _reshape(self, node: fx.Node, inputs: list[fx.Node], out: Any) -> _State:
        """Reshapes and reductions: unchanged spatial dims pass, anything else globalizes."""
        state = self.states[inputs[0]]
        in_shape = self.shapes.get(inputs[0])
        if (
            not state.is_global
            and isinstance(out, torch.Tensor)
            and isinstance(in_shape, tuple)
            and out.dim() == len(in_shape)
            and all(out.shape[d] == in_shape[d] for d in state.layout)
        ):
            spatial_same = True
            if node.op == "call_method" and node.target in ("view", "reshape"):
                spatial_same = tuple(out.shape) == in_shape or all(
                    out.shape[d:] == torch.Size(in_shape[d:]) for d in state.layout[:1]
                )
            if spatial_same:
                return self._merge(node, inputs, out)
        return self._globalize(inputs)

    # -- the per-node rule ---------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.shapes[n] = (
            tuple(out.shape)
            if isinstance(out, torch.Tensor)
            else [tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in out]
            if isinstance(out, (tuple, list))
            else None
        )
        self.states[n] = self._state(n, out)
        return out

    def _state(self, node: fx.Node, out: Any) -> _State | None:
        nd = self.nd
        if node.op == "placeholder":
            if not isinstance(out, torch.Tensor):
                return None
            layout = (1,) if self.tokens else self.standard
            spatial = out.shape[1:] if self.tokens else out.shape[2:]
            if len(spatial) != nd:
                raise ReceptiveFieldError(
                    f"`input_size`: unexpected input shape {tuple(out.shape)}"
                )
            axes = tuple(((1, 0, 0),) for _ in spatial)
            tables = tuple(tuple((j, j + 1) for j in range(n)) for n in spatial)
            return _State(axes=axes, tables=tables, layout=layout)
        if node.op in ("output", "get_attr"):
            return None
        inputs = self._inputs(node)
        if not inputs:
            return None
        first = inputs[0]
        state = self.states[first]
        in_shape = self.shapes.get(first)
        if not isinstance(out, (torch.Tensor, tuple, list)):
            return None
        if isinstance(out, (tuple, list)) and not any(isinstance(v, torch.Tensor) for v in out):
            return None

        if node.op == "call_module":
            module = self.module.get_submodule(str(node.target))
            result = self._module_state(node, module, inputs, state, in_shape, out)
            if isinstance(module, CONV_TYPES + POOL_TYPES) and result is not None:
                name = str(node.target)
                if name not in self.records and isinstance(out, torch.Tensor):
                    self.records[name] = (module, result, tuple(out.shape[1:]))
            return result
        if node.op == "call_function":
            return self._function_state(node, inputs, state, in_shape, out)
        if node.op == "call_method":
            return self._method_state(node, inputs, state, in_shape, out)
        return None

    def _all_global(self, inputs: list[fx.Node]) -> bool:
        return all(self.states[n].is_global for n in inputs)

    def _module_state(
        self,
        node: fx.Node,
        m: nn.Module,
        inputs: list[fx.Node],
        state: _State,
        in_shape: Any,
        out: Any,
    ) -> _State:
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return self._conv_like(
                node,
                state,
                in_shape,
                out,
                m.weight.shape,
                m.stride,
                m.padding,
                m.dilation,
                mode=m.padding_mode,
            )
        if isinstance(m, _ADAPTIVE_MODULES):
            return self._pool(node, "adaptive", state, in_shape, out, {})
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            return self._pool(node, "max", state, in_shape, out, vars(m))
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.LPPool1d, nn.LPPool2d)):
            return self._pool(node, "avg", state, in_shape, out, vars(m))
        if isinstance(m, _PAD_MODULES):
            return self._pad(node, state, in_shape, out, m.padding, _pad_mode(m))
        if isinstance(m, _PASS_MODULES):
            return self._merge(node, inputs, out)
        if isinstance(m, _SOFTMAX_MODULES):
            dim = m.dim
            rank = self._rank(out)
            return self._channel_op(node, inputs, dim if dim is not None else 1, rank, out)
        if isinstance(m, nn.Embedding):
            if not state.is_global and state.layout != (1,):
                raise self._fail(node, "an embedding of an already spatial tensor")
            return self._merge(node, inputs, out)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self._reshape(node, inputs, out)
        if isinstance(m, (nn.Linear, nn.Bilinear, nn.LazyLinear)):
            if self._all_global(inputs):
                return self._globalize(inputs)
            rank = self._rank(out)
            spatial = [self.states[n] for n in inputs if not self.states[n].is_global]
            if rank is not None and any((rank - 1) in s.layout for s in spatial):
                raise self._fail(node, "it mixes the last dimension, which is a spatial axis")
            return self._merge(node, inputs, out)
        if self._all_global(inputs):
            return self._globalize(inputs)
        raise self._fail(node, "its effect on spatial positions is unknown")

    def _function_state(
        self, node: fx.Node, inputs: list[fx.Node], state: _State, in_shape: Any, out: Any
    ) -> _State:
        fn = node.target
        rank = len(in_shape) if isinstance(in_shape, tuple) else None
        if fn in _FUNC_CONVS:
            names = ("input", *_FUNC_CONVS[fn])
            opts = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
            weight = opts["weight"]
            wshape = self.shapes.get(weight) if isinstance(weight, fx.Node) else None
            if not isinstance(wshape, tuple):
                raise self._fail(node, "its weight's shape is unknown")
            return self._conv_like(
                node,
                state,
                in_shape,
                out,
                wshape,
                opts.get("stride", 1),
                opts.get("padding", 0),
                opts.get("dilation", 1),
            )
        if fn in _FUNC_POOLS:
            kind, names = _FUNC_POOLS[fn]
            opts = {**dict(zip(("input", *names), node.args, strict=False)), **node.kwargs}
            return self._pool(node, kind, state, in_shape, out, opts)
        if fn is F.pad:
            pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            mode = "zeros" if mode == "constant" else mode
            return self._pad(node, state, in_shape, out, pad, mode)
        if fn in _PASS_FUNCTIONS:
            return self._merge(node, inputs, out)
        if fn in (F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax):
            return self._channel_op(node, inputs, self._dim_arg(node, 1, 1), rank, out)
        if fn in _CAT:
            cat_rank = len(self.shapes[inputs[0]]) if isinstance(in_shape, tuple) else None
            return self._channel_op(node, inputs, self._dim_arg(node, 1, 0), cat_rank, out)
        if fn in _SPLIT:
            dim_pos = 2 if fn in (torch.split, torch.chunk, torch.tensor_split) else 1
            return self._channel_op(node, inputs, self._dim_arg(node, dim_pos, 0), rank, out)
        if fn is operator.getitem:
            return self._getitem(node, inputs, state, in_shape, out)
        if fn in _TRANSPOSE:
            return self._transpose(node, state, rank)
        if fn in _RESHAPE:
            return self._reshape(node, inputs, out)
        if fn in (F.linear, torch.matmul, operator.matmul):
            if self._all_global(inputs):
                return self._globalize(inputs)
            raise self._fail(node, "a matrix product over a spatial tensor")
        if self._all_global(inputs):
            return self._globalize(inputs)
        if isinstance(out, torch.Tensor) and out.dim() < 2 + self.nd and not self.tokens:
            return self._globalize(inputs)
        raise self._fail(node, "its effect on spatial positions is unknown")

    def _method_state(
        self, node: fx.Node, inputs: list[fx.Node], state: _State, in_shape: Any, out: Any
    ) -> _State:
        name = str(node.target)
        rank = len(in_shape) if isinstance(in_shape, tuple) else None
        if name in _PASS_METHODS:
            return self._merge(node, inputs, out)
        if name in _TRANSPOSE_METHODS:
            return self._transpose(node, state, rank)
        if name in _SPLIT_METHODS:
            dim_pos = 2 if name in ("split", "chunk", "tensor_split") else 1
            return self._channel_op(node, inputs, self._dim_arg(node, dim_pos, 0), rank, out)
        if name in ("softmax", "log_softmax"):
            return self._channel_op(node, inputs, self._dim_arg(node, 1, 1), rank, out)
        if name in _RESHAPE_METHODS:
            return self._reshape(node, inputs, out)
        if self._all_global(inputs):
            return self._globalize(inputs)
        if isinstance(out, torch.Tensor) and out.dim() < 2 + self.nd and not self.tokens:
            return self._globalize(inputs)
        raise self._fail(node, "its effect on spatial positions is unknown")

    def _getitem(
        self, node: fx.Node, inputs: list[fx.Node], state: _State, in_shape: Any, out: Any
    ) -> _State:
        if isinstance(in_shape, list):  # item of a tuple/list (split, chunk, return_indices)
            return state
        if state.is_global:
            return state
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        full = slice(None)
        batch_channel_only = (
            Ellipsis not in items
            and all(isinstance(it, slice) and it == full for it in items[2:])
            and all(isinstance(it, slice) for it in items[:2])
        )
        if batch_channel_only:
            return self._merge(node, inputs, out)
        raise self._fail(node, "indexing along a spatial axis")


def _check_input_size(input_size: Any) -> tuple[int, ...]:
    if not isinstance(input_size, (tuple, list, torch.Size)) or not 1 <= len(input_size) <= 3:
        raise TypeError(
            "`input_size` must be the input shape without batch: (C, H, W) for images, (C, L) "
            f"for sequences or (L,) for token ids; got {input_size!r}"
        )
    for v in input_size:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`input_size` must hold positive ints; got {tuple(input_size)!r}")
    return tuple(int(v) for v in input_size)


def _example(
    model: nn.Module, input_size: tuple[int, ...], device: torch.device | None = None
) -> torch.Tensor:
    if device is None:
        devices = model_devices(model)
        device = devices[0] if devices else torch.device("cpu")
    if len(input_size) == 1:
        return torch.zeros((1, *input_size), dtype=torch.long, device=device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros((1, *input_size), dtype=dtype, device=device)


class _Call(nn.Module):
    """Wraps ``fn(x)`` over ``module`` so ``functional_call`` can swap ``module``'s tensors."""

    def __init__(self, module: nn.Module, fn: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn(x)


def _shape_run(
    model: nn.Module, input_size: tuple[int, ...], fn: Callable[[torch.Tensor], Any]
) -> Any:
    """Call ``fn(zero batch of one)`` for shapes only, on the ``meta`` device when possible.

    ``torch.func.functional_call`` swaps in meta copies of ``model``'s parameters and buffers
    for the duration of the call (and always swaps the real ones back), so no arithmetic is
    done. If some op has no meta kernel the call is repeated for real on the model's device.
    Run it inside :func:`~cnnviz.analysis.guard.observe`.

    Args:
        model: The model whose tensors ``fn`` uses.
        input_size: Input shape without batch (``(L,)`` means token ids).
        fn: Runs the model (or a graph of it) on the example input.

    Returns:
        What ``fn`` returns.
    """
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    wrapper = _Call(model, fn)
    try:
        return torch.func.functional_call(
            wrapper,
            {f"module.{name}": t for name, t in meta.items()},
            (_example(model, input_size, torch.device("meta")),),
            tie_weights=False,
            strict=False,
        )
    except ReceptiveFieldError:
        raise
    except Exception:
        return fn(_example(model, input_size))


def _walk(model: nn.Module, input_size: tuple[int, ...]) -> _Walker:
    """Trace ``model`` and propagate geometry over one shape-only forward pass."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    nd = 1 if len(input_size) <= 2 else 2
    tokens = len(input_size) == 1
    with observe(model), torch.no_grad():
        gm = _trace(model)
        walkers: list[_Walker] = []

        def run(x: torch.Tensor) -> None:
            walkers.append(_Walker(gm, nd, tokens))
            walkers[-1].run(x)

        _shape_run(gm, input_size, run)
    return walkers[-1]


def receptive_fields(model: nn.Module, input_size: Sequence[int]) -> dict[str, ReceptiveField]:
    """Theoretical receptive field of every conv (1-D/2-D) and pooling layer of ``model``.

    The model is traced with ``torch.fx`` and run once on a zero batch of one (under
    :func:`~cnnviz.analysis.guard.observe`: eval mode, RNG forked, nothing changed) to get the
    actual shapes, which adaptive pools need. Branches are handled: at additions and
    concatenations the largest field over all paths is kept, and merges of misaligned paths are
    reported in :attr:`ReceptiveField.misaligned`.

    Element-wise and channel-wise operations (activations, BatchNorm, LRN, dropout, ``+``,
    ``torch.cat`` along channels) pass the field through; a flatten or a global reduction ends
    the spatial structure (linear layers after it are not listed). Statistics-based
    normalisation (GroupNorm, InstanceNorm, LayerNorm) is treated as position-wise, as is usual.

    Args:
        model: Any ``nn.Module`` that ``torch.fx`` can trace.
        input_size: Input shape without batch: ``(C, H, W)``, ``(C, L)``, or ``(L,)`` for a
            model that takes token ids (the field is then in token positions).

    Returns:
        ``{qualified layer name: ReceptiveField}`` in forward order. A module called twice is
        reported for its first call.

    Raises:
        TypeError: If ``model`` is not a module or ``input_size`` is not a shape.
        ValueError: If ``input_size`` holds non-positive sizes.
        ReceptiveFieldError: (a ``ValueError``) if tracing fails (the message names the module)
            or a layer changes spatial geometry in a way that cannot be modelled
            (``nn.Upsample``, ``F.interpolate``, transposed convolutions...).

    Example:
        >>> rfs = receptive_fields(torchvision.models.alexnet(), (3, 224, 224))
        >>> rfs["features.10"].size
        (163, 163)
    """
    size = _check_input_size(input_size)
    walker = _walk(model, size)
    out: dict[str, ReceptiveField] = {}
    for name, (module, state, out_shape) in walker.records.items():
        out[name] = _record(name, module, state, size, out_shape)
    return out


def _record(
    name: str,
    module: nn.Module,
    state: _State,
    input_size: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> ReceptiveField:
    nd = len(state.axes)
    spatial_out = out_shape[-nd:] if state.layout is not None else (1,) * nd
    sizes, jumps, pads, groups = [], [], [], []
    for a in range(nd):
        n = spatial_out[a]
        triples = tuple((s, p, p + e + 1) for s, p, e in state.axes[a])
        groups.append(triples)
        pads.append(max(g[1] for g in triples))
        jumps.append(max(g[0] for g in triples))
        ends = [
            max(i * g[0] - g[1] + g[2] for g in triples) - min(i * g[0] - g[1] for g in triples)
            for i in {0, n - 1}
        ]
        sizes.append(max(ends))
    return ReceptiveField(
        name=name,
        type=type(module).__name__,
        size=tuple(sizes),
        jump=tuple(jumps),
        padding=tuple(pads),
        input_shape=input_size,
        output_shape=out_shape,
        misaligned=bool(state.misaligned_at),
        misaligned_at=tuple(sorted(state.misaligned_at)),
        exact=state.exact,
        groups=tuple(groups),
        clipped=state.tables,
    )


# --------------------------------------------------------------------------------------------
# Independent measurement on the linearised model
# --------------------------------------------------------------------------------------------


class MeasuredReceptiveField(NamedTuple):
    """Receptive field of one unit measured from the support of its input gradient.

    Attributes:
        size_h: Rows of the support (1 for 1-D inputs).
        size_w: Columns of the support (the length for 1-D inputs).
        region: ``(top, bottom, left, right)``, half-open, clipped to the input (the gradient
            cannot see padding). For 1-D inputs ``(0, 1, start, stop)``.
    """

    size_h: int
    size_w: int
    region: tuple[int, int, int, int]


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once every wanted output is captured."""


def _bind(args: tuple[Any, ...], kwargs: Mapping[str, Any], names: Sequence[str]) -> dict:
    return {**dict(zip(names, args, strict=False)), **kwargs}


_MAX_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
_MAX_POOL_ARGS += ("return_indices",)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


class _Linearise(TorchFunctionMode):
    """Run a model as its *linearised* version, for :func:`measure_receptive_fields`.

    Max pools become average pools of the same geometry, activations and normalisation become
    identities, convolutions and linear layers use positive constant weights (``1 / fan_in``,
    so magnitudes stay bounded) and no bias, embeddings output ones. With a positive input every
    value is then positive, no gradient is blocked and none cancels: the input gradient of a
    unit is non-zero exactly on its receptive field. The model's own weights are never used or
    changed. With ``slim`` a convolution first averages its input channels and convolves one
    channel (all channels carry the same values here): same support, a fraction of the cost.
    """

    def __init__(self, slim: bool) -> None:
        super().__init__()
        self.slim = slim

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _IDENTITY_FUNCS:
            return args[0] if args else kwargs["input"]
        if func in (F.conv1d, F.conv2d):
            return self._conv(func, _bind(args, kwargs, _CONV_ARGS))
        if func in (F.max_pool1d, F.max_pool2d):
            a = _bind(args, kwargs, _MAX_POOL_ARGS)
            if a.get("return_indices") or any(d != 1 for d in _tuple(a.get("dilation", 1), 2)):
                raise ReceptiveFieldError(
                    "`model`: cannot linearise a max pool with dilation or return_indices for "
                    "measurement"
                )
            avg = F.avg_pool1d if func is F.max_pool1d else F.avg_pool2d
            stride = a.get("stride") or None
            return avg(
                a["input"], a["kernel_size"], stride, a.get("padding", 0), a.get("ceil_mode", False)
            )
        if func in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
            a = _bind(args, kwargs, ("input", "output_size", "return_indices"))
            if a.get("return_indices"):
                raise ReceptiveFieldError(
                    "`model`: cannot linearise an adaptive max pool with return_indices"
                )
            avg = F.adaptive_avg_pool1d if func is F.adaptive_max_pool1d else F.adaptive_avg_pool2d
            return avg(a["input"], a["output_size"])
        if func is F.linear:
            a = _bind(args, kwargs, ("input", "weight", "bias"))
            x, w = a["input"], a["weight"]
            if self.slim:
                return x.mean(dim=-1, keepdim=True).expand(*x.shape[:-1], w.shape[0])
            return F.linear(
                x, torch.full(w.shape, 1.0 / w.shape[1], dtype=x.dtype, device=x.device)
            )
        if func is F.embedding:
            a = _bind(args, kwargs, ("input", "weight"))
            w = a["weight"]
            return torch.ones((*a["input"].shape, w.shape[1]), dtype=w.dtype, device=w.device)
        return func(*args, **kwargs)

    def _conv(self, func: Any, a: dict) -> torch.Tensor:
        x, w = a["input"], a["weight"]
        stride, padding, dilation = a.get("stride", 1), a.get("padding", 0), a.get("dilation", 1)
        if self.slim:
            kernel = torch.ones((1, 1, *w.shape[2:]), dtype=x.dtype, device=x.device)
            x = x.mean(dim=1, keepdim=True)
            return func(x, kernel / kernel.numel(), None, stride, padding, dilation)
        kernel = torch.full(w.shape, 1.0 / w[0].numel(), dtype=x.dtype, device=x.device)
        return func(x, kernel, None, stride, padding, dilation, a.get("groups", 1))


_IDENTITY_FUNCS: set[Any] = {
    F.relu,
    F.relu_,
    torch.relu,
    torch.relu_,
    torch.Tensor.relu,
    torch.Tensor.relu_,
    F.relu6,
    F.hardtanh,
    F.hardtanh_,
    F.leaky_relu,
    F.leaky_relu_,
    F.elu,
    F.elu_,
    F.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.softplus,
    F.prelu,
    F.rrelu,
    F.threshold,
    F.logsigmoid,
    torch.sigmoid,
    torch.Tensor.sigmoid,
    F.sigmoid,
    torch.tanh,
    torch.Tensor.tanh,
    F.tanh,
    F.batch_norm,
    F.layer_norm,
    F.group_norm,
    F.instance_norm,
    F.local_response_norm,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
}


def _module_names(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if name}


def _check_layer_names(model: nn.Module, names: Sequence[str], argument: str) -> None:
    modules = _module_names(model)
    for name in names:
        if not isinstance(name, str) or name not in modules:
            valid = [n for n, m in modules.items() if isinstance(m, CONV_TYPES + POOL_TYPES)]
            raise ValueError(
                f"`{argument}`: {type(model).__name__} has no layer {name!r}; conv and pooling "
                f"layers are: {', '.join(valid) or '(none)'}"
            )


def _embedding_of(model: nn.Module) -> nn.Embedding:
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            return m
    raise ReceptiveFieldError(
        "`input_size`: a 1-element input size means token ids, but the model has no "
        "nn.Embedding to differentiate through; give (C, L) or (C, H, W) instead"
    )


def _centre_unit(spatial: Sequence[int]) -> tuple[int, ...]:
    return tuple((n - 1) // 2 for n in spatial)


def _support(grad: torch.Tensor) -> tuple[int, ...] | None:
    """Half-open bounding box (per spatial axis) of the non-zero entries of ``grad``."""
    nonzero = grad != 0
    if not bool(nonzero.any()):
        return None
    box: list[int] = []
    for axis in range(grad.dim()):
        other = [d for d in range(grad.dim()) if d != axis]
        line = nonzero.any(dim=other) if other else nonzero
        idx = torch.nonzero(line).flatten()
        box += [int(idx[0]), int(idx[-1]) + 1]
    return tuple(box)


def measure_receptive_fields(
    model: nn.Module,
    layer_names: Sequence[str],
    input_size: Sequence[int],
    *,
    units: Mapping[str, Sequence[int]] | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, MeasuredReceptiveField]:
    """Measure receptive fields of several layers with one pass of the linearised model.

    See :func:`measure_receptive_field`. One input row per layer, so a single backward pass
    measures them all.

    Args:
        model: The model (run under :func:`~cnnviz.analysis.guard.observe`, not modified).
        layer_names: Qualified names of the layers to measure.
        input_size: Input shape without batch: ``(C, H, W)``, ``(C, L)`` or ``(L,)`` (tokens:
            the gradient is taken at the embedding output).
        units: Optional ``{layer: unit index}``; default the centre unit ``(n - 1) // 2`` per
            axis.
        dtype: Floating type of the linearised run. ``float64`` keeps the gradient of very deep
            networks from underflowing at the borders of the field.

    Returns:
        ``{layer: MeasuredReceptiveField}``.

    Raises:
        TypeError: If ``model`` or ``input_size`` has the wrong type.
        ValueError: If a layer name is unknown (the message lists the conv/pool layers), a unit
            is outside the layer's output, or a unit's gradient is zero everywhere.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    size = _check_input_size(input_size)
    names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
    _check_layer_names(model, names, "layer_names")
    units = dict(units or {})
    _check_layer_names(model, list(units), "units")
    try:
        return _measure(model, names, size, units, dtype, slim=True)
    except RuntimeError:
        # Some op needs the real channel counts (a channel shuffle...): measure at full width.
        return _measure(model, names, size, units, dtype, slim=False)


def _measure(
    model: nn.Module,
    names: list[str],
    size: tuple[int, ...],
    units: dict[str, Sequence[int]],
    dtype: torch.dtype,
    slim: bool,
) -> dict[str, MeasuredReceptiveField]:
    devices = model_devices(model)
    device = devices[0] if devices else torch.device("cpu")
    tokens = len(size) == 1
    captured: dict[str, torch.Tensor] = {}
    wanted = set(names)
    batch = len(names)  # one input row per layer: a single backward pass measures them all
    with observe(model, grad=True), HookSet() as hooks:
        if tokens:
            x = torch.ones((batch, *size), dtype=torch.long, device=device)
            leaf: list[torch.Tensor] = []

            def embed_hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
                new = out.detach().clone().requires_grad_(True)
                leaf.append(new)
                return new

            hooks.add(_embedding_of(model).register_forward_hook(embed_hook))
        else:
            x = torch.ones((batch, *size), dtype=dtype, device=device, requires_grad=True)
        lin_modules = _module_names(model)
        for name in set(names):

            def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
                if name not in captured and isinstance(out, torch.Tensor):
                    captured[name] = out
                if wanted <= set(captured):
                    raise _Stop

            hooks.add(lin_modules[name].register_forward_hook(hook))
        with contextlib.suppress(_Stop), _Linearise(slim):
            model(x)
        picked = []
        chosen = []
        for row, name in enumerate(names):
            if name not in captured:
                raise ValueError(
                    f"`layer_names`: layer {name!r} was not called (or returned no tensor) in the "
                    "forward pass; choose a layer on the path from input to output"
                )
            out = captured[name]
            spatial = tuple(out.shape[2:])
            unit = tuple(units.get(name, _centre_unit(spatial)))
            if len(unit) != len(spatial) or not all(
                0 <= u < n for u, n in zip(unit, spatial, strict=True)
            ):
                raise ValueError(
                    f"`units`: unit {unit} is outside layer {name!r}'s output {spatial}"
                )
            picked.append(out[(row, slice(None), *unit)].sum())
            chosen.append(unit)
        wrt = leaf[0] if tokens else x
        (grad,) = torch.autograd.grad(torch.stack(picked).sum(), wrt)
    if not bool(torch.isfinite(grad).all()):
        raise ReceptiveFieldError(
            "`model`: the linearised model overflowed, so its gradient support cannot be "
            "trusted; this happens when activations multiply each other (squeeze-and-excitation "
            "or other gating). Measure a smaller input or compare analytically only."
        )
    results: dict[str, MeasuredReceptiveField] = {}
    for row, name in enumerate(names):
        g = grad[row].abs()
        g = g.sum(dim=-1) if tokens else g.sum(dim=0)
        box = _support(g)
        if box is None:
            raise ValueError(
                f"`layer_names`: unit {chosen[row]} of layer {name!r} does not depend on the "
                "input (zero gradient); choose another unit"
            )
        if len(box) == 2:
            box = (0, 1, *box)
        results[name] = MeasuredReceptiveField(box[1] - box[0], box[3] - box[2], box)
    return results


def measure_receptive_field(
    model: nn.Module,
    layer_name: str,
    input_size: Sequence[int],
    *,
    unit: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
) -> MeasuredReceptiveField:
    """Measure a layer's receptive field independently of :func:`receptive_fields`.

    The model runs once, under :func:`~cnnviz.analysis.guard.observe` and a
    ``TorchFunctionMode`` that linearises it: max pools become average pools of the same
    geometry, activations, normalisation and dropout identities, convolutions and linear layers
    use positive constant weights (``1/fan_in``) and no bias; the model's own weights are never
    read or changed. Fed a positive input, the input gradient of one output unit (summed over
    the layer's channels) is then positive exactly where the unit can see, so the bounding box
    of its support is the receptive field as actually read (clipped to the input). Choose an
    input large enough (or a unit central enough) that the field is not clipped to compare
    sizes. Gating (squeeze-and-excitation) can overflow the linearised run; that is detected
    and reported.

    Args:
        model: The model (not modified).
        layer_name: Qualified name of the layer.
        input_size: ``(C, H, W)``, ``(C, L)`` or ``(L,)`` for token ids.
        unit: The unit to measure; default the centre unit ``(n - 1) // 2`` per axis.
        dtype: Floating type of the run (``float64`` avoids underflow in very deep nets).

    Returns:
        ``(size_h, size_w, region)`` with ``region = (top, bottom, left, right)`` half-open;
        1-D inputs are measured as a ``1 x L`` image.

    Raises:
        ValueError: If the layer is unknown (lists the conv/pool layers), the unit is invalid
            or sees only padding (zero gradient).
        ReceptiveFieldError: If the linearised run overflows (gating layers).

    Example:
        >>> measure_receptive_field(torchvision.models.vgg16(), "features.28", (3, 224, 224))
        MeasuredReceptiveField(size_h=196, size_w=196, region=(6, 202, 6, 202))
    """
    units = {layer_name: tuple(unit)} if unit is not None else None
    return measure_receptive_fields(model, [layer_name], input_size, units=units, dtype=dtype)[
        layer_name
    ]


# --------------------------------------------------------------------------------------------
# Effective receptive field (Luo et al. 2016)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ERFResult:
    """Effective receptive field of one unit (Luo, Li, Urtasun & Zemel, NeurIPS 2016).

    Attributes:
        layer: Qualified name of the layer.
        unit: The output unit whose gradient was taken (row, column) or (position,).
        channel: The channel, or ``None`` when the unit's channels were summed.
        map: Mean over probe inputs of ``|d y / d x|``, summed over input channels: ``(H, W)``
            (``(L,)`` for sequences), float32 on the CPU.
        num_images: How many probe inputs were averaged.
        centroid: Mass-weighted centre of ``map`` per axis (input coordinates).
        mass_fraction: The fraction used for :attr:`radius` (0.9 by default).
        radius: Smallest Euclidean radius around the centroid holding ``mass_fraction`` of the
            total mass, in pixels.
        sigma: Per-axis standard deviation of ``map`` as a distribution (the moment fit of a
            Gaussian).
        effective_size: ``2 * radius + 1``: the diameter, in pixels, of that disc.
        theoretical: The layer's theoretical :class:`ReceptiveField`, or ``None`` when it is
            not available (see :attr:`note`).
        ratio: ``effective_size`` divided by the theoretical extent of the unit clipped to the
            input (geometric mean over axes), or ``None``.
        note: Why :attr:`theoretical` is missing, else ``""``.
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
    note: str = ""


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


def _erf_summary(
    erf: torch.Tensor, fraction: float
) -> tuple[tuple[float, ...], float, tuple[float, ...]]:
    m = erf.double()
    total = float(m.sum())
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in m.shape], indexing="ij")
    if total <= 0:
        centre = tuple((n - 1) / 2 for n in m.shape)
        return centre, 0.0, tuple(0.0 for _ in m.shape)
    centroid = tuple(float((m * g).sum() / total) for g in grids)
    sigma = tuple(
        math.sqrt(float((m * (g - c) ** 2).sum() / total))
        for g, c in zip(grids, centroid, strict=True)
    )
    dist = torch.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centroid, strict=True))).flatten()
    order = torch.argsort(dist)
    cum = torch.cumsum(m.flatten()[order], 0)
    k = int(torch.searchsorted(cum, torch.tensor(fraction * total, dtype=torch.float64)))
    radius = float(dist[order[min(k, dist.numel() - 1)]])
    return centroid, radius, sigma


def effective_receptive_field(
    model: nn.Module,
    layer: str | nn.Module,
    probe: torch.Tensor,
    channel: int | None = None,
    *,
    unit: Sequence[int] | None = None,
    mass_fraction: float = 0.9,
    batch_size: int | None = None,
) -> ERFResult:
    """Effective receptive field of ``layer``'s centre unit over ``probe`` inputs.

    The real model (not a linearised copy) runs under
    :func:`~cnnviz.analysis.guard.observe` with gradients on: eval mode, RNG forked, parameters
    frozen (no ``.grad`` touched), modes restored; it works inside ``torch.inference_mode``. A
    hook (inside a :class:`~cnnviz.analysis.guard.HookSet`, removed even on error) captures the
    layer's output and stops the forward pass there.

    Args:
        model: The model.
        layer: Qualified name of the layer, or the submodule itself.
        probe: Inputs ``(N, C, H, W)``, ``(N, C, L)``, or ``(N, L)`` token ids (the gradient is
            then taken at the embedding output and summed over embedding dimensions).
        channel: Differentiate this output channel; ``None`` sums the unit's channels.
        unit: The output unit; default the unit whose theoretical field is centred nearest the
            input's centre (``(n - 1) // 2`` per axis when the theoretical field is unknown).
        mass_fraction: Fraction of the gradient mass that :attr:`ERFResult.radius` encloses.
        batch_size: Process the probe in chunks of this many inputs (default: all at once).

    Returns:
        An :class:`ERFResult` with the map and its summary.

    Raises:
        TypeError: If ``probe`` is not a tensor or ``layer`` has the wrong type.
        ValueError: If ``layer`` is unknown (lists the conv/pool layers), ``channel`` or
            ``unit`` is out of range, ``probe`` is empty, or ``mass_fraction`` not in (0, 1].

    Example:
        >>> erf = effective_receptive_field(model, "features.10", images[:16])
        >>> erf.map.shape  # then erf.radius, erf.sigma, erf.ratio summarise it
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
    theoretical: ReceptiveField | None = None
    note = ""
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
    assert total is not None and chosen is not None  # n >= 1 checked above
    erf = (total / n).float().cpu()
    centroid, radius, sigma = _erf_summary(erf, float(mass_fraction))
    effective = 2 * radius + 1
    ratio = None
    if theoretical is not None:
        box = theoretical.region(*chosen, clip=True)
        extents = [box[2 * a + 1] - box[2 * a] for a in range(theoretical.ndim)]
        ratio = effective / math.prod(extents) ** (1 / len(extents))
    return ERFResult(
        layer=name,
        unit=chosen,
        channel=channel,
        map=erf,
        num_images=n,
        centroid=centroid,
        mass_fraction=float(mass_fraction),
        radius=radius,
        sigma=sigma,
        effective_size=effective,
        theoretical=theoretical,
        ratio=ratio,
        note=note,
    )


def _default_unit(spatial: Sequence[int], theoretical: ReceptiveField | None) -> tuple[int, ...]:
    if theoretical is None or tuple(theoretical.output_spatial) != tuple(spatial):
        return _centre_unit(spatial)
    unit = []
    for a, (n, size) in enumerate(zip(spatial, theoretical.input_spatial, strict=True)):

        def distance(i: int, a: int = a, target: float = (size - 1) / 2) -> float:
            lo, hi = theoretical._interval(a, i, clip=False)
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
