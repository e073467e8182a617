from __future__ import annotations

import re

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

from cnnviz.models import InputCheckMixin, available, create


def test_lenet5_wrong_input_names_the_expected_shape() -> None:
    model = create("lenet5")
    expected = "lenet5 expects input of shape (N, 1, 32, 32); got (2, 3, 28, 28)"
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        model(torch.zeros(2, 3, 28, 28))
    assert "`in_channels`" in str(info.value) and "`input_size`" in str(info.value)
    with pytest.raises(ValueError, match=re.escape("got (1, 32, 32)")):
        model(torch.zeros(1, 32, 32))
    with pytest.raises(TypeError, match=r"lenet5 expects a torch.Tensor input; got list"):
        model([[0.0]])


@pytest.mark.parametrize(
    ("name", "kwargs", "bad", "expected"),
    [
        ("alexnet", {}, (1, 3, 224, 224), "alexnet expects input of shape (N, 3, 227, 227)"),
        ("alexnet", {"input_size": 32}, (1, 3, 64, 64), "(N, 3, 32, 32); got (1, 3, 64, 64)"),
        (
            "zfnet",
            {"input_size": 64},
            (1, 3, 32, 32),
            "zfnet expects input of shape (N, 3, 64, 64);",
        ),
        (
            "vgg16",
            {"input_size": 32},
            (1, 1, 32, 32),
            "vgg16 expects input of shape (N, 3, 32, 32);",
        ),
        ("convnetjs_cifar10", {}, (1, 3, 28, 28), "(N, 3, 32, 32); got (1, 3, 28, 28)"),
        ("alphago_policy", {"input_size": 9, "width": 4}, (1, 48, 19, 19), "(N, 48, 9, 9)"),
        (
            "resnet18",
            {},
            (1, 1, 64, 64),
            "resnet18 expects input of shape (N, 3, H, W) with H, W >= 32 ",
        ),
        ("resnet18", {}, (1, 3, 16, 16), "(built for (N, 3, 224, 224)); got (1, 3, 16, 16)"),
        ("resnet18", {"input_size": 32}, (1, 3, 8, 8), "H, W >= 16 (built for (N, 3, 32, 32))"),
        ("resnet50", {"input_size": 64}, (1, 3, 16, 16), "resnet50 expects input of shape"),
        (
            "googlenet",
            {"input_size": 32},
            (2, 3, 32),
            "googlenet expects input of shape (N, 3, H, W)",
        ),
    ],
)
def test_wrong_input_shape_is_a_clear_value_error(
    name: str, kwargs: dict, bad: tuple, expected: str
) -> None:
    with torch.device("meta"):
        model = create(name, **kwargs)
        x = torch.empty(bad)
    with pytest.raises(ValueError, match=re.escape(expected)):
        model(x)


@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("googlenet", 64), ("resnet18", 32)])
def test_global_pool_models_accept_larger_inputs(name: str, size: int) -> None:
    model = create(name, num_classes=3, input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size + 16, size)).shape == (1, 3)


def test_kim_cnn_input_errors() -> None:
    model = create("kim_cnn", vocab_size=20, embed_dim=4)
    with pytest.raises(TypeError, match=r"kim_cnn expects a LongTensor .* got dtype torch.float32"):
        model(torch.zeros(2, 64))
    with pytest.raises(
        ValueError, match=re.escape("(N, L) with L >= 5 (built for (N, 64)); got (2, 64, 1)")
    ):
        model(torch.zeros(2, 64, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape("got (2, 4)")):
        model(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 20\) \(`vocab_size`\)"):
        model(torch.full((1, 8), 20))
    with pytest.raises(TypeError, match="got str"):
        model("a sentence")


@pytest.mark.parametrize("name", available())
def test_every_model_uses_the_shared_check(name: str) -> None:
    with torch.device("meta"):
        model = create(name)
    assert isinstance(model, InputCheckMixin)
    assert isinstance(model.expected_input_shape, tuple)
    assert model.min_input_size is None or model.min_input_size >= 1


@pytest.mark.parametrize(("name", "node"), [("lenet5", "features.c5"), ("resnet18", "layer2")])
def test_fx_feature_extraction_still_works(name: str, node: str) -> None:
    kwargs = {} if name == "lenet5" else {"input_size": 32, "num_classes": 4}
    model = create(name, **kwargs).eval()
    extractor = create_feature_extractor(model, return_nodes=[node])
    x = torch.randn(2, *model.expected_input_shape)
    with torch.no_grad():
        features = extractor(x)[node]
    assert features.shape[0] == 2
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(2, 5, 32, 32))
