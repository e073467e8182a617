"""An independent measurement: the input-gradient support of a linearised model."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz.analysis.guard import HookSet, model_devices, observe
from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES
from cnnviz.analysis.receptive_field.geometry import ReceptiveFieldError, _tuple
from cnnviz.analysis.receptive_field.graph import _check_input_size

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

    A product or quotient of two values that both depend on the input (a gate times the map
    it gates) becomes their mean ``(a + b) / 2``: the gradient of ``a * b`` with positive
    factors is ``b da + a db``, so the support is the same, but magnitudes no longer square
    at every gate (a squeeze-and-excitation network would overflow even ``float64``).
    Constant padding pads zeros (timm's max pools pad ``-inf``).

    With ``local`` every global-context path is cut by replacing its start with a constant
    (ones): adaptive or ordinary pools whose output is 1 wide on every spatial axis, means,
    sums, maxima... over all spatial axes (dims ``2..`` of an ``(N, C, ...)`` tensor), and
    reshapes that merge the spatial axes (the positions of an attention block). Gradients then
    flow along local paths only, which measures :attr:`ReceptiveField.local`.
    """

    def __init__(self, slim: bool, local: bool = False) -> None:
        super().__init__()
        self.slim = slim
        self.local = local

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = self._linear(func, args, kwargs)
        if self.local and _global_path(func, args, kwargs, out):
            # a constant of ones, not out.detach(): the gate it feeds stays near 1 instead of
            # squaring the map's magnitude at every block
            return torch.ones_like(out, requires_grad=False)
        return out

    def _linear(self, func: Any, args: tuple[Any, ...], kwargs: dict) -> Any:
        if func in _PRODUCTS:
            a = _bind(args, kwargs, ("input", "other"))
            x, y = a["input"], a.get("other")
            if _varies(x) and _varies(y):
                mean = (x + y) / 2
                return x.copy_(mean) if func in _IN_PLACE else mean
        if func is F.pad:
            a = _bind(args, kwargs, ("input", "pad", "mode", "value"))
            if a.get("mode", "constant") == "constant":
                return F.pad(a["input"], a["pad"])
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


def _varies(value: Any) -> bool:
    """A tensor that depends on the measured input (parameters are frozen meanwhile)."""
    return isinstance(value, torch.Tensor) and value.requires_grad


_IN_PLACE = {torch.Tensor.mul_, torch.Tensor.div_}
_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.div, torch.Tensor.div, torch.true_divide}
_PRODUCTS |= _IN_PLACE
_SPATIAL_POOLS = {F.avg_pool1d, F.avg_pool2d, F.max_pool1d, F.max_pool2d, F.lp_pool1d}
_SPATIAL_POOLS |= {F.lp_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
_SPATIAL_POOLS |= {F.adaptive_max_pool1d, F.adaptive_max_pool2d}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var}
_REDUCTIONS |= {torch.logsumexp, torch.Tensor.mean, torch.Tensor.sum, torch.Tensor.amax}
_REDUCTIONS |= {torch.Tensor.amin, torch.Tensor.std, torch.Tensor.var, torch.Tensor.logsumexp}
_RESHAPES = {torch.flatten, torch.reshape, torch.Tensor.flatten, torch.Tensor.reshape}
_RESHAPES |= {torch.Tensor.view}


def _global_path(func: Any, args: tuple[Any, ...], kwargs: dict, out: Any) -> bool:
    """Whether ``func`` starts a global-context path from an ``(N, C, ...)`` tensor.

    That is: it reduces over all spatial axes, pools them to size 1, or merges them into one
    axis (``x.flatten(2)`` before attention over all positions).
    """
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor) or x.dim() < 3:
        return False
    if all(n == 1 for n in x.shape[2:]):
        return False
    if func in _SPATIAL_POOLS:
        return out.dim() == x.dim() and all(n == 1 for n in out.shape[2:])
    if func in _REDUCTIONS:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is None:
            return True
        dims = {int(d) % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        return set(range(2, x.dim())) <= dims
    if func in _RESHAPES:  # positions merged into one axis: attention over all positions
        k = x.dim() - 2
        return out.dim() < k or tuple(out.shape[-k:]) != tuple(x.shape[2:])
    return False


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
    local: bool = False,
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
        local: Cut global-context paths (global spatial reductions and reshapes that merge
            the spatial axes become constants) to measure the local field,
            :attr:`ReceptiveField.local`. A layer that only sees pooled values then has a zero
            gradient (a ``ValueError``).

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
        return _measure(model, names, size, units, dtype, _Linearise(slim=True, local=local))
    except RuntimeError:
        # Some op needs the real channel counts (a channel shuffle...): measure at full width.
        return _measure(model, names, size, units, dtype, _Linearise(slim=False, local=local))


def _measure(
    model: nn.Module,
    names: list[str],
    size: tuple[int, ...],
    units: dict[str, Sequence[int]],
    dtype: torch.dtype,
    mode: _Linearise,
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
        with contextlib.suppress(_Stop), mode:
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
            "trusted; this happens when values are raised to powers or exponentiated along the "
            "way. Measure a smaller input or compare analytically only."
        )
    results: dict[str, MeasuredReceptiveField] = {}
    for row, name in enumerate(names):
        g = grad[row].abs()
        g = g.sum(dim=-1) if tokens else g.sum(dim=0)
        box = _support(g)
        if box is None:
            cut = " along local paths (it sees only pooled values)" if mode.local else ""
            raise ValueError(
                f"`layer_names`: unit {chosen[row]} of layer {name!r} does not depend on the "
                f"input{cut} (zero gradient); choose another unit"
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
    local: bool = False,
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
    sizes. Products of two input-dependent values (gates) become their mean, which has the same
    gradient support without squaring magnitudes; an overflow is still detected and reported.

    What it measures is the *full* field: after a squeeze-and-excitation gate the gradient
    reaches every input pixel through the global pool, as the analytical
    :attr:`ReceptiveField.size` says. With ``local=True`` the global-context paths are cut
    (global spatial reductions and reshapes that merge the spatial axes become constants), which
    measures :attr:`ReceptiveField.local` instead; this assumes ``(N, C, ...)`` tensors.

    Args:
        model: The model (not modified).
        layer_name: Qualified name of the layer.
        input_size: ``(C, H, W)``, ``(C, L)`` or ``(L,)`` for token ids.
        unit: The unit to measure; default the centre unit ``(n - 1) // 2`` per axis.
        dtype: Floating type of the run (``float64`` avoids underflow in very deep nets).
        local: Measure the local field (global-context paths cut).

    Returns:
        ``(size_h, size_w, region)`` with ``region = (top, bottom, left, right)`` half-open;
        1-D inputs are measured as a ``1 x L`` image.

    Raises:
        ValueError: If the layer is unknown (lists the conv/pool layers), the unit is invalid
            or sees only padding (zero gradient).
        ReceptiveFieldError: If the linearised run overflows.

    Example:
        >>> measure_receptive_field(torchvision.models.vgg16(), "features.28", (3, 224, 224))
        MeasuredReceptiveField(size_h=196, size_w=196, region=(6, 202, 6, 202))
    """
    units = {layer_name: tuple(unit)} if unit is not None else None
    measured = measure_receptive_fields(
        model, [layer_name], input_size, units=units, dtype=dtype, local=local
    )
    return measured[layer_name]
