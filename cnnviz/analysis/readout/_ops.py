"""The op and module tables that discovery follows a conv's output through.

Torch functions are classified by name (activations, normalisations, ops that pass a tensor on,
residual adds, concatenations, permutations); modules by class (and, for other libraries'
activations, by class name). Also the small tensor and module predicates built on them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cnnviz.analysis.layers import ACTIVATION_TYPES

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


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor._version)
    except RuntimeError:  # inference tensors have no version counter
        return None
