"""Layer discovery and selection: list_layers, select_layers, resolve_module, activation_after."""

from __future__ import annotations

import re

import pytest
import torch
from cnnviz_test_helpers import CallOrderNet, make_bn_net, make_lenet
from torch import nn

from cnnviz.analysis.layers import (
    CONV_TYPES,
    POOL_TYPES,
    activation_after,
    list_layers,
    resolve_module,
    select_layers,
)


class Zoo(nn.Module):
    """Every conv and pooling type cnnviz knows, plus layers it must ignore."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Conv1d(2, 3, 3, stride=2, padding=1),
            nn.MaxPool1d(2),
            nn.AvgPool1d(2),
            nn.AdaptiveMaxPool1d(4),
            nn.AdaptiveAvgPool1d(3),
            nn.LPPool1d(2, 2),
        )
        self.img = nn.Sequential(
            nn.Conv2d(3, 5, (3, 5), stride=(1, 2), padding=(1, 2), dilation=1, groups=1),
            nn.BatchNorm2d(5),
            nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
            nn.AvgPool2d(2),
            nn.AdaptiveMaxPool2d((4, 4)),
            nn.AdaptiveAvgPool2d(2),
            nn.LPPool2d(2, 2),
            nn.Linear(3, 3),
        )


def test_list_layers_finds_every_conv_and_pool_type_with_settings() -> None:
    layers = list_layers(Zoo())
    types = [info.type for info in layers]
    assert types == [
        "Conv1d",
        "MaxPool1d",
        "AvgPool1d",
        "AdaptiveMaxPool1d",
        "AdaptiveAvgPool1d",
        "LPPool1d",
        "Conv2d",
        "MaxPool2d",
        "AvgPool2d",
        "AdaptiveMaxPool2d",
        "AdaptiveAvgPool2d",
        "LPPool2d",
    ]
    assert {t.__name__ for t in (*CONV_TYPES, *POOL_TYPES)} == set(types)
    by_name = {info.name: info for info in layers}
    conv1 = by_name["seq.0"]
    assert (conv1.kind, conv1.dims) == ("conv", 1)
    assert conv1.settings["kernel_size"] == (3,)
    assert conv1.settings["stride"] == (2,)
    assert conv1.settings["padding"] == (1,)
    conv2 = by_name["img.0"]
    assert (conv2.kind, conv2.dims) == ("conv", 2)
    assert conv2.settings["in_channels"] == 3 and conv2.settings["out_channels"] == 5
    assert conv2.settings["kernel_size"] == (3, 5)
    assert conv2.settings["stride"] == (1, 2)
    assert conv2.settings["padding"] == (1, 2)
    assert by_name["img.2"].settings["ceil_mode"] is True
    assert by_name["img.2"].settings["kernel_size"] == 3
    assert by_name["img.4"].settings["output_size"] == (4, 4)
    assert by_name["img.6"].settings["norm_type"] == 2
    assert [info.order for info in layers] == list(range(len(layers)))
    assert "img.1" not in by_name and "img.7" not in by_name
    assert by_name["img.0"].describe() == "img.0  Conv2d(3→5, k=(3, 5), s=(1, 2), p=(1, 2))"


def test_list_layers_by_kind() -> None:
    net = make_lenet()
    assert [i.name for i in list_layers(net, "conv")] == ["0", "3"]
    assert [i.name for i in list_layers(net, "pool")] == ["2", "5"]
    assert [i.name for i in list_layers(net)] == ["0", "2", "3", "5"]


def test_list_layers_forward_order_from_example_input(leak_check) -> None:
    net = CallOrderNet().train()
    check = leak_check(net)
    x = torch.randn(1, 3, 12, 12)
    rng = torch.get_rng_state()
    assert [i.name for i in list_layers(net)] == ["late", "pool", "early"]
    ordered = list_layers(net, example_input=x)
    assert [i.name for i in ordered] == ["early", "pool", "late"]
    assert [i.order for i in ordered] == [0, 1, 2]
    check.verify()  # no hook left, train mode kept
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in net.parameters())


def test_list_layers_puts_uncalled_layers_last() -> None:
    net = CallOrderNet()
    net.spare = nn.Conv2d(1, 1, 1)
    ordered = list_layers(net, example_input=torch.randn(1, 3, 12, 12))
    assert [i.name for i in ordered] == ["early", "pool", "late", "spare"]


def test_select_layers_by_kind_names_and_globs() -> None:
    net = make_bn_net()
    assert [i.name for i in select_layers(net, kind="conv")] == ["0", "4"]
    assert [i.name for i in select_layers(net, kind="pool")] == ["3", "8"]
    assert [i.name for i in select_layers(net, "4")] == ["4"]
    # order is forward order, not the order asked; duplicates collapse
    assert [i.name for i in select_layers(net, ["8", "0", "0"])] == ["0", "8"]
    assert [i.name for i in select_layers(net, "[03]")] == ["0", "3"]
    assert [i.name for i in select_layers(net, ["*"], kind="conv")] == ["0", "4"]
    zoo = Zoo()
    assert [i.name for i in select_layers(zoo, "img.*", kind="pool")] == [
        "img.2",
        "img.3",
        "img.4",
        "img.5",
        "img.6",
    ]
    assert [i.name for i in select_layers(zoo, ["seq.?", "img.0"], kind="conv")] == [
        "seq.0",
        "img.0",
    ]


def test_unknown_layer_lists_the_valid_names() -> None:
    net = make_lenet()
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'.*0, 2, 3, 5"):
        select_layers(net, ["0", "conv9"], owner="ActivationMaps")
    with pytest.raises(
        ValueError, match=r"^FilterWeights: unknown layer '2'; conv layers are: 0, 3"
    ):
        select_layers(net, "2", kind="conv", owner="FilterWeights")
    with pytest.raises(ValueError, match=r"unknown layer 'head\.\*'"):
        select_layers(net, "head.*")


def test_model_without_conv_layer_is_an_error() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(
        ValueError, match=r"FilterWeights: the model \(Sequential\) has no conv layer"
    ):
        select_layers(mlp, kind="conv", owner="FilterWeights")
    only_pool = nn.Sequential(nn.MaxPool2d(2))
    with pytest.raises(ValueError, match="has no conv layer"):
        select_layers(only_pool, kind="conv")
    assert [i.name for i in select_layers(only_pool)] == ["0"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "dense"}, ValueError, "`kind` must be 'conv', 'pool' or 'all'"),
        ({"layers": []}, ValueError, "`layers` must be a name, a glob pattern or a list"),
        ({"layers": [0]}, ValueError, "`layers` must be a name, a glob pattern or a list"),
        ({"layers": "nope"}, ValueError, "unknown layer 'nope'"),
    ],
)
def test_select_layers_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        select_layers(make_lenet(), **kwargs)


def test_list_layers_invalid_kind() -> None:
    with pytest.raises(ValueError, match=re.escape("`kind`")):
        list_layers(make_lenet(), "conv2d")  # type: ignore[arg-type]


def test_resolve_module() -> None:
    net = nn.Sequential()
    net.add_module("body", make_lenet())
    assert resolve_module(net, None) is net
    assert resolve_module(net, "") is net
    assert resolve_module(net, "body.3") is net.body[3]
    with pytest.raises(ValueError, match=r"`module`: Sequential has no submodule 'head'.*body"):
        resolve_module(net, "head")


def test_activation_after() -> None:
    net = make_bn_net()
    assert activation_after(net, "0") == "2"  # BatchNorm skipped
    assert activation_after(net, "4") == "6"
    assert activation_after(net, "3") is None  # pool followed by a conv
    assert activation_after(net, "8") is None  # followed by Flatten
    assert activation_after(CallOrderNet(), "early") is None  # functional relu: not certain
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1), nn.GELU()))
    assert activation_after(nested, "0.0") == "0.1"
    last = nn.Sequential(nn.Conv2d(1, 1, 1))
    assert activation_after(last, "0") is None
