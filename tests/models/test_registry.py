from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch
from torch import nn

from cnnviz import models
from cnnviz.models import ModelSpec, count_parameters, create, spec

NAMES = [
    "lenet5",
    "alexnet",
    "zfnet",
    "vgg16",
    "googlenet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "convnetjs_cifar10",
    "alphago_policy",
    "kim_cnn",
]

CANONICAL_SHAPES = {
    "lenet5": (1, 32, 32),
    "alexnet": (3, 227, 227),
    "zfnet": (3, 224, 224),
    "vgg16": (3, 224, 224),
    "googlenet": (3, 224, 224),
    "resnet18": (3, 224, 224),
    "resnet34": (3, 224, 224),
    "resnet50": (3, 224, 224),
    "resnet101": (3, 224, 224),
    "resnet152": (3, 224, 224),
    "convnetjs_cifar10": (3, 32, 32),
    "alphago_policy": (48, 19, 19),
    "kim_cnn": (64,),
}


def test_available_lists_every_model_in_lecture_order() -> None:
    assert models.available() == NAMES
    models.available().append("mutated")
    assert models.available() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_spec_describes_the_model(name: str) -> None:
    s = spec(name)
    assert isinstance(s, ModelSpec)
    assert s.name == name
    assert s.input_shape == CANONICAL_SHAPES[name]
    assert s.input_sizes[0] == (s.input_shape[0] if s.task == "text" else s.input_shape[-1])
    assert s.small_input_size in s.input_sizes
    assert s.small_variant and s.description
    expected_task = {"alphago_policy": "go", "kim_cnn": "text"}.get(name, "image")
    assert s.task == expected_task
    assert (s.in_channels is None) == (s.task == "text")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", NAMES)
def test_small_variant_has_the_shape_the_spec_announces(name: str) -> None:
    s = spec(name)
    kwargs = {"vocab_size": 100, "embed_dim": 8} if name == "kim_cnn" else {}
    model = create(name, input_size=s.small_input_size, **kwargs)
    assert model.expected_input_shape == s.input_shape_at(s.small_input_size)
    assert isinstance(model, nn.Module)


def test_canonical_defaults_match_spec_on_meta_device() -> None:
    with torch.device("meta"):
        for name in NAMES:
            model = create(name)
            assert model.expected_input_shape == spec(name).input_shape, name


def test_input_shape_at() -> None:
    assert spec("resnet18").input_shape_at(64) == (3, 64, 64)
    assert spec("resnet18").input_shape_at(32, in_channels=1) == (1, 32, 32)
    assert spec("kim_cnn").input_shape_at(32) == (32,)
    assert spec("alphago_policy").input_shape_at(9) == (48, 9, 9)
    with pytest.raises(ValueError, match=r"`input_size` must be one of 224, 64, 32; got 100"):
        spec("vgg16").input_shape_at(100)


def test_unknown_name_lists_available_names() -> None:
    with pytest.raises(ValueError, match="Unknown model `name` 'resnet19'") as info:
        create("resnet19")
    message = str(info.value)
    assert "Did you mean 'resnet18'?" in message
    for name in NAMES:
        assert name in message
    with pytest.raises(ValueError, match="Available models: lenet5, alexnet"):
        spec("LeNet")


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="`name` must be a str"):
        create(nn.Linear)  # type: ignore[arg-type]


def test_unknown_kwarg_is_named_and_accepted_ones_listed() -> None:
    with pytest.raises(
        TypeError, match=r"unknown argument `num_class`\. Did you mean `num_classes`"
    ):
        create("alexnet", num_class=3)
    with pytest.raises(TypeError, match="Arguments accepted by lenet5: num_classes, in_channels"):
        create("lenet5", depth=3)
    with pytest.raises(TypeError, match="unknown argument `depth`"):
        create("resnet18", depth=50)  # depth is fixed by the name
    with pytest.raises(TypeError, match="unknown argument `in_channels`"):
        create("kim_cnn", in_channels=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "match"),
    [
        ("lenet5", {"num_classes": 0}, ValueError, r"`num_classes` must be a positive int; got 0"),
        ("lenet5", {"num_classes": 2.0}, TypeError, r"`num_classes` must be a positive.*float"),
        ("lenet5", {"in_channels": True}, TypeError, r"`in_channels` must be a positive.*bool"),
        ("lenet5", {"input_size": 30}, ValueError, r"`input_size` must be one of 32, 28; got 30"),
        ("lenet5", {"activation": "gelu"}, ValueError, r"`activation` must be one of 'tanh'"),
        ("lenet5", {"pooling": "sum"}, ValueError, r"`pooling` must be one of 'avg', 'max'"),
        ("alexnet", {"input_size": 224}, ValueError, r"`input_size` must be one of 227, 64, 32"),
        ("alexnet", {"fc_width": -1}, ValueError, r"`fc_width` must be a positive int"),
        ("alexnet", {"width_mult": 0}, ValueError, r"`width_mult` must be > 0"),
        ("zfnet", {"dropout": 1.0}, ValueError, r"`dropout` must be in \[0, 1\)"),
        ("vgg16", {"input_size": 227}, ValueError, r"vgg16: `input_size` must be one of 224"),
        ("googlenet", {"input_size": 16}, ValueError, r"googlenet: `input_size` must be one of"),
        ("resnet50", {"zero_init_residual": 1}, TypeError, r"`zero_init_residual` must be a bool"),
        ("resnet18", {"in_channels": 0}, ValueError, r"resnet18: `in_channels` must be a positive"),
        ("convnetjs_cifar10", {"input_size": 28}, ValueError, r"one of 32, 64; got 28"),
        ("alphago_policy", {"num_classes": 10}, ValueError, r"`num_classes` must equal input_size"),
        ("alphago_policy", {"input_size": 9, "num_classes": 361}, ValueError, r"= 81"),
        ("alphago_policy", {"width": "wide"}, TypeError, r"`width` must be a positive.*str"),
        ("alphago_policy", {"position_bias": "yes"}, TypeError, r"`position_bias` must be a bool"),
        ("kim_cnn", {"vocab_size": 0}, ValueError, r"`vocab_size` must be a positive int"),
        ("kim_cnn", {"input_size": 4}, ValueError, r"`input_size` must be one of 64, 32"),
        ("kim_cnn", {"embed_dim": None}, TypeError, r"`embed_dim` must be a positive.*None"),
    ],
)
def test_invalid_kwarg_values(name: str, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        create(name, **kwargs)


def test_alphago_num_classes_equal_to_board_points_is_accepted() -> None:
    model = create("alphago_policy", input_size=9, num_classes=81, width=8)
    assert model(torch.zeros(1, 48, 9, 9)).shape == (1, 81)


def test_googlenet_builds_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create("googlenet", input_size=32, num_classes=10)


def test_count_parameters() -> None:
    layer = nn.Linear(4, 2)
    assert count_parameters(layer) == 10
    shared = nn.Sequential(layer, nn.ReLU(), layer)
    assert count_parameters(shared) == 10
    layer.bias.requires_grad_(False)
    assert count_parameters(layer, trainable_only=True) == 8
    assert count_parameters(layer) == 10
    with pytest.raises(TypeError, match=re.escape("`module` must be a torch.nn.Module")):
        count_parameters([layer])  # type: ignore[arg-type]
