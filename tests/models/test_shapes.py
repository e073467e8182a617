from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.models import available, create, spec

# Canonical forwards that are cheap on a CPU at batch 1; the rest run on the meta device (shape
# inference only, no arithmetic) at their canonical size and for real at their small size.
CHEAP_CANONICAL = {
    "lenet5",
    "alexnet",
    "convnetjs_cifar10",
    "alphago_policy",
    "kim_cnn",
    "resnet18",
    "googlenet",
}


def _outputs(name: str) -> int:
    s = spec(name)
    return s.num_classes


@pytest.mark.parametrize("name", available())
def test_canonical_output_shape(name: str, model_input) -> None:
    if name in CHEAP_CANONICAL:
        model = create(name).eval()
    else:
        with torch.device("meta"):
            model = create(name).eval()
    x = model_input(model, batch=1)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == (1, _outputs(name))
    if y.device.type != "meta":
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", available())
def test_small_variant_output_shape(name: str, model_input) -> None:
    s = spec(name)
    kwargs: dict = {"input_size": s.small_input_size}
    if s.task == "image":
        kwargs["num_classes"] = 7
    model = create(name, **kwargs).eval()
    x = model_input(model, batch=2)
    assert tuple(x.shape[1:]) == s.input_shape_at(s.small_input_size)
    with torch.no_grad():
        y = model(x)
    expected = {"go": s.small_input_size**2, "text": s.num_classes}.get(s.task, 7)
    assert tuple(y.shape) == (2, expected)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("input_size", [32, 28])
def test_lenet5_layer_shapes(input_size: int, layer_shapes) -> None:
    model = create("lenet5", input_size=input_size)
    shapes = layer_shapes(model, torch.randn(1, 1, input_size, input_size))
    assert shapes["features.c1"] == (6, 28, 28)
    assert shapes["features.s2"] == (6, 14, 14)
    assert shapes["features.c3"] == (16, 10, 10)
    assert shapes["features.s4"] == (16, 5, 5)
    assert shapes["features.c5"] == (120, 1, 1)
    assert shapes["classifier.f6"] == (84,)
    assert shapes["classifier.output"] == (10,)


ALEXNET_227 = {
    "features.conv1": (96, 55, 55),
    "features.pool1": (96, 27, 27),
    "features.norm1": (96, 27, 27),
    "features.conv2": (256, 27, 27),
    "features.pool2": (256, 13, 13),
    "features.norm2": (256, 13, 13),
    "features.conv3": (384, 13, 13),
    "features.conv4": (384, 13, 13),
    "features.conv5": (256, 13, 13),
    "features.pool3": (256, 6, 6),
    "classifier.fc6": (4096,),
    "classifier.fc7": (4096,),
    "classifier.fc8": (1000,),
}


def test_alexnet_layer_shapes_match_the_slide(layer_shapes) -> None:
    model = create("alexnet").eval()
    conv1 = model.features.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((11, 11), (4, 4), (0, 0))
    shapes = layer_shapes(model, torch.randn(1, 3, 227, 227))
    assert {k: shapes[k] for k in ALEXNET_227} == ALEXNET_227


ZFNET_224 = {
    "features.conv1": (96, 110, 110),
    "features.pool1": (96, 55, 55),
    "features.conv2": (256, 26, 26),
    "features.pool2": (256, 13, 13),
    "features.conv3": (512, 13, 13),
    "features.conv4": (1024, 13, 13),
    "features.conv5": (512, 13, 13),
    "features.pool3": (512, 6, 6),
    "classifier.fc6": (4096,),
    "classifier.fc8": (1000,),
}


def test_zfnet_layer_shapes(layer_shapes) -> None:
    with torch.device("meta"):
        model = create("zfnet")
        shapes = layer_shapes(model, torch.empty(1, 3, 224, 224))
    conv1 = model.features.conv1
    assert (conv1.kernel_size, conv1.stride) == ((7, 7), (2, 2))
    assert {k: shapes[k] for k in ZFNET_224} == ZFNET_224


def test_vgg16_layer_shapes(layer_shapes) -> None:
    with torch.device("meta"):
        model = create("vgg16")
        shapes = layer_shapes(model, torch.empty(1, 3, 224, 224))
    widths = (64, 128, 256, 512, 512)
    sizes = (224, 112, 56, 28, 14)
    for block, (width, size) in enumerate(zip(widths, sizes, strict=True), start=1):
        assert shapes[f"features.conv{block}_1"] == (width, size, size)
        assert shapes[f"features.pool{block}"] == (width, size // 2, size // 2)
    assert shapes["classifier.fc6"] == (4096,)
    assert shapes["classifier.fc8"] == (1000,)


# (model, input_size) -> expected shapes of some layers in the small variants (real forward).
SMALL_SHAPES = {
    ("alexnet", 64): {
        "features.conv1": (96, 32, 32),
        "features.pool1": (96, 15, 15),
        "features.conv2": (256, 15, 15),
        "features.pool2": (256, 7, 7),
        "features.conv5": (256, 7, 7),
        "features.pool3": (256, 3, 3),
        "classifier.fc6": (512,),
    },
    ("alexnet", 32): {
        "features.conv1": (96, 32, 32),
        "features.pool1": (96, 15, 15),
        "features.pool3": (256, 3, 3),
        "classifier.fc7": (512,),
    },
    ("zfnet", 64): {
        "features.conv1": (96, 32, 32),
        "features.pool1": (96, 16, 16),
        "features.conv2": (256, 8, 8),
        "features.pool2": (256, 4, 4),
        "features.conv4": (1024, 4, 4),
        "features.pool3": (512, 2, 2),
        "classifier.fc6": (512,),
    },
    ("zfnet", 32): {
        "features.conv1": (96, 32, 32),
        "features.pool1": (96, 16, 16),
        "features.pool3": (512, 2, 2),
    },
    ("vgg16", 64): {"features.conv1_2": (64, 64, 64), "features.pool5": (512, 2, 2)},
    ("vgg16", 32): {"features.conv1_2": (64, 32, 32), "features.pool5": (512, 1, 1)},
    ("resnet18", 64): {
        "conv1": (64, 32, 32),
        "maxpool": (64, 16, 16),
        "layer4.1.bn2": (512, 2, 2),
    },
    ("resnet18", 32): {
        "conv1": (64, 32, 32),
        "maxpool": (64, 16, 16),
        "layer4.1.bn2": (512, 2, 2),
    },
    ("googlenet", 32): {
        "conv1.conv": (64, 32, 32),
        "maxpool1": (64, 16, 16),
        "inception3b.branch1.conv": (128, 8, 8),
        "inception5b.branch1.conv": (384, 2, 2),
    },
}


@pytest.mark.parametrize(("name", "input_size"), list(SMALL_SHAPES))
def test_small_variant_layer_shapes(name: str, input_size: int, layer_shapes) -> None:
    model = create(name, num_classes=10, input_size=input_size).eval()
    shapes = layer_shapes(model, torch.randn(1, 3, input_size, input_size))
    expected = SMALL_SHAPES[(name, input_size)]
    assert {k: shapes[k] for k in expected} == expected


@pytest.mark.parametrize("name", ["alexnet", "zfnet", "vgg16"])
@pytest.mark.parametrize("input_size", [64, 32])
def test_small_variants_keep_layer_types_and_order(name: str, input_size: int) -> None:
    with torch.device("meta"):
        canonical = create(name)
        small = create(name, input_size=input_size)
    layout = [(n, type(m)) for n, m in canonical.named_modules()]
    assert layout == [(n, type(m)) for n, m in small.named_modules()]


def test_resnet18_canonical_stem_runs_64px(layer_shapes) -> None:
    model = create("resnet18", num_classes=4).eval()
    shapes = layer_shapes(model, torch.randn(1, 3, 64, 64))
    assert shapes["layer4.1.bn2"] == (512, 2, 2)
    assert shapes["fc"] == (4,)


def test_width_and_channel_options(model_input) -> None:
    model = create("alexnet", input_size=32, in_channels=1, width_mult=0.25, fc_width=64)
    assert model.expected_input_shape == (1, 32, 32)
    assert model.features.conv1.out_channels == 24
    assert model.features.conv5.out_channels == 64
    assert model.classifier.fc6.in_features == 64 * 3 * 3
    assert model(model_input(model)).shape == (2, 1000)
    vgg = create("vgg16", input_size=32, num_classes=3, width_mult=0.125)
    assert vgg.features.conv5_3.out_channels == 64
    assert vgg(model_input(vgg)).shape == (2, 3)
    for name in ("googlenet", "resnet18", "resnet50"):
        net = create(name, in_channels=1, input_size=32, num_classes=5).eval()
        assert net.expected_input_shape == (1, 32, 32)
        with torch.no_grad():
            assert net(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    canonical_gray = create("resnet18", in_channels=1)
    assert canonical_gray.conv1.kernel_size == (7, 7)
    assert canonical_gray.conv1.in_channels == 1


def test_alphago_board_sizes_and_width() -> None:
    for board in (19, 13, 9):
        model = create("alphago_policy", input_size=board, width=16)
        assert model(torch.randn(2, 48, board, board)).shape == (2, board * board)
    model = create("alphago_policy", input_size=9, in_channels=8, width=16)
    assert model.head.conv13.kernel_size == (1, 1)
    assert model.head.conv13.bias is None
    assert model.head.position_bias.bias.shape == (1, 9, 9)
    assert model(torch.randn(1, 8, 9, 9)).shape == (1, 81)


def test_kim_cnn_pools_over_time_for_any_length() -> None:
    model = create("kim_cnn", vocab_size=50, embed_dim=8, num_classes=3).eval()
    for length in (5, 64, 200):
        x = torch.randint(0, 50, (2, length))
        assert model(x).shape == (2, 3)
    assert model(torch.randint(0, 50, (2, 64), dtype=torch.int32)).shape == (2, 3)
    pools = [n for n, m in model.named_modules() if isinstance(m, nn.AdaptiveMaxPool1d)]
    assert pools == [f"branches.window{k}.pool" for k in (3, 4, 5)]
