"""The lecture's case-study CNNs as plain ``nn.Module``s (torch + torchvision only).

Use :func:`create` with a name from :func:`available`; :func:`spec` describes each model's
canonical input and its small, CPU-friendly variant. Every model has an
``expected_input_shape`` attribute (input shape without the batch dimension) and checks its
input at the start of ``forward``.

Example:
    >>> from cnnviz import models
    >>> model = models.create("lenet5")
    >>> models.count_parameters(model)
    61706
"""

from __future__ import annotations

from cnnviz.models._base import InputCheckMixin, count_parameters
from cnnviz.models.alexnet import AlexNet
from cnnviz.models.alphago import AlphaGoPolicy, PositionBias
from cnnviz.models.convnetjs import ConvNetJSCifar10
from cnnviz.models.googlenet import GoogLeNet
from cnnviz.models.kim_cnn import KimCNN
from cnnviz.models.lenet import LeNet5
from cnnviz.models.registry import ModelSpec, available, create, spec
from cnnviz.models.resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from cnnviz.models.vgg import VGG16
from cnnviz.models.zfnet import ZFNet

__all__ = [
    "VGG16",
    "AlexNet",
    "AlphaGoPolicy",
    "ConvNetJSCifar10",
    "GoogLeNet",
    "InputCheckMixin",
    "KimCNN",
    "LeNet5",
    "ModelSpec",
    "PositionBias",
    "ResNet",
    "ZFNet",
    "available",
    "count_parameters",
    "create",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "spec",
]
