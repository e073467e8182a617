"""Pieces of the per-layer sections."""

from __future__ import annotations

import pytest

from cnnviz.report.layers import param_formula
from cnnviz.report.sections import fmt, row_values
from cnnviz.store import TableRow


@pytest.mark.parametrize(
    ("shape", "bias", "text"),
    [
        ([6, 3, 5, 5], True, "5×5×3×6 + 6 = 456"),  # LeNet-5's C1, as in the lecture
        ([96, 3, 11, 11], True, "11×11×3×96 + 96 = 34 944"),  # AlexNet's CONV1
        ([64, 64, 3, 3], False, "3×3×64×64 = 36 864"),
        ([6, 3, 5, 5], None, "5×5×3×6 = 450 weights (+ 6 biases if the layer has them)"),
        ([100, 300, 3], True, "3×300×100 + 100 = 90 100"),  # a 1-D conv (Kim's CNN)
    ],
)
def test_param_formula(shape: list[int], bias: bool | None, text: str) -> None:
    assert param_formula(shape, bias) == text


def test_fmt() -> None:
    assert fmt([3, 32, 32]) == "3×32×32"
    assert fmt(1234567) == "1 234 567"
    assert fmt(0.123456) == "0.1235"
    assert fmt(None) == "" and fmt(True) == "yes"


def test_layer_row_display_values() -> None:
    row = TableRow(
        name="c",
        kernel=(3, 3),
        padding=(1, (0, 1)),
        weights_arithmetic="3·3·3·4 + 4 = 112",
        rf_size=(7, 7),
        rf_jump=(2, 2),
    )
    values = row_values(row)
    assert values["kernel"] == (3, 3) and values["padding"] == [1, "0/1"]
    assert values["weights_arithmetic"] == "3·3·3·4 + 4 = 112"
    assert values["rf_size"] == (7, 7) and values["rf_jump"] == (2, 2)
    assert fmt(values["padding"]) == "1×0/1"
    assert row_values(TableRow(name="p", padding=(2,)))["padding"] == [2]
