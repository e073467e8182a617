"""VGG-16 (Simonyan and Zisserman, 2014), configuration D."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnviz.models._base import (
    InputCheckMixin,
    check_choice,
    check_positive_float,
    check_positive_int,
    check_probability,
)

__all__ = ["VGG16"]

# Filters per 3x3 conv in each of the five blocks; every block ends with a 2x2/2 max pool.
_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
_SIZES = (224, 64, 32)


class VGG16(InputCheckMixin, nn.Module):
    """VGG-16: only 3x3 convs (stride 1, pad 1) and 2x2 max pools (stride 2), then three FCs.

    Canonical input ``(3, 224, 224)``; with 1000 classes it has exactly 138,357,544 parameters.
    Weights per layer (biases excluded)::

        block 1  conv1_1 224x224x64    1,728    conv1_2 224x224x64   36,864   pool1 -> 112
        block 2  conv2_1 112x112x128  73,728    conv2_2             147,456   pool2 -> 56
        block 3  conv3_1 56x56x256   294,912    conv3_2/3_3 589,824 each      pool3 -> 28
        block 4  conv4_1 28x28x512 1,179,648    conv4_2/4_3 2,359,296 each    pool4 -> 14
        block 5  conv5_1..5_3 14x14x512 2,359,296 each                        pool5 -> 7
        fc6 7*7*512 -> 4096   102,760,448
        fc7 4096 -> 4096       16,777,216
        fc8 4096 -> 1000        4,096,000

    Module names: ``features.conv{b}_{i}``, ``features.relu{b}_{i}``, ``features.pool{b}``,
    ``classifier.fc6`` ... ``classifier.fc8`` (ReLU and dropout after fc6 and fc7).
    Initialisation as torchvision's VGG: Kaiming-normal convs, N(0, 0.01) linear, zero biases.

    Small-input variants keep all 13 convs and 5 pools unchanged (so every conv has the same
    weight count); only the input of fc6 and the FC width change:

    * ``input_size=64``: pool5 gives 512 x 2 x 2, so fc6 has 2048 inputs; ``fc_width`` = 512.
    * ``input_size=32``: pool5 gives 512 x 1 x 1, so fc6 has 512 inputs; ``fc_width`` = 512.

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32.
        fc_width: Units of fc6 and fc7; ``None`` means 4096 at 224 px and 512 for small inputs.
        width_mult: Multiplies the filters of every conv (1.0 = the paper's widths).
        dropout: Dropout probability after fc6 and fc7 (0.5).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> model = VGG16(num_classes=10, input_size=32)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int = 224,
        fc_width: int | None = None,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        owner = "vgg16"
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, _SIZES)
        if fc_width is None:
            fc_width = 4096 if input_size == _SIZES[0] else 512
        check_positive_int(owner, "fc_width", fc_width)
        check_positive_float(owner, "width_mult", width_mult)
        check_probability(owner, "dropout", dropout)
        self.model_name = owner
        self.expected_input_shape = (in_channels, input_size, input_size)
        self.min_input_size = None
        self.supported_input_sizes = _SIZES

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for b, block in enumerate(_BLOCKS, start=1):
            for i, width in enumerate(block, start=1):
                out = max(1, round(width * width_mult))
                layers[f"conv{b}_{i}"] = nn.Conv2d(channels, out, kernel_size=3, padding=1)
                layers[f"relu{b}_{i}"] = nn.ReLU()
                channels = out
            layers[f"pool{b}"] = nn.MaxPool2d(kernel_size=2, stride=2)
        self.features = nn.Sequential(layers)
        grid = input_size // 2 ** len(_BLOCKS)
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc6=nn.Linear(channels * grid * grid, fc_width),
                relu6=nn.ReLU(),
                drop6=nn.Dropout(dropout),
                fc7=nn.Linear(fc_width, fc_width),
                relu7=nn.ReLU(),
                drop7=nn.Dropout(dropout),
                fc8=nn.Linear(fc_width, num_classes),
            )
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, C, H, W)``."""
        self.check_input(x)
        return self.classifier(self.features(x))
