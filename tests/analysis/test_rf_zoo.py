"""Issue 10: analytical receptive fields equal the gradient measurement across a model zoo.

Every conv and pool layer of each model, at a small input, random weights: the clipped region
of the first, centre and last unit equals the support of the input gradient of the linearised
model. What the measurement measures is the *full* field (after a squeeze-and-excitation gate
the gradient reaches every pixel through the global pool), so it is compared with the full
field; the local field is compared with a second measurement in which the global spatial
reductions are cut (``local=True``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from timm.layers import create_conv2d, create_pool2d
from torch import nn

from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES
from cnnviz.analysis.receptive_field import (
    ReceptiveField,
    measure_receptive_fields,
    receptive_fields,
)

SIZE = 64


def _timm(name: str) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False)


ZOO: dict[str, Callable[[], nn.Module]] = {
    "tv_mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "tv_efficientnet_b0": torchvision.models.efficientnet_b0,
    "tv_convnext_tiny": torchvision.models.convnext_tiny,
    "tv_regnet_x_400mf": torchvision.models.regnet_x_400mf,
    "tv_densenet121": torchvision.models.densenet121,
    "tv_shufflenet_v2_x0_5": torchvision.models.shufflenet_v2_x0_5,
    "tv_squeezenet1_0": torchvision.models.squeezenet1_0,
    "tv_googlenet": lambda: torchvision.models.googlenet(aux_logits=False, init_weights=False),
    "timm_resnet18": _timm("resnet18"),
    "timm_efficientnet_b0": _timm("efficientnet_b0"),
    "timm_convnext_atto": _timm("convnext_atto"),
    "timm_regnetx_002": _timm("regnetx_002"),
    "timm_mobilenetv3_small_100": _timm("mobilenetv3_small_100"),
}
# the models with squeeze-and-excitation gates
GATED = {
    "tv_mobilenet_v3_small",
    "tv_efficientnet_b0",
    "timm_efficientnet_b0",
    "timm_mobilenetv3_small_100",
}


# The whole file takes about 5 s on one core (model construction included): nothing is slow.
@pytest.fixture(scope="module", params=list(ZOO))
def zoo(request: pytest.FixtureRequest) -> tuple[str, nn.Module, dict[str, ReceptiveField]]:
    torch.manual_seed(0)
    model = ZOO[request.param]().eval()
    return request.param, model, receptive_fields(model, (3, SIZE, SIZE))


def _units(rf: ReceptiveField) -> list[tuple[int, ...]]:
    n = rf.output_spatial
    return [(0, 0), tuple((k - 1) // 2 for k in n), tuple(k - 1 for k in n)]


def _compare(model: nn.Module, rfs: dict[str, ReceptiveField], names: list[str], local: bool):
    """Analytical (full or local) region == measured region, for three units of each layer."""
    compared = 0
    for pick in range(3):
        units = {n: _units(rfs[n])[pick] for n in names}
        want = {n: rfs[n].region(*units[n], local=local) for n in names}
        seen = [n for n in names if want[n][0] < want[n][1] and want[n][2] < want[n][3]]
        got = measure_receptive_fields(model, seen, (3, SIZE, SIZE), units=units, local=local)
        for name in seen:
            assert got[name].region == want[name], (name, units[name], local, rfs[name])
            compared += 1
    return compared


def test_every_conv_and_pool_layer_is_analysed(zoo) -> None:
    name, model, rfs = zoo
    layers = [n for n, m in model.named_modules() if isinstance(m, CONV_TYPES + POOL_TYPES)]
    assert set(rfs) == set(layers), name
    assert not any(rf.misaligned for rf in rfs.values()), name


def test_full_fields_equal_the_measurement(zoo) -> None:
    name, model, rfs = zoo
    assert _compare(model, rfs, list(rfs), local=False) >= 2 * len(rfs), name


def test_local_fields_equal_the_measurement_with_gates_cut(zoo) -> None:
    name, model, rfs = zoo
    gated = [n for n, rf in rfs.items() if rf.global_context]
    assert bool(gated) == (name in GATED)
    if not gated:
        assert all(rf.local is None for rf in rfs.values())
        return
    # a layer whose output is 1x1 sees only pooled values along every path it has left
    spatial = [n for n in gated if any(k > 1 for k in rfs[n].output_spatial)]
    assert _compare(model, rfs, spatial, local=True) >= len(spatial)
    full = (0, SIZE, 0, SIZE)
    assert all(rfs[n].region(*_units(rfs[n])[1]) == full for n in gated)
    assert any(rfs[n].region(*_units(rfs[n])[1], local=True) != full for n in gated)


def test_timm_same_padding_layers() -> None:
    # timm's *Same layers pad at run time (TensorFlow's SAME), which torch.fx cannot trace
    torch.manual_seed(0)
    model = nn.Sequential(
        create_conv2d(3, 8, 3, stride=2, padding="same"),
        create_conv2d(8, 8, 4, stride=2, padding="same"),
        create_pool2d("max", 3, stride=2, padding="same"),
        create_pool2d("avg", 2, stride=2, padding="same"),
        create_conv2d(8, 4, 3, dilation=2, padding="same"),
    )
    assert type(model[0]).__name__ == "Conv2dSame" and type(model[2]).__name__ == "MaxPool2dSame"
    rfs = receptive_fields(model, (3, 21, 21))
    assert [rf.size[0] for rf in rfs.values()] == [3, 9, 17, 25, 25 + 4 * 16]
    for unit_pick in range(3):
        units = {n: _units(rf)[unit_pick] for n, rf in rfs.items()}
        got = measure_receptive_fields(model, list(rfs), (3, 21, 21), units=units)
        for name, rf in rfs.items():
            assert got[name].region == rf.region(*units[name]), (name, units[name])
