"""``find_readouts`` / ``ReadoutHooks``: where a conv's maps are read, on any architecture."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import make_bn_net, make_conv1d_net, make_lenet, modes
from torch import nn
from torch.testing import assert_close
from torchvision.models.resnet import BasicBlock

from cnnviz.analysis import readout as readout_module
from cnnviz.analysis.capture import LayerCapture, capture_activations
from cnnviz.analysis.guard import hook_count, observe
from cnnviz.analysis.readout import (
    Readout,
    ReadoutHooks,
    ReadSite,
    find_readouts,
    raw_readout,
)


def _load_script() -> Any:
    path = Path(__file__).resolve().parents[2] / "scripts" / "readout_share.py"
    spec = importlib.util.spec_from_file_location("readout_share", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readout_share"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


share = _load_script()


def _x(n: int = 3, shape: tuple[int, ...] = (3, 12, 12), seed: int = 1) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so BN is not the identity."""
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model.eval()


def read(model: nn.Module, x: Any, readouts: dict[str, Readout]) -> dict[str, list[torch.Tensor]]:
    """Every tensor ReadoutHooks hands on, per layer, cloned (in-place ops come later)."""
    seen: dict[str, list[torch.Tensor]] = {}
    call = (lambda: model(*x)) if isinstance(x, tuple) else (lambda: model(x))
    with (
        observe(model),
        torch.no_grad(),
        ReadoutHooks(model, readouts, lambda n, t: seen.setdefault(n, []).append(t.clone())),
    ):
        call()
    return seen


# ------------------------------------------------------------------------- known answers
class FunctionalNet(nn.Module):
    """conv → bn → ``F.relu`` in ``forward``: the relu output is no module's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = torch.tanh(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


def test_functional_relu_in_forward(leak_check) -> None:
    net = _randomize_bn(FunctionalNet())
    check = leak_check(net)
    x = _x()
    r = find_readouts(net, x, ["conv", "conv2"])
    check.verify()
    assert r["conv"].stage == "activation" and r["conv"].post_activation
    assert r["conv"].path == ("bn", "relu()")
    assert r["conv"].site.kind == "function" and r["conv"].site.name == "relu"
    assert r["conv"].describe() == "read after bn → relu()"
    assert r["conv2"].path == ("tanh()",) and r["conv2"].site.name == "tanh"
    got = read(net, x, r)
    with torch.no_grad():
        first = F.relu(net.bn(net.conv(x)))
        assert_close(got["conv"][0], first)
        assert_close(got["conv2"][0], torch.tanh(net.conv2(first)))
    assert hook_count(net) == 0


def test_torchvision_block_reusing_one_relu_and_a_downsample() -> None:
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    block = _randomize_bn(BasicBlock(4, 8, stride=2, downsample=down))
    x = _x(shape=(4, 10, 10))
    r = find_readouts(block, x, ["conv1", "conv2", "downsample.0"])
    assert r["conv1"].path == ("bn1", "relu")
    assert r["conv1"].site == ReadSite("module", "relu", 0, 2)
    assert r["conv2"].path == ("bn2", "+ residual", "relu")
    assert r["conv2"].site == ReadSite("module", "relu", 1, 2)
    assert r["conv2"].describe() == "read after bn2 → + residual → relu"
    assert r["conv2"].source == "relu (call 2)"
    assert r["downsample.0"].path == ("downsample.1", "+ residual", "relu")
    got = read(block, x, r)
    with torch.no_grad():
        h = F.relu(block.bn1(block.conv1(x)))
        out = F.relu(block.bn2(block.conv2(h)) + down(x))
    assert_close(got["conv1"][0], h)  # read before the in-place relu's second call
    assert_close(got["conv2"][0], out)
    assert_close(got["downsample.0"][0], out)
    assert [len(v) for v in got.values()] == [1, 1, 1]  # each site once per forward


class ResidualNoAct(nn.Module):
    """conv → bn → ``+=`` identity, no activation after: read after bn, not after the add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        out += x
        return out


def test_residual_add_without_activation_reads_the_norm_before_it() -> None:
    net = _randomize_bn(ResidualNoAct())
    x = _x()
    r = find_readouts(net, x, ["conv"])["conv"]
    assert r.stage == "norm" and not r.post_activation
    assert r.path == ("bn",) and r.site == ReadSite("module", "bn", 0, 1)
    assert "no activation follows" in r.reason
    assert r.describe().startswith("read after bn (pre-activation: no activation follows")
    got = read(net, x, {"conv": r})["conv"][0]
    with torch.no_grad():
        assert_close(got, net.bn(net.conv(x)))  # the in-place add ran after the read


class DenseLike(nn.Module):
    """Two convs concatenated with the input, then one BN + ReLU (DenseNet's pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 5, 3, padding=1)
        self.norm = nn.BatchNorm2d(12)
        self.relu = nn.ReLU(inplace=True)
        self.conv_out = nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([x, self.conv_a(x), self.conv_b(x)], 1)
        return self.conv_out(self.relu(self.norm(y)))


def test_channel_concatenation_tracks_the_offset() -> None:
    net = _randomize_bn(DenseLike())
    x = _x()
    r = find_readouts(net, x)
    a, b = r["conv_a"], r["conv_b"]
    assert (a.channel_offset, a.channel_count) == (3, 4)
    assert (b.channel_offset, b.channel_count) == (7, 5)
    assert b.path == ("cat[7:12]", "norm", "relu") and b.source == "relu [7:12]"
    assert r["conv_out"].stage == "raw" and r["conv_out"].path == ()
    got = read(net, x, r)
    with torch.no_grad():
        full = F.relu(net.norm(torch.cat([x, net.conv_a(x), net.conv_b(x)], 1)))
    assert_close(got["conv_a"][0], full[:, 3:7])
    assert_close(got["conv_b"][0], full[:, 7:12])


def test_norm_then_identity_activation_reads_the_norm() -> None:
    torch.manual_seed(0)
    net = _randomize_bn(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Identity(), nn.Conv2d(4, 2, 3))
    )
    x = _x()
    r = find_readouts(net, x, ["0", "3"])
    assert r["0"].stage == "norm" and r["0"].path == ("1",)
    assert r["0"].site.name == "1"  # the BatchNorm, not the Identity that passes it on
    assert r["3"].stage == "raw" and "no activation follows" in r["3"].reason
    assert r["3"].describe().startswith("raw conv output (pre-activation)")
    got = read(net, x, r)
    with torch.no_grad():
        assert_close(got["0"][0], net[1](net[0](x)))
        assert_close(got["3"][0], net(x))


class ChannelsLastNorm(nn.Module):
    """ConvNeXt's pattern: conv → permute → LayerNorm → permute back (→ GELU or not)."""

    def __init__(self, act: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x).permute(0, 2, 3, 1))
        if self.act:
            y = F.gelu(y)
            return y.permute(0, 3, 1, 2).mean()
        return y.permute(0, 3, 1, 2) * 2


@pytest.mark.parametrize("act", [True, False])
def test_permuted_layer_norm(act: bool) -> None:
    torch.manual_seed(0)
    net = ChannelsLastNorm(act).eval()
    x = _x()
    r = find_readouts(net, x, ["conv"])["conv"]
    with torch.no_grad():
        y = net.norm(net.conv(x).permute(0, 2, 3, 1))
    if act:
        assert r.stage == "activation" and r.path == ("norm", "gelu()")
        assert r.permute == (0, 3, 1, 2)
        want = F.gelu(y).permute(0, 3, 1, 2)
    else:
        assert r.stage == "norm" and r.path == ("norm",)
        want = y.permute(0, 3, 1, 2)
    assert_close(read(net, x, {"conv": r})["conv"][0], want)


class Swish(nn.Module):
    """An activation module of another library, known by its class name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def test_activation_module_known_by_name_is_read_whole() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), Swish(), nn.Conv2d(4, 2, 1)).eval()
    x = _x()
    r = find_readouts(net, x, ["0"])["0"]
    assert r.path == ("1",) and r.site.name == "1"  # not the sigmoid inside it
    with torch.no_grad():
        h = net[0](x)
        assert_close(read(net, x, {"0": r})["0"][0], h * torch.sigmoid(h))


@pytest.mark.parametrize(
    "act",
    [
        F.relu,
        F.relu6,
        lambda t: F.leaky_relu(t, 0.1),
        F.elu,
        F.selu,
        F.gelu,
        F.silu,
        F.mish,
        F.hardswish,
        F.hardsigmoid,
        F.softplus,
        torch.tanh,
        torch.sigmoid,
        lambda t: t.relu_(),
        lambda t: t.sigmoid_(),
        lambda t: F.hardtanh(t, inplace=True),
        lambda t: torch.clamp(t, 0) + 0,  # not an activation: read raw
    ],
)
def test_functional_activation_variants(act: Callable[[torch.Tensor], torch.Tensor]) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return act(self.conv(x)).sum(dim=(2, 3))

    torch.manual_seed(0)
    net = Net().eval()
    x = _x()
    r = find_readouts(net, x, ["conv"])["conv"]
    with torch.no_grad():
        conv = net.conv(x)
        want = act(conv.clone())
    got = read(net, x, {"conv": r})["conv"][0]
    if r.stage == "raw":
        assert_close(got, conv)
        assert "clamp" in r.reason or "add" in r.reason
    else:
        assert r.stage == "activation" and r.site.kind == "function"
        assert_close(got, want)


def test_conv_reused_twice_is_read_at_its_first_call() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.conv(self.conv(x)))

    torch.manual_seed(0)
    net = Twice().eval()
    x = _x()
    r = find_readouts(net, x, ["conv"])["conv"]
    assert r.stage == "raw" and r.site == ReadSite("module", "conv", 0, 2)
    got = read(net, x, {"conv": r})["conv"]
    with torch.no_grad():
        assert len(got) == 1 and torch.equal(got[0], net.conv(x))


def test_pooling_and_unrelated_layers_are_read_as_they_are() -> None:
    net = make_lenet().eval()
    x = _x(shape=(3, 16, 16))
    r = find_readouts(net, x)
    assert list(r) == ["0", "2", "3", "5"]
    assert r["0"].path == ("1",) and r["3"].path == ("4",)
    assert r["2"].kind == "pool" and r["2"].stage == "raw" and r["2"].site.name == "2"
    assert r["2"].describe() == "read as it is (pool layer)"
    other = find_readouts(net, x, ["7"])["7"]
    assert other.kind == "other" and other.stage == "raw"


def test_one_dimensional_convs_and_sequence_models() -> None:
    net = make_conv1d_net().eval()
    x = _x(shape=(4, 20))
    r = find_readouts(net, x, ["0", "3"])
    assert r["0"].path == ("1",) and r["3"].path == ("4",)
    got = read(net, x, r)
    with torch.no_grad():
        assert_close(got["0"][0], F.relu(net[0](x)))


@pytest.mark.parametrize(
    ("dtype", "channels_last"),
    [(torch.float64, False), (torch.bfloat16, False), (torch.float16, False), (None, True)],
)
def test_dtypes_and_memory_formats(dtype: torch.dtype | None, channels_last: bool) -> None:
    torch.manual_seed(0)
    block = BasicBlock(4, 4)
    _randomize_bn(block)
    x = _x(shape=(4, 8, 8))
    if dtype is not None:
        block, x = block.to(dtype), x.to(dtype)
    if channels_last:
        block, x = (
            block.to(memory_format=torch.channels_last),
            x.to(memory_format=torch.channels_last),
        )
    r = find_readouts(block, x, ["conv1", "conv2"])
    assert r["conv1"].post_activation and r["conv2"].post_activation
    got = read(block, x, r)
    with torch.no_grad():
        h = F.relu(block.bn1(block.conv1(x)))
        assert_close(got["conv1"][0], h)
        assert_close(got["conv2"][0], F.relu(block.bn2(block.conv2(h)) + x))


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> dict[str, Any]:
        h = F.silu(self.bn(self.conv(x)))
        return {"logits": h.mean(dim=(2, 3)) * scale, "extra": (h, None)}


def test_dict_outputs_tuple_inputs_and_a_run_function() -> None:
    net = _randomize_bn(DictOut())
    x, scale = _x(), torch.tensor(2.0)
    r = find_readouts(net, (x, scale), ["conv"])["conv"]
    assert r.path == ("bn", "silu()")
    batch = {"x": x}
    via_run = find_readouts(net, lambda: net(batch["x"][:1], scale), ["conv"])["conv"]
    assert via_run == r
    with torch.no_grad():
        assert_close(read(net, (x, scale), {"conv": r})["conv"][0], F.silu(net.bn(net.conv(x))))


# ------------------------------------------------------------------ errors and robustness
def test_forward_failure_is_a_clear_error_and_leaves_nothing(leak_check) -> None:
    net = make_lenet()
    net.train()
    check = leak_check(net)
    with pytest.raises(ValueError, match=r"forward pass of Sequential failed on `example_input`"):
        find_readouts(net, _x(shape=(3, 9, 9)))
    check.verify()
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ({"layers": ["nope"]}, ValueError, r"unknown layer\(s\) \['nope'\].*: 0, 2, 3, 5"),
        ({"example_input": "x"}, TypeError, "`example_input` must be a tensor"),
        ({"model": "net"}, TypeError, "`model` must be an nn.Module"),
    ],
)
def test_invalid_arguments(args: dict[str, Any], error: type, match: str) -> None:
    kwargs: dict[str, Any] = {"model": make_lenet(), "example_input": _x(shape=(3, 16, 16))}
    kwargs.update(args)
    with pytest.raises(error, match=match):
        find_readouts(**kwargs)


def test_a_failure_while_following_falls_back_to_raw(monkeypatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(readout_module._Discovery, "_follow", broken)
    net = make_bn_net().eval()
    x = _x(shape=(3, 16, 16))
    r = find_readouts(net, x, ["0", "4"])
    for layer in ("0", "4"):
        assert r[layer].stage == "raw" and "boom" in r[layer].reason
    with torch.no_grad():
        assert torch.equal(read(net, x, r)["0"][0], net[0](x))


def test_discovery_changes_nothing_and_runs_one_forward() -> None:
    calls: list[bool] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(self.training)
            return x + 0 * torch.rand_like(x)  # draws from the global RNG

    net = make_bn_net()
    net.insert(3, Spy())
    net.train()
    net[1].eval()
    before = modes(net)
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    rng = torch.get_rng_state()
    find_readouts(net, _x(5, (3, 16, 16)))
    assert calls == [False]
    assert modes(net) == before
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())
    assert hook_count(net) == 0


def test_inference_mode_probe() -> None:
    net = _randomize_bn(FunctionalNet())
    with torch.inference_mode():
        x = _x()
        r = find_readouts(net, x, ["conv"])
        got = read(net, x, r)["conv"][0]
        assert_close(got, F.relu(net.bn(net.conv(x))))


# ------------------------------------------------------------------------- hooks and leaks
def test_hooks_and_mode_removed_on_exit_and_on_exception(leak_check) -> None:
    net = _randomize_bn(FunctionalNet())  # a functional site: the mode is used
    check = leak_check(net)
    x = _x()
    r = find_readouts(net, x)
    seen: list[str] = []
    hooks = ReadoutHooks(net, r, lambda n, t: seen.append(n))
    with hooks:
        assert hook_count(net) > 0 and torch._C._len_torch_function_stack() == 1
        net(x)
    assert sorted(seen) == ["conv", "conv2"]
    assert hook_count(net) == 0 and torch._C._len_torch_function_stack() == 0
    hooks.remove()  # idempotent
    with pytest.raises(RuntimeError, match="inside"), ReadoutHooks(net, r, seen.append):
        raise RuntimeError("inside")
    assert hook_count(net) == 0 and torch._C._len_torch_function_stack() == 0
    net(x)
    F.relu(x)
    assert len(seen) == 2  # nothing read outside the window
    check.verify()


def test_counts_reset_every_forward() -> None:
    torch.manual_seed(0)
    block = _randomize_bn(BasicBlock(4, 4))  # module sites: relu calls 1 and 2
    functional = _randomize_bn(FunctionalNet())  # function sites: relu() and tanh()
    for net, x in ((block, _x(shape=(4, 6, 6))), (functional, _x())):
        r = find_readouts(net, x)
        seen: dict[str, list[torch.Tensor]] = {name: [] for name in r}
        with torch.no_grad(), ReadoutHooks(net, r, lambda n, t, s=seen: s[n].append(t.clone())):
            net(x)
            net(x[:1])
        for name, tensors in seen.items():
            assert len(tensors) == 2, name
            assert_close(tensors[1], tensors[0][:1])


def test_counts_wrap_around_when_a_submodule_is_run_directly() -> None:
    torch.manual_seed(0)
    outer = nn.Sequential(_randomize_bn(BasicBlock(4, 4)))  # readouts for `outer` ...
    x = _x(shape=(4, 6, 6))
    r = find_readouts(outer, x, ["0.conv1", "0.conv2"])
    assert r["0.conv2"].site == ReadSite("module", "0.relu", 1, 2)
    seen: dict[str, list[torch.Tensor]] = {"0.conv1": [], "0.conv2": []}
    with torch.no_grad(), ReadoutHooks(outer, r, lambda n, t: seen[n].append(t.clone())):
        for _ in range(3):
            outer[0](x)  # ... but only the block is run: no reset, counts wrap around
        want = outer(x)
    assert len(seen["0.conv2"]) == 4 and len(seen["0.conv1"]) == 4
    for t in seen["0.conv2"]:
        assert_close(t, want)


def test_readout_summaries() -> None:
    torch.manual_seed(0)
    block = _randomize_bn(BasicBlock(4, 4))
    r = find_readouts(block, _x(shape=(4, 6, 6)), ["conv2"])["conv2"]
    assert not r.pre_activation
    assert r.as_dict() == {
        "layer": "conv2",
        "kind": "conv",
        "stage": "activation",
        "post_activation": True,
        "path": ["bn2", "+ residual", "relu"],
        "source": "relu (call 2)",
        "describe": "read after bn2 → + residual → relu",
        "channel_offset": 0,
        "channel_count": 4,
        "reason": "",
    }
    raw = raw_readout(block, "conv1", reason="asked")
    assert raw.pre_activation and raw.describe() == "raw conv output (pre-activation): asked"
    pool = raw_readout(make_lenet(), "2")
    assert not pool.pre_activation and pool.kind == "pool" and pool.channel_count is None
    site = ReadSite("function", "relu_", 3, 5, "features")
    assert site.label() == "relu() in features"


def test_readout_hooks_argument_checks() -> None:
    net = make_lenet()
    with pytest.raises(TypeError, match="`on_output` must be callable"):
        ReadoutHooks(net, [], on_output=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`readouts` must hold Readout objects"):
        ReadoutHooks(net, ["0"], print)  # type: ignore[list-item]
    stranger = raw_readout(nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1))), "0.0")
    with pytest.raises(ValueError, match="find the readouts for this model"):
        ReadoutHooks(net, [stranger], print)
    assert hook_count(net) == 0


# ---------------------------------------------------------------------- LayerCapture uses it
def test_layer_capture_reads_where_the_readouts_say(leak_check) -> None:
    torch.manual_seed(0)
    block = _randomize_bn(BasicBlock(4, 4))
    check = leak_check(block)
    x = _x(shape=(4, 6, 6))
    res, _ = capture_activations(block, x, ["conv1", "conv2"])
    with torch.no_grad():
        h = F.relu(block.bn1(block.conv1(x)))
        assert_close(res["conv1"].maps, h)
        assert_close(res["conv2"].maps, F.relu(block.bn2(block.conv2(h)) + x))
    readouts = find_readouts(block, x, ["conv2"])
    cap = LayerCapture(block, ["conv1", "conv2"], readouts=readouts)
    assert cap.sources == {"conv1": "conv1", "conv2": "relu (call 2)"}
    assert (
        cap.readouts["conv1"].stage == "raw" and "no example_input" in cap.readouts["conv1"].reason
    )
    with cap:
        block(x)
    assert_close(cap.results["conv2"].maps, res["conv2"].maps)
    pre = LayerCapture(block, ["conv2"], post_activation=False, example_input=x)
    assert pre.readouts["conv2"].stage == "raw" and pre.sources["conv2"] == "conv2"
    with pytest.raises(TypeError, match="`readouts` must hold Readout objects"):
        LayerCapture(block, ["conv1"], readouts={"conv1": "relu"})  # type: ignore[dict-item]
    check.verify()


class DictBatch(nn.Module):
    """Takes a dict batch; a max pool that also returns its indices."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2, return_indices=True)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled, _ = self.pool(F.relu(self.bn(self.conv(batch["image"]))))
        return pooled.mean(dim=(2, 3))


def test_layer_capture_with_a_run_function_and_a_tuple_returning_pool() -> None:
    net = _randomize_bn(DictBatch())
    batch = {"image": _x(4)}
    cap = LayerCapture(net, ["conv", "pool"], example_input=lambda: net(batch))
    assert cap.readouts["conv"].site == ReadSite("function", "relu", 0, 1)
    assert cap.sources == {"conv": "relu()", "pool": "pool"}
    with cap:
        net(batch)
    with torch.no_grad():
        h = F.relu(net.bn(net.conv(batch["image"])))
        assert_close(cap.results["conv"].maps, h)
        assert_close(cap.results["pool"].maps, F.max_pool2d(h, 2))


# ---------------------------------------------------------------------------------- the zoo
@pytest.fixture(scope="module")
def zoo() -> dict[str, tuple[nn.Module, torch.Tensor, Any]]:
    """Each zoo model built once per module, with its measurement against the graph."""
    return {}


def _zoo_entry(zoo: dict, entry: Any) -> tuple[nn.Module, torch.Tensor, Any]:
    if entry.name not in zoo:
        if entry.name.startswith("timm/"):
            pytest.importorskip("timm")
        torch.manual_seed(0)
        model = entry.build().eval()
        x = share.example_input(entry)
        zoo[entry.name] = (model, x, share.measure(model, x, entry.name))
    return zoo[entry.name]


_SLOW = {"tv/densenet121", "tv/efficientnet_b0", "tv/shufflenet_v2_x0_5"}


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(z, id=z.name, marks=[pytest.mark.slow] if z.name in _SLOW else [])
        for z in share.ZOO
    ],
)
def test_zoo_every_conv_followed_by_an_activation_is_read_after_it(zoo, entry) -> None:
    model, _, m = _zoo_entry(zoo, entry)
    assert m.mismatches == []  # stages agree with the exported graph, values equal its nodes
    assert m.convs > 0
    assert m.follows > 0 or entry.name == "tv/convnext_tiny"  # no conv reaches its GELU
    assert m.post_where_follows == m.follows == m.read_post  # 100%, and no false positives
    assert m.values_ok == m.read_post + m.norm
    assert hook_count(model) == 0 and torch._C._len_torch_function_stack() == 0


def test_zoo_cross_checked_against_module_outputs(zoo) -> None:
    """Independent of the graph: the read tensors are what the blocks themselves return."""
    entries = {z.name: z for z in share.ZOO}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            outputs[name] = out.detach().clone()

        return hook

    # torchvision resnet18: a BasicBlock's output is relu(bn2(conv2) + identity)
    model, x, m = _zoo_entry(zoo, entries["tv/resnet18"])
    got = share.read_tensors(model, x, m.readouts)
    with observe(model), torch.no_grad():
        handle = model.layer2[0].register_forward_hook(keep("layer2.0"))
        model(x)
        handle.remove()
    assert_close(got["layer2.0.conv2"], outputs["layer2.0"])
    assert_close(got["layer2.0.downsample.0"], outputs["layer2.0"])

    # densenet121: the last dense layer's conv2 is read after features' norm5 and F.relu
    model, x, m = _zoo_entry(zoo, entries["tv/densenet121"])
    name = "features.denseblock4.denselayer16.conv2"
    assert m.readouts[name].site.kind == "function"
    got = share.read_tensors(model, x, {name: m.readouts[name]})
    with observe(model), torch.no_grad():
        features = F.relu(model.features(x))
    assert_close(got[name], features[:, -32:])

    # timm efficientnet_b0: BatchNormAct2d holds BN and SiLU; read its output
    if "timm/efficientnet_b0" in entries:
        pytest.importorskip("timm")
        model, x, m = _zoo_entry(zoo, entries["timm/efficientnet_b0"])
        r = m.readouts["conv_stem"]
        assert r.path == ("bn1", "bn1.act") and r.site.name == "bn1.act"
        got = share.read_tensors(model, x, {"conv_stem": r})
        with observe(model), torch.no_grad():
            assert_close(got["conv_stem"], model.bn1(model.conv_stem(x)))
