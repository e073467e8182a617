"""``LayerCapture``: outputs, the observer-effect guarantees, reductions and hook removal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import make_bn_net, make_conv1d_net, make_lenet, modes
from torch import nn

from cnnviz.analysis.capture import LayerCapture, capture_activations, channel_stats
from cnnviz.analysis.guard import hook_count


def _x(n: int = 4, shape: tuple[int, ...] = (3, 16, 16), seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_outputs_equal_a_manual_forward_pre_and_post_activation(leak_check) -> None:
    net = make_lenet().eval()
    leak_check(net)
    x = _x()
    with torch.no_grad():
        conv0 = net[0](x)
        relu0 = F.relu(conv0)
        pool2 = net[2](relu0)
        conv3 = net[3](pool2)
        pool5 = net[5](F.relu(conv3))
    layers = ["0", "2", "3", "5"]
    pre, _ = capture_activations(net, x, layers, post_activation=False)
    post, logits = capture_activations(net, x, layers)
    assert torch.equal(pre["0"].maps, conv0) and torch.equal(pre["3"].maps, conv3)
    assert torch.equal(post["0"].maps, relu0) and torch.equal(post["3"].maps, F.relu(conv3))
    for results in (pre, post):
        assert torch.equal(results["2"].maps, pool2) and torch.equal(results["5"].maps, pool5)
    assert pre["0"].min.min() < 0 <= post["0"].min.min()
    assert torch.equal(logits, net(x).detach())
    assert pre["0"].shape == (4, 6, 12, 12)
    assert torch.equal(pre["0"].channels, torch.arange(6))
    cap = LayerCapture(net, layers, example_input=x)
    assert cap.sources == {"0": "1", "2": "2", "3": "4", "5": "5"}
    assert LayerCapture(net, layers, post_activation=False).sources["0"] == "0"


def test_inplace_relu_does_not_alter_the_captured_conv_output(leak_check) -> None:
    net = make_bn_net().eval()  # conv -> bn -> ReLU(inplace=True)
    leak_check(net)
    x = _x()
    with torch.no_grad():
        conv0 = net[0](x)
        bn0 = net[1](conv0)
        conv4 = net[4](net[3](F.relu(bn0)))
    assert (conv0 < 0).any()
    pre, _ = capture_activations(net, x, ["0", "4"], post_activation=False)
    assert torch.equal(pre["0"].maps, conv0)  # negatives kept: the in-place ReLU ran later
    assert torch.equal(pre["4"].maps, conv4)
    assert pre["0"].zero_fraction.max() == 0
    post, _ = capture_activations(net, x, ["0"])
    assert torch.equal(post["0"].maps, F.relu(bn0))  # read after bn + relu
    assert net[2].inplace and net[6].inplace


def test_eval_inside_and_every_mode_restored_outside() -> None:
    seen: list[bool] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(self.training)
            return x

    net = make_bn_net()
    net.insert(3, Spy())
    net.train()
    net[1].eval()  # mixed: a frozen BatchNorm in a model that trains
    net[11].eval()
    before = modes(net)
    with LayerCapture(net, ["0", "5"]) as cap:
        assert not any(m.training for m in net.modules())
        net(_x())
    assert seen == [False]
    assert modes(net) == before
    assert set(cap.results) == {"0", "5"}
    with LayerCapture(net, ["0"], eval_mode=False):
        net(_x())
    assert seen == [False, True]
    assert modes(net) == before


def test_grads_batchnorm_buffers_and_rng_untouched() -> None:
    class Noisy(nn.Module):  # draws from the global RNG even in eval mode
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0 * torch.rand_like(x)

    net = make_bn_net()
    net.insert(1, Noisy())
    net.train()
    sentinels = {n: torch.full_like(p, 0.5) for n, p in net.named_parameters()}
    for n, p in net.named_parameters():
        p.grad = sentinels[n]
    requires = {n: p.requires_grad for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    x = _x()
    rng = torch.get_rng_state()
    capture_activations(net, x, ["0", "5", "9"])
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in net.named_parameters():
        assert p.grad is sentinels[n] and torch.equal(p.grad, torch.full_like(p, 0.5))
        assert p.requires_grad == requires[n]
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n]), n  # running stats and num_batches_tracked
    assert all(m.training for m in net.modules())


def test_channel_cap_explicit_channels_and_downsampling() -> None:
    net = make_lenet().eval()
    x = _x()
    with torch.no_grad():
        conv0 = net[0](x)
        conv3 = net[3](net[2](F.relu(conv0)))
    res, _ = capture_activations(
        net,
        x,
        ["0", "3"],
        post_activation=False,
        max_channels=4,
        max_size=5,
        channels={"3": [7, 2]},
    )
    assert res["0"].maps.shape == (4, 4, 5, 5)
    assert torch.equal(res["0"].channels, torch.arange(4))
    assert torch.allclose(res["0"].maps, F.adaptive_avg_pool2d(conv0[:, :4], 5))
    assert res["0"].shape == (4, 6, 12, 12)
    assert res["0"].mean.shape == (6,)  # statistics cover every channel
    assert torch.allclose(res["0"].mean, conv0.mean(dim=(0, 2, 3)), atol=1e-6)
    assert res["3"].maps.shape == (4, 2, 4, 4)  # 4x4 already within max_size: kept
    assert torch.equal(res["3"].maps, conv3[:, [7, 2]])
    assert res["3"].channels.tolist() == [7, 2]
    big, _ = capture_activations(net, x, ["0"], max_channels=100)
    assert big["0"].maps.shape[1] == 6


def test_wide_layer_is_capped() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2048, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    res, _ = capture_activations(net, _x(2, (3, 6, 6)), ["0", "2"], max_channels=16)
    assert res["0"].maps.shape == (2, 16, 4, 4)
    assert res["2"].maps.shape == (2, 16, 1, 1)
    assert res["0"].mean.shape == (2048,) and res["0"].zero_fraction.shape == (2048,)


def test_one_dimensional_layers() -> None:
    net = make_conv1d_net().eval()
    x = _x(5, (4, 20))
    with torch.no_grad():
        conv0 = net[0](x)
    res, logits = capture_activations(net, x, ["0", "2", "3", "5"], post_activation=False)
    assert res["0"].maps.shape == (5, 8, 18) and torch.equal(res["0"].maps, conv0)
    assert res["2"].maps.shape == (5, 8, 9)
    assert res["3"].maps.shape == (5, 6, 7)
    assert res["5"].maps.shape == (5, 6, 1)
    assert logits.shape == (5, 3)
    small, _ = capture_activations(net, x, "0", post_activation=False, max_size=6)
    assert small["0"].maps.shape == (5, 8, 6)
    assert torch.allclose(small["0"].maps, F.adaptive_avg_pool1d(conv0, 6))


def test_hooks_only_inside_the_window() -> None:
    net = make_lenet()
    cap = LayerCapture(net, ["0", "3", "5"])
    assert hook_count(net) == 0
    with cap:
        assert hook_count(net) == 3
        net(_x())
        cap.remove()  # idempotent early removal
        assert hook_count(net) == 0
    assert hook_count(net) == 0


def test_hooks_removed_and_modes_restored_when_forward_raises() -> None:
    class Exploding(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("exploded")

    net = make_bn_net()
    net.insert(5, Exploding())
    net.train()
    net[1].eval()
    before, count = modes(net), hook_count(net)
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    with pytest.raises(RuntimeError, match="exploded"), LayerCapture(net, ["0", "4", "9"]):
        net(_x())
    assert hook_count(net) == count == 0
    assert modes(net) == before
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())


def test_hooks_removed_when_a_hook_raises() -> None:
    net = make_lenet()
    net.train()
    with pytest.raises((IndexError, RuntimeError)):
        capture_activations(net, _x(), ["0"], channels={"0": [99]})
    assert hook_count(net) == 0
    assert all(m.training for m in net.modules())


def test_reused_module_keeps_its_first_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    net = Twice().eval()
    x = _x()
    res, _ = capture_activations(net, x, ["conv"])
    with torch.no_grad():
        assert torch.equal(res["conv"].maps, net.conv(x))


def test_nonfinite_values_counted_and_ignored_by_statistics() -> None:
    out = torch.tensor([[[1.0, float("nan")], [0.0, 3.0]], [[float("inf"), -2.0], [0.0, 0.0]]])
    out = out.unsqueeze(-1)  # [N=2, C=2, 2, 1]
    stats = channel_stats(out)
    assert int(stats["nonfinite"]) == 2
    # channel 0 holds 1, nan, inf, -2 -> finite 1, -2
    assert stats["mean"][0] == pytest.approx(-0.5)
    assert stats["max"][0] == 1 and stats["min"][0] == -2
    assert stats["max"][1] == 3 and stats["min"][1] == 0
    assert stats["zero_fraction"].tolist() == [0.0, 0.75]

    net = make_lenet().eval()
    x = _x()
    x[0, 0, 0, 0] = float("nan")
    res, _ = capture_activations(net, x, ["0"])
    assert res["0"].nonfinite > 0 and isinstance(res["0"].nonfinite, int)
    assert torch.isfinite(res["0"].mean).all()


def test_channel_stats_match_numpy() -> None:
    out = _x(3, (5, 4, 4))
    out = torch.where(out > 0.5, torch.zeros(()), out)
    stats = channel_stats(out)
    a = out.numpy().transpose(1, 0, 2, 3).reshape(5, -1)
    np.testing.assert_allclose(stats["mean"], a.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["max"], a.max(1))
    np.testing.assert_allclose(stats["min"], a.min(1))
    np.testing.assert_allclose(stats["zero_fraction"], (a == 0).mean(1), rtol=1e-6)
    assert int(stats["nonfinite"]) == 0
    # the masked path (taken when any value is NaN/Inf) agrees on the finite channels
    spoiled = out.clone()
    spoiled[1, 0, 2, 2] = float("nan")
    masked = channel_stats(spoiled)
    assert int(masked["nonfinite"]) == 1
    for key in ("mean", "max", "min", "zero_fraction"):
        np.testing.assert_allclose(masked[key][1:], stats[key][1:], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"layers": ["nope"]},
            ValueError,
            r"unknown layer\(s\) \['nope'\]; valid layers are: 0, 2, 3, 5",
        ),
        ({"layers": ["0"], "max_channels": 0}, ValueError, "`max_channels` must be a positive int"),
        ({"layers": ["0"], "max_channels": -3}, ValueError, "`max_channels`"),
        (
            {"layers": ["0"], "max_channels": "4"},
            TypeError,
            "`max_channels` must be a positive int",
        ),
        ({"layers": ["0"], "max_channels": 2.5}, TypeError, "`max_channels`"),
        ({"layers": ["0"], "max_size": 0}, ValueError, "`max_size` must be a positive int"),
        ({"layers": ["0"], "max_size": True}, TypeError, "`max_size`"),
    ],
)
def test_layer_capture_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    net = make_lenet()
    with pytest.raises(error, match=match):
        LayerCapture(net, **kwargs)
    assert hook_count(net) == 0


def test_single_layer_name_is_accepted() -> None:
    cap = LayerCapture(make_lenet(), "3")
    assert cap.layers == ["3"]
