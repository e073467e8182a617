"""The effective-field summary: the share of the theoretical field holding 90% of the mass.

Known answers: a flat gradient over a k x k filter holds 90% of its mass in exactly 90% of the
field; stacked uniform filters have the n-fold convolution of uniform kernels as their exact
gradient, which tends to a Gaussian whose side grows like sqrt(n) while the field grows like n.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import models
from cnnviz.analysis.receptive_field import effective_receptive_field, receptive_fields


# ------------------------------------------------------------------------------------ helpers
def _share(values: np.ndarray, q: float = 0.9) -> float:
    """Reference: positions (largest first, last one fractional) holding ``q`` of the mass,
    as a share of all positions. A plain loop, independent of the library's implementation."""
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]
    target, held = q * ordered.sum(), 0.0
    for i, value in enumerate(ordered):
        if held + value >= target:
            return (i + (target - held) / value) / ordered.size
        held += value
    raise AssertionError("unreachable: the whole map holds all of its mass")


def _uniform_stack(depth: int, kernel: int, nd: int) -> nn.Sequential:
    """``depth`` convolutions with all-one kernels, no bias, no activation: a linear stack."""
    conv = nn.Conv1d if nd == 1 else nn.Conv2d
    layers = [conv(1, 1, kernel, padding=kernel // 2, bias=False) for _ in range(depth)]
    for layer in layers:
        nn.init.ones_(layer.weight)
    return nn.Sequential(*layers)


def _binomial(depth: int) -> np.ndarray:
    """The exact 1-D gradient of a stack of uniform 3-taps: [1, 1, 1] convolved ``depth`` times."""
    p = np.array([1.0])
    for _ in range(depth):
        p = np.convolve(p, [1.0, 1.0, 1.0])
    return p


# --------------------------------------------------------------------------- a flat gradient
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_uniform_filter_holds_90_percent_in_90_percent(k: int) -> None:
    model = _uniform_stack(1, k, nd=2)
    size = k + 6
    erf = effective_receptive_field(model, "0", torch.randn(3, 1, size, size))
    assert erf.theoretical is not None and erf.theoretical.size == (k, k)
    assert erf.ratio == pytest.approx(0.9, abs=1e-12)
    assert erf.effective_area == pytest.approx(0.9 * k * k, abs=1e-9)
    assert erf.effective_size == pytest.approx(math.sqrt(0.9) * k, abs=1e-9)
    assert erf.inside_fraction == pytest.approx(1.0, abs=1e-12)
    assert erf.local_fraction is None and erf.note == ""


def test_ratio_follows_the_mass_fraction() -> None:
    model = _uniform_stack(1, 5, nd=2)
    probe = torch.randn(2, 1, 11, 11)
    for q in (0.5, 0.75, 1.0):
        erf = effective_receptive_field(model, "0", probe, mass_fraction=q)
        assert erf.ratio == pytest.approx(q, abs=1e-12) and erf.mass_fraction == q


def test_lenet5_fields_never_exceed_the_theoretical_field() -> None:
    # issue 13: the disc diameter 2r + 1 gave "effective / theoretical size 1.31" for C1
    model = models.create("lenet5")
    probe = torch.randn(8, 1, 32, 32)
    rfs = receptive_fields(model, (1, 32, 32))
    assert set(rfs) == {"features.c1", "features.s2", "features.c3", "features.s4", "features.c5"}
    for name, rf in rfs.items():
        erf = effective_receptive_field(model, name, probe)
        box = rf.region(*erf.unit)
        side = math.sqrt((box[1] - box[0]) * (box[3] - box[2]))
        assert 0 < erf.ratio <= 1, name
        assert erf.effective_size <= side + 1e-9 and erf.effective_size <= 32, name
        assert erf.inside_fraction == pytest.approx(1.0), name


# ------------------------------------------------------------- stacked uniform 3x3: Gaussian
@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_stacked_uniform_filters_match_the_exact_distribution(depth: int) -> None:
    size = 2 * depth + 1 + 6
    model = _uniform_stack(depth, 3, nd=2)
    erf = effective_receptive_field(model, str(depth - 1), torch.randn(2, 1, size, size))
    p = _binomial(depth)
    centre = (size - 1) // 2
    assert erf.unit == (centre, centre) and erf.theoretical.size == (2 * depth + 1,) * 2
    # the map is the outer product of the 1-D distributions (up to float32 rounding)
    box = erf.theoretical.region(*erf.unit)
    torch.testing.assert_close(
        erf.map[box[0] : box[1], box[2] : box[3]].double(),
        torch.from_numpy(np.outer(p, p)),
        rtol=1e-5,
        atol=0.0,
    )
    assert erf.ratio == pytest.approx(_share(np.outer(p, p)), rel=1e-4)
    assert erf.ratio <= 0.9 + 1e-12  # a peaked map needs less than 90% of the field


def test_stacked_uniform_filters_shrink_like_one_over_sqrt_depth() -> None:
    ratios, sides = [], []
    for depth in (4, 8, 16):
        size = 2 * depth + 7
        model = _uniform_stack(depth, 3, nd=2)
        erf = effective_receptive_field(model, str(depth - 1), torch.randn(1, 1, size, size))
        ratios.append(erf.ratio)
        sides.append(erf.effective_size / (2 * depth + 1))
        # Gaussian limit: variance 2n/3 per axis, 90% of the mass in a disc of area
        # 2 pi sigma^2 ln 10, so the effective side is sqrt(2 pi (2/3) ln 10) * sqrt(n)
        assert erf.effective_size / math.sqrt(depth) == pytest.approx(
            math.sqrt(2 * math.pi * (2 / 3) * math.log(10)), rel=0.03
        )
    assert ratios[0] > ratios[1] > ratios[2]
    # effective side / theoretical side halves roughly each time the depth quadruples
    assert sides[0] / sides[2] == pytest.approx(2.0, rel=0.15)


# ------------------------------------------------------------------------------------ 1-D
def test_one_d_uniform_and_stacked() -> None:
    flat = effective_receptive_field(_uniform_stack(1, 5, nd=1), "0", torch.randn(3, 1, 15))
    assert flat.map.shape == (15,) and flat.theoretical.size == (5,)
    assert flat.ratio == pytest.approx(0.9, abs=1e-12)
    assert flat.effective_size == pytest.approx(4.5, abs=1e-9)  # a length, not a square side
    depth = 8
    stacked = effective_receptive_field(
        _uniform_stack(depth, 3, nd=1), str(depth - 1), torch.randn(2, 1, 2 * depth + 9)
    )
    p = _binomial(depth)
    assert stacked.ratio == pytest.approx(_share(p), rel=1e-4)
    assert stacked.effective_size == pytest.approx(_share(p) * (2 * depth + 1), rel=1e-4)
    # Gaussian limit: 90% of the mass within +-1.645 sigma, sigma = sqrt(2n/3)
    assert stacked.effective_size == pytest.approx(2 * 1.6449 * math.sqrt(2 * depth / 3), rel=0.05)


# ----------------------------------------------------------------------- degenerate gradients
class _SqrtAbs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.abs(x))


def test_nan_gradients_give_nan_fields_and_a_note(leak_check) -> None:
    model = nn.Sequential(_SqrtAbs(), nn.Conv2d(1, 2, 3, padding=1))
    check = leak_check(model)
    erf = effective_receptive_field(model, "1", torch.zeros(2, 1, 9, 9))  # d sqrt(|x|) at 0
    assert bool(torch.isnan(erf.map).any())
    assert "NaN/Inf" in erf.note
    assert math.isnan(erf.ratio) and math.isnan(erf.effective_size)
    assert math.isnan(erf.effective_area) and math.isnan(erf.inside_fraction)
    assert math.isnan(erf.radius) and all(math.isnan(v) for v in (*erf.centroid, *erf.sigma))
    assert erf.theoretical is not None and erf.theoretical.size == (3, 3)
    check.verify()


def test_zero_gradient_gives_nan_fields_and_a_note() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    nn.init.zeros_(model[0].weight)
    erf = effective_receptive_field(model, "0", torch.randn(2, 1, 9, 9))
    assert float(erf.map.abs().sum()) == 0.0
    assert "zero" in erf.note and math.isnan(erf.ratio) and math.isnan(erf.effective_size)


class _Upsampled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2)
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(x))


def test_without_theoretical_field_the_whole_input_is_the_reference() -> None:
    model = _Upsampled()
    nn.init.ones_(model.conv.weight)
    erf = effective_receptive_field(model, "conv", torch.randn(2, 1, 8, 8))
    assert erf.theoretical is None and "no theoretical receptive field" in erf.note
    assert erf.ratio is None and erf.inside_fraction is None
    # nearest 2x upsampling then a flat 3x3: input pixels get weights 4, 2, 2, 1 (a 2x2 block)
    assert int((erf.map > 0).sum()) == 4
    expected = math.sqrt(_share(erf.map.numpy()) * 64)
    assert erf.effective_size == pytest.approx(expected, rel=1e-6)
