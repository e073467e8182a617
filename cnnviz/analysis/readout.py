"""Where a conv layer's maps are read: after the normalisation and activation that follow it.

What a unit "fires" is the activation that follows its conv, but in torchvision and timm blocks
the conv, its normalisation and its activation are rarely siblings in one ``nn.Sequential``:
``forward`` calls ``self.bn1``/``self.relu`` (torchvision's BasicBlock reuses one ``relu`` module
twice), ``F.relu``, or timm's ``BatchNormAct2d`` (normalisation and activation in one module).

:func:`find_readouts` therefore runs one guarded forward pass and follows each conv's output by
data flow — a :class:`~torch.overrides.TorchFunctionMode` sees every torch function, module
hooks see every module call — through normalisation, dropout/identity, one residual ``add`` and
channel concatenation, up to the first activation. The result says, per layer, which tensor to
read (:class:`Readout`): a module's output (which call of it) or a functional op's output (which
occurrence in one forward), and which channels of it. :class:`ReadoutHooks` reads those tensors
during later forward passes.

Example:
    >>> readouts = find_readouts(model, probe, ["layer1.0.conv2"])
    >>> readouts["layer1.0.conv2"].describe()
    'read after bn2 → + residual → relu'
    >>> with observe(model), ReadoutHooks(model, readouts, lambda name, t: seen.append(t)):
    ...     model(probe)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz.analysis.guard import HookSet, observe
from cnnviz.analysis.layers import ACTIVATION_TYPES, CONV_TYPES, POOL_TYPES

__all__ = [
    "ReadSite",
    "Readout",
    "ReadoutHooks",
    "Stage",
    "find_readouts",
    "raw_readout",
]

Stage = Literal["activation", "norm", "raw"]
LayerRole = Literal["conv", "pool", "other"]

#: Samples of ``example_input`` used for discovery (one forward pass).
DISCOVERY_SAMPLES = 2

# ----------------------------------------------------------------------------------- op tables
# Torch functions are classified by name, so ``F.relu``, ``torch.relu``, ``Tensor.relu`` and the
# in-place ``relu_`` all count (the function mode sees the outermost call only).
_ACTIVATION_NAMES = frozenset(
    {
        "relu",
        "relu6",
        "hardtanh",
        "leaky_relu",
        "prelu",
        "rrelu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "mish",
        "hardswish",
        "hardsigmoid",
        "softplus",
        "tanh",
        "sigmoid",
        "softsign",
        "logsigmoid",
        "threshold",
        "_threshold",
        "expit",
    }
)
_ACTIVATION_OPS = _ACTIVATION_NAMES | {f"{n}_" for n in _ACTIVATION_NAMES}
_NORM_OPS = frozenset(
    {
        "batch_norm",
        "layer_norm",
        "group_norm",
        "instance_norm",
        "rms_norm",
        "local_response_norm",
    }
)
_PASS_OPS = frozenset(
    {
        "dropout",
        "dropout_",
        "dropout1d",
        "dropout2d",
        "dropout3d",
        "alpha_dropout",
        "alpha_dropout_",
        "feature_alpha_dropout",
        "feature_alpha_dropout_",
        "feature_dropout",
        "feature_dropout_",
        "contiguous",
        "clone",
        "detach",
        "to",
        "float",
        "half",
        "bfloat16",
        "double",
        "type_as",
        "cpu",
        "cuda",
    }
)
_SAME_SHAPE_OPS = frozenset({"view", "reshape", "view_as", "reshape_as"})
_ADD_OPS = frozenset({"add", "add_", "__add__", "__iadd__", "__radd__"})
_CAT_OPS = frozenset({"cat", "concat", "concatenate"})
_PERMUTE_OPS = frozenset({"permute"})
_TRANSPOSE_OPS = frozenset({"transpose", "swapaxes", "swapdims"})

_ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    *ACTIVATION_TYPES,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.RReLU,
    nn.Threshold,
    nn.Softsign,
    nn.LogSigmoid,
)
# Activation classes of other libraries (timm's Swish, HardSwishMe, GELUTanh...), by class name.
_ACTIVATION_CLASS_NAMES = frozenset(
    {
        "relu",
        "relu6",
        "leakyrelu",
        "prelu",
        "rrelu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "gelutanh",
        "quickgelu",
        "silu",
        "swish",
        "swishme",
        "mish",
        "mishme",
        "hardswish",
        "hardswishme",
        "hardsigmoid",
        "hardsigmoidme",
        "hardtanh",
        "softplus",
        "tanh",
        "sigmoid",
        "softsign",
        "logsigmoid",
        "threshold",
    }
)
_NORM_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# Modules that hand their input on unchanged (in eval mode): never chosen as the read site when
# a more specific module outputs the same tensor.
_TRANSPARENT_CLASS_NAMES = frozenset({"Identity", "DropPath", "DropBlock2d", "StochasticDepth"})


def _op_key(func: Any) -> str:
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


def _is_activation_module(module: nn.Module) -> bool:
    if isinstance(module, _ACTIVATION_MODULES):
        return True
    return type(module).__name__.lower().replace("_", "") in _ACTIVATION_CLASS_NAMES


def _is_norm_module(module: nn.Module | None) -> bool:
    return module is not None and (
        isinstance(module, _NORM_MODULES) or "Norm" in type(module).__name__
    )


def _is_transparent(module: nn.Module) -> bool:
    return (
        isinstance(module, (nn.Identity, nn.modules.dropout._DropoutNd))
        or type(module).__name__ in _TRANSPARENT_CLASS_NAMES
    )


def _role(module: nn.Module) -> LayerRole:
    if isinstance(module, CONV_TYPES):
        return "conv"
    if isinstance(module, POOL_TYPES):
        return "pool"
    return "other"


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor._version)
    except RuntimeError:  # inference tensors have no version counter
        return None


def _short(step: str) -> str:
    """Short step name: ``layer1.0.bn2`` → ``bn2``, ``relu() in x`` → ``relu()``."""
    if " in " in step:
        return step.split(" in ", 1)[0]
    if step.startswith(("+", "cat")):
        return step
    parts = step.split(".")
    start = len(parts) - 1
    while start > 0 and parts[start].isdigit():
        start -= 1
    return ".".join(parts[start:])


# -------------------------------------------------------------------------------- public types
@dataclass(frozen=True)
class ReadSite:
    """The tensor to read for a layer, as something hooks can find in every forward pass.

    Attributes:
        kind: ``"module"``: the output of module :attr:`name`; ``"function"``: the output of the
            torch function named :attr:`name` (``"relu"``, ``"batch_norm"``...).
        name: Qualified module name (``""`` is the model itself), or the function's name.
        index: Which call of the module, or which occurrence of the function among all calls
            of functions with that name, in one forward pass (0 = the first).
        calls: How many calls/occurrences one forward pass made when the site was found. Calls
            are counted from the model's call and wrap around every ``calls``, so call
            ``index`` of each forward is read; with ``calls <= 1`` every call is read (a module
            called once per forward, or unknown).
        scope: For functions, the innermost module that called it (``""``: the model's own
            ``forward``); empty for modules.
    """

    kind: Literal["module", "function"]
    name: str
    index: int = 0
    calls: int = 1
    scope: str = ""

    def label(self) -> str:
        """``layer1.0.relu``, ``layer1.0.relu (call 2)`` or ``relu() in features``."""
        if self.kind == "module":
            base = self.name or "(model output)"
            return base if self.index == 0 else f"{base} (call {self.index + 1})"
        where = f" in {self.scope}" if self.scope else ""
        return f"{self.name.rstrip('_')}(){where}"


@dataclass(frozen=True)
class Readout:
    """Which tensor is read for one layer, and what it is.

    Attributes:
        layer: Qualified name of the layer (as in ``model.named_modules()``).
        stage: ``"activation"``: read after the activation that follows the conv (what the unit
            fires); ``"norm"``: no activation follows, read after the last normalisation;
            ``"raw"``: the layer's own output (pooling layers, convs with nothing after them, or
            a fallback, see :attr:`reason`).
        path: Human-readable steps from the conv to the tensor read, e.g.
            ``("layer1.0.bn2", "+ residual", "layer1.0.relu")``; empty for ``"raw"``.
        site: Where the tensor is found in a forward pass (:class:`ReadSite`).
        channel_offset: First channel of the layer's maps within the tensor read (non-zero when
            the conv's output was concatenated with others, as in DenseNet).
        channel_count: Number of the layer's channels (``None``: every channel of the tensor).
        permute: Dimension order that brings the tensor read back to ``(N, C, ...)`` when the
            path permuted it (ConvNeXt's channels-last LayerNorm); ``None`` if not permuted.
        kind: ``"conv"``, ``"pool"`` or ``"other"`` (only convs are followed).
        reason: Why the layer is read before an activation (empty when read after one).
    """

    layer: str
    stage: Stage
    path: tuple[str, ...]
    site: ReadSite
    channel_offset: int = 0
    channel_count: int | None = None
    permute: tuple[int, ...] | None = None
    kind: LayerRole = "conv"
    reason: str = ""

    @property
    def post_activation(self) -> bool:
        """``True`` when the maps are read after an activation."""
        return self.stage == "activation"

    @property
    def pre_activation(self) -> bool:
        """``True`` for a conv layer read before any activation (label its maps as such)."""
        return self.kind == "conv" and self.stage != "activation"

    @property
    def source(self) -> str:
        """What is read, in a few words: ``layer1.0.relu (call 2)``, ``relu() in features``.

        Concatenations add the channel range (``features.denseblock1.denselayer2.relu1
        [64:96]``).
        """
        label = self.site.label()
        if self.channel_offset or (
            self.channel_count is not None and any(s.startswith("cat") for s in self.path)
        ):
            stop = self.channel_offset + (self.channel_count or 0)
            label += f" [{self.channel_offset}:{stop}]"
        return label

    def describe(self) -> str:
        """One line for reports, e.g. ``read after bn2 → + residual → relu``."""
        if self.kind != "conv":
            return f"read as it is ({self.kind} layer)" + (
                f"; {self.reason}" if self.reason else ""
            )
        if self.stage == "raw":
            return "raw conv output (pre-activation)" + (f": {self.reason}" if self.reason else "")
        text = "read after " + " → ".join(_short(s) for s in self.path)
        if self.stage == "norm":
            text += " (pre-activation" + (f": {self.reason})" if self.reason else ")")
        return text

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary for records: stage, path, source, description, channels."""
        return {
            "layer": self.layer,
            "kind": self.kind,
            "stage": self.stage,
            "post_activation": self.post_activation,
            "path": list(self.path),
            "source": self.source,
            "describe": self.describe(),
            "channel_offset": self.channel_offset,
            "channel_count": self.channel_count,
            "reason": self.reason,
        }


def raw_readout(model: nn.Module, layer: str, *, reason: str = "") -> Readout:
    """A :class:`Readout` that reads ``layer``'s own output (every call of it).

    Args:
        model: The model that owns ``layer``.
        layer: Qualified module name.
        reason: Why the layer is read raw (shown by :meth:`Readout.describe`).

    Returns:
        A ``"raw"`` readout of the module's output.

    Raises:
        ValueError: If ``model`` has no module ``layer``.
    """
    module = _modules_or_raise(model, [layer])[layer]
    role = _role(module)
    count = int(module.out_channels) if role == "conv" else None
    return Readout(
        layer=layer,
        stage="raw",
        path=(),
        site=ReadSite("module", layer),
        channel_count=count,
        kind=role,
        reason=reason,
    )


def _modules_or_raise(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}")
    modules = dict(model.named_modules())
    unknown = [n for n in names if not isinstance(n, str) or n not in modules]
    if unknown:
        from cnnviz.analysis.layers import list_layers

        valid = ", ".join(i.name for i in list_layers(model)) or "(none)"
        raise ValueError(
            f"`layers`: unknown layer(s) {unknown}; conv and pooling layers are: {valid}"
        )
    return {n: modules[n] for n in names}


# ------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class _Trace:
    """One conv's maps inside a tensor: where its channels are and how it got there."""

    layer: str
    offset: int
    count: int
    dims: tuple[int, ...]  # for each axis of the tensor, the conv output's axis it holds
    steps: tuple[str, ...] = ()
    residual: bool = False

    @property
    def axis(self) -> int:
        return self.dims.index(1)


class _Node:
    """A tensor value (object at one version) with the traces it carries and where it is seen."""

    __slots__ = ("modules", "op", "tensor", "traces", "version")

    def __init__(self, tensor: torch.Tensor, traces: dict[str, _Trace]) -> None:
        self.tensor = tensor  # a strong reference: ids stay unique while discovery runs
        self.version = _version(tensor)
        self.traces = traces
        self.modules: list[tuple[str, int]] = []  # (module, call index), innermost first
        self.op: tuple[str, int, str] | None = None  # (function, occurrence, scope)


@dataclass
class _Frame:
    module: nn.Module
    name: str
    activation: bool
    saved: dict[str, _Trace]


class _Discovery(TorchFunctionMode):
    """Follows conv outputs by data flow during one forward pass (see :func:`find_readouts`)."""

    def __init__(self, modules: dict[str, nn.Module], convs: set[str]) -> None:
        super().__init__()
        self.modules = modules
        self.convs = convs
        self.latest: dict[int, _Node] = {}
        self.counts: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.frames: list[_Frame] = []
        self.suspend = 0
        self.busy = False
        self.final: dict[str, tuple[_Trace, _Node]] = {}
        # per conv without an activation (yet): the stage to read and the equivalent tensors
        # (the normalisation's output, then the same values passed on: permuted back...)
        self.fallback: dict[str, tuple[Stage, list[tuple[_Trace, _Node]]]] = {}
        self.failed: dict[str, str] = {}
        self.ended: dict[str, str] = {}
        self.error: str | None = None

    # -- bookkeeping ------------------------------------------------------------------------
    def _done(self, layer: str) -> bool:
        return layer in self.final or layer in self.failed

    def _live(self, tensor: torch.Tensor) -> _Node | None:
        node = self.latest.get(id(tensor))
        if node is None or node.tensor is not tensor or node.version != _version(tensor):
            return None
        return node

    def _live_traces(self, node: _Node | None) -> dict[str, _Trace]:
        if node is None:
            return {}
        return {k: t for k, t in node.traces.items() if not self._done(k)}

    def _fresh(self, tensor: torch.Tensor, traces: dict[str, _Trace]) -> _Node:
        node = _Node(tensor, traces)
        self.latest[id(tensor)] = node
        return node

    def _scope(self) -> str:
        return self.frames[-1].name if self.frames else ""

    def _step(self, key: str) -> str:
        scope = self._scope()
        if key in _NORM_OPS and scope and _is_norm_module(self.modules.get(scope)):
            return scope
        name = key.rstrip("_")
        return f"{name}() in {scope}" if scope else f"{name}()"

    def _fail(self, layers: Iterable[str], reason: str) -> None:
        for layer in layers:
            if not self._done(layer):
                self.failed[layer] = reason

    def _finalize(self, traces: dict[str, _Trace], node: _Node, step: str) -> None:
        for layer, trace in traces.items():
            if not self._done(layer):
                self.final[layer] = (replace(trace, steps=(*trace.steps, step)), node)

    # -- the function mode ------------------------------------------------------------------
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self.busy:
            return func(*args, **kwargs)
        traced: list[tuple[torch.Tensor, _Node, dict[str, _Trace]]] = []
        if self.latest:
            try:
                traced = self._traced_inputs(args, kwargs)
            except Exception as err:  # never let discovery take the forward down
                self.error = f"{type(err).__name__}: {err}"
        out = func(*args, **kwargs)
        key = _op_key(func)
        occurrence = self.counts.get(key, 0)
        self.counts[key] = occurrence + 1
        if traced:
            self.busy = True
            try:
                self._after(key, occurrence, args, kwargs, out, traced)
            except Exception as err:
                layers = [k for _, _, live in traced for k in live]
                self._fail(layers, f"following {key}() failed: {type(err).__name__}: {err}")
            finally:
                self.busy = False
        return out

    def _traced_inputs(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> list[tuple[torch.Tensor, _Node, dict[str, _Trace]]]:
        found = []
        seen: set[int] = set()
        for value in (*args, *kwargs.values()):
            items = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if not isinstance(item, torch.Tensor) or id(item) in seen:
                    continue
                seen.add(id(item))
                node = self._live(item)
                live = self._live_traces(node)
                if node is not None and live:
                    found.append((item, node, live))
        return found

    def _after(
        self,
        key: str,
        occurrence: int,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        out: Any,
        traced: list[tuple[torch.Tensor, _Node, dict[str, _Trace]]],
    ) -> None:
        followed = False
        if isinstance(out, torch.Tensor) and not self.suspend:
            followed = self._follow(key, occurrence, args, kwargs, out, traced)
        if followed:
            return
        for tensor, node, live in traced:
            if isinstance(out, torch.Tensor):
                for layer in live:
                    self.ended.setdefault(layer, self._step(key))
            if _version(tensor) != node.version and self.latest.get(id(tensor)) is node:
                del self.latest[id(tensor)]  # changed in place by an op not followed

    def _follow(
        self,
        key: str,
        occurrence: int,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        out: torch.Tensor,
        traced: list[tuple[torch.Tensor, _Node, dict[str, _Trace]]],
    ) -> bool:
        by_id = {id(t): live for t, _, live in traced}
        nodes = {id(t): node for t, node, _ in traced}
        data = args[0] if args else kwargs.get("input", kwargs.get("self"))
        live = by_id.get(id(data)) if isinstance(data, torch.Tensor) else None

        if key in _ACTIVATION_OPS:
            if not live or out.shape != data.shape:
                return False
            node = self._fresh(out, {})
            node.op = (key, occurrence, self._scope())
            self._finalize(live, node, self._step(key))
            return True

        if key in _NORM_OPS:
            if not live or out.shape != data.shape:
                return False
            step = self._step(key)
            traces = {k: replace(t, steps=(*t.steps, step)) for k, t in live.items()}
            node = self._fresh(out, traces)
            node.op = (key, occurrence, self._scope())
            for layer, trace in traces.items():
                if trace.residual:
                    continue
                current = self.fallback.get(layer)
                steps = current[1][0][0].steps if current else ()
                if trace.steps[: len(steps)] == steps:
                    self.fallback[layer] = ("norm", [(trace, node)])
            return True

        if key in _PASS_OPS or key in _SAME_SHAPE_OPS:
            if not live or out.shape != data.shape:
                return False
            if out is not data or _version(out) != nodes[id(data)].version:
                self._moved(nodes[id(data)], self._fresh(out, dict(live)))
            return True

        if key in _PERMUTE_OPS or key in _TRANSPOSE_OPS:
            if not live:
                return False
            order = self._permutation(key, args, kwargs, data.dim())
            if order is None:
                return False
            traces = {k: replace(t, dims=tuple(t.dims[i] for i in order)) for k, t in live.items()}
            self._moved(nodes[id(data)], self._fresh(out, traces))
            return True

        if key in _ADD_OPS:
            other = args[1] if len(args) > 1 else kwargs.get("other")
            if not (isinstance(data, torch.Tensor) and isinstance(other, torch.Tensor)):
                return False
            if not (data.shape == other.shape == out.shape) or kwargs.get("alpha", 1) != 1:
                return False
            traces: dict[str, _Trace] = {}
            for operand in (data, other):
                for k, t in by_id.get(id(operand), {}).items():
                    if not t.residual and k not in traces:
                        traces[k] = replace(t, steps=(*t.steps, "+ residual"), residual=True)
            if not traces:
                return False
            self._fresh(out, traces)
            return True

        if key in _CAT_OPS:
            return self._follow_cat(args, kwargs, out, by_id)
        return False

    def _moved(self, source: _Node, node: _Node) -> None:
        """A normalisation's output passed on unchanged: read it where it is passed to."""
        for layer, trace in node.traces.items():
            current = self.fallback.get(layer)
            if current is not None and current[0] == "norm" and current[1][-1][1] is source:
                current[1].append((trace, node))

    @staticmethod
    def _permutation(
        key: str, args: Sequence[Any], kwargs: Mapping[str, Any], ndim: int
    ) -> tuple[int, ...] | None:
        if key in _PERMUTE_OPS:
            rest = list(args[1:]) or [kwargs.get("dims")]
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            order = tuple(int(d) % ndim for d in dims)
            return order if sorted(order) == list(range(ndim)) else None
        rest = list(args[1:3])
        if len(rest) < 2:
            rest = [
                kwargs.get("dim0", kwargs.get("axis0")),
                kwargs.get("dim1", kwargs.get("axis1")),
            ]
        if any(r is None for r in rest):
            return None
        a, b = (int(r) % ndim for r in rest)
        order = list(range(ndim))
        order[a], order[b] = order[b], order[a]
        return tuple(order)

    def _follow_cat(
        self,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        out: torch.Tensor,
        by_id: dict[int, dict[str, _Trace]],
    ) -> bool:
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
        if not isinstance(tensors, (list, tuple)) or not isinstance(dim, int):
            return False
        dim %= out.dim()
        traces: dict[str, _Trace] = {}
        offset = 0
        for item in tensors:
            if not isinstance(item, torch.Tensor):
                return False
            for k, t in by_id.get(id(item), {}).items():
                if t.axis == dim and k not in traces:
                    start = offset + t.offset
                    step = f"cat[{start}:{start + t.count}]"
                    traces[k] = replace(t, offset=start, steps=(*t.steps, step))
            offset += item.shape[dim] if item.dim() > dim else 0
        if not traces:
            return False
        self._fresh(out, traces)
        return True

    # -- module hooks -----------------------------------------------------------------------
    def pre_hook(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.busy = True
        try:
            if name == "" and not self.frames:
                self.counts.clear()  # occurrences count from the model's call, as when reading
            activation = _is_activation_module(module)
            saved: dict[str, _Trace] = {}
            if activation:
                self.suspend += 1
                first = args[0] if args else None
                if isinstance(first, torch.Tensor):
                    saved = self._live_traces(self._live(first))
            self.frames.append(_Frame(module, name, activation, saved))
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.busy = False

    def post_hook(self, name: str, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.busy = True
        try:
            frame = None
            while self.frames:
                frame = self.frames.pop()
                if frame.module is module:
                    break
            index = self.calls.get(name, 0)
            self.calls[name] = index + 1
            if frame is not None and frame.module is module and frame.activation:
                self.suspend = max(0, self.suspend - 1)
                if frame.saved and isinstance(output, torch.Tensor):
                    first = args[0] if args else None
                    if isinstance(first, torch.Tensor) and output.shape == first.shape:
                        self._finalize(frame.saved, self._fresh(output, {}), name)
            if not isinstance(output, torch.Tensor):
                return
            if name in self.convs and index == 0 and output.dim() >= 2:
                try:
                    trace = _Trace(
                        layer=name,
                        offset=0,
                        count=int(output.shape[1]),
                        dims=tuple(range(output.dim())),
                    )
                    node = self._fresh(output, {name: trace})
                    self.fallback[name] = ("raw", [(trace, node)])
                except Exception as err:
                    self._fail([name], f"{type(err).__name__}: {err}")
            node = self._live(output)
            if node is not None:
                node.modules.append((name, index))
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.busy = False

    # -- results ----------------------------------------------------------------------------
    def _site(self, node: _Node) -> ReadSite | None:
        if node.modules:
            chosen = next(
                (m for m in node.modules if not _is_transparent(self.modules[m[0]])),
                node.modules[0],
            )
            name, index = chosen
            return ReadSite("module", name, index, self.calls.get(name, index + 1))
        if node.op is not None:
            key, occurrence, scope = node.op
            return ReadSite(
                "function", key, occurrence, self.counts.get(key, occurrence + 1), scope
            )
        return None

    def readout(self, name: str, module: nn.Module) -> Readout:
        role = _role(module)
        calls = self.calls.get(name, 0)
        if role != "conv":
            return Readout(
                layer=name,
                stage="raw",
                path=(),
                site=ReadSite("module", name, 0, max(calls, 1)),
                kind=role,
                reason="" if calls else "not called by the forward pass",
            )
        count = int(module.out_channels)
        raw = Readout(
            layer=name,
            stage="raw",
            path=(),
            site=ReadSite("module", name, 0, max(calls, 1)),
            channel_count=count,
        )
        if not calls:
            return replace(raw, reason="not called by the forward pass")
        if name in self.failed:
            return replace(raw, reason=self.failed[name])
        if name in self.final:
            trace, node = self.final[name]
            site = self._site(node)
            if site is not None:
                return self._from_trace(name, "activation", trace, site, "")
            lost = "the activation's output could not be located"
        else:
            lost = ""
        stage, candidates = self.fallback.get(name, ("raw", []))
        if not candidates:
            return replace(raw, reason=self.error or "the conv's output was not seen")
        after = self.ended.get(name)
        why = lost or ("no activation follows" + (f"; next: {after}" if after else ""))
        if self.error and not lost:
            why += f"; discovery error: {self.error}"
        if stage == "raw":
            return replace(raw, reason=why)
        # a module's output if one of the equivalent tensors is one (the last: channels
        # first again), else the normalisation function's own output
        found = [(t, n) for t, n in reversed(candidates) if n.modules] + candidates[:1]
        for trace, node in found:
            site = self._site(node)
            if site is not None:
                return self._from_trace(name, "norm", trace, site, why)
        return replace(raw, reason="the normalisation's output could not be located")

    @staticmethod
    def _from_trace(name: str, stage: Stage, trace: _Trace, site: ReadSite, why: str) -> Readout:
        ndim = len(trace.dims)
        restore = tuple(trace.dims.index(i) for i in range(ndim))
        return Readout(
            layer=name,
            stage=stage,
            path=trace.steps,
            site=site,
            channel_offset=trace.offset,
            channel_count=trace.count,
            permute=None if restore == tuple(range(ndim)) else restore,
            reason=why,
        )


def _runner(model: nn.Module, example_input: Any) -> tuple[Callable[[], Any], str]:
    """A function that runs the discovery forward pass, and a description of its input."""
    if callable(example_input) and not isinstance(example_input, (torch.Tensor, nn.Module)):
        return example_input, "the forward pass run by `example_input`"
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise TypeError(
            "`example_input` must be a tensor, a tuple of tensors passed to forward "
            "positionally, or a function that runs the forward pass (e.g. "
            f"`lambda: model(batch)`); got {type(example_input).__name__}"
        )
    with torch.inference_mode(False):  # tensors made here get version counters
        inputs = tuple((t[:DISCOVERY_SAMPLES] if t.dim() > 0 else t).clone() for t in items)
    shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
    return (lambda: model(*inputs)), f"`example_input` ({shapes})"


def find_readouts(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor] | Callable[[], Any],
    layers: str | Sequence[str] | None = None,
) -> dict[str, Readout]:
    """Find, by data flow, the tensor to read for each layer: after the conv's activation.

    One forward pass of the first :data:`DISCOVERY_SAMPLES` samples of ``example_input`` runs
    under :func:`~cnnviz.analysis.guard.observe` (eval mode, RNG forked, modes restored) with
    ``torch.no_grad()``. Each conv's output (first call) is followed through normalisation
    (batch/layer/group/instance norm, module or functional), dropout/identity/contiguous/clone,
    permutations, one residual ``add`` (also ``+=``) and channel concatenation (tracking the
    channel offset) up to the first activation (ReLU, ReLU6/hardtanh, LeakyReLU, PReLU, ELU,
    SELU, CELU, GELU, SiLU, Mish, Hardswish, Hardsigmoid, Softplus, Tanh, Sigmoid...; modules,
    ``F.*``, ``torch.*``, tensor methods and in-place variants). Where no activation follows,
    the maps are read after the last normalisation before any residual add (stage ``"norm"``),
    else raw. Pooling and other layers are read as they are. Every hook is removed on return.

    Args:
        model: Any ``nn.Module`` (any dtype, memory format or output type).
        example_input: A batch the model accepts (a tensor, or a tuple of tensors passed
            positionally; only its first samples are used), or a function without arguments
            that runs one forward pass of ``model`` (for models called with a dict batch:
            ``lambda: model(batch)``; keep that batch small).
        layers: Qualified module names (or one name); ``None`` for every conv and pooling layer.

    Returns:
        One :class:`Readout` per layer, in the order of ``layers`` (or of
        ``model.named_modules()``). A layer whose following failed is read raw; the readout's
        ``reason`` says why.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``example_input`` not a tensor.
        ValueError: If a layer name is unknown (the message lists the valid names) or the
            model's forward pass fails on ``example_input``.

    Example:
        >>> r = find_readouts(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> r["layer1.0.conv1"].path
        ('layer1.0.bn1', 'layer1.0.relu')
    """
    if layers is None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}")
        names = [n for n, m in model.named_modules() if _role(m) != "other"]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
    chosen = _modules_or_raise(model, names)
    run, what = _runner(model, example_input)
    if not names:
        return {}
    all_modules = dict(model.named_modules())
    convs = {n for n, m in chosen.items() if _role(m) == "conv"}
    tracker = _Discovery(all_modules, convs)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(observe(model))
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.no_grad())
            hooks = stack.enter_context(HookSet())
            for name, module in all_modules.items():
                hooks.add(  # the root's first, like ReadoutHooks' reset: counts agree
                    module.register_forward_pre_hook(
                        lambda m, a, n=name: tracker.pre_hook(n, m, a), prepend=name == ""
                    )
                )
                hooks.add(
                    module.register_forward_hook(
                        lambda m, a, o, n=name: tracker.post_hook(n, m, a, o)
                    )
                )
            stack.enter_context(tracker)
            run()
    except Exception as err:
        raise ValueError(
            f"find_readouts: the forward pass of {type(model).__name__} failed on {what}: "
            f"{type(err).__name__}: {err}. Pass a batch the model accepts (same shape, dtype "
            "and device as its training inputs)."
        ) from err
    try:
        return {n: tracker.readout(n, chosen[n]) for n in names}
    finally:
        tracker.latest.clear()
        tracker.final.clear()
        tracker.fallback.clear()


# --------------------------------------------------------------------------------- reading
def _due(site: ReadSite, count: int) -> bool:
    """Whether call ``count`` (from 0, since the model was last called) is the site's call.

    Counts wrap around every ``site.calls`` calls, so a site is still read when the forward
    passes run a submodule of the model rather than the model itself (no reset then).
    """
    return count % max(site.calls, 1) == site.index


class _SiteMode(TorchFunctionMode):
    """Counts functions by name in each forward and hands the wanted occurrences on."""

    def __init__(self, owner: ReadoutHooks, sites: dict[str, list[Readout]]) -> None:
        super().__init__()
        self.owner = owner
        self.sites = sites

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        owner = self.owner
        if owner.busy:
            return out
        key = _op_key(func)
        spots = self.sites.get(key)
        if spots is None:
            return out
        count = owner.op_counts.get(key, 0)
        owner.op_counts[key] = count + 1
        chosen = [r for r in spots if _due(r.site, count)]
        if chosen and isinstance(out, torch.Tensor):
            owner.emit(chosen, out)
        return out


class ReadoutHooks:
    """Context manager that hands each layer's read tensor to ``on_output`` in every forward.

    Module sites are read with forward hooks; a minimal :class:`~torch.overrides.TorchFunctionMode`
    (counting function calls per forward; counts reset by a forward pre-hook on ``model``) is
    entered only when some readout has a functional site. The tensor passed on is already
    sliced to the layer's channels and permuted back to ``(N, C, ...)``; it is a view that later
    in-place operations of the model may change, so reduce or copy it inside ``on_output``.

    Every hook (and the mode) is removed on exit, also when the body raises; :meth:`remove` is
    idempotent. Nothing the model owns is changed; use it inside
    :func:`~cnnviz.analysis.guard.observe` for eval mode and a forked RNG.

    Args:
        model: The model the readouts were found for (its root: call counts reset when it is
            called).
        readouts: :class:`Readout` objects, or a mapping of them (from :func:`find_readouts`).
        on_output: Called as ``on_output(layer, tensor)`` for each layer in each forward pass.

    Raises:
        TypeError: If ``on_output`` is not callable or a readout is not a :class:`Readout`.
        ValueError: If a readout names a module ``model`` does not have.

    Example:
        >>> maps = {}
        >>> with ReadoutHooks(model, readouts, lambda n, t: maps.setdefault(n, t.clone())):
        ...     model(x)
    """

    def __init__(
        self,
        model: nn.Module,
        readouts: Mapping[str, Readout] | Iterable[Readout],
        on_output: Callable[[str, torch.Tensor], Any],
    ) -> None:
        if not callable(on_output):
            raise TypeError(f"`on_output` must be callable; got {type(on_output).__name__}")
        items = list(readouts.values()) if isinstance(readouts, Mapping) else list(readouts)
        bad = [r for r in items if not isinstance(r, Readout)]
        if bad:
            raise TypeError(
                f"`readouts` must hold Readout objects (from find_readouts); got "
                f"{type(bad[0]).__name__}"
            )
        modules = dict(model.named_modules())
        missing = [r for r in items if r.site.kind == "module" and r.site.name not in modules]
        if missing:
            raise ValueError(
                f"`readouts`: {missing[0].layer} is read at module {missing[0].site.name!r}, "
                f"which {type(model).__name__} does not have; find the readouts for this model "
                "with find_readouts(model, example_input)"
            )
        self.model = model
        self.readouts = items
        self.on_output = on_output
        self.busy = False
        self.module_calls: dict[str, int] = {}
        self.op_counts: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self._modules = modules
        self._hooks = HookSet()
        self._mode: _SiteMode | None = None

    def __enter__(self) -> ReadoutHooks:
        try:
            self._install()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and leave the function mode (idempotent)."""
        try:
            self._hooks.remove()
        finally:
            mode, self._mode = self._mode, None
            if mode is not None:
                mode.__exit__(None, None, None)

    def _install(self) -> None:
        by_module: dict[str, list[Readout]] = {}
        by_function: dict[str, list[Readout]] = {}
        for r in self.readouts:
            if r.site.kind == "module":
                by_module.setdefault(r.site.name, []).append(r)
            else:
                by_function.setdefault(r.site.name, []).append(r)
        counted = False
        for name, group in by_module.items():
            count = any(r.site.calls > 1 for r in group)
            counted = counted or count
            hook = self._module_hook(name, group, count)
            self._hooks.add(self._modules[name].register_forward_hook(hook))
        if by_function or counted:
            self._hooks.add(self.model.register_forward_pre_hook(self._reset, prepend=True))
        if by_function:
            mode = _SiteMode(self, by_function)
            mode.__enter__()
            self._mode = mode

    def _reset(self, _module: nn.Module, _args: Any) -> None:
        self.module_calls.clear()
        self.op_counts.clear()

    def _module_hook(self, name: str, group: list[Readout], count: bool) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            index = 0
            if count:
                index = self.module_calls.get(name, 0)
                self.module_calls[name] = index + 1
            chosen = [r for r in group if _due(r.site, index)]
            if isinstance(output, (tuple, list)) and output:  # MaxPool2d(return_indices=True)
                output = output[0]
            if chosen and isinstance(output, torch.Tensor):
                self.emit(chosen, output)

        return hook

    def emit(self, readouts: Sequence[Readout], tensor: torch.Tensor) -> None:
        """Slice ``tensor`` for each readout and pass it to ``on_output`` (used by the hooks)."""
        self.busy = True
        try:
            for r in readouts:
                view = self._view(r, tensor)
                if view is not None:
                    self.on_output(r.layer, view)
        finally:
            self.busy = False

    def _view(self, r: Readout, tensor: torch.Tensor) -> torch.Tensor | None:
        t = tensor
        if r.permute is not None:
            if len(r.permute) != t.dim():
                self.skipped[r.layer] = f"expected {len(r.permute)} dims, got {t.dim()}"
                return None
            t = t.permute(r.permute)
        if r.channel_count is not None and t.dim() >= 2:
            stop = r.channel_offset + r.channel_count
            if stop > t.shape[1]:
                self.skipped[r.layer] = f"expected >= {stop} channels, got {t.shape[1]}"
                return None
            if r.channel_offset or stop != t.shape[1]:
                t = t.narrow(1, r.channel_offset, r.channel_count)
        return t
