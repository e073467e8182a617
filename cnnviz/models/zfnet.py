"""ZFNet (Zeiler and Fergus, 2013) in the lecture's form."""

from __future__ import annotations

from cnnviz.models.alexnet import _AlexNetFamily, _Geometry

__all__ = ["ZFNet"]


class ZFNet(_AlexNetFamily):
    """ZFNet: AlexNet with conv1 7x7 stride 2 and 512/1024/512 filters in conv3/4/5.

    Canonical input ``(3, 224, 224)`` with the ZF paper's shapes (conv2 uses stride 2 as in the
    paper, which keeps fc6 at 6 x 6 x 512 inputs)::

        input               3 x 224 x 224
        features.conv1     96 x 110 x 110   96 @ 7x7, stride 2, pad 1
        features.pool1     96 x  55 x  55   max 3x3, stride 2, pad 1
        features.norm1     96 x  55 x  55   LocalResponseNorm(5)
        features.conv2    256 x  26 x  26   256 @ 5x5, stride 2, pad 0
        features.pool2    256 x  13 x  13   max 3x3, stride 2, pad 1
        features.norm2    256 x  13 x  13
        features.conv3    512 x  13 x  13   512 @ 3x3, pad 1
        features.conv4   1024 x  13 x  13   1024 @ 3x3, pad 1
        features.conv5    512 x  13 x  13   512 @ 3x3, pad 1
        features.pool3    512 x   6 x   6   max 3x3, stride 2
        classifier.fc6   4096
        classifier.fc7   4096
        classifier.fc8   1000

    ReLU after every conv and fc6/fc7, dropout after fc6/fc7; LRN as in :class:`AlexNet`.
    With 1000 classes: 107,627,624 parameters.

    Small-input variants (same layer types and order; only the stem, conv2 padding, pool
    paddings and FC width change):

    * ``input_size=64``: conv1 96 @ 5x5, stride 2, pad 2 -> 32; pool1 (pad 1) -> 16; conv2
      5x5, stride 2, pad 2 -> 8; pool2 (pad 1) -> 4; conv3-5 -> 4; pool3 (pad 1) -> 512 x 2 x 2;
      ``fc_width`` defaults to 512.
    * ``input_size=32``: conv1 96 @ 3x3, stride 1, pad 1 -> 32; the rest as for 64.

    Args:
        num_classes: Number of output logits (1000).
        in_channels: Input channels (3).
        input_size: 224 (canonical, default), 64 or 32.
        fc_width: Units of fc6 and fc7; ``None`` means 4096 at 224 px and 512 for small inputs.
        width_mult: Multiplies the number of filters of every conv (1.0 = lecture widths).
        dropout: Dropout probability after fc6 and fc7 (0.5).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range or ``input_size`` is not supported.

    Example:
        >>> model = ZFNet(num_classes=10, input_size=32)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    _NAME = "zfnet"
    _WIDTHS = (96, 256, 512, 1024, 512)
    _GEOMETRY = {  # noqa: RUF012
        224: _Geometry(conv1=(7, 2, 1), conv2=(5, 2, 0), pool_padding=(1, 1, 0), grid=6),
        64: _Geometry(conv1=(5, 2, 2), conv2=(5, 2, 2), pool_padding=(1, 1, 1), grid=2),
        32: _Geometry(conv1=(3, 1, 1), conv2=(5, 2, 2), pool_padding=(1, 1, 1), grid=2),
    }
