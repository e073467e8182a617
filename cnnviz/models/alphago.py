"""The supervised-learning policy network of AlphaGo (Silver et al., 2016)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnviz.models._base import InputCheckMixin, check_choice, check_positive_int

__all__ = ["AlphaGoPolicy", "PositionBias"]

_SIZES = (19, 13, 9)


class PositionBias(nn.Module):
    """Add a learned bias per board position to a one-channel map.

    Args:
        height: Rows of the map.
        width: Columns of the map.

    Example:
        >>> PositionBias(19, 19)(torch.zeros(2, 1, 19, 19)).shape
        torch.Size([2, 1, 19, 19])
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, height, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + bias`` (bias broadcast over the batch)."""
        return x + self.bias


class AlphaGoPolicy(InputCheckMixin, nn.Module):
    """AlphaGo's SL policy network: 13 conv layers mapping board features to move logits.

    Canonical input ``(48, 19, 19)`` (48 feature planes of a 19 x 19 board)::

        features.conv1    192 x 19 x 19   192 @ 5x5, stride 1, pad 2, ReLU      230,592 params
        features.conv2..conv12            192 @ 3x3, pad 1, ReLU (11 layers)  331,968 params each
        head.conv13         1 x 19 x 19   1 @ 1x1, no bias                          192 params
        head.position_bias  1 x 19 x 19   one bias per board point                  361 params
        head.flatten      361             move logits (softmax applied by the loss)

    Total 3,882,793 parameters at the canonical configuration. ``position_bias=True``
    (default) follows the paper ("a different bias for each position"); ``False`` uses a plain
    scalar bias on ``conv13`` and no ``position_bias`` module.

    ``input_size`` is the board size: 19 (canonical), 13 or 9 (the small, CPU-friendly one);
    every layer keeps its kernel, only the spatial size and the number of logits change.

    Args:
        num_classes: Number of logits; must equal ``input_size ** 2`` (``None``: derived).
        in_channels: Input feature planes (48).
        input_size: Board size: 19, 13 or 9.
        width: Filters of conv1..conv12 (192; the paper also tried 128, 256 and 384).
        position_bias: Per-position bias after the 1x1 conv (True) or a plain conv bias.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range, or ``num_classes != input_size ** 2``.

    Example:
        >>> model = AlphaGoPolicy(input_size=9, width=32)
        >>> model(torch.zeros(2, 48, 9, 9)).shape
        torch.Size([2, 81])
    """

    def __init__(
        self,
        num_classes: int | None = None,
        in_channels: int = 48,
        input_size: int = 19,
        width: int = 192,
        position_bias: bool = True,
    ) -> None:
        super().__init__()
        owner = "alphago_policy"
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, _SIZES)
        check_positive_int(owner, "width", width)
        points = input_size * input_size
        if num_classes is not None:
            check_positive_int(owner, "num_classes", num_classes)
            if num_classes != points:
                raise ValueError(
                    f"{owner}: `num_classes` must equal input_size ** 2 = {points} (one logit per "
                    f"board point); got {num_classes}. Leave `num_classes` unset or change "
                    "`input_size`."
                )
        if not isinstance(position_bias, bool):
            raise TypeError(f"{owner}: `position_bias` must be a bool; got {position_bias!r}.")
        self.model_name = owner
        self.expected_input_shape = (in_channels, input_size, input_size)
        self.min_input_size = None
        self.supported_input_sizes = _SIZES
        self.num_classes = points

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv1"] = nn.Conv2d(in_channels, width, kernel_size=5, padding=2)
        layers["relu1"] = nn.ReLU()
        for i in range(2, 13):
            layers[f"conv{i}"] = nn.Conv2d(width, width, kernel_size=3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
        self.features = nn.Sequential(layers)
        head: OrderedDict[str, nn.Module] = OrderedDict()
        head["conv13"] = nn.Conv2d(width, 1, kernel_size=1, bias=not position_bias)
        if position_bias:
            head["position_bias"] = PositionBias(input_size, input_size)
        head["flatten"] = nn.Flatten()
        self.head = nn.Sequential(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return move logits ``(N, input_size**2)`` for board features ``(N, C, B, B)``."""
        self.check_input(x)
        return self.head(self.features(x))
