"""Tests for feature visualization by optimization (cnnviz.analysis.featvis)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.analysis.featvis import (
    FeatVisResult,
    duplicate_layers,
    visualize_channels,
    visualize_layers,
)
from cnnviz.analysis.guard import hook_count

# --------------------------------------------------------------------------- helpers

SOBEL_X_5 = torch.outer(torch.tensor([1.0, 4, 6, 4, 1]), torch.tensor([-1.0, -2, 0, 2, 1]))
SOBEL_X_3 = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
_ROWS, _COLS = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
# Rises towards the top right: edges along the main diagonal, dark below-left, bright above-right.
DIAGONAL_5 = torch.clamp(_COLS - _ROWS, -2, 2)
# Red minus green, blue ignored: prefers red where the green is dark.
RED_MINUS_GREEN = torch.stack([torch.ones(3, 3), -torch.ones(3, 3), torch.zeros(3, 3)]) / 9


def edge_conv(kernel: torch.Tensor, padding: int = 0) -> nn.Conv2d:
    kernel = kernel if kernel.dim() == 3 else kernel.unsqueeze(0)
    conv = nn.Conv2d(kernel.shape[0], 1, kernel.shape[-1], padding=padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel.unsqueeze(0))
    return conv


class FunctionalReLU(nn.Module):
    """A conv whose activation is ``F.relu`` in ``forward``: no ``nn.ReLU`` module to find."""

    def __init__(self, kernel: torch.Tensor, bias: float = 0.0, inplace: bool = False) -> None:
        super().__init__()
        self.conv = edge_conv(kernel)
        if bias:
            self.conv.bias = nn.Parameter(torch.tensor([bias]))
        self.inplace = inplace

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """The conv's ReLU'd maps (what the unit fires)."""
        return F.relu(self.conv(x), inplace=self.inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x).mean(dim=(2, 3))  # a head: the ReLU's output is not the model's


def gradient_energy(image: torch.Tensor) -> tuple[float, float]:
    """Energy of the horizontal (d/dx) and vertical (d/dy) finite differences of [H, W]."""
    gx = (image[:, 1:] - image[:, :-1]).pow(2).sum().item()
    gy = (image[1:, :] - image[:-1, :]).pow(2).sum().item()
    return gx, gy


def oriented_energy_ratio(image: torch.Tensor, degrees: float) -> float:
    """Gradient energy along direction ``degrees`` (from +x towards +row) over the normal's.

    Central differences, so a diagonal is measured on the same footing as the axes. An image of
    stripes whose brightness changes along ``degrees`` gives a large ratio.
    """
    gx = (image[1:-1, 2:] - image[1:-1, :-2]) / 2
    gy = (image[2:, 1:-1] - image[:-2, 1:-1]) / 2
    angle = math.radians(degrees)
    along = math.cos(angle) * gx + math.sin(angle) * gy
    across = -math.sin(angle) * gx + math.cos(angle) * gy
    return (along.pow(2).sum() / across.pow(2).sum()).item()


def unit_correlation(
    image: torch.Tensor, kernel: torch.Tensor, fires: torch.Tensor, units: tuple
) -> float:
    """Mean correlation of the patches at ``units`` with ``kernel``, weighted by ``fires``.

    ``image`` is ``[C, H, W]`` (what the model saw), ``kernel`` ``[C, k, k]`` or ``[k, k]``,
    ``fires`` the ``[H', W']`` map the units read (their activation), so the patches the units
    fire on count.
    """
    kernel = kernel if kernel.dim() == 3 else kernel.unsqueeze(0)
    k = kernel.shape[-1]
    top, bottom, left, right = units
    width = image.shape[-1] - k + 1
    patches = F.unfold(image.unsqueeze(0), k)[0].T  # [units, C*k*k], row-major units
    patches = patches.view(-1, width, patches.shape[-1])[top:bottom, left:right]
    patches = patches.reshape(-1, patches.shape[-1])
    w = kernel.flatten()
    centred = patches - patches.mean(dim=1, keepdim=True)
    corr = centred @ (w - w.mean()) / (centred.norm(dim=1) * (w - w.mean()).norm() + 1e-8)
    weight = fires[top:bottom, left:right].flatten()
    return ((corr * weight).sum() / weight.sum()).item()


def random_images(n: int, shape: tuple[int, ...], seed: int = 123) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def box_mean(maps: torch.Tensor, units: tuple) -> torch.Tensor:
    """Mean of ``[N, H, W]`` maps over the half-open box ``(top, bottom, left, right)``."""
    top, bottom, left, right = units
    return maps[:, top:bottom, left:right].mean(dim=(1, 2))


class Bomb(nn.Module):
    """Identity that raises on its ``after``-th call (to fail in the middle of optimisation)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.after:
            raise RuntimeError("boom")
        return x


def busy_net() -> nn.Sequential:
    """Conv, BatchNorm, in-place ReLU, dropout, pooling and a classifier; seeded."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )


def snapshot(model: nn.Module) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "requires": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "inplace": [m.inplace for m in model.modules() if hasattr(m, "inplace")],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires"] == before["requires"]
    assert after["inplace"] == before["inplace"]
    for g_before, g_after in zip(before["grads"], after["grads"], strict=True):
        assert g_after is g_before
    for v_before, p in zip(before["grad_values"], model.parameters(), strict=True):
        if v_before is not None:
            assert torch.equal(p.grad, v_before)
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key  # weights and BN buffers
    assert hook_count(model) == 0


# --------------------------------------------------------------------------- (a) known answers
# First-layer filters whose preferred input is known by construction: the sum of ReLU'd
# responses over the interior units is largest when the filter's own pattern (positive weights
# bright, negative dark) sits at as many units as fit, i.e. the filter tiled.


def known_answer(
    model: nn.Module,
    layer: str,
    kernel: torch.Tensor,
    size: int = 32,
    maps: object = None,
    **kwargs: object,
) -> tuple[FeatVisResult, float, torch.Tensor]:
    """Optimise ``layer`` channel 0; return the result, the best of 64 random images' objective
    and the optimised image's read map.

    ``maps(x)`` computes the read map independently of featvis (default: the model's output,
    for models that end with the read activation).
    """
    maps = maps or model
    channels = kernel.shape[0] if kernel.dim() == 3 else 1
    shape = (channels, size, size)
    res = visualize_channels(model, layer, [0], input_shape=shape, **kwargs)
    with torch.no_grad():
        best_random = box_mean(maps(random_images(64, shape))[:, 0], res.units).max().item()
        fires = maps(res.images)[0, 0]
    # The reported activation is the clean image's objective over the interior units.
    assert box_mean(fires[None], res.units).item() == pytest.approx(
        res.activations[0].item(), rel=1e-4, abs=1e-5
    )
    return res, best_random, fires


@pytest.mark.parametrize(
    ("kernel", "degrees"),
    [(SOBEL_X_5, 0.0), (SOBEL_X_5.T.contiguous(), 90.0), (DIAGONAL_5, -45.0)],
    ids=["sobel-x", "sobel-y", "diagonal"],
)
def test_first_layer_edge_filter_gives_its_edges_tiled(
    kernel: torch.Tensor, degrees: float
) -> None:
    net = nn.Sequential(edge_conv(kernel), nn.ReLU())
    res, best_random, fires = known_answer(net, "0", kernel)
    assert res.readout is not None and res.readout.describe() == "read after 1"
    assert res.units == (0, 28, 0, 28)  # a 5x5 field fits at every unit of a 28x28 map
    # The score: several times the best random image (the pre-activation mean reached 0.2x-0.6x).
    assert res.activations[0] > 3 * best_random
    # The structure: stripes whose brightness changes along the filter's axis...
    image = res.images[0, 0]
    assert oriented_energy_ratio(image, degrees) >= 4
    # ...and, where the units fire, patches that look like the filter (not a saturated border).
    assert unit_correlation(res.images[0], kernel, fires, res.units) > 0.5
    assert image[8:-8, 8:-8].std() > 0.3  # contrast in the middle, not a flat field


@pytest.mark.parametrize(("param", "least"), [("fourier", 4.0), ("pixel", 2.5)])
def test_sobel_x_horizontal_energy_dominates_with_finite_differences_too(
    param: str, least: float
) -> None:
    """Forward differences; the pixel parametrisation is noisier (measured 3.3x-7x by seed)."""
    net = nn.Sequential(edge_conv(SOBEL_X_5), nn.ReLU())
    res, best_random, _ = known_answer(net, "0", SOBEL_X_5, param=param)
    gx, gy = gradient_energy(res.images[0, 0])
    assert gx >= least * gy
    assert res.activations[0] > 3 * best_random


def test_colour_opponent_filter_gives_red_where_green_is_dark() -> None:
    net = nn.Sequential(edge_conv(RED_MINUS_GREEN), nn.ReLU())
    res, best_random, _ = known_answer(net, "0", RED_MINUS_GREEN, size=16)
    image = res.images[0]
    red_minus_green = image[0] - image[1]
    # The sign of the colour difference: red over green. (Some patches saturate black in all
    # colours, a dead end of the sigmoid after colour decorrelation; without decorrelation the
    # whole image is red: R - G = 1.)
    assert red_minus_green.mean() > 0.5 and (red_minus_green < -0.05).float().mean() < 0.02
    assert res.activations[0] > 1.5 * best_random
    plain, _, _ = known_answer(net, "0", RED_MINUS_GREEN, size=16, decorrelate=False)
    assert (plain.images[0, 0] - plain.images[0, 1]).min() > 0.9
    assert plain.activations[0] > 0.95  # the most any image can give: R = 1, G = 0


def test_batchnorm_between_conv_and_relu_is_read_after_both() -> None:
    """A negative BatchNorm scale flips the preferred edge: only a read after it sees that."""
    bn = nn.BatchNorm2d(1)
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(-1.5)
        bn.bias.fill_(0.2)
    net = nn.Sequential(edge_conv(SOBEL_X_5), bn, nn.ReLU()).eval()
    res, best_random, fires = known_answer(net, "0", SOBEL_X_5)
    assert res.readout.describe() == "read after 1 → 2" and not res.pre_activation
    assert res.activations[0] > 3 * best_random
    image = res.images[0, 0]
    assert oriented_energy_ratio(image, 0.0) >= 4
    # Bright-to-dark edges: where the units fire, the image is the negated filter.
    assert unit_correlation(res.images[0], -SOBEL_X_5, fires, res.units) > 0.5
    assert unit_correlation(res.images[0], SOBEL_X_5, fires, res.units) < -0.5


@pytest.mark.parametrize("inplace", [False, True])
def test_functional_relu_in_forward_is_the_read_site(inplace: bool) -> None:
    net = FunctionalReLU(SOBEL_X_5, inplace=inplace)
    before = snapshot(net)
    res, best_random, fires = known_answer(net, "conv", SOBEL_X_5, maps=net.maps)
    assert res.readout.site.kind == "function" and res.readout.site.name.startswith("relu")
    assert res.readout.post_activation
    assert res.activations[0] > 3 * best_random
    assert oriented_energy_ratio(res.images[0, 0], 0.0) >= 4
    assert unit_correlation(res.images[0], SOBEL_X_5, fires, res.units) > 0.5
    assert_unchanged(net, before)


def test_functional_relu_dead_start_is_redirected() -> None:
    net = FunctionalReLU(SOBEL_X_3, bias=-1.0)  # negative for a grey image: a dead start
    kwargs = {"input_shape": (1, 16, 16), "objective": "center", "steps": 48}
    stuck = visualize_channels(net, "conv", relu_redirect=False, **kwargs)
    assert stuck.activations[0] == 0 and (stuck.history == 0).all()
    moved = visualize_channels(net, "conv", **kwargs)
    assert moved.activations[0] > 2.0  # 3 is the most a 3x3 Sobel-x minus 1 can give
    assert hook_count(net) == 0


def test_old_objective_would_have_been_a_border() -> None:
    """Reading the conv itself (no activation) keeps the degenerate objective, marked as such."""
    net = nn.Sequential(edge_conv(SOBEL_X_3))
    res = visualize_channels(net, "0", input_shape=(1, 16, 16), steps=64)
    assert res.pre_activation and res.readout.stage == "raw"
    # The mean of an edge filter's output telescopes to the image's left and right borders.
    image = res.images[0, 0]
    assert image[:, -1].mean() - image[:, 0].mean() > 0.8


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_vertical_edge_filter_centre_unit_gets_a_vertical_edge(param: str) -> None:
    net = nn.Sequential(edge_conv(SOBEL_X_5))
    res = visualize_channels(
        net, "0", [0], input_shape=(1, 32, 32), objective="center", param=param
    )
    assert res.units == (14, 15, 14, 15)
    with torch.no_grad():
        rnd = net(random_images(512, (1, 32, 32)))[:, 0, 14, 14]
    best = SOBEL_X_5.clamp(min=0).sum().item()  # 48: right columns white, left columns black
    value = res.activations[0].item()
    assert value > 5 * rnd.abs().mean().item()
    assert value > rnd.max().item()
    assert value > 0.8 * best
    # The reported activation is the clean image's (no random transform).
    with torch.no_grad():
        again = net(res.images)[0, 0, 14, 14].item()
    assert again == pytest.approx(value, rel=1e-4, abs=1e-4)
    image = res.images[0, 0]
    gx, gy = gradient_energy(image)
    assert gx > gy
    window = image[14:19, 14:19]  # the centre unit's 5x5 receptive field
    wx, _ = gradient_energy(window)
    # The middle column has zero weight, so its pixels are free: judge the weighted columns.
    _, wy = gradient_energy(window[:, [0, 1, 3, 4]])
    assert wx > 4 * wy
    right, left = image[14:19, 17:19].mean().item(), image[14:19, 14:16].mean().item()
    assert right > 0.8 and left < 0.2


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_vertical_edge_filter_mean_objective_gives_vertical_stripes(param: str) -> None:
    net = nn.Sequential(edge_conv(SOBEL_X_3, padding=1), nn.ReLU(), nn.AvgPool2d(2))
    res = visualize_channels(net, "2", input_shape=(1, 32, 32), objective="mean", param=param)
    assert res.readout.describe() == "read as it is (pool layer)"
    assert res.units == (1, 15, 1, 15)  # pool units whose 4x4 field avoids the padding
    with torch.no_grad():
        rnd = box_mean(net(random_images(256, (1, 32, 32)))[:, 0], res.units)
    value = res.activations[0].item()
    assert value > 2 * rnd.mean().item()
    assert value > rnd.max().item()
    gx, gy = gradient_energy(res.images[0, 0])
    assert gx > 1.5 * gy
    assert res.history[-1, 0] > res.history[0, 0]


# --------------------------------------------------------------------------- (b) guarantees


def test_model_state_modes_grads_buffers_rng_and_hooks_are_untouched() -> None:
    model = busy_net().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)  # a pre-existing gradient
    model[9].bias.requires_grad_(False)
    before = snapshot(model)
    rng = torch.get_rng_state()
    res = visualize_channels(model, "4", None, input_shape=(3, 16, 16), steps=8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_unchanged(model, before)
    assert res.images.shape == (4, 3, 16, 16)
    assert res.images.min() >= 0 and res.images.max() <= 1


def test_result_does_not_depend_on_the_global_rng() -> None:
    model = busy_net()
    torch.manual_seed(1)
    a = visualize_channels(model, "5", [0, 2], input_shape=(3, 16, 16), steps=6)
    torch.manual_seed(2)
    b = visualize_channels(model, "5", [0, 2], input_shape=(3, 16, 16), steps=6)
    assert torch.equal(a.images, b.images)


def test_works_inside_inference_mode() -> None:
    model = busy_net()
    before = snapshot(model)
    with torch.inference_mode():
        res = visualize_channels(model, "5", [1], input_shape=(3, 16, 16), steps=24)
    assert not res.images.is_inference()
    assert res.history[-1, 0] > res.history[0, 0]
    assert_unchanged(model, before)


@pytest.mark.parametrize("after", [1, 5])
def test_exception_in_forward_leaves_no_hook_and_restores_everything(after: int) -> None:
    model = busy_net()
    model.insert(1, Bomb(after))  # before BatchNorm: raises at the probe or mid-optimisation
    model.train()
    before = snapshot(model)
    rng = torch.get_rng_state()
    with pytest.raises((RuntimeError, ValueError), match="boom"):
        visualize_channels(model, "6", [0], input_shape=(3, 16, 16), steps=10)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_unchanged(model, before)


def test_stops_the_forward_at_the_layer() -> None:
    calls = []
    model = busy_net()
    model[9].register_forward_hook(lambda *_: calls.append(1))
    visualize_channels(model, "0", [0], input_shape=(3, 16, 16), steps=3)
    setup = len(calls)  # finding the readout and the receptive fields run the model whole
    visualize_channels(model, "0", [0], input_shape=(3, 16, 16), steps=30)
    assert len(calls) == 2 * setup  # the optimisation steps never reach the classifier


def test_unknown_layer_lists_the_valid_conv_and_pool_names() -> None:
    model = busy_net()
    with pytest.raises(ValueError, match=r"`?layer.*'9'.*0, 4, 5, 7") as info:
        visualize_channels(model, "9", input_shape=(3, 16, 16))
    assert "4" in str(info.value)
    with pytest.raises(ValueError, match="0, 4, 5, 7"):
        visualize_channels(model, "nope", input_shape=(3, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"objective": "max"}, ValueError, "`objective`"),
        ({"should_stop": True}, TypeError, "`should_stop`"),
        ({"progress": 3}, TypeError, "`progress`"),
        ({"param": "wavelet"}, ValueError, "`param`"),
        ({"steps": 0}, ValueError, "`steps`"),
        ({"steps": 2.5}, TypeError, "`steps`"),
        ({"lr": 0}, ValueError, "`lr`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"channels": [4]}, ValueError, r"`channels`.*0\.\.3"),
        ({"channels": []}, ValueError, "`channels`"),
        ({"channels": 2}, TypeError, "`channels`"),
        ({"input_shape": (3, 16)}, ValueError, "`input_shape`"),
        ({"input_shape": (1, 16, 16)}, ValueError, "`input_shape`"),
        ({"mean": [0.5, 0.5]}, ValueError, "`mean`"),
        ({"std": [1.0, 0.0, 1.0]}, ValueError, "`std`"),
        ({"layer": 3}, TypeError, "`layer`"),
    ],
)
def test_invalid_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    model = busy_net()
    args = {"layer": "0", "channels": None, "input_shape": (3, 16, 16), "steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        visualize_channels(model, **args)
    assert hook_count(model) == 0


def test_input_shape_is_required_without_expected_input_shape() -> None:
    with pytest.raises(ValueError, match="`input_shape`"):
        visualize_channels(busy_net(), "0")
    with pytest.raises(TypeError, match="`model`"):
        visualize_channels("model", "0", input_shape=(3, 8, 8))  # type: ignore[arg-type]


def test_class_logits() -> None:
    model = busy_net()
    res = visualize_channels(model, None, [2, 0], input_shape=(3, 16, 16), steps=48)
    assert res.layer is None and res.objective == "logit" and res.channels == [2, 0]
    with torch.no_grad():
        logits = busy_net().eval()(res.images)
    assert torch.allclose(logits[[0, 1], [2, 0]], res.activations, atol=1e-5)
    assert (res.history[-1] > res.history[0]).all()
    with pytest.raises(ValueError, match=r"`channels`.*0\.\.2"):
        visualize_channels(model, None, [3], input_shape=(3, 16, 16), steps=2)


def test_normalisation_is_applied_before_the_model() -> None:
    model = busy_net()
    mean, std = [0.2, 0.4, 0.6], [0.5, 0.25, 2.0]
    res = visualize_channels(
        model, "5", [0, 3], input_shape=(3, 16, 16), mean=mean, std=std, steps=16
    )
    assert torch.equal(res.mean, torch.tensor(mean)) and torch.equal(res.std, torch.tensor(std))
    normed = res.normalized()
    expected = (res.images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    assert torch.allclose(normed, expected)
    # Conv 5 is read after its ReLU (6), over the units whose 8x8 field avoids the padding.
    assert res.readout.describe() == "read after 6" and res.units == (2, 6, 2, 6)
    with torch.no_grad():
        maps = nn.Sequential(*list(busy_net().eval())[:7])(normed)
    assert torch.allclose(box_mean(maps[[0, 1], [0, 3]], res.units), res.activations, atol=1e-5)


def test_history_and_result_fields() -> None:
    res = visualize_channels(
        busy_net(), "0", [0, 1, 3], input_shape=(3, 16, 16), steps=40, history_every=16
    )
    assert isinstance(res, FeatVisResult)
    assert res.history_steps == [0, 16, 32, 39]
    assert res.history.shape == (4, 3)
    assert res.activations.shape == (3,) and res.images.dtype == torch.float32
    assert res.steps == 40 and res.seed == 0 and res.seconds > 0 and res.param == "fourier"
    assert res.same_as is None and res.stopped_at is None and not res.stopped
    assert res.readout.describe() == "read after 1 → 2" and res.units == (1, 15, 1, 15)
    assert res.units_reason.startswith("interior units")


def test_one_channel_and_odd_sizes_with_fourier() -> None:
    net = nn.Sequential(edge_conv(SOBEL_X_3), nn.MaxPool2d(2))
    res = visualize_channels(net, "1", input_shape=(1, 29, 35), steps=32, transforms=False)
    assert res.images.shape == (1, 1, 29, 35)
    assert res.history[-1, 0] > res.history[0, 0]


def test_relu_redirect_gets_a_dead_unit_moving_and_restores_inplace() -> None:
    conv = edge_conv(SOBEL_X_3)
    conv.bias = nn.Parameter(torch.tensor([-1.0]))  # negative for a grey image: a dead start
    net = nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(2))
    kwargs = {"input_shape": (1, 16, 16), "objective": "center", "steps": 48}
    stuck = visualize_channels(net, "2", relu_redirect=False, **kwargs)
    assert stuck.activations[0] == 0 and (stuck.history == 0).all()
    moved = visualize_channels(net, "2", **kwargs)
    assert moved.activations[0] > 2.0  # 3 is the most a 3x3 Sobel-x minus 1 can give
    assert net[1].inplace and hook_count(net) == 0


def test_transform_geometry() -> None:
    from cnnviz.analysis.featvis import _transform

    image = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    pad = 1  # at 12-16 px the padding is the 1-pixel minimum
    # Without jitter, scale and rotation the output is the input (the padding is cropped away).
    theta = identity.clone()
    theta[:, 0, 0] = 16 / (16 + 2 * pad)
    theta[:, 1, 1] = 12 / (12 + 2 * pad)
    assert torch.allclose(_transform(image, theta), image, atol=1e-6)
    # A jitter of one pixel to the right shows the image moved one pixel to the left,
    # with grey (the padding) entering at the right border.
    theta[:, 0, 2] = 1 / ((16 + 2 * pad) / 2)
    moved = _transform(image, theta)
    assert torch.allclose(moved[..., :-1], image[..., 1:], atol=1e-6)
    assert torch.allclose(moved[..., -1], torch.full_like(moved[..., -1], 0.5))


def test_device_must_match_the_model() -> None:
    with pytest.raises(ValueError, match="`device`"):
        visualize_channels(busy_net(), "0", input_shape=(3, 8, 8), device="meta")


# --------------------------------------------------------------------------- determinism


def test_fixed_seed_is_deterministic_and_seed_matters() -> None:
    model = busy_net()
    kwargs = {"input_shape": (3, 16, 16), "steps": 12}
    a = visualize_channels(model, "5", [0, 1, 2], seed=7, **kwargs)
    b = visualize_channels(model, "5", [0, 1, 2], seed=7, **kwargs)
    c = visualize_channels(model, "5", [0, 1, 2], seed=8, **kwargs)
    assert torch.equal(a.images, b.images) and torch.equal(a.activations, b.activations)
    assert torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)
    d = visualize_channels(model, "5", [0, 1, 2], seed=7, batch_size=2, **kwargs)
    e = visualize_channels(model, "5", [0, 1, 2], seed=7, batch_size=2, **kwargs)
    assert d.images.shape == a.images.shape and torch.equal(d.images, e.images)


# --------------------------------------------------------------------------- (c) units read


def test_no_interior_unit_falls_back_to_the_centre_unit() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 9, padding=4), nn.ReLU())  # a 9x9 field on 8x8 images
    res = visualize_channels(net, "0", input_shape=(1, 8, 8), steps=8)
    assert res.units == (4, 5, 4, 5)
    assert res.units_reason.startswith("centre unit")
    with torch.no_grad():
        maps = net(res.images)
    assert torch.allclose(maps[[0, 1], [0, 1], 4, 4], res.activations, atol=1e-6)


class Untraceable(nn.Module):
    """Data-dependent control flow: ``torch.fx`` cannot trace it (no receptive fields)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:
            x = x * 1.0
        return torch.relu(self.conv(x))


def test_unknown_receptive_fields_use_every_unit_and_say_so() -> None:
    net = Untraceable()
    res = visualize_channels(net, "conv", input_shape=(1, 8, 8), steps=8)
    assert res.units == (0, 8, 0, 8)
    assert res.units_reason.startswith("all units: receptive fields unknown")
    assert res.readout.post_activation  # the torch.relu in forward is found anyway
    with torch.no_grad():
        maps = net(res.images)
    assert torch.allclose(maps[[0, 1], [0, 1]].mean(dim=(1, 2)), res.activations, atol=1e-6)


# --------------------------------------------------------------------------- (d) duplicates


def pooled_net(pool: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), pool, nn.Flatten(), nn.LazyLinear(2)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("pool", "objective", "duplicate"),
    [
        (nn.AdaptiveAvgPool2d(1), "mean", True),
        (nn.AdaptiveMaxPool2d((1, 1)), "mean", True),
        (nn.AvgPool2d(6), "mean", True),  # one window over the whole 6x6 map
        (nn.AvgPool2d(2), "mean", True),  # windows side by side: the same mean
        (nn.AvgPool2d(2), "center", False),
        (nn.AvgPool2d(3, stride=1), "mean", False),  # overlapping windows weigh the centre
        (nn.AvgPool2d(4), "mean", False),  # one window, missing the last two rows
        (nn.MaxPool2d(1), "center", True),  # kernel 1, stride 1: the map itself
        (nn.AdaptiveAvgPool2d(1), "center", False),  # a mean is not the centre unit
        (nn.MaxPool2d(2), "mean", False),
        (nn.AvgPool2d(5), "mean", False),  # misses the last row and column
    ],
)
def test_duplicate_layers_finds_pools_that_only_repeat_a_layer(
    pool: nn.Module, objective: str, duplicate: bool
) -> None:
    net = pooled_net(pool)
    net(torch.zeros(1, 1, 8, 8))  # materialise the lazy head
    found = duplicate_layers(net, ["0", "2"], input_shape=(1, 8, 8), objective=objective)
    assert found == ({"2": "0"} if duplicate else {})
    assert duplicate_layers(net, ["2"], input_shape=(1, 8, 8), objective=objective) == {}
    assert hook_count(net) == 0


def test_lenet_average_pools_repeat_the_conv_before_them() -> None:
    from cnnviz.models import create

    torch.manual_seed(0)
    lenet = create("lenet5", in_channels=1, num_classes=3)  # tanh and 2x2 average pooling
    layers = ["features.c1", "features.s2", "features.c3", "features.s4", "features.c5"]
    found = duplicate_layers(lenet, layers)
    assert found == {"features.s2": "features.c1", "features.s4": "features.c3"}
    # Not a shortcut: optimised on their own, the pool gets the conv's image.
    conv = visualize_channels(lenet, "features.c1", [2], steps=24)
    pool = visualize_channels(lenet, "features.s2", [2], steps=24)
    assert torch.allclose(conv.images, pool.images, atol=1e-3)
    assert torch.allclose(conv.activations, pool.activations, rtol=1e-4)


def test_a_global_pool_after_the_last_conv_is_not_optimised_twice() -> None:
    net = pooled_net(nn.AdaptiveAvgPool2d(1))
    net(torch.zeros(1, 1, 8, 8))
    calls = []
    handle = net[0].register_forward_hook(lambda *_: calls.append(1))
    kwargs = {"input_shape": (1, 8, 8), "steps": 40}
    out = visualize_layers(net, ["0", "2"], {"0": [0, 1, 2], "2": [2, 0]}, **kwargs)
    once = len(calls)
    calls.clear()
    both = visualize_layers(net, ["0", "2"], [0, 1, 2], skip_duplicates=False, **kwargs)
    handle.remove()
    assert once < 1.5 * 40 < len(calls)  # the second optimisation ran only without skipping
    assert list(out) == ["0", "2"] and out["0"].same_as is None
    pool = out["2"]
    assert pool.same_as == "0" and pool.layer == "2" and pool.channels == [2, 0]
    assert torch.equal(pool.images, out["0"].images[[2, 0]])
    assert torch.equal(pool.history, out["0"].history[:, [2, 0]])
    with torch.no_grad():  # the pool's own activation for the copied images
        pooled = net[:3](pool.images)[:, :, 0, 0]
    assert torch.allclose(pooled[[0, 1], [2, 0]], pool.activations, atol=1e-6)
    assert pool.readout.describe() == "read as it is (pool layer)"
    assert both["2"].same_as is None
    assert torch.equal(both["0"].images, out["0"].images)  # each layer from the same seed
    assert hook_count(net) == 0


def test_visualize_layers_validates_its_layers() -> None:
    net = busy_net()
    with pytest.raises(ValueError, match="`layers` is empty"):
        visualize_layers(net, [], input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="`layers` repeats"):
        visualize_layers(net, ["0", "0"], input_shape=(3, 16, 16))
    with pytest.raises(TypeError, match="`layers`"):
        visualize_layers(net, "0", input_shape=(3, 16, 16))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown layer 'x'"):
        visualize_layers(net, ["0", "x"], input_shape=(3, 16, 16))


# --------------------------------------------------------------------------- (e) stop, progress


def test_should_stop_returns_what_was_optimised_and_restores_everything() -> None:
    model = busy_net().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = snapshot(model)
    rng = torch.get_rng_state()
    seen: list[int] = []
    res = visualize_channels(
        model,
        "5",
        [0, 1],
        input_shape=(3, 16, 16),
        steps=100,
        history_every=4,
        should_stop=lambda: len(seen) >= 10,
        progress=seen.append,
    )
    assert seen == list(range(1, 11))
    assert res.stopped and res.stopped_at == 10 and res.steps == 100
    assert res.images.shape == (2, 3, 16, 16) and res.channels == [0, 1]
    assert res.history_steps == [0, 4, 8] and res.history.shape == (3, 2)
    full = visualize_channels(model, "5", [0, 1], input_shape=(3, 16, 16), steps=10)
    assert full.stopped_at is None
    assert torch.equal(res.images, full.images)  # the same 10 steps: stopping cuts, not changes
    assert torch.equal(torch.get_rng_state(), rng)
    assert_unchanged(model, before)


def test_stop_between_batches_leaves_later_channels_out() -> None:
    model = busy_net()
    seen: list[int] = []
    res = visualize_channels(
        model,
        "0",
        [0, 1, 2, 3],
        input_shape=(3, 16, 16),
        steps=6,
        batch_size=2,
        should_stop=lambda: len(seen) >= 6,
        progress=seen.append,
    )
    assert seen == [1, 2, 3, 4, 5, 6]  # the first batch's steps, then the stop
    assert res.channels == [0, 1] and res.images.shape[0] == 2 and res.stopped_at == 6
    later: list[int] = []
    partial = visualize_channels(
        model,
        "0",
        [0, 1, 2, 3],
        input_shape=(3, 16, 16),
        steps=6,
        batch_size=2,
        history_every=2,
        should_stop=lambda: len(later) >= 9,
        progress=later.append,
    )
    assert later == list(range(1, 10))
    assert partial.channels == [0, 1, 2, 3] and partial.stopped_at == 3
    assert partial.history_steps == [0, 2, 4, 5] and partial.history.shape == (4, 4)
    assert torch.isnan(partial.history[2:, 2:]).all()  # steps the second batch never reached
    assert not partial.history[:2].isnan().any() and not partial.history[:, :2].isnan().any()


def test_should_stop_before_the_first_step_returns_the_starting_images() -> None:
    res = visualize_channels(
        busy_net(), "0", [1], input_shape=(3, 16, 16), steps=5, should_stop=lambda: True
    )
    assert res.stopped_at == 0 and res.history.shape == (0, 1) and res.history_steps == []
    assert res.images.shape == (1, 3, 16, 16)
    assert (res.images - 0.5).abs().max() < 0.05  # near-grey noise: nothing was optimised


def test_visualize_layers_stops_at_the_layer_being_optimised() -> None:
    net = busy_net()
    seen: list[int] = []
    out = visualize_layers(
        net,
        ["0", "4", "5"],
        [0],
        input_shape=(3, 16, 16),
        steps=5,
        should_stop=lambda: len(seen) >= 7,
        progress=seen.append,
    )
    assert seen == list(range(1, 8))  # cumulative over the layers
    assert list(out) == ["0", "4"] and out["0"].stopped_at is None and out["4"].stopped_at == 2
    assert hook_count(net) == 0


# --------------------------------------------------------------------------- (f) precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_models_in_other_precisions_get_float32_images(dtype: torch.dtype) -> None:
    net = nn.Sequential(edge_conv(SOBEL_X_3), nn.BatchNorm2d(1), nn.ReLU()).to(dtype).eval()
    res = visualize_channels(net, "0", input_shape=(1, 16, 16), steps=32)
    assert res.images.dtype == res.activations.dtype == res.history.dtype == torch.float32
    assert next(net.parameters()).dtype == dtype  # the model is left as it is
    with torch.no_grad():
        again = box_mean(net(res.images.to(dtype))[:, 0].float(), res.units)
    assert torch.allclose(again, res.activations, rtol=1e-2, atol=1e-2)
    assert res.activations[0] > 0.7 and res.history[-1, 0] > res.history[0, 0]


def test_channels_last_model_gets_channels_last_input() -> None:
    net = busy_net().to(memory_format=torch.channels_last)
    formats = []
    handle = net[0].register_forward_pre_hook(
        lambda _m, args: formats.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    res = visualize_channels(net, "5", [0], input_shape=(3, 16, 16), steps=4)
    handle.remove()
    assert len(formats) >= 5 and all(formats[-5:])  # the 4 steps and the final measurement
    assert res.images.is_contiguous() and res.images.dtype == torch.float32


# --------------------------------------------------------------------------- (g) LeNet-5 on Shapes

LENET_LAYERS = ["features.c1", "features.s2", "features.c3", "features.s4", "features.c5"]
# Where each layer's maps are read: conv layers after their ReLU, pooling layers as they are.
LENET_READ = {
    "features.c1": "features.act1",
    "features.s2": "features.s2",
    "features.c3": "features.act3",
    "features.s4": "features.s4",
    "features.c5": "features.act5",
}


@pytest.fixture(scope="module")
def shapes_lenet():
    """LeNet-5 (ReLU, max pooling) trained briefly on Shapes, and its validation images."""
    import torch.nn.functional as F

    from cnnviz.data.shapes import ShapesDataset
    from cnnviz.models import create

    train = ShapesDataset(4000, 32, 3, split="train")
    val = ShapesDataset(300, 32, 3, split="val")
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = train.labels
    x_val = torch.stack([val[i][0] for i in range(len(val))])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create(
            "lenet5",
            in_channels=3,
            num_classes=train.num_classes,
            input_size=32,
            activation="relu",
            pooling="max",
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(4):
        perm = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), 64):
            idx = perm[start : start + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == val.labels).float().mean().item()
    assert accuracy > 0.7  # trained (chance: 1/9; about 0.95 here)
    return model, x_val, val.mean, val.std


def layer_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    outs = {}
    with torch.no_grad():
        for name, module in model.features.named_children():
            x = module(x)
            outs[f"features.{name}"] = x.clone()
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("layer", LENET_LAYERS)
def test_lenet_optimised_image_beats_the_best_dataset_patch(shapes_lenet, layer: str) -> None:
    model, x_val, mean, std = shapes_lenet
    # The dataset side: the best unit of each channel over validation images and positions,
    # i.e. the activation of the channel's top-1 (hence of all top-9) dataset patches.
    best_patch = layer_outputs(model, x_val)[LENET_READ[layer]].amax(dim=(0, 2, 3))
    channels = [c for c in range(best_patch.numel()) if best_patch[c] > 0][:24]
    assert len(channels) >= 4  # most channels are alive after training
    res = visualize_channels(model, layer, channels, objective="center", mean=mean, std=std, seed=0)
    assert res.images.shape[1:] == (3, 32, 32)  # the full input, as the patches' context
    assert not res.pre_activation
    # Recompute the optimised images' centre unit independently of featvis.
    normed = (res.images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    maps = layer_outputs(model, normed)[LENET_READ[layer]]
    h, w = maps.shape[2] // 2, maps.shape[3] // 2
    centre = maps[torch.arange(len(channels)), channels, h, w]
    assert torch.allclose(centre, res.activations, rtol=1e-4, atol=1e-4)
    assert (res.activations > best_patch[channels]).all(), (res.activations, best_patch[channels])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_and_restores_the_cuda_rng() -> None:
    model = busy_net().cuda().train()
    before = snapshot(model)
    cuda_rng = torch.cuda.get_rng_state()
    res = visualize_channels(model, "5", [0, 1], input_shape=(3, 16, 16), steps=16)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
    assert res.images.device.type == "cpu" and res.images.shape == (2, 3, 16, 16)
    assert (res.history[-1] > res.history[0]).all()
    assert_unchanged(model, before)
