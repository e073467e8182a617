"""ResNet-18/34/50/101/152 (He et al., 2015), built on torchvision's implementation."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck

from cnnviz.models._base import InputCheckMixin, check_choice, check_positive_int

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

_SIZES = (224, 64, 32)
_CONFIGS: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


class ResNet(InputCheckMixin, tvm.ResNet):
    """A torchvision ``ResNet`` with a checked input and an optional small-input stem.

    At the canonical configuration (3 channels, 224 px, 1000 classes) the module is exactly
    ``torchvision.models.resnet{depth}(weights=None)`` (same modules, same parameter count).
    Module names are torchvision's: ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ..
    ``layer4``, ``avgpool``, ``fc``.

    The network ends with global average pooling, so the input check only requires the channel
    count and a minimum height/width: 32 px for the canonical stem (which therefore also runs
    64 x 64 inputs: layer4 is then 2 x 2).

    Small-input variants replace only ``conv1`` (7x7, stride 2, pad 3) with a 3x3 conv, pad 1,
    stride ``input_size // 32``; the max pool and all residual stages are unchanged, so layer1
    runs at 16 x 16, layer2 at 8 x 8, layer3 at 4 x 4 and layer4 at 2 x 2:

    * ``input_size=64``: conv1 3x3 stride 2 (accepts H, W >= 32);
    * ``input_size=32``: conv1 3x3 stride 1 (accepts H, W >= 16).

    ``in_channels != 3`` also replaces ``conv1`` (same kernel, new input width).

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32; selects the stem.
        zero_init_residual: Zero-initialise the last BatchNorm of each residual branch
            (torchvision's option).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or not supported.

    Example:
        >>> model = ResNet(18, num_classes=10, input_size=64)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int = 224,
        zero_init_residual: bool = False,
    ) -> None:
        owner = f"resnet{depth}" if depth in _CONFIGS else "resnet"
        check_choice(owner, "depth", depth, tuple(_CONFIGS))
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, _SIZES)
        if not isinstance(zero_init_residual, bool):
            raise TypeError(
                f"{owner}: `zero_init_residual` must be a bool; got {zero_init_residual!r}."
            )
        block, layers = _CONFIGS[depth]
        super().__init__(
            block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual
        )
        self.model_name = owner
        self.depth = depth
        self.expected_input_shape = (in_channels, input_size, input_size)
        self.supported_input_sizes = _SIZES
        if input_size == _SIZES[0]:
            self.min_input_size = 32
            if in_channels == 3:
                return
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            stride = input_size // 32
            self.min_input_size = 16 * stride
            self.conv1 = nn.Conv2d(
                in_channels, 64, kernel_size=3, stride=stride, padding=1, bias=False
            )
        # Same initialisation torchvision applies to its convs.
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, C, H, W)``."""
        self.check_input(x)
        return super().forward(x)


def resnet18(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build ResNet-18 (torchvision's layout; see :class:`ResNet` for the variants).

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32 (3x3 stem, see :class:`ResNet`).
        zero_init_residual: Zero-initialise the last BatchNorm of each residual branch.

    Returns:
        A :class:`ResNet` with ``depth=18``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> resnet18(num_classes=10, input_size=32)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet(18, num_classes, in_channels, input_size, zero_init_residual)


def resnet34(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build ResNet-34 (torchvision's layout; see :class:`ResNet` for the variants).

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32 (3x3 stem, see :class:`ResNet`).
        zero_init_residual: Zero-initialise the last BatchNorm of each residual branch.

    Returns:
        A :class:`ResNet` with ``depth=34``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> resnet34(num_classes=10, input_size=32)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet(34, num_classes, in_channels, input_size, zero_init_residual)


def resnet50(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build ResNet-50 (torchvision's layout; see :class:`ResNet` for the variants).

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32 (3x3 stem, see :class:`ResNet`).
        zero_init_residual: Zero-initialise the last BatchNorm of each residual branch.

    Returns:
        A :class:`ResNet` with ``depth=50``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> resnet50(num_classes=10, input_size=32)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet(50, num_classes, in_channels, input_size, zero_init_residual)


def resnet101(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build ResNet-101 (torchvision's layout; see :class:`ResNet` for the variants).

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32 (3x3 stem, see :class:`ResNet`).
        zero_init_residual: Zero-initialise the last BatchNorm of each residual branch.

    Returns:
        A :class:`ResNet` with ``depth=101``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> resnet101(num_classes=10, input_size=32)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet(101, num_classes, in_channels, input_size, zero_init_residual)


def resnet152(
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int = 224,
    zero_init_residual: bool = False,
) -> ResNet:
    """Build ResNet-152 (torchvision's layout; see :class:`ResNet` for the variants).

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32 (3x3 stem, see :class:`ResNet`).
        zero_init_residual: Zero-initialise the last BatchNorm of each residual branch.

    Returns:
        A :class:`ResNet` with ``depth=152``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> resnet152(num_classes=10, input_size=32)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    return ResNet(152, num_classes, in_channels, input_size, zero_init_residual)
