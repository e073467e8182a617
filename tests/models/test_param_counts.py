from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnviz.models import count_parameters, create


def _meta(name: str, **kwargs: object) -> nn.Module:
    # Parameter counts do not need real storage: the meta device builds 100M-parameter models
    # in milliseconds.
    with torch.device("meta"):
        return create(name, **kwargs)


def _conv(k: int, c_in: int, c_out: int) -> int:
    return k * k * c_in * c_out + c_out


def _fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"activation": "relu", "pooling": "max"},
        {"input_size": 28},
    ],
)
def test_lenet5_has_61706_parameters(kwargs: dict) -> None:
    model = create("lenet5", **kwargs)
    assert count_parameters(model) == 61_706
    f = model.features
    assert count_parameters(f.c1) == 156
    assert count_parameters(f.c3) == 2_416  # fully connected C3: 16 * (6*5*5 + 1)
    assert count_parameters(f.c5) == 48_120
    assert count_parameters(model.classifier.f6) == 10_164
    assert count_parameters(model.classifier.output) == 850


def test_alexnet_has_the_slide_parameter_count() -> None:
    model = _meta("alexnet")
    assert count_parameters(model) == 62_378_344
    f, c = model.features, model.classifier
    assert count_parameters(f.conv1) == 34_944  # (11*11*3) * 96 + 96
    assert f.conv1.weight.numel() == 11 * 11 * 3 * 96
    assert count_parameters(f.conv2) == 614_656
    assert count_parameters(f.conv3) == 885_120
    assert count_parameters(f.conv4) == 1_327_488
    assert count_parameters(f.conv5) == 884_992
    assert count_parameters(c.fc6) == 37_752_832
    assert count_parameters(c.fc7) == 16_781_312
    assert count_parameters(c.fc8) == 4_097_000
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_zfnet_parameter_count_matches_the_layer_table() -> None:
    expected = (
        _conv(7, 3, 96)
        + _conv(5, 96, 256)
        + _conv(3, 256, 512)
        + _conv(3, 512, 1024)
        + _conv(3, 1024, 512)
        + _fc(6 * 6 * 512, 4096)
        + _fc(4096, 4096)
        + _fc(4096, 1000)
    )
    assert expected == 107_627_624
    assert count_parameters(_meta("zfnet")) == expected


VGG16_WEIGHTS = {
    "conv1_1": 1_728,
    "conv1_2": 36_864,
    "conv2_1": 73_728,
    "conv2_2": 147_456,
    "conv3_1": 294_912,
    "conv3_2": 589_824,
    "conv3_3": 589_824,
    "conv4_1": 1_179_648,
    "conv4_2": 2_359_296,
    "conv4_3": 2_359_296,
    "conv5_1": 2_359_296,
    "conv5_2": 2_359_296,
    "conv5_3": 2_359_296,
    "fc6": 102_760_448,
    "fc7": 16_777_216,
    "fc8": 4_096_000,
}


def test_vgg16_per_layer_weights_and_total() -> None:
    model = _meta("vgg16")
    weights = {
        name.split(".")[-1]: m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    assert weights == VGG16_WEIGHTS
    assert count_parameters(model) == 138_357_544
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(
        m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == (1, 1) for m in convs
    )
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 5 and all(m.kernel_size == 2 and m.stride == 2 for m in pools)


@pytest.mark.parametrize("input_size", [64, 32])
def test_vgg16_small_variants_keep_every_conv_weight(input_size: int) -> None:
    model = _meta("vgg16", input_size=input_size)
    for name, m in model.features.named_children():
        if isinstance(m, nn.Conv2d):
            assert m.weight.numel() == VGG16_WEIGHTS[name]
    grid = input_size // 32
    assert model.classifier.fc6.in_features == 512 * grid * grid
    assert model.classifier.fc6.out_features == 512


def test_convnetjs_cifar10_has_22466_parameters() -> None:
    model = create("convnetjs_cifar10")
    assert count_parameters(model) == 22_466
    assert count_parameters(model.classifier.fc) == 3_210


def test_alphago_policy_parameter_count() -> None:
    conv_stack = _conv(5, 48, 192) + 11 * _conv(3, 192, 192)
    model = create("alphago_policy")
    assert count_parameters(model) == conv_stack + 192 + 361 == 3_882_793
    plain = create("alphago_policy", position_bias=False)
    assert count_parameters(plain) == conv_stack + 192 + 1
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 12
    assert convs[0].kernel_size == (5, 5)
    assert all(m.kernel_size == (3, 3) for m in convs[1:])


def test_kim_cnn_parameter_count() -> None:
    model = create("kim_cnn")
    convs = sum(100 * (300 * k + 1) for k in (3, 4, 5))
    assert count_parameters(model) == 10_000 * 300 + convs + _fc(300, 2)
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveMaxPool1d)]
    assert len(pools) == 3


TORCHVISION = {
    "googlenet": lambda: torchvision.models.googlenet(
        weights=None, aux_logits=False, init_weights=True
    ),
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "resnet34": lambda: torchvision.models.resnet34(weights=None),
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "resnet101": lambda: torchvision.models.resnet101(weights=None),
    "resnet152": lambda: torchvision.models.resnet152(weights=None),
}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_equals_torchvision_at_the_canonical_configuration(name: str) -> None:
    with torch.device("meta"):
        ours = create(name)
        reference = TORCHVISION[name]()
    assert count_parameters(ours) == count_parameters(reference)
    ours_layout = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    reference_layout = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours_layout == reference_layout


@pytest.mark.parametrize("name", ["googlenet", "resnet18", "resnet50"])
def test_small_variant_only_changes_the_stem(name: str) -> None:
    canonical = _meta(name, num_classes=10)
    small = _meta(name, num_classes=10, input_size=32)
    names = [(n, type(m)) for n, m in canonical.named_modules()]
    assert names == [(n, type(m)) for n, m in small.named_modules()]
    differing = {
        k
        for k, v in canonical.state_dict().items()
        if tuple(v.shape) != tuple(small.state_dict()[k].shape)
    }
    assert differing == {"conv1.conv.weight" if name == "googlenet" else "conv1.weight"}


@pytest.mark.parametrize("name", ["googlenet", "resnet18"])
def test_same_seed_gives_torchvision_weights(name: str) -> None:
    torch.manual_seed(0)
    ours = create(name)
    torch.manual_seed(0)
    reference = TORCHVISION[name]()
    reference_state = reference.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, reference_state[key]), key
