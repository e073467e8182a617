"""Name -> constructor registry of the lecture's case-study models."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from cnnviz.models.alexnet import AlexNet
from cnnviz.models.alphago import AlphaGoPolicy
from cnnviz.models.convnetjs import ConvNetJSCifar10
from cnnviz.models.googlenet import GoogLeNet
from cnnviz.models.kim_cnn import KimCNN
from cnnviz.models.lenet import LeNet5
from cnnviz.models.resnet import resnet18, resnet34, resnet50, resnet101, resnet152
from cnnviz.models.vgg import VGG16
from cnnviz.models.zfnet import ZFNet

__all__ = ["ModelSpec", "available", "create", "spec"]

Task = Literal["image", "go", "text"]


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model expects and produces.

    Attributes:
        name: Registry name, e.g. ``"alexnet"``.
        description: One line: the model and its source.
        task: ``"image"`` (N, C, H, W) float images, ``"go"`` (N, planes, B, B) board features
            with ``B * B`` move logits, or ``"text"`` (N, L) integer token ids.
        input_shape: Canonical input shape without the batch dimension, e.g. ``(3, 227, 227)``
            or ``(64,)`` for text.
        input_sizes: The ``input_size`` values the constructor accepts, canonical first (height
            = width for images and boards; sequence length for text).
        num_classes: Default number of output logits.
        in_channels: Default input channels/planes; ``None`` for text.
        small_input_size: The ``input_size`` to use for quick CPU training.
        small_variant: What changes in the model at ``small_input_size``.
    """

    name: str
    description: str
    task: Task
    input_shape: tuple[int, ...]
    input_sizes: tuple[int, ...]
    num_classes: int
    in_channels: int | None
    small_input_size: int
    small_variant: str

    def input_shape_at(self, input_size: int, in_channels: int | None = None) -> tuple[int, ...]:
        """Return the input shape (without batch) of the model built with ``input_size``.

        Args:
            input_size: One of :attr:`input_sizes`.
            in_channels: Channels the model is built with (default :attr:`in_channels`);
                ignored for text.

        Returns:
            ``(C, S, S)`` for images and boards, ``(S,)`` for text.

        Raises:
            ValueError: If ``input_size`` is not one of :attr:`input_sizes`.

        Example:
            >>> spec("resnet18").input_shape_at(64)
            (3, 64, 64)
        """
        if input_size not in self.input_sizes:
            sizes = ", ".join(str(s) for s in self.input_sizes)
            raise ValueError(
                f"{self.name}: `input_size` must be one of {sizes}; got {input_size!r}."
            )
        if self.task == "text":
            return (input_size,)
        channels = self.in_channels if in_channels is None else in_channels
        return (channels, input_size, input_size)


_STEM_NOTE = (
    "conv1 becomes a 3x3 conv, pad 1, stride input_size // 32 (1 at 32 px, 2 at 64 px); all "
    "other layers unchanged"
)

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelSpec]] = {}


def _register(
    constructor: Callable[..., nn.Module],
    name: str,
    description: str,
    task: Task,
    input_sizes: tuple[int, ...],
    num_classes: int,
    in_channels: int | None,
    small_input_size: int,
    small_variant: str,
) -> None:
    canonical = input_sizes[0]
    shape = (canonical,) if in_channels is None else (in_channels, canonical, canonical)
    _REGISTRY[name] = (
        constructor,
        ModelSpec(
            name=name,
            description=description,
            task=task,
            input_shape=shape,
            input_sizes=input_sizes,
            num_classes=num_classes,
            in_channels=in_channels,
            small_input_size=small_input_size,
            small_variant=small_variant,
        ),
    )


_register(
    LeNet5,
    "lenet5",
    "LeNet-5 (LeCun et al. 1998): 2 conv + 2 pool + C5 + 2 FC, 61,706 parameters",
    "image",
    (32, 28),
    10,
    1,
    32,
    "none: the canonical model is already small (input_size=28 pads C1 by 2 instead)",
)
_register(
    AlexNet,
    "alexnet",
    "AlexNet (Krizhevsky et al. 2012) as on the lecture slide: 227 px, 62,378,344 parameters",
    "image",
    (227, 64, 32),
    1000,
    3,
    32,
    "conv1 96@5x5 stride 1 pad 2 (stride 2 at 64 px); pool3 gives 256x3x3; fc_width 512",
)
_register(
    ZFNet,
    "zfnet",
    "ZFNet (Zeiler & Fergus 2013): AlexNet with conv1 7x7/2 and 512/1024/512 conv3-5 filters",
    "image",
    (224, 64, 32),
    1000,
    3,
    32,
    "conv1 96@3x3 stride 1 pad 1 (5x5 stride 2 pad 2 at 64 px); conv2 pad 2; pools pad 1; "
    "pool3 gives 512x2x2; fc_width 512",
)
_register(
    VGG16,
    "vgg16",
    "VGG-16 (Simonyan & Zisserman 2014): 13 3x3 convs, 5 max pools, 3 FC; 138,357,544 params",
    "image",
    (224, 64, 32),
    1000,
    3,
    32,
    "convs and pools unchanged; pool5 gives 512x1x1 (512x2x2 at 64 px); fc_width 512",
)
_register(
    GoogLeNet,
    "googlenet",
    "GoogLeNet / Inception v1 (Szegedy et al. 2014), torchvision's, no auxiliary classifiers",
    "image",
    (224, 64, 32),
    1000,
    3,
    32,
    _STEM_NOTE,
)
for _name, _fn, _text in (
    ("resnet18", resnet18, "ResNet-18"),
    ("resnet34", resnet34, "ResNet-34"),
    ("resnet50", resnet50, "ResNet-50"),
    ("resnet101", resnet101, "ResNet-101"),
    ("resnet152", resnet152, "ResNet-152"),
):
    _register(
        _fn,
        _name,
        f"{_text} (He et al. 2015), torchvision's layout",
        "image",
        (224, 64, 32),
        1000,
        3,
        32,
        _STEM_NOTE,
    )
_register(
    ConvNetJSCifar10,
    "convnetjs_cifar10",
    "ConvNetJS CIFAR-10 demo net: 3x (conv 5x5 + ReLU + pool 2) + FC, 22,466 parameters",
    "image",
    (32, 64),
    10,
    3,
    32,
    "none: the canonical model is already small",
)
_register(
    AlphaGoPolicy,
    "alphago_policy",
    "AlphaGo SL policy network (Silver et al. 2016): 13 conv layers, 361 move logits",
    "go",
    (19, 13, 9),
    361,
    48,
    9,
    "9 x 9 board: same layers, 81 move logits (pass width=... to narrow the 192 filters)",
)
_register(
    KimCNN,
    "kim_cnn",
    "Kim (2014) sentence CNN: embedding, 1-D convs of widths 3/4/5, max-over-time, dropout",
    "text",
    (64, 32, 128, 256),
    2,
    None,
    32,
    "sequence length 32: same layers (max-over-time pooling accepts any length >= 5)",
)
del _name, _fn, _text


def available() -> list[str]:
    """Return the registered model names, in the lecture's order.

    Example:
        >>> available()[:3]
        ['lenet5', 'alexnet', 'zfnet']
    """
    return list(_REGISTRY)


def _lookup(name: Any) -> tuple[Callable[..., nn.Module], ModelSpec]:
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str; got {type(name).__name__} {name!r}.")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name.lower(), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown model `name` {name!r}.{hint} Available models: {', '.join(_REGISTRY)}."
        )
    return _REGISTRY[name]


def spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` of the model registered as ``name``.

    Args:
        name: One of :func:`available`.

    Returns:
        The model's spec (canonical input shape, supported sizes, defaults).

    Raises:
        TypeError: If ``name`` is not a string.
        ValueError: If ``name`` is not registered; the message lists the available names.

    Example:
        >>> spec("alexnet").input_shape
        (3, 227, 227)
    """
    return _lookup(name)[1]


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with fresh (random) weights.

    Args:
        name: One of :func:`available`.
        **kwargs: Constructor arguments. Every image model accepts ``num_classes``,
            ``in_channels`` and ``input_size``; see each model's docstring for the others
            (e.g. ``fc_width``, ``width_mult``, ``width``, ``vocab_size``, ``embed_dim``).

    Returns:
        The model, an ``nn.Module`` with an ``expected_input_shape`` attribute.

    Raises:
        TypeError: If ``name`` is not a string, an argument is not accepted by the model (the
            message lists the accepted ones) or has the wrong type.
        ValueError: If ``name`` is not registered (the message lists the available names) or
            an argument value is invalid.

    Example:
        >>> model = create("resnet18", num_classes=10, input_size=64)
        >>> model.expected_input_shape
        (3, 64, 64)
    """
    constructor, _ = _lookup(name)
    accepted = list(inspect.signature(constructor).parameters)
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise TypeError(
                f"create({name!r}): unknown argument `{key}`.{hint} Arguments accepted by "
                f"{name}: {', '.join(accepted)}."
            )
    return constructor(**kwargs)
