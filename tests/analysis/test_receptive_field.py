"""Receptive fields: analytical numbers vs an independent gradient measurement, and the ERF."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnviz import models
from cnnviz.analysis.guard import hook_count
from cnnviz.analysis.receptive_field import (
    ReceptiveField,
    ReceptiveFieldError,
    effective_receptive_field,
    measure_receptive_field,
    measure_receptive_fields,
    receptive_fields,
)


# ------------------------------------------------------------------------------------ helpers
def _unit(spatial: tuple[int, ...], pick: str) -> tuple[int, ...]:
    if pick == "first":
        return tuple(0 for _ in spatial)
    if pick == "last":
        return tuple(n - 1 for n in spatial)
    return tuple((n - 1) // 2 for n in spatial)


def assert_agrees(
    model: nn.Module,
    input_size: tuple[int, ...],
    layers: list[str] | None = None,
    picks: tuple[str, ...] = ("first", "centre", "last"),
) -> dict[str, ReceptiveField]:
    """Analytical regions equal the measured gradient support for every layer and unit pick.

    Units that read only padding (empty region) must be rejected by the measurement; layers
    marked ``exact=False`` must contain the measured region.
    """
    rfs = receptive_fields(model, input_size)
    names = layers or list(rfs)
    for pick in picks:
        units = {n: _unit(rfs[n].output_spatial, pick) for n in names}
        regions = {}
        for name in names:
            region = rfs[name].region(*units[name])
            regions[name] = (0, 1, *region) if rfs[name].ndim == 1 else region
        empty = [n for n in names if any(regions[n][a] == regions[n][a + 1] for a in (0, 2))]
        for name in empty:
            with pytest.raises(ValueError, match="does not depend on the input"):
                measure_receptive_field(model, name, input_size, unit=units[name])
        seen = [n for n in names if n not in empty]
        measured = measure_receptive_fields(model, seen, input_size, units=units)
        for name in seen:
            rf, got, want = rfs[name], measured[name].region, regions[name]
            if not rf.exact:
                assert want[0] <= got[0] and got[1] <= want[1], (name, pick, rf)
                assert want[2] <= got[2] and got[3] <= want[3], (name, pick, rf)
                continue
            assert got == want, (name, pick, rf)
            if rf.region(*units[name], clip=False) == rf.region(*units[name]):
                assert (measured[name].size_h, measured[name].size_w)[-rf.ndim :] == rf.size
    return rfs


def _conv_pool_names(model: nn.Module) -> list[str]:
    kinds = (nn.Conv1d, nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
    return [n for n, m in model.named_modules() if isinstance(m, kinds)]


def _thin(names: list[str], limit: int) -> list[str]:
    """At most ``limit`` names spread over the list, always including the last one."""
    if len(names) <= limit:
        return names
    step = math.ceil(len(names) / limit)
    return sorted(set(names[::step]) | {names[-1]}, key=names.index)


@pytest.fixture(scope="module")
def tv_vgg16() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.vgg16()


@pytest.fixture(scope="module")
def tv_alexnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.alexnet()


# --------------------------------------------------------------------- known analytical values
def test_vgg16_known_values_measured_at_224(tv_vgg16: nn.Module) -> None:
    model = tv_vgg16
    rfs = receptive_fields(model, (3, 224, 224))
    conv5_3, pool5 = rfs["features.28"], rfs["features.30"]
    assert (conv5_3.size, conv5_3.jump, conv5_3.padding) == ((196, 196), (16, 16), (90, 90))
    assert (pool5.size, pool5.jump) == ((212, 212), (32, 32))
    assert conv5_3.output_shape == (512, 14, 14) and pool5.output_shape == (512, 7, 7)
    assert [rfs[f"features.{i}"].size[0] for i in (0, 2, 4, 5, 9, 16, 23)] == [
        3, 5, 6, 10, 16, 44, 100
    ]  # fmt: skip
    # the centre units' fields fit in the image, so the measurement sees their full size
    got = measure_receptive_fields(model, ["features.28", "features.30"], (3, 224, 224))
    assert (got["features.28"].size_h, got["features.28"].size_w) == (196, 196)
    assert (got["features.30"].size_h, got["features.30"].size_w) == (212, 212)
    assert got["features.28"].region == conv5_3.region(6, 6) == (6, 202, 6, 202)
    assert conv5_3.region(0, 0, clip=False) == (-90, 106, -90, 106)
    assert conv5_3.region(0, 0) == (0, 106, 0, 106)


def test_torchvision_alexnet_known_values_measured(tv_alexnet: nn.Module) -> None:
    model = tv_alexnet
    rfs = receptive_fields(model, (3, 224, 224))
    sizes = {name: rf.size[0] for name, rf in rfs.items()}
    assert sizes == {
        "features.0": 11,
        "features.2": 19,
        "features.3": 51,
        "features.5": 67,
        "features.6": 99,
        "features.8": 131,
        "features.10": 163,
        "features.12": 195,
        "avgpool": 195,
    }
    got = measure_receptive_field(model, "features.10", (3, 224, 224))
    assert (got.size_h, got.size_w) == (163, 163)
    assert_agrees(model, (3, 224, 224), picks=("centre",))


def test_cnnviz_alexnet_canonical_all_layers() -> None:
    model = models.create("alexnet")
    rfs = assert_agrees(model, (3, 227, 227))
    assert [rf.size[0] for rf in rfs.values()] == [11, 19, 51, 67, 99, 131, 163, 195]
    assert [rf.jump[0] for rf in rfs.values()] == [4, 8, 8, 16, 16, 16, 16, 32]
    first = next(iter(rfs.values()))
    assert first.output_shape == (96, 55, 55) and first.type == "Conv2d"


def test_cnnviz_vgg16_canonical() -> None:
    model = models.create("vgg16")
    rfs = receptive_fields(model, (3, 224, 224))
    assert [rf.size[0] for rf in rfs.values()][-3:] == [164, 196, 212]
    names = list(rfs)
    assert_agrees(model, (3, 224, 224), layers=[names[0], names[4], names[-2], names[-1]])


# ----------------------------------------------------- every case study, small-input variants
@pytest.mark.parametrize("name", models.available())
def test_case_study_models_agree_with_measurement(name: str) -> None:
    spec = models.spec(name)
    model = models.create(name, input_size=spec.small_input_size)
    input_size = spec.input_shape_at(spec.small_input_size)
    names = list(receptive_fields(model, input_size))
    assert names, name
    layers = _thin(names, 24)
    picks = ("first", "centre", "last") if len(names) <= 60 else ("centre", "last")
    rfs = assert_agrees(model, input_size, layers=layers, picks=picks)
    assert not any(rf.misaligned for rf in rfs.values())


@pytest.mark.parametrize(
    ("builder", "size", "limit"),
    [
        ("tv_alexnet", 99, 99),
        ("tv_vgg16", 64, 99),
        (lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True), 67, 24),
        (lambda: torchvision.models.resnet18(), 67, 99),
        (lambda: torchvision.models.resnet50(), 61, 20),
    ],
    ids=["alexnet", "vgg16", "googlenet", "resnet18", "resnet50"],
)
def test_torchvision_models_agree_with_measurement(request, builder, size: int, limit: int) -> None:
    model = request.getfixturevalue(builder) if isinstance(builder, str) else builder()
    names = list(receptive_fields(model, (3, size, size)))
    rfs = assert_agrees(model, (3, size, size), layers=_thin(names, limit))
    assert not any(rf.misaligned for rf in rfs.values())  # these nets are all aligned


def test_resnet_and_inception_branches_take_largest_field() -> None:
    model = torchvision.models.resnet18()
    rfs = receptive_fields(model, (3, 224, 224))
    # the downsample shortcut (1x1, stride 2) sees less than the main path it is added to,
    # and the next block's first conv sees the hull (the main path) plus its own 3x3
    assert rfs["layer1.1.conv2"].size == (43, 43)
    assert rfs["layer2.0.downsample.0"].size == (43, 43)
    assert rfs["layer2.0.conv2"].size == (67, 67)
    assert rfs["layer2.1.conv1"].size == (67 + 2 * 8, 67 + 2 * 8)
    assert rfs["layer4.1.conv2"].size == (435, 435)
    google = receptive_fields(
        torchvision.models.googlenet(aux_logits=False, init_weights=True), (3, 224, 224)
    )
    # after a concatenation the 1x1 branch inherits the widest branch's field
    assert google["inception3b.branch1.conv"].size == google["inception3a.branch4.1.conv"].size


# -------------------------------------------------------------------------- misaligned paths
class _Misaligned(nn.Module):
    """Paths with different jumps (added) and different centres (concatenated)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 2, stride=2)  # 8 -> 4, jump 2
        self.b = nn.Conv2d(1, 2, 5)  # 8 -> 4, jump 1
        self.c = nn.Conv2d(2, 2, 3, padding=1)
        self.d = nn.Conv2d(1, 2, 3, padding=1)  # centred
        self.e = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 2, 2))  # shifted by 1/2
        self.p = nn.MaxPool2d(2)
        self.f = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = self.c(self.a(x) + self.b(x))
        z = self.p(torch.cat([self.d(x), self.e(x)], dim=1))
        return y, z, self.f(x)


def test_misaligned_paths_are_flagged_and_regions_exact() -> None:
    model = _Misaligned()
    rfs = receptive_fields(model, (1, 8, 8))
    assert rfs["c"].misaligned and rfs["c"].misaligned_at == ("add",)
    assert rfs["p"].misaligned and rfs["p"].misaligned_at == ("cat",)
    assert not rfs["f"].misaligned and not rfs["a"].misaligned
    assert len(rfs["c"].groups[0]) == 2  # two jumps kept apart: the region is the exact hull
    for i in range(4):
        for j in range(4):
            got = measure_receptive_fields(
                model, ["c", "p"], (1, 8, 8), units={"c": (i, j), "p": (i, j)}
            )
            assert got["c"].region == rfs["c"].region(i, j)
            assert got["p"].region == rfs["p"].region(i, j)


# ----------------------------------------------------------- geometry corner cases, 1-D, ops
class _Geometry(nn.Module):
    """Non-square kernels/strides/paddings, dilation, 'same' padding, functional ops."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, (3, 5), stride=(1, 2), padding=(1, 0))
        self.c2 = nn.Conv2d(4, 4, 3, dilation=2, padding="same")
        self.c3 = nn.Conv2d(4, 4, 4, padding="same")  # even kernel: asymmetric padding
        self.c4 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.c5 = nn.Conv2d(4, 4, 3, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.lrn = nn.LocalResponseNorm(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = self.c3(self.c2(x)) + x
        x = self.lrn(self.bn(self.c4(x)))
        x = self.pool(F.pad(x, (1, 2, 0, 1)))
        x = F.max_pool2d(self.c5(x), 2, 1)
        return torch.flatten(x, 1)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_geometry_corner_cases_agree() -> None:
    rfs = assert_agrees(_Geometry(), (2, 31, 37))
    assert rfs["c1"].size == (3, 5) and rfs["c1"].jump == (1, 2)
    assert rfs["c2"].size == (3 + 4, 5 + 8)


def test_channels_last_block_agrees() -> None:
    # ConvNeXt: depthwise conv, permute to channels-last, LayerNorm + Linear, permute back
    model = torchvision.models.convnext_tiny()
    names = list(receptive_fields(model, (3, 64, 64)))
    assert_agrees(model, (3, 64, 64), layers=_thin(names, 8), picks=("centre",))


def test_one_d_sequences() -> None:
    model = nn.Sequential(
        nn.Conv1d(3, 4, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(4, 4, 3, dilation=3),
        nn.AdaptiveAvgPool1d(4),
    )
    rfs = assert_agrees(model, (3, 40))
    assert rfs["0"].region(0) == (0, 3) and rfs["0"].region(0, clip=False) == (-2, 3)
    assert rfs["3"].size == (6 + (3 * 2 + 1 - 1) * 2,)  # dilation 3 at jump 2
    assert not rfs["4"].exact  # 14 -> 4 does not divide: derived window is a superset
    with pytest.raises(ValueError, match="1 unit indices"):
        rfs["0"].region(0, 0)


def test_adaptive_pool_not_divisible_is_a_superset() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.AdaptiveAvgPool2d(4))  # 10 -> 4
    rf = receptive_fields(model, (1, 12, 12))["1"]
    assert not rf.exact and rf.jump == (2, 2) and rf.size == (6, 6)
    for i in range(4):
        got = measure_receptive_field(model, "1", (1, 12, 12), unit=(i, i)).region
        box = rf.region(i, i)
        assert box[0] <= got[0] and got[1] <= box[1] and box[2] <= got[2] and got[3] <= box[3]


def test_truncated_border_is_not_part_of_clipped_region() -> None:
    # 10 px, 3x3 stride 2 without padding: the last column is never read
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, padding=4))
    rf = receptive_fields(model, (1, 10, 10))["1"]
    assert rf.region(7, 7, clip=False) == (6, 13, 6, 13)
    assert rf.region(7, 7) == (6, 9, 6, 9)
    assert measure_receptive_field(model, "1", (1, 10, 10), unit=(7, 7)).region == (6, 9, 6, 9)
    assert rf.region(9, 9) == (10, 10, 10, 10)  # only padding: an empty region
    with pytest.raises(ValueError, match="does not depend on the input"):
        measure_receptive_field(model, "1", (1, 10, 10), unit=(9, 9))


def test_record_fields_and_validation() -> None:
    rf = receptive_fields(nn.Sequential(nn.Conv2d(3, 2, 3, padding=1)), (3, 8, 8))["0"]
    assert rf.input_spatial == (8, 8) and rf.output_spatial == (8, 8) and rf.ndim == 2
    assert rf.start == (-1, -1) and rf.center(0, 0) == (0.0, 0.0)
    assert rf.as_dict()["size"] == [3, 3]
    with pytest.raises(ValueError, match="outside"):
        rf.region(8, 0)
    with pytest.raises(TypeError, match="ints"):
        rf.region(0.5, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`input_size`"):
        receptive_fields(nn.Conv2d(3, 2, 3), 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`input_size`"):
        receptive_fields(nn.Conv2d(3, 2, 3), (3, 0, 8))
    with pytest.raises(TypeError, match="`model`"):
        receptive_fields("vgg", (3, 8, 8))  # type: ignore[arg-type]


class _Sum(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def _random_net(rng: random.Random, nd: int) -> nn.Sequential:
    conv = nn.Conv1d if nd == 1 else nn.Conv2d
    layers: list[nn.Module] = []
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(["conv", "conv", "max", "avg", "pad", "branch"])
        if kind == "conv":
            k, s, d = rng.randint(1, 5), rng.randint(1, 3), rng.randint(1, 2)
            p = rng.randint(0, d * (k - 1) // 2 + 1)
            mode = (
                rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"]) if p else "zeros"
            )
            layers.append(conv(2, 2, k, stride=s, padding=p, dilation=d, padding_mode=mode))
        elif kind == "max":
            k = rng.randint(2, 4)
            pool = nn.MaxPool1d if nd == 1 else nn.MaxPool2d
            layers.append(
                pool(k, rng.randint(1, 3), rng.randint(0, k // 2), ceil_mode=rng.random() < 0.5)
            )
        elif kind == "avg":
            pool = nn.AvgPool1d if nd == 1 else nn.AvgPool2d
            layers.append(pool(rng.randint(2, 3), rng.randint(1, 2), ceil_mode=rng.random() < 0.5))
        elif kind == "pad":
            lo, hi = rng.randint(0, 2), rng.randint(0, 2)
            pads = (
                [nn.ZeroPad1d, nn.ReflectionPad1d, nn.ReplicationPad1d]
                if nd == 1
                else [nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d]
            )
            layers.append(rng.choice(pads)((lo, hi) if nd == 1 else (lo, hi, hi, lo)))
        else:
            k = rng.choice([1, 3])
            layers.append(_Sum(conv(2, 2, 3, padding=1), conv(2, 2, k, padding=k // 2)))
        layers.append(nn.ReLU())
    if rng.random() < 0.3:
        adaptive = nn.AdaptiveAvgPool1d if nd == 1 else nn.AdaptiveMaxPool2d
        layers.append(adaptive(rng.randint(1, 4)))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("seed", range(8))
def test_random_architectures_every_unit(seed: int) -> None:
    """Random stacks (strides that do not fit, ceil mode, dilation, reflect/circular padding,
    branches, adaptive pools): the clipped region of sampled units equals the measurement."""
    rng = random.Random(seed)
    for _attempt in range(20):
        nd = rng.choice([1, 2])
        model = nn.Sequential(*_random_net(rng, nd))
        size = (2, rng.randint(9, 20)) if nd == 1 else (2, rng.randint(9, 16), rng.randint(9, 18))
        try:
            with torch.no_grad():
                model(torch.zeros(1, *size))
            break
        except RuntimeError:  # the random stack shrank the input away: draw again
            continue
    rfs = receptive_fields(model, size)
    for name, rf in rfs.items():
        units = list(itertools.product(*[range(n) for n in rf.output_spatial]))
        for unit in rng.sample(units, min(len(units), 12)):
            want = rf.region(*unit)
            if any(want[2 * a] == want[2 * a + 1] for a in range(rf.ndim)):
                with pytest.raises(ValueError, match="does not depend"):
                    measure_receptive_field(model, name, size, unit=unit)
                continue
            got = measure_receptive_field(model, name, size, unit=unit).region
            assert got == ((0, 1, *want) if nd == 1 else want), (seed, name, unit, model)


# ------------------------------------------------------------------------------------ errors
class _Upsampling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up(self.conv(x)))


class _Interpolating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0))


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.block = _DataDependent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.conv(x))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_Upsampling(), r"layer 'up' \(Upsample\)"),
        (_Interpolating(), r"operation 'interpolate'"),
        (_Outer(), r"module 'block' \(_DataDependent\)"),
        (nn.Sequential(nn.Conv2d(3, 3, 3), nn.ConvTranspose2d(3, 3, 3)), r"'1' \(ConvTranspose2d"),
    ],
    ids=["upsample", "interpolate", "untraceable", "transposed"],
)
def test_unsupported_layers_raise_naming_them(model: nn.Module, match: str) -> None:
    with pytest.raises(ReceptiveFieldError, match=match):
        receptive_fields(model, (3, 16, 16))
    assert hook_count(model) == 0


def test_measure_validates_names_and_units() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    with pytest.raises(ValueError, match=r"no layer 'conv9'.*layers are: 0, 2"):
        measure_receptive_field(model, "conv9", (3, 8, 8))
    with pytest.raises(ValueError, match="`units`"):
        measure_receptive_field(model, "0", (3, 8, 8), unit=(6, 0))
    assert hook_count(model) == 0


def test_analysis_and_measurement_leave_model_untouched(leak_check) -> None:
    model = models.create("resnet18", input_size=32)
    model.train()
    model.layer1.eval()
    check = leak_check(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    receptive_fields(model, (3, 32, 32))
    measure_receptive_fields(model, ["conv1", "layer4.1.conv2"], (3, 32, 32))
    check.verify()
    assert torch.equal(rng, torch.get_rng_state())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


class _Gate(nn.Module):
    """Squeeze-and-excitation style gates: ``x * f(x)`` would square magnitudes when linear."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x) * (x.mean(dim=(2, 3), keepdim=True) + 9.0)
        return x


def test_gated_model_is_measured_without_overflow() -> None:
    model = _Gate()
    rfs = receptive_fields(model, (2, 40, 40))
    rf = rfs["convs.11"]
    assert rf.region(19, 19) == (0, 40, 0, 40)  # the gates make every unit see the whole image
    assert not rf.misaligned and len(rf.groups[0]) == 2  # own window + the global gate
    assert rf.global_context and rf.local is not None and rf.local_size == (25, 25)
    # products of two input-dependent values are averaged when linearised: no overflow, and
    # the full field is what the gradient reaches through the gates
    assert measure_receptive_field(model, "convs.11", (2, 40, 40)).region == (0, 40, 0, 40)
    cut = measure_receptive_field(model, "convs.11", (2, 40, 40), local=True)
    assert cut.region == rf.region(19, 19, local=True) == (7, 32, 7, 32)


class _Exponentials(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.exp(torch.exp(torch.exp(torch.exp(x) * 4))))


def test_overflowing_linearised_model_is_reported() -> None:
    model = _Exponentials()
    assert receptive_fields(model, (1, 8, 8))["conv"].size == (3, 3)
    with pytest.raises(ReceptiveFieldError, match="overflowed"):
        measure_receptive_field(model, "conv", (1, 8, 8))
    assert hook_count(model) == 0


# ------------------------------------------------------------------ effective receptive field
def _erf_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.Flatten(),
        nn.Linear(3 * 8 * 8, 2),
    )


def test_erf_of_single_conv_is_the_kernel() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1)
    model = nn.Sequential(conv)
    probe = torch.randn(5, 2, 9, 9)
    erf = effective_receptive_field(model, "0", probe, channel=1)
    assert erf.unit == (4, 4) and erf.num_images == 5 and erf.map.shape == (9, 9)
    expected = torch.zeros(9, 9)
    expected[3:6, 3:6] = conv.weight[1].detach().abs().sum(0)
    torch.testing.assert_close(erf.map, expected)
    assert erf.theoretical is not None and erf.theoretical.size == (3, 3)
    summed = effective_receptive_field(model, conv, probe)  # all channels: sum then |.|
    torch.testing.assert_close(summed.map[3:6, 3:6], conv.weight.detach().sum(0).abs().sum(0))


def test_erf_summary_on_real_net(leak_check) -> None:
    model = _erf_net()
    check = leak_check(model)
    probe = torch.randn(6, 2, 16, 16)
    erf = effective_receptive_field(model, "7", probe)
    rf = erf.theoretical
    assert rf is not None and rf.size == (10, 10)
    assert erf.unit == (3, 3)
    top, bottom, left, right = rf.region(*erf.unit)
    outside = erf.map.clone()
    outside[top:bottom, left:right] = 0
    assert float(outside.abs().sum()) == 0.0  # ERF lies inside the theoretical field
    assert float(erf.map.sum()) > 0
    assert 0 < erf.radius <= math.hypot(5, 5)
    # the share of the 10x10 field holding 90% of the mass, and the side of that area
    assert 0 < erf.ratio <= 1 and erf.ratio == pytest.approx(erf.effective_area / 100)
    assert erf.effective_size == pytest.approx(math.sqrt(erf.effective_area))
    assert erf.effective_size <= 10 and erf.inside_fraction == pytest.approx(1.0)
    assert erf.local_fraction is None and erf.note == ""
    assert all(0 < s < 5 for s in erf.sigma)
    assert abs(erf.centroid[0] - (top + bottom - 1) / 2) < 3
    full = effective_receptive_field(model, "7", probe, mass_fraction=1.0)
    assert full.radius >= erf.radius
    support = int((erf.map[top:bottom, left:right] > 0).sum())
    assert full.effective_area == pytest.approx(support)
    assert full.ratio == pytest.approx(support / 100)
    chunked = effective_receptive_field(model, "7", probe, batch_size=4)
    torch.testing.assert_close(chunked.map, erf.map)
    check.verify()


def test_erf_observer_effect_inside_inference_mode(leak_check) -> None:
    model = _erf_net()
    model.train()
    check = leak_check(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [torch.ones_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g
    probe = torch.randn(3, 2, 16, 16)
    rng = torch.get_rng_state()
    reference = effective_receptive_field(model, "4", probe)
    with torch.inference_mode():
        inside = effective_receptive_field(model, "4", probe)
    torch.testing.assert_close(inside.map, reference.map)
    check.verify()
    assert model.training
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.requires_grad for p in model.parameters())
    for p, g in zip(model.parameters(), grads, strict=True):
        assert p.grad is g and torch.equal(g, torch.ones_like(g))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key  # BatchNorm statistics untouched


def test_erf_no_hook_left_when_forward_raises(leak_check) -> None:
    model = _erf_net()
    model.train()
    check = leak_check(model)
    with pytest.raises(RuntimeError):
        effective_receptive_field(model, "7", torch.randn(2, 3, 16, 16))  # wrong channels
    check.verify()
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layer": "nope"}, ValueError, "`layer`.*no layer 'nope'"),
        ({"layer": nn.Conv2d(1, 1, 1)}, ValueError, "not a submodule"),
        ({"channel": 3}, ValueError, r"`channel` must be an int in \[0, 3\)"),
        ({"unit": (8, 0)}, ValueError, "`unit`"),
        ({"probe": torch.zeros(0, 2, 16, 16)}, ValueError, "non-empty"),
        ({"probe": [1, 2]}, TypeError, "`probe`"),
        ({"mass_fraction": 0.0}, ValueError, "`mass_fraction`"),
    ],
)
def test_erf_argument_errors(leak_check, kwargs, error, match) -> None:
    model = _erf_net()
    check = leak_check(model)
    args = {"layer": "7", "probe": torch.randn(2, 2, 16, 16)} | kwargs
    with pytest.raises(error, match=match):
        effective_receptive_field(model, **args)
    check.verify()


def test_erf_for_token_model() -> None:
    model = models.create("kim_cnn", input_size=32, vocab_size=50, embed_dim=8)
    probe = torch.randint(1, 50, (4, 32))
    erf = effective_receptive_field(model, "branches.window5.conv", probe)
    assert erf.map.shape == (32,) and erf.unit == (13,)
    support = torch.nonzero(erf.map).flatten()
    assert int(support[0]) >= 13 and int(support[-1]) <= 17  # inside the 5-token window
    assert erf.theoretical is not None and erf.theoretical.size == (5,)
