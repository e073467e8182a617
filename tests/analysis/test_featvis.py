"""Tests for feature visualization by optimization (cnnviz.analysis.featvis)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz.analysis.featvis import FeatVisResult, visualize_channels
from cnnviz.analysis.guard import hook_count

# --------------------------------------------------------------------------- helpers

SOBEL_X_5 = torch.outer(torch.tensor([1.0, 4, 6, 4, 1]), torch.tensor([-1.0, -2, 0, 2, 1]))
SOBEL_X_3 = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])


def edge_conv(kernel: torch.Tensor, padding: int = 0) -> nn.Conv2d:
    conv = nn.Conv2d(1, 1, kernel.shape[-1], padding=padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel.view(1, 1, *kernel.shape))
    return conv


def gradient_energy(image: torch.Tensor) -> tuple[float, float]:
    """Energy of the horizontal (d/dx) and vertical (d/dy) finite differences of [H, W]."""
    gx = (image[:, 1:] - image[:, :-1]).pow(2).sum().item()
    gy = (image[1:, :] - image[:-1, :]).pow(2).sum().item()
    return gx, gy


def random_images(n: int, shape: tuple[int, ...], seed: int = 123) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


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


# --------------------------------------------------------------------------- (a) edge detector


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_vertical_edge_filter_centre_unit_gets_a_vertical_edge(param: str) -> None:
    net = nn.Sequential(edge_conv(SOBEL_X_5))
    res = visualize_channels(
        net, "0", [0], input_shape=(1, 32, 32), objective="center", param=param
    )
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
    with torch.no_grad():
        rnd = net(random_images(256, (1, 32, 32)))[:, 0].mean(dim=(1, 2))
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
    assert calls == []  # the classifier after the layer never ran


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
    with torch.no_grad():
        maps = nn.Sequential(*list(busy_net().eval())[:6])(normed)
    assert torch.allclose(maps[[0, 1], [0, 3]].mean(dim=(1, 2)), res.activations, atol=1e-5)


def test_history_and_result_fields() -> None:
    res = visualize_channels(
        busy_net(), "0", [0, 1, 3], input_shape=(3, 16, 16), steps=40, history_every=16
    )
    assert isinstance(res, FeatVisResult)
    assert res.history_steps == [0, 16, 32, 39]
    assert res.history.shape == (4, 3)
    assert res.activations.shape == (3,) and res.images.dtype == torch.float32
    assert res.steps == 40 and res.seed == 0 and res.seconds > 0 and res.param == "fourier"


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
    assert moved.activations[0] > 2.0  # 4 is the most a 3x3 Sobel-x minus 1 can give
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


# --------------------------------------------------------------------------- (c) determinism


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


# --------------------------------------------------------------------------- (d) LeNet-5 on Shapes

LENET_LAYERS = ["features.c1", "features.s2", "features.c3", "features.s4", "features.c5"]


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
    best_patch = layer_outputs(model, x_val)[layer].amax(dim=(0, 2, 3))
    channels = [c for c in range(best_patch.numel()) if best_patch[c] > 0][:24]
    assert len(channels) >= 4  # most channels are alive after training
    res = visualize_channels(model, layer, channels, objective="center", mean=mean, std=std, seed=0)
    assert res.images.shape[1:] == (3, 32, 32)  # the full input, as the patches' context
    # Recompute the optimised images' centre unit independently of featvis.
    normed = (res.images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    maps = layer_outputs(model, normed)[layer]
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
