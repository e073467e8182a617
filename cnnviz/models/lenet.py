"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cnnviz.models._base import InputCheckMixin, check_choice, check_positive_int

__all__ = ["LeNet5"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
_POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(InputCheckMixin, nn.Module):
    """LeNet-5 as in LeCun et al. (1998), with a fully connected C3.

    Canonical input ``(1, 32, 32)``. Layer shapes (channels x height x width)::

        input            1 x 32 x 32
        features.c1      6 x 28 x 28   conv 6 @ 5x5, stride 1        156 params
        features.s2      6 x 14 x 14   pool 2x2, stride 2
        features.c3     16 x 10 x 10   conv 16 @ 5x5 (all 6 inputs) 2,416 params
        features.s4     16 x  5 x  5   pool 2x2, stride 2
        features.c5    120 x  1 x  1   conv 120 @ 5x5             48,120 params
        classifier.f6   84             fully connected            10,164 params
        classifier.output 10           fully connected               850 params
                                                          total  61,706 params

    Differences from the paper, all parameter-free so the total stays 61,706: C3 connects every
    S2 map (the paper used a sparse table of 60 connections); S2/S4 are plain average pooling
    (``pooling="avg"``, default; the paper's subsampling had a trainable coefficient and bias) or
    max pooling (``pooling="max"``); the activation is ``tanh`` (default; the paper used a scaled
    tanh) or ``relu``; the output layer is a linear layer producing logits (the paper used RBF
    units).

    ``input_size=28`` (MNIST without padding) adds ``padding=2`` to C1 so every later shape and
    the parameter count are unchanged.

    Args:
        num_classes: Number of output logits (10).
        in_channels: Input channels (1).
        input_size: Height and width of the input: 32 (canonical) or 28.
        activation: ``"tanh"`` (default) or ``"relu"``.
        pooling: ``"avg"`` (default) or ``"max"``.

    Raises:
        TypeError: If an integer argument is not an int.
        ValueError: If an argument is out of range or not one of its choices.

    Example:
        >>> model = LeNet5()
        >>> model(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int = 32,
        activation: str = "tanh",
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        owner = "lenet5"
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, (32, 28))
        check_choice(owner, "activation", activation, tuple(_ACTIVATIONS))
        check_choice(owner, "pooling", pooling, tuple(_POOLS))
        self.model_name = owner
        self.expected_input_shape = (in_channels, input_size, input_size)
        self.min_input_size = None
        self.supported_input_sizes = (32, 28)
        act = _ACTIVATIONS[activation]
        pool = _POOLS[pooling]
        pad = (32 - input_size) // 2
        self.features = nn.Sequential(
            OrderedDict(
                c1=nn.Conv2d(in_channels, 6, kernel_size=5, padding=pad),
                act1=act(),
                s2=pool(kernel_size=2, stride=2),
                c3=nn.Conv2d(6, 16, kernel_size=5),
                act3=act(),
                s4=pool(kernel_size=2, stride=2),
                c5=nn.Conv2d(16, 120, kernel_size=5),
                act5=act(),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                f6=nn.Linear(120, 84),
                act6=act(),
                output=nn.Linear(84, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, C, H, W)``."""
        self.check_input(x)
        return self.classifier(self.features(x))
