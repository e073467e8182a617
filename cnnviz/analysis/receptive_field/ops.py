"""How each operation moves spatial positions: the tables the graph walk dispatches on."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import stochastic_depth

from cnnviz.analysis.receptive_field.geometry import _implied_pad, _tuple

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


def _module_desc(name: str, module: nn.Module | None) -> str:
    return f"{name!r} ({type(module).__name__})" if module is not None else repr(name)


def _node_label(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    owner = next(reversed(stack.values()))[0] if stack else ""
    return f"{owner}:{node.name}" if owner else node.name


# Resampling is modelled only where it broadcasts: a 1-wide map spread over the output.
_UPSAMPLE_MODULES = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
_UPSAMPLE_FUNCS = {F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear}
# Reshapes that keep the row-major order of elements (a reduction is not among them).
_ORDER_KEEPING = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_ORDER_KEEPING_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "unflatten"}


def _conv_pads(padding: Any, dilation: Sequence[int], kernel: Sequence[int]) -> tuple[int, ...]:
    """Left padding per axis of a convolution's ``padding`` argument (ints or a string)."""
    if isinstance(padding, str):
        # 'same': PyTorch pads d*(k-1) in total, half of it (rounded down) on the left
        return tuple(
            0 if padding == "valid" else d * (k - 1) // 2
            for d, k in zip(dilation, kernel, strict=True)
        )
    n = len(kernel)
    if isinstance(padding, (tuple, list)):
        return tuple(padding) if len(padding) == n else tuple(padding) * n
    return (padding,) * n


def _permutation(name: str, args: Sequence[Any], kwargs: dict[str, Any], rank: int) -> list[int]:
    """``perm`` with ``out.dim(i) == in.dim(perm[i])`` for transpose/permute/movedim calls."""
    perm = list(range(rank))
    if name in ("transpose", "swapaxes", "swapdims"):
        d0 = args[0] if args else kwargs.get("dim0", kwargs.get("axis0"))
        d1 = args[1] if len(args) > 1 else kwargs.get("dim1", kwargs.get("axis1"))
        d0, d1 = d0 % rank, d1 % rank
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return [int(d) % rank for d in (dims or kwargs.get("dims"))]
    # movedim
    src = args[0] if args else kwargs.get("source")
    dst = args[1] if len(args) > 1 else kwargs.get("destination")
    src = tuple(d % rank for d in (src if isinstance(src, (tuple, list)) else (src,)))
    dst = dst if isinstance(dst, (tuple, list)) else (dst,)
    perm = [-1] * rank
    for s, d in zip(src, dst, strict=True):
        perm[d % rank] = s
    rest = iter(d for d in range(rank) if d not in src)
    return [p if p >= 0 else next(rest) for p in perm]


# The forwards of PyTorch's own conv and pool classes: a subclass with another forward (timm's
# Conv2dSame, MaxPool2dSame) is traced as a leaf and its padding read from its output size.
_BASE_FORWARDS = {
    cls.forward
    for cls in (
        nn.Conv1d, nn.Conv2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
        nn.LPPool1d, nn.LPPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    )
}  # fmt: skip


def _run_time_window(
    m: nn.Module, n_in: Sequence[int], n_out: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...], list[int], tuple[int, ...], str]:
    """Kernel, stride, left padding, dilation and padding mode of a conv/pool subclass.

    The static attributes describe the window. Where the output size is what they predict,
    their padding is used; otherwise the layer padded at run time and the padding is what the
    output size implies (:func:`_implied_pad`: TensorFlow's and PyTorch's "same").
    """
    nd = len(n_in)
    d = _tuple(getattr(m, "dilation", 1), nd)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        k, mode = tuple(m.weight.shape[2:]), m.padding_mode
        static = _conv_pads(m.padding, d, k)
    else:
        k, mode = _tuple(m.kernel_size, nd), "zeros"
        static = _tuple(m.padding, nd)
    s = _tuple(m.stride or k, nd)
    ceil = bool(getattr(m, "ceil_mode", False))
    pads = []
    for a in range(nd):
        n, o = n_in[a], n_out[a]
        span = n + 2 * static[a] - d[a] * (k[a] - 1) - 1
        expected = (-(-span // s[a]) if ceil else span // s[a]) + 1
        if ceil and (expected - 1) * s[a] >= n + static[a]:
            expected -= 1  # PyTorch: the last window must start inside the input
        pads.append(static[a] if o == expected else _implied_pad(n, o, k[a], s[a], d[a]))
    return k, s, pads, d, mode
