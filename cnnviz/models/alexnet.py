"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) as drawn on the lecture's slide."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from cnnviz.models._base import (
    InputCheckMixin,
    check_choice,
    check_positive_float,
    check_positive_int,
    check_probability,
)

__all__ = ["AlexNet"]


@dataclass(frozen=True)
class _Geometry:
    """Kernel/stride/padding choices that depend on the input size."""

    conv1: tuple[int, int, int]  # kernel, stride, padding
    conv2: tuple[int, int, int]
    pool_padding: tuple[int, int, int]  # pool1, pool2, pool3 (all 3x3, stride 2)
    grid: int  # spatial size after pool3


class _AlexNetFamily(InputCheckMixin, nn.Module):
    """Five convolutions, three max pools, two LRNs and three FC layers (AlexNet and ZFNet).

    Layer order: conv1 relu1 pool1 norm1 conv2 relu2 pool2 norm2 conv3 relu3 conv4 relu4 conv5
    relu5 pool3 | flatten fc6 relu6 drop6 fc7 relu7 drop7 fc8. Subclasses set ``_NAME``,
    ``_WIDTHS`` (filters of conv1..conv5) and ``_GEOMETRY`` (one entry per supported input size,
    canonical first).
    """

    _NAME: str = ""
    _WIDTHS: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    _GEOMETRY: dict[int, _Geometry] = {}  # noqa: RUF012 - read-only class table
    _SMALL_FC_WIDTH = 512

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int | None = None,
        fc_width: int | None = None,
        width_mult: float = 1.0,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        owner = self._NAME
        sizes = tuple(self._GEOMETRY)
        canonical = sizes[0]
        input_size = canonical if input_size is None else input_size
        check_positive_int(owner, "num_classes", num_classes)
        check_positive_int(owner, "in_channels", in_channels)
        check_positive_int(owner, "input_size", input_size)
        check_choice(owner, "input_size", input_size, sizes)
        if fc_width is None:
            fc_width = 4096 if input_size == canonical else self._SMALL_FC_WIDTH
        check_positive_int(owner, "fc_width", fc_width)
        check_positive_float(owner, "width_mult", width_mult)
        check_probability(owner, "dropout", dropout)
        self.model_name = owner
        self.expected_input_shape = (in_channels, input_size, input_size)
        self.min_input_size = None
        self.supported_input_sizes = sizes
        geo = self._GEOMETRY[input_size]
        c1, c2, c3, c4, c5 = (max(1, round(w * width_mult)) for w in self._WIDTHS)
        p1, p2, p3 = geo.pool_padding
        k1, s1, q1 = geo.conv1
        k2, s2, q2 = geo.conv2

        def lrn() -> nn.LocalResponseNorm:
            # Paper: k=2, n=5, alpha=1e-4, beta=0.75. PyTorch divides alpha by n, hence 5e-4.
            return nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)

        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, c1, kernel_size=k1, stride=s1, padding=q1),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(kernel_size=3, stride=2, padding=p1),
                norm1=lrn(),
                conv2=nn.Conv2d(c1, c2, kernel_size=k2, stride=s2, padding=q2),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(kernel_size=3, stride=2, padding=p2),
                norm2=lrn(),
                conv3=nn.Conv2d(c2, c3, kernel_size=3, padding=1),
                relu3=nn.ReLU(),
                conv4=nn.Conv2d(c3, c4, kernel_size=3, padding=1),
                relu4=nn.ReLU(),
                conv5=nn.Conv2d(c4, c5, kernel_size=3, padding=1),
                relu5=nn.ReLU(),
                pool3=nn.MaxPool2d(kernel_size=3, stride=2, padding=p3),
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(),
                fc6=nn.Linear(c5 * geo.grid * geo.grid, fc_width),
                relu6=nn.ReLU(),
                drop6=nn.Dropout(dropout),
                fc7=nn.Linear(fc_width, fc_width),
                relu7=nn.ReLU(),
                drop7=nn.Dropout(dropout),
                fc8=nn.Linear(fc_width, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, C, H, W)``."""
        self.check_input(x)
        return self.classifier(self.features(x))


class AlexNet(_AlexNetFamily):
    """AlexNet with the single-tower, ungrouped shapes of the lecture's slide.

    Not torchvision's variant (64 filters in conv1, 224 px input). Canonical input
    ``(3, 227, 227)``; with 1000 classes it has exactly 62,378,344 parameters::

        input               3 x 227 x 227
        features.conv1     96 x  55 x  55   96 @ 11x11, stride 4, pad 0   34,944 params
        features.pool1     96 x  27 x  27   max 3x3, stride 2
        features.norm1     96 x  27 x  27   LocalResponseNorm(5)
        features.conv2    256 x  27 x  27   256 @ 5x5, pad 2             614,656 params
        features.pool2    256 x  13 x  13   max 3x3, stride 2
        features.norm2    256 x  13 x  13
        features.conv3    384 x  13 x  13   384 @ 3x3, pad 1             885,120 params
        features.conv4    384 x  13 x  13   384 @ 3x3, pad 1           1,327,488 params
        features.conv5    256 x  13 x  13   256 @ 3x3, pad 1             884,992 params
        features.pool3    256 x   6 x   6   max 3x3, stride 2
        classifier.fc6   4096                                      37,752,832 params
        classifier.fc7   4096                                      16,781,312 params
        classifier.fc8   1000                                       4,097,000 params

    Each conv and FC (except fc8) is followed by ReLU; fc6 and fc7 by dropout. LRN uses the
    paper's k=2, n=5, alpha=1e-4, beta=0.75 (``alpha=5e-4`` in PyTorch, which divides by n).

    Small-input variants (same layer types and order; only the stem and FC width change):

    * ``input_size=64``: conv1 is 96 @ 5x5, stride 2, pad 2 -> 96 x 32 x 32; then pool1 -> 15,
      conv2 -> 15, pool2 -> 7, conv3-5 -> 7, pool3 -> 256 x 3 x 3; ``fc_width`` defaults to 512.
    * ``input_size=32``: conv1 is 96 @ 5x5, stride 1, pad 2 -> 96 x 32 x 32; the rest as for 64.

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 227 (canonical, default), 64 or 32.
        fc_width: Units of fc6 and fc7; ``None`` means 4096 at 227 px and 512 for small inputs.
        width_mult: Multiplies the number of filters of every conv (1.0 = the slide's widths);
            e.g. 0.25 for a quick CPU run.
        dropout: Dropout probability after fc6 and fc7 (0.5).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> model = AlexNet(num_classes=10, input_size=32)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    _NAME = "alexnet"
    _WIDTHS = (96, 256, 384, 384, 256)
    _GEOMETRY = {  # noqa: RUF012
        227: _Geometry(conv1=(11, 4, 0), conv2=(5, 1, 2), pool_padding=(0, 0, 0), grid=6),
        64: _Geometry(conv1=(5, 2, 2), conv2=(5, 1, 2), pool_padding=(0, 0, 0), grid=3),
        32: _Geometry(conv1=(5, 1, 2), conv2=(5, 1, 2), pool_padding=(0, 0, 0), grid=3),
    }
