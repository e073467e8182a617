"""The layer table against the lecture's worked examples and the real shapes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cnnviz import models
from cnnviz.analysis.layer_table import (
    conv_weight_count,
    format_layer_table,
    layer_table,
    output_size,
    output_size_arithmetic,
)


# ---------------------------------------------------------------------- lecture's arithmetic
@pytest.mark.parametrize(("stride", "expected"), [(1, 5), (2, 3)])
def test_output_size_lecture_7x7_with_3x3(stride: int, expected: int) -> None:
    assert output_size(7, 3, s=stride) == expected


def test_output_size_stride_that_does_not_fit_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"doesn't fit: \(7 − 3 \+ 2·0\)/3 \+ 1 = 2\.33"):
        output_size(7, 3, s=3)
    assert output_size(7, 3, s=3, strict=False) == 2  # what a PyTorch layer does


def test_output_size_padding_and_dilation() -> None:
    assert output_size(32, 5, p=2) == 32  # "same" with 5x5 and pad 2
    assert output_size(227, 11, s=4) == 55
    assert output_size(32, 3, p=2, d=2) == 32
    assert output_size(1, 1) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0, "f": 1}, ValueError, "`n`"),
        ({"n": 7, "f": 0}, ValueError, "`f`"),
        ({"n": 7, "f": 3, "p": -1}, ValueError, "`p`"),
        ({"n": 7, "f": 3, "s": 0}, ValueError, "`s`"),
        ({"n": 7, "f": 3, "d": 0}, ValueError, "`d`"),
        ({"n": 7.0, "f": 3}, TypeError, "`n` must be an int"),
        ({"n": 3, "f": 5}, ValueError, "larger than|more than the padded input"),
    ],
)
def test_output_size_rejects_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        output_size(**kwargs)


def test_output_size_arithmetic_text() -> None:
    assert output_size_arithmetic(227, 11, 0, 4) == (55, "(227 − 11 + 2·0)/4 + 1 = 55")
    assert output_size_arithmetic(224, 11, 2, 4) == (55, "⌊(224 − 11 + 2·2)/4⌋ + 1 = 55")
    assert output_size_arithmetic(112, 3, 0, 2, ceil_mode=True) == (
        56,
        "⌈(112 − 3 + 2·0)/2⌉ + 1 = 56",
    )
    size, text = output_size_arithmetic(5, 2, 1, 2, ceil_mode=True)
    assert size == 3 == nn.MaxPool2d(2, 2, 1, ceil_mode=True)(torch.zeros(1, 1, 5, 5)).shape[-1]
    assert text.endswith(f"= {size} (last window starts in the padding)")
    assert output_size_arithmetic(32, 4, (1, 2), 1)[1] == "(32 − 4 + 1 + 2)/1 + 1 = 32"
    assert output_size_arithmetic(32, 3, 2, 1, 2)[1] == "(32 − [2·(3 − 1) + 1] + 2·2)/1 + 1 = 32"


def test_weight_counts_lecture_examples() -> None:
    assert conv_weight_count(5, 3, 10) == (760, "5·5·3·10 + 10 = 760")
    assert conv_weight_count(11, 3, 96) == (34944, "11·11·3·96 + 96 = 34,944")
    assert conv_weight_count(5, 3, 6, bias=False) == (450, "5·5·3·6 = 450")
    assert conv_weight_count((5, 5), 96, 256, groups=2) == (307456, "5·5·48·256 + 256 = 307,456")
    assert conv_weight_count((3,), 300, 100) == (90100, "3·300·100 + 100 = 90,100")
    with pytest.raises(ValueError, match="`groups`"):
        conv_weight_count(3, 3, 6, groups=2)


# ---------------------------------------------------------------------------- layer tables
def test_ten_5x5_filters_on_32x32x3() -> None:
    model = nn.Sequential(nn.Conv2d(3, 10, 5, stride=1, padding=2))
    (row,) = layer_table(model, (3, 32, 32))
    assert row.input_shape == (3, 32, 32) and row.output_shape == (10, 32, 32)
    assert row.output_arithmetic == "(32 − 5 + 2·2)/1 + 1 = 32"
    assert row.params == 760 and row.params_arithmetic == "5·5·3·10 + 10 = 760"
    assert row.kernel_size == (5, 5) and row.stride == (1, 1) and row.padding == ((2, 2), (2, 2))
    assert row.receptive_field is not None and row.receptive_field.size == (5, 5)


def test_cnnviz_alexnet_conv1_and_pool1(leak_check) -> None:
    model = models.create("alexnet")
    check = leak_check(model)
    rows = layer_table(model, (3, 227, 227), include_linear=True)
    conv1, pool1 = rows[0], rows[1]
    assert conv1.type == "Conv2d" and conv1.output_shape == (96, 55, 55)
    assert conv1.output_arithmetic == "(227 − 11 + 2·0)/4 + 1 = 55"
    assert conv1.params == 34944 and conv1.params_arithmetic == "11·11·3·96 + 96 = 34,944"
    assert pool1.kind == "pool" and pool1.output_shape == (96, 27, 27)
    assert pool1.output_arithmetic == "(55 − 3 + 2·0)/2 + 1 = 27"
    assert pool1.params == 0 and pool1.params_arithmetic == "0"
    assert conv1.receptive_field.size == (11, 11) and pool1.receptive_field.size == (19, 19)
    # every parameter of AlexNet sits in a conv or linear row
    assert sum(r.params for r in rows) == models.count_parameters(model) == 62_378_344
    assert [r.kind for r in rows][-3:] == ["linear"] * 3
    assert rows[-3].params_arithmetic == "9216·4096 + 4096 = 37,752,832"
    check.verify()


def test_torchvision_alexnet_shows_the_floor() -> None:
    rows = layer_table(torchvision.models.alexnet(), (3, 224, 224))
    assert rows[0].output_arithmetic == "⌊(224 − 11 + 2·2)/4⌋ + 1 = 55"
    assert not rows[0].fits and rows[1].fits
    assert rows[-1].type == "AdaptiveAvgPool2d"
    assert rows[-1].output_arithmetic == "adaptive: f = s = 6/6 = 1, (6 − 1)/1 + 1 = 6"


@pytest.mark.parametrize(
    ("builder", "size"),
    [
        (lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True), (3, 96, 96)),
        (lambda: models.create("resnet18", input_size=64), (3, 64, 64)),
        (lambda: models.create("kim_cnn", input_size=32, vocab_size=40, embed_dim=6), (32,)),
        (lambda: models.create("lenet5"), (1, 32, 32)),
    ],
    ids=["googlenet", "resnet18", "kim_cnn", "lenet5"],
)
def test_arithmetic_matches_real_shapes(builder, size) -> None:
    model = builder()
    rows = layer_table(model, size)
    assert rows
    for row in rows:
        assert "PyTorch gives" not in row.output_arithmetic, row
        if not row.output_arithmetic.startswith(("adaptive", "global")):
            result = int(row.output_arithmetic.split("= ")[-1].split(" ")[0])
            assert result == row.output_shape[-1], row
        assert row.params == sum(p.numel() for p in model.get_submodule(row.name).parameters())
        assert row.receptive_field is not None and row.receptive_field.name == row.name


def test_non_square_and_global_rows() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, (3, 5), stride=(1, 2)), nn.AdaptiveMaxPool2d(1))
    conv, pool = layer_table(model, (1, 9, 13))
    assert conv.output_arithmetic == "H: (9 − 3 + 2·0)/1 + 1 = 7; W: (13 − 5 + 2·0)/2 + 1 = 5"
    assert conv.params_arithmetic == "3·5·1·2 + 2 = 32"
    assert pool.output_arithmetic == "H: global: f = 7 → 1; W: global: f = 5 → 1"


def test_table_without_receptive_fields_for_untraceable_model() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y if y.sum() > 0 else -y  # data-dependent: not traceable

    rows = layer_table(Branchy(), (3, 8, 8), receptive_field=False)
    assert rows[0].output_shape == (4, 6, 6) and rows[0].receptive_field is None
    with pytest.raises(ValueError, match="could not trace"):
        layer_table(Branchy(), (3, 8, 8))


def test_format_and_dict() -> None:
    rows = layer_table(models.create("lenet5"), (1, 32, 32))
    text = format_layer_table(rows)
    lines = text.splitlines()
    assert lines[0].split() == [
        "layer",
        "type",
        "input",
        "output",
        "output",
        "size",
        "weights",
        "RF",
    ]
    assert len(lines) == len(rows) + 1 and "5·5·1·6 + 6 = 156" in text
    data = rows[0].as_dict()
    assert data["params"] == 156 and data["receptive_field"]["size"] == [5, 5]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("vgg", (3, 8, 8)), TypeError, "`model`"),
        ((nn.Conv2d(3, 2, 3), 8), TypeError, "`input_size`"),
        ((nn.Conv2d(3, 2, 3), (3, -1, 8)), ValueError, "`input_size`"),
    ],
)
def test_layer_table_argument_errors(args, error, match) -> None:
    with pytest.raises(error, match=match):
        layer_table(*args)
