"""Layer discovery and selection: which conv and pooling layers a model has, in forward order."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "ACTIVATION_TYPES",
    "CONV_TYPES",
    "POOL_TYPES",
    "LayerInfo",
    "LayerKind",
    "activation_after",
    "list_layers",
    "resolve_module",
    "select_layers",
]

LayerKind = Literal["conv", "pool", "all"]

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)
POOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.LPPool1d,
    nn.LPPool2d,
)

_SETTINGS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "output_size",
    "ceil_mode",
    "norm_type",
)


@dataclass(frozen=True)
class LayerInfo:
    """A conv or pooling layer of a model.

    Attributes:
        name: Qualified module name (``features.0``), as in ``model.named_modules()``.
        kind: ``"conv"`` or ``"pool"``.
        type: The module's class name (``Conv2d``, ``MaxPool2d``...).
        dims: Spatial dimensions of its output: 1 for sequences, 2 for images.
        settings: Kernel size, stride, padding, channels... as plain Python values.
        order: Position in forward order (call order when known, else definition order).
    """

    name: str
    kind: str
    type: str
    dims: int
    settings: dict[str, Any] = field(default_factory=dict)
    order: int = 0

    def describe(self) -> str:
        """One line such as ``features.0  Conv2d(3→6, k=5, s=1, p=0)``."""
        s = self.settings
        if self.kind == "conv":
            inner = (
                f"{s.get('in_channels')}→{s.get('out_channels')}, k={s.get('kernel_size')}, "
                f"s={s.get('stride')}, p={s.get('padding')}"
            )
        elif "output_size" in s:
            inner = f"out={s['output_size']}"
        else:
            inner = f"k={s.get('kernel_size')}, s={s.get('stride')}, p={s.get('padding', 0)}"
        return f"{self.name}  {self.type}({inner})"


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, CONV_TYPES):
        return "conv"
    if isinstance(module, POOL_TYPES):
        return "pool"
    return None


def _dims(module: nn.Module) -> int:
    return 1 if type(module).__name__.endswith("1d") else 2


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (int, float, bool, str)) or value is None:
        return value
    return str(value)


def _forward_order(model: nn.Module, example: torch.Tensor | None) -> dict[str, int]:
    """Order of first call of each conv/pool module in one forward of ``example``."""
    if example is None:
        return {}
    from cnnviz.analysis.guard import HookSet, observe

    order: dict[str, int] = {}
    with observe(model), HookSet() as hooks, torch.no_grad():
        for name, module in model.named_modules():
            if _kind(module) is None:
                continue

            def hook(_m: nn.Module, _i: Any, _o: Any, name: str = name) -> None:
                order.setdefault(name, len(order))

            hooks.add(module.register_forward_hook(hook))
        model(example)
    return order


def list_layers(
    model: nn.Module,
    kind: LayerKind = "all",
    *,
    example_input: torch.Tensor | None = None,
) -> list[LayerInfo]:
    """List the conv (1-D, 2-D) and pooling layers of ``model`` in forward order.

    Without ``example_input`` the order is the definition order of ``named_modules()``, which is
    the forward order for sequential models. With it, one guarded forward pass (eval mode, RNG
    forked, hooks removed) gives the true call order; layers not called come last.

    Args:
        model: Any ``nn.Module``.
        kind: ``"conv"``, ``"pool"`` or ``"all"``.
        example_input: Optional input batch used to determine the call order.

    Returns:
        One :class:`LayerInfo` per layer.

    Raises:
        ValueError: If ``kind`` is not one of the three choices.

    Example:
        >>> [layer.name for layer in list_layers(model, "conv")]
        ['features.0', 'features.3']
    """
    if kind not in ("conv", "pool", "all"):
        raise ValueError(f"`kind` must be 'conv', 'pool' or 'all'; got {kind!r}")
    found = []
    for index, (name, module) in enumerate(model.named_modules()):
        k = _kind(module)
        if k is None or (kind != "all" and k != kind):
            continue
        settings = {a: _plain(getattr(module, a)) for a in _SETTINGS if hasattr(module, a)}
        found.append((index, name, k, module, settings))
    order = _forward_order(model, example_input)
    big = len(order) + len(found)
    found.sort(key=lambda t: order.get(t[1], big + t[0]) if order else t[0])
    return [
        LayerInfo(name=n, kind=k, type=type(m).__name__, dims=_dims(m), settings=s, order=i)
        for i, (_, n, k, m, s) in enumerate(found)
    ]


def select_layers(
    model: nn.Module,
    layers: str | Sequence[str] | None = None,
    kind: LayerKind = "all",
    *,
    owner: str = "cnnviz",
    example_input: torch.Tensor | None = None,
) -> list[LayerInfo]:
    """Select conv/pool layers by kind and by names or glob patterns.

    Args:
        model: The model to search.
        layers: ``None`` for every layer of ``kind``; else a name or glob pattern
            (``"features.*"``), or a list of them. Each name or pattern must match at least one
            layer of ``kind``.
        kind: ``"conv"``, ``"pool"`` or ``"all"``.
        owner: Name used in error messages (the callback's class name).
        example_input: Passed to :func:`list_layers` for the forward order.

    Returns:
        The selected layers, in forward order, without duplicates.

    Raises:
        ValueError: If the model has no layer of ``kind`` or a name/pattern matches nothing; the
            message lists the valid names.
    """
    available = list_layers(model, kind, example_input=example_input)
    what = {"conv": "conv", "pool": "pooling", "all": "conv or pooling"}[kind]
    if not available:
        raise ValueError(
            f"{owner}: the model ({type(model).__name__}) has no {what} layer to watch; "
            "cnnviz watches nn.Conv1d/nn.Conv2d and pooling layers"
        )
    if layers is None:
        return available
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{owner}: `layers` must be a name, a glob pattern or a list of them")
    names = [info.name for info in available]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = (
            fnmatch.filter(names, pattern)
            if any(c in pattern for c in "*?[")
            else ([pattern] if pattern in names else [])
        )
        if not hits:
            raise ValueError(
                f"{owner}: unknown layer {pattern!r}; {what} layers are: {', '.join(names)}"
            )
        chosen.update(hits)
    return [info for info in available if info.name in chosen]


def resolve_module(root: nn.Module, name: str | None, *, argument: str = "module") -> nn.Module:
    """Return the submodule ``name`` of ``root`` (``root`` itself for ``None`` or ``""``).

    Raises:
        ValueError: If there is no such submodule; lists the top-level children.
    """
    if not name:
        return root
    try:
        return root.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in root.named_children()]
        raise ValueError(
            f"`{argument}`: {type(root).__name__} has no submodule {name!r}; "
            f"its children are: {', '.join(children) or '(none)'}"
        ) from None


ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Tanh,
    nn.Sigmoid,
)
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
)


def activation_after(model: nn.Module, name: str) -> str | None:
    """Name of the activation module that directly follows layer ``name``, if one does.

    Looks only where the order is certain: the next siblings in the same ``nn.Sequential``
    (skipping normalisation layers). ``features.0`` followed by ``features.1 = ReLU`` gives
    ``"features.1"``. Returns ``None`` otherwise (the layer's own output is then used).
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential):
        return None
    keys = list(parent._modules.keys())
    if child not in keys:
        return None
    for key in keys[keys.index(child) + 1 :]:
        sibling = parent._modules[key]
        if isinstance(sibling, _NORM_TYPES):
            continue
        if isinstance(sibling, ACTIVATION_TYPES):
            return f"{parent_name}.{key}" if parent_name else key
        return None
    return None


def iter_modules(model: nn.Module, infos: Iterable[LayerInfo]) -> list[tuple[str, nn.Module]]:
    """Pair each :class:`LayerInfo` with its module."""
    return [(info.name, model.get_submodule(info.name)) for info in infos]
