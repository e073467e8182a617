"""GoogLeNet / Inception v1 (Szegedy et al., 2014), built on torchvision's implementation."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.googlenet import BasicConv2d

from cnnviz.models._base import (
    InputCheckMixin,
    check_choice,
    check_positive_int,
    check_probability,
)

__all__ = ["GoogLeNet"]

_SIZES = (224, 64, 32)


class GoogLeNet(InputCheckMixin, tvm.GoogLeNet):
    """GoogLeNet (Inception v1): torchvision's module without auxiliary classifiers.

    Built as ``torchvision.models.GoogLeNet(aux_logits=False, transform_input=False,
    init_weights=True)`` with ``weights=None``, so at the canonical configuration (3 channels,
    224 px, 1000 classes) the parameter count equals torchvision's ``googlenet(weights=None,
    aux_logits=False, init_weights=True)`` (6,624,904). ``forward`` always returns a plain logits
    tensor. Module names are torchvision's: ``conv1``, ``maxpool1``, ``conv2``, ``conv3``,
    ``maxpool2``, ``inception3a`` ... ``inception5b``, ``avgpool``, ``dropout``, ``fc``.

    The network ends with global average pooling, so the input check only requires the channel
    count and a minimum height/width: 32 px for the canonical stem (224 -> 7 x 7 before the
    average pool; 32 -> 1 x 1).

    Small-input variants replace only ``conv1`` (7x7, stride 2, pad 3) with a 3x3 conv, pad 1,
    stride ``input_size // 32``, so conv1 outputs 32 x 32 and inception3 runs at 8 x 8,
    inception4 at 4 x 4, inception5 at 2 x 2; every other layer is unchanged:

    * ``input_size=64``: conv1 3x3 stride 2 (accepts H, W >= 32);
    * ``input_size=32``: conv1 3x3 stride 1 (accepts H, W >= 16).

    ``in_channels != 3`` also replaces ``conv1`` (same kernel, new input width).

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32; selects the stem.
        dropout: Dropout probability before ``fc`` (0.2, torchvision's default).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> model = GoogLeNet(num_classes=10, input_size=32)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int = 224,
        dropout: float = 0.2,
    ) -> None:
        owner = "googlenet"
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, _SIZES)
        check_probability(owner, "dropout", dropout)
        super().__init__(
            num_classes=num_classes,
            aux_logits=False,
            transform_input=False,
            init_weights=True,
            dropout=dropout,
        )
        self.model_name = owner
        self.expected_input_shape = (in_channels, input_size, input_size)
        self.supported_input_sizes = _SIZES
        if input_size == _SIZES[0]:
            self.min_input_size = 32
            if in_channels == 3:
                return
            self.conv1 = BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
        else:
            stride = input_size // 32
            self.min_input_size = 16 * stride
            self.conv1 = BasicConv2d(in_channels, 64, kernel_size=3, stride=stride, padding=1)
        # Same initialisation torchvision applies with init_weights=True.
        nn.init.trunc_normal_(self.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Return logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, C, H, W)``."""
        self.check_input(x)
        return super().forward(x)
