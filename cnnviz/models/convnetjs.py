"""The small CIFAR-10 network of Andrej Karpathy's ConvNetJS browser demo."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnviz.models._base import InputCheckMixin, check_choice, check_positive_int

__all__ = ["ConvNetJSCifar10"]

_SIZES = (32, 64)


class ConvNetJSCifar10(InputCheckMixin, nn.Module):
    """The ConvNetJS CIFAR-10 demo network: three conv/ReLU/pool stages and one FC layer.

    Canonical input ``(3, 32, 32)``; with 10 classes exactly 22,466 parameters::

        input               3 x 32 x 32
        features.conv1     16 x 32 x 32   16 @ 5x5, stride 1, pad 2    1,216 params
        features.pool1     16 x 16 x 16   max 2x2, stride 2
        features.conv2     20 x 16 x 16   20 @ 5x5, pad 2              8,020 params
        features.pool2     20 x  8 x  8
        features.conv3     20 x  8 x  8   20 @ 5x5, pad 2             10,020 params
        features.pool3     20 x  4 x  4
        classifier.fc      10             fully connected (320 -> 10)  3,210 params

    ReLU (``features.relu1``..``relu3``) follows each conv. The demo's softmax is applied by the
    loss, so ``forward`` returns logits. ``input_size=64`` keeps every layer and only widens
    the FC input to 20 x 8 x 8 = 1280.

    Args:
        num_classes: Number of output logits (10).
        in_channels: Input channels (3).
        input_size: 32 (canonical, default) or 64.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> model = ConvNetJSCifar10()
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        owner = "convnetjs_cifar10"
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, _SIZES)
        self.model_name = owner
        self.expected_input_shape = (in_channels, input_size, input_size)
        self.min_input_size = None
        self.supported_input_sizes = _SIZES
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 16, kernel_size=5, padding=2),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(kernel_size=2, stride=2),
                conv2=nn.Conv2d(16, 20, kernel_size=5, padding=2),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(kernel_size=2, stride=2),
                conv3=nn.Conv2d(20, 20, kernel_size=5, padding=2),
                relu3=nn.ReLU(),
                pool3=nn.MaxPool2d(kernel_size=2, stride=2),
            )
        )
        grid = input_size // 8
        self.classifier = nn.Sequential(
            OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(20 * grid * grid, num_classes))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, C, H, W)``."""
        self.check_input(x)
        return self.classifier(self.features(x))
