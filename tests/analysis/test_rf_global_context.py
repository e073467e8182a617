"""Local and global fields: a squeeze-and-excitation gate makes every later field the whole
image; the local field (global-context paths cut) is reported beside it and measured."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz import models
from cnnviz.analysis.receptive_field import (
    effective_receptive_field,
    measure_receptive_fields,
    receptive_fields,
)


class _SE(nn.Module):
    """conv - conv - gate - conv; the gate in one of the usual styles, or none."""

    def __init__(self, style: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.style = style
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.lin1 = nn.Linear(8, 4)
        self.lin2 = nn.Linear(4, 8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        if self.style == "module":  # torchvision: AdaptiveAvgPool2d(1) and 1x1 convs
            x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        elif self.style == "mean":  # timm: x.mean((2, 3), keepdim=True)
            x = x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        elif self.style == "linear":  # the paper: squeeze to (N, C), Linear, view back
            s = torch.sigmoid(self.lin2(F.relu(self.lin1(x.mean((2, 3))))))
            x = x * s.view(x.shape[0], -1, 1, 1)
        x = self.conv3(x)
        if self.style == "aspp":  # DeepLab's image pooling branch, interpolated back
            pooled = F.interpolate(self.pool(x), size=x.shape[-2:])
            x = self.conv4(torch.cat([x, pooled], dim=1))
        return x


STYLES = ["module", "mean", "linear", "aspp"]
SIZE = (3, 32, 32)


@pytest.fixture(scope="module")
def plain_fields() -> dict:
    return receptive_fields(_SE("none"), SIZE)


@pytest.mark.parametrize("style", STYLES)
def test_gate_sets_global_context_and_keeps_the_local_field(style: str, plain_fields) -> None:
    model = _SE(style)
    rfs = receptive_fields(model, SIZE)
    after = "conv4" if style == "aspp" else "conv3"
    rf, plain = rfs[after], plain_fields["conv3"]
    assert rf.global_context and rf.global_context_at
    assert rf.region(8, 8) == (0, 32, 0, 32)  # the full field is the whole image
    local = rf.local
    assert local is not None and not local.global_context and local.local is None
    # the local field is the conv stack's field: the same model without the gate
    assert (local.size, local.jump, local.padding) == (plain.size, plain.jump, plain.padding)
    assert rf.local_size == plain.size == (9, 9) and rf.local_jump == (2, 2)
    for unit in itertools.product(range(16), repeat=2):
        assert rf.region(*unit, local=True) == plain.region(*unit)
    assert rf.center(8, 8, local=True) == plain.center(8, 8)
    # layers before the gate and the gate's own layers see no global context
    for name in ("conv1", "conv2"):
        assert not rfs[name].global_context and rfs[name].local is None
        assert rfs[name].local_field is rfs[name] and rfs[name].region(3, 3, local=True) == (
            rfs[name].region(3, 3)
        )
    if style in ("module", "mean"):
        assert not rfs["fc1"].global_context and rfs["fc1"].region(0, 0) == (0, 32, 0, 32)
    data = rf.as_dict()
    assert data["global_context"] is True and data["global_context_at"] == list(
        rf.global_context_at
    )
    assert data["local"]["size"] == [9, 9] and data["local"]["jump"] == [2, 2]
    assert rfs["conv1"].as_dict()["local"] is None
    assert rfs["conv1"].as_dict()["global_context"] is False


@pytest.mark.parametrize("style", STYLES)
def test_full_and_local_fields_equal_the_measurements(style: str, leak_check) -> None:
    model = _SE(style)
    model.train()
    check = leak_check(model)  # hooks, modes (and, with observe, parameters) left as they were
    rfs = receptive_fields(model, SIZE)
    names = [n for n in ("conv1", "conv2", "conv3", "conv4") if n in rfs]
    gated = [n for n in names if rfs[n].global_context]
    assert gated
    for unit in [(0, 0), (8, 8), (15, 15), (3, 12)]:
        units = dict.fromkeys(names, unit) | {"conv1": (2 * unit[0], 2 * unit[1])}
        full = measure_receptive_fields(model, names, SIZE, units=units)
        cut = measure_receptive_fields(model, gated, SIZE, units=units, local=True)
        for name in names:
            assert full[name].region == rfs[name].region(*units[name]), (name, unit)
        for name in gated:
            assert cut[name].region == rfs[name].region(*units[name], local=True), (name, unit)
            assert cut[name].region != full[name].region
    check.verify()
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())


def test_plain_models_have_no_global_context() -> None:
    for model, size in [
        (models.create("lenet5"), (1, 32, 32)),
        (models.create("resnet18", input_size=32), (3, 32, 32)),
    ]:
        rfs = receptive_fields(model, size)
        assert rfs
        for rf in rfs.values():
            assert not rf.global_context and rf.global_context_at == () and rf.local is None
            unit = tuple((n - 1) // 2 for n in rf.output_spatial)
            assert rf.region(*unit, local=True) == rf.region(*unit)
            assert rf.local_size == rf.size and rf.as_dict()["local"] is None


def test_timm_efficientnet_b0_local_field_after_the_gate() -> None:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False)
    rfs = receptive_fields(model, (3, 64, 64))
    pw = rfs["blocks.0.0.conv_pw"]
    # stem 3x3/2 and depthwise 3x3: 7 px; the SE gate adds the whole image
    assert pw.size == (69, 69) and pw.region(15, 15) == (0, 64, 0, 64)
    assert pw.global_context and pw.global_context_at == ("blocks.0.0.se:mul",)
    assert pw.local_size == (7, 7) and pw.region(15, 15, local=True) == (27, 34, 27, 34)
    assert not rfs["blocks.0.0.conv_dw"].global_context
    assert not rfs["blocks.0.0.se.conv_reduce"].global_context  # only pooled values


def test_erf_of_a_gated_layer_is_centred_and_reports_the_local_share() -> None:
    model = _SE("module")
    erf = effective_receptive_field(model, "conv3", torch.randn(4, *SIZE))
    assert erf.theoretical is not None and erf.theoretical.global_context
    # every full field is the whole image: the default unit is centred by the local field
    assert erf.unit == (8, 8)
    assert 0 < erf.ratio <= 1 and erf.inside_fraction == pytest.approx(1.0)
    assert erf.local_fraction is not None and 0.5 < erf.local_fraction < 1.0
    top, bottom, left, right = erf.theoretical.region(8, 8, local=True)
    outside = erf.map.clone()
    outside[top:bottom, left:right] = 0
    assert float(outside.sum()) > 0  # the gate's gradient reaches every pixel
    local_mass = float(erf.map[top:bottom, left:right].sum()) / float(erf.map.sum())
    assert erf.local_fraction == pytest.approx(local_mass, rel=1e-6)


class _Attention(nn.Module):
    """A non-local block: attention over all positions of a conv map, added back to it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.q, self.k, self.v, self.o = (nn.Conv2d(4, 4, 1) for _ in range(4))
        self.after = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        q, k, v = (f(x).flatten(2) for f in (self.q, self.k, self.v))
        weights = torch.softmax(q.transpose(1, 2) @ k, dim=-1)
        return self.after(x + self.o((v @ weights.transpose(1, 2)).view_as(x)))


def test_attention_over_all_positions_is_global_context() -> None:
    model = _Attention()
    rfs = receptive_fields(model, (3, 16, 16))
    rf = rfs["after"]
    assert rf.global_context and rf.global_context_at == ("add",)
    assert rf.local_size == (5, 5) and not rfs["o"].global_context  # o sees only attention
    for unit in [(0, 0), (7, 7), (15, 15)]:
        units = {"after": unit}
        full = measure_receptive_fields(model, ["after"], (3, 16, 16), units=units)
        cut = measure_receptive_fields(model, ["after"], (3, 16, 16), units=units, local=True)
        assert full["after"].region == rf.region(*unit) == (0, 16, 0, 16)
        assert cut["after"].region == rf.region(*unit, local=True)
