"""``cnnviz.analysis.attribution``: every method, and the observer-effect guarantees of each."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from cnnviz_test_helpers import make_bn_net, make_conv1d_net, make_lenet, modes
from torch import nn

from cnnviz.analysis import attribution as attr_mod
from cnnviz.analysis.attribution import (
    METHODS,
    AttributionResult,
    AttributionUnavailable,
    attribute,
    attribute_many,
    available_methods,
    estimate_internal_batch_size,
    gradcam_layers,
)
from cnnviz.analysis.guard import hook_count

HOOK_BASED = ("guided_backprop", "deconvolution", "deeplift", "guided_grad_cam")


def _images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


class _State:
    """Everything an attribution call must leave as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = modes(model)
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.requires = {n: p.requires_grad for n, p in model.named_parameters()}
        self.grads = {n: p.grad for n, p in model.named_parameters()}
        self.grad_values = {n: None if g is None else g.clone() for n, g in self.grads.items()}
        self.buffers = {n: b.clone() for n, b in model.named_buffers()}
        self.inplace = {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")}
        self.hooks = hook_count(model)
        self.attrs = {n: set(vars(m)) for n, m in model.named_modules()}

    def verify(self) -> None:
        model = self.model
        assert modes(model) == self.modes
        for n, p in model.named_parameters():
            assert torch.equal(p.detach(), self.params[n]), n
            assert p.requires_grad == self.requires[n], n
            assert p.grad is self.grads[n], n  # same object (or still None)
            if p.grad is not None:
                assert torch.equal(p.grad, self.grad_values[n]), n
        for n, b in model.named_buffers():
            assert torch.equal(b, self.buffers[n]), n
        assert {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")} == (
            self.inplace
        )
        assert hook_count(model) == self.hooks
        assert {n: set(vars(m)) for n, m in model.named_modules()} == self.attrs


class _RngState:
    """Global torch, NumPy and Python RNG streams, and the draws that would come next."""

    def __init__(self) -> None:
        self.torch = torch.get_rng_state()
        self.numpy = np.random.get_state()
        self.python = random.getstate()
        self.next_torch = torch.rand(5)
        self.next_numpy = np.random.rand(5)
        self.next_python = random.random()
        torch.set_rng_state(self.torch)
        np.random.set_state(self.numpy)
        random.setstate(self.python)

    def verify(self) -> None:
        assert torch.equal(torch.get_rng_state(), self.torch)
        assert torch.equal(torch.rand(5), self.next_torch)
        assert np.array_equal(np.random.rand(5), self.next_numpy)
        assert random.random() == self.next_python


@pytest.fixture
def net() -> nn.Module:
    """BatchNorm, dropout and in-place ReLU, in training mode, with some ``.grad`` set."""
    model = make_bn_net()
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)  # a gradient the trainer owns
    model[11].weight.requires_grad_(False)  # a frozen layer stays frozen
    return model


def test_available_methods_lists_all_eleven() -> None:
    assert available_methods() == list(METHODS)
    assert set(METHODS) == {
        "saliency",
        "integrated_gradients",
        "input_x_gradient",
        "guided_backprop",
        "deconvolution",
        "deeplift",
        "gradient_shap",
        "occlusion",
        "smoothgrad",
        "grad_cam",
        "guided_grad_cam",
    }


@pytest.mark.parametrize("method", METHODS)
def test_method_changes_nothing_and_returns_cpu_maps(net: nn.Module, method: str) -> None:
    x = _images()
    x_before = x.clone()
    state = _State(net)
    rng = _RngState()
    result = attribute(net, x, method, target="pred")
    rng.verify()
    state.verify()
    assert torch.equal(x, x_before) and not x.requires_grad
    assert isinstance(result, AttributionResult) and result.method == method
    a = result.attributions
    assert a.shape == x.shape and a.device.type == "cpu" and a.dtype == torch.float32
    assert not a.requires_grad and a.grad_fn is None
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    net.eval()
    with torch.no_grad():
        expected = net(x).argmax(1)
    net.train()
    assert torch.equal(result.targets, expected)
    assert result.seconds > 0
    assert result.layer == ("8" if "grad_cam" in method else None)


@pytest.mark.parametrize("method", HOOK_BASED)
def test_hook_based_methods_run_out_of_place_and_restore_inplace(
    net: nn.Module, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    original = nn.ReLU.forward

    def spy(self: nn.ReLU, x: torch.Tensor) -> torch.Tensor:
        seen.append(self.inplace)
        return original(self, x)

    monkeypatch.setattr(nn.ReLU, "forward", spy)
    attribute(net, _images(), method, target=0)
    assert seen and not any(seen)  # every ReLU call inside ran out of place
    assert net[2].inplace and net[6].inplace  # and the flags are back


@pytest.mark.parametrize("method", METHODS)
def test_works_inside_inference_mode(net: nn.Module, method: str) -> None:
    x = _images()
    outside = attribute(net, x, method, target="label", labels=torch.tensor([0, 1, 2, 3]))
    state = _State(net)
    with torch.inference_mode():
        x_inf = x.clone()
        labels = torch.tensor([0, 1, 2, 3])
        inside = attribute(net, x_inf, method, target="label", labels=labels)
    state.verify()
    assert torch.allclose(inside.attributions, outside.attributions, atol=1e-6)
    assert not inside.attributions.is_inference()


class _Bomb(nn.Module):
    """Identity that raises while armed (a model evaluation failing inside Captum)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("method", METHODS)
def test_no_hook_left_and_state_restored_when_captum_raises(method: str) -> None:
    torch.manual_seed(0)
    bomb = _Bomb()
    net = make_bn_net()
    net.insert(4, bomb)  # after the first block: Captum's hooks are set before it raises
    net.train()
    x = _images()
    attribute(net, x, method, target=1)  # warm the profile cache: next forwards are Captum's
    state = _State(net)
    rng = _RngState()
    bomb.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        attribute(net, x, method, target=1)
    assert hook_count(net) == 0
    state.verify()
    rng.verify()


@pytest.mark.parametrize(
    ("method", "cls"),
    [("deeplift", "DeepLift"), ("guided_backprop", "GuidedBackprop")],
)
def test_hooks_and_attributes_removed_even_if_captum_forgets(
    method: str, cls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import captum.attr

    net = make_bn_net().eval()
    x = _images()
    attribute(net, x, method, target=0)
    target_cls = getattr(captum.attr, cls)
    monkeypatch.setattr(target_cls, "_remove_hooks", lambda self, *a: None)
    bomb = _Bomb()
    net.insert(4, bomb)
    attribute(net, x, method, target=0)  # new structure: profile again, unarmed
    state = _State(net)
    bomb.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        attribute(net, x, method, target=0)
    state.verify()  # hooks and DeepLift's module.input/output were removed by cnnviz
    bomb.armed = False
    result = attribute(net, x, method, target=0)  # and a later call still works
    state.verify()
    assert result.attributions.abs().sum() > 0


@pytest.mark.parametrize("method", ["smoothgrad", "gradient_shap"])
def test_noise_methods_are_seeded_and_do_not_shift_training_rng(
    net: nn.Module, method: str
) -> None:
    x = _images()
    rng = _RngState()
    a = attribute(net, x, method, target=0, seed=3).attributions
    b = attribute(net, x, method, target=0, seed=3).attributions
    c = attribute(net, x, method, target=0, seed=4).attributions
    d = attribute(net, x, method, target=0, seed=None).attributions
    rng.verify()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)


def test_target_choices(net: nn.Module) -> None:
    x = _images()
    labels = torch.tensor([3, 2, 1, 0])
    by_label = attribute(net, x, "saliency", target="label", labels=labels)
    by_tensor = attribute(net, x, "saliency", target=labels)
    by_int = attribute(net, x, "saliency", target=2)
    assert torch.equal(by_label.targets, labels) and torch.equal(by_tensor.targets, labels)
    assert torch.equal(by_label.attributions, by_tensor.attributions)
    assert torch.equal(by_int.targets, torch.full((4,), 2))
    # "pred" read from the method's own forward pass equals an explicit argmax target
    pred = attribute(net, x, "saliency", target="pred")
    explicit = attribute(net, x, "saliency", target=pred.targets)
    assert torch.allclose(pred.attributions, explicit.attributions)
    # and the class matters
    assert not torch.allclose(
        by_int.attributions, attribute(net, x, "saliency", target=1).attributions
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "lime"}, ValueError, r"`method`.*saliency, input_x_gradient"),
        ({"method": "grad_cam", "layer": "nope"}, ValueError, r"`layer`.*0, 3, 4, 8"),
        ({"method": "grad_cam", "layer": 3.0}, TypeError, r"`layer`"),
        ({"target": "label"}, ValueError, r"`labels` is required"),
        ({"target": "label", "labels": [0, 1]}, ValueError, r"`labels` must hold one"),
        ({"target": "best"}, ValueError, r"`target`"),
        ({"target": 7}, ValueError, r"`target`.*\[0, 3\]"),
        ({"target": torch.tensor([0.5])}, ValueError, r"`target` tensor"),
        ({"target": True}, TypeError, r"`target`"),
        ({"internal_batch_size": 0}, ValueError, r"`internal_batch_size`"),
        ({"memory_budget_mb": 0}, ValueError, r"`memory_budget_mb`"),
        ({"memory_budget_mb": "1"}, TypeError, r"`memory_budget_mb`"),
        ({"n_steps": 5}, TypeError, r"saliency: unexpected keyword.*n_steps.*accepts: abs"),
        ({"inputs": torch.zeros(16, 16)}, ValueError, r"`inputs`.*inputs\[None\]"),
        ({"inputs": [1, 2]}, TypeError, r"`inputs`"),
        ({"inputs": torch.zeros(2, 3, 16, 16, dtype=torch.long)}, TypeError, r"floating"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    net = make_bn_net()
    call: dict[str, Any] = {"inputs": _images(), "method": "saliency"}
    call.update(kwargs)
    with pytest.raises(error, match=match):
        attribute(net, call.pop("inputs"), call.pop("method"), **call)
    assert hook_count(net) == 0 and all(m.training for m in net.modules())


def test_model_must_return_class_scores() -> None:
    net = nn.Sequential(nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match=r"\(N, num_classes\)"):
        attribute(net, _images(), "saliency")


def test_grad_cam_default_layer_is_last_spatial_conv_or_pool() -> None:
    net = make_lenet().eval()  # conv 12x12, pool 6x6, conv 4x4, pool 2x2
    x = _images()
    assert gradcam_layers(net, x) == ["0", "2", "3", "5"]
    res = attribute(net, x, "grad_cam")
    assert res.layer == "5"
    a = res.attributions
    assert (a >= 0).all()  # relu_attributions=True, as in the paper
    assert torch.equal(a[:, 0], a[:, 1]) and torch.equal(a[:, 0], a[:, 2])  # one map, 3 channels
    other = attribute(net, x, "grad_cam", layer="3")
    assert other.layer == "3" and not torch.allclose(other.attributions, a)
    # a 1x1 pooled output is skipped by the default, but can be chosen explicitly
    pooled = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    assert attribute(pooled, x, "grad_cam").layer == "0"
    assert attribute(pooled, x, "grad_cam", layer="2").layer == "2"


def test_grad_cam_equals_paper_formula() -> None:
    net = make_lenet().eval()
    x = _images(2)
    res = attribute(net, x, "grad_cam", layer="3", target=1)
    feats: list[torch.Tensor] = []
    handle = net[3].register_forward_hook(lambda _m, _i, o: feats.append(o))
    xr = x.clone()
    out = net(xr)
    handle.remove()
    (grads,) = torch.autograd.grad(out[:, 1].sum(), feats[0])
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * feats[0]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(16, 16), mode="bilinear")
    assert torch.allclose(res.attributions[:, :1], cam.detach(), atol=1e-5)


def test_unavailable_methods_raise_and_attribute_many_reports_them() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = _images()
    with pytest.raises(AttributionUnavailable, match="no conv or pooling layer"):
        attribute(mlp, x, "grad_cam")
    results = attribute_many(mlp, x)
    assert set(results) == set(METHODS)
    assert isinstance(results["grad_cam"], str) and "Grad-CAM" in results["grad_cam"]
    assert isinstance(results["guided_grad_cam"], str)
    for name in set(METHODS) - {"grad_cam", "guided_grad_cam"}:
        assert isinstance(results[name], AttributionResult), name
    # every method explains the same (predicted) class
    targets = {tuple(r.targets.tolist()) for r in results.values() if not isinstance(r, str)}
    assert len(targets) == 1
    assert hook_count(mlp) == 0


class _ReusedRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))  # the same module twice, as in torchvision's BasicBlock
        return self.head(x.mean(dim=(2, 3)))


def test_deeplift_unavailable_on_reused_activation_module() -> None:
    net = _ReusedRelu()
    with pytest.raises(AttributionUnavailable, match=r"relu.*more than once"):
        attribute(net, _images(), "deeplift")
    assert isinstance(attribute_many(net, _images(), ["deeplift"])["deeplift"], str)
    assert hook_count(net) == 0


def test_attribute_many_rejects_unknown_method_before_running() -> None:
    with pytest.raises(ValueError, match="`method`"):
        attribute_many(make_lenet(), _images(), ["saliency", "nope"])


@pytest.mark.parametrize(
    "method", ["integrated_gradients", "occlusion", "saliency", "deeplift", "grad_cam"]
)
def test_batching_does_not_change_deterministic_results(method: str) -> None:
    net = make_bn_net().eval()
    x = _images(5)
    whole = attribute(net, x, method, target="pred", internal_batch_size=10_000)
    for ibs in (1, 3):
        part = attribute(net, x, method, target="pred", internal_batch_size=ibs)
        assert part.settings["internal_batch_size"] == ibs
        assert torch.equal(part.targets, whole.targets)
        assert torch.allclose(part.attributions, whole.attributions, atol=1e-5), ibs


def test_memory_budget_sets_internal_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_bn_net()
    x = _images(5)
    big = estimate_internal_batch_size(net, x, memory_budget_mb=256)
    small = estimate_internal_batch_size(net, x, memory_budget_mb=1)
    assert big > small >= 1
    assert big / small == pytest.approx(256, rel=0.05)
    # estimate = sum of leaf outputs of one sample (+ the input) x 4 bytes x 3
    # conv, bn, relu at 16x16; pool, conv, bn, relu, dropout at 8x8; pool, flatten, dropout;
    # linear
    leaf_numel = 8 * 16 * 16 * 3 + 8 * 8 * 8 * 5 + 32 * 3 + 4
    per_sample = (leaf_numel + 3 * 16 * 16) * 4 * 3
    assert small == 2**20 // per_sample
    # the budget drives the batching of a call; tiny budgets still give correct results
    calls: list[int] = []
    original = attr_mod._Head.__call__

    def spy(self: Any, x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(attr_mod._Head, "__call__", spy)
    res = attribute(net, x, "integrated_gradients", target=0, memory_budget_mb=0.05, n_steps=8)
    limit = res.settings["internal_batch_size"]
    assert limit == max(1, int(0.05 * 2**20 // per_sample)) and limit < 5
    assert calls and max(calls) <= max(limit, 1)
    ref = attribute(net, x, "integrated_gradients", target=0, n_steps=8)
    assert torch.allclose(res.attributions, ref.attributions, atol=1e-5)


def test_notes_report_zero_maps_and_degenerate_methods() -> None:
    net = make_lenet().eval()
    with torch.no_grad():
        net[7].weight.zero_()
    res = attribute(net, _images(), "saliency", target=0)
    assert "all-zero map for 4 of 4" in res.note
    tanh_net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2))
    res = attribute(tanh_net, _images(), "guided_backprop", target=0)
    assert "no nn.ReLU" in res.note
    assert attribute(make_lenet(), _images(), "saliency").note == ""


def test_settings_record_documented_defaults() -> None:
    net = make_lenet()
    x = _images()
    assert attribute(net, x, "integrated_gradients").settings["n_steps"] == 50
    sg = attribute(net, x, "smoothgrad").settings
    assert sg["nt_samples"] == 16
    assert sg["stdevs"] == pytest.approx(0.15 * float(x.max() - x.min()))
    assert attribute(net, x, "gradient_shap").settings["baselines"] == 5  # batch + zeros
    occ = attribute(net, x, "occlusion").settings
    assert occ["sliding_window_shapes"] == (3, 4, 4) and occ["strides"] == (3, 2, 2)
    assert occ["windows"] == 49
    assert attribute(net, x, "integrated_gradients", n_steps=7).settings["n_steps"] == 7


def test_integrated_gradients_completeness() -> None:
    net = make_lenet().eval()
    x = _images(3)
    res = attribute(net, x, "integrated_gradients", target=2, n_steps=200)
    with torch.no_grad():
        gap = net(x)[:, 2] - net(torch.zeros_like(x))[:, 2]
    assert torch.allclose(res.attributions.flatten(1).sum(1), gap, atol=2e-3)


def test_one_dimensional_inputs() -> None:
    net = make_conv1d_net()
    x = torch.randn(3, 4, 20)
    for method in ("saliency", "integrated_gradients", "occlusion", "grad_cam"):
        res = attribute(net, x, method)
        assert res.attributions.shape == x.shape, method
    assert attribute(net, x, "grad_cam").layer == "3"


def test_profile_is_cached_per_model_and_input_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    net = make_bn_net()  # adaptive pooling: accepts any input size
    x = _images()
    attribute(net, x, "saliency")
    calls: list[int] = []
    original = net.forward

    def count(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return original(x)

    monkeypatch.setattr(net, "forward", count)
    attribute(net, x, "saliency")
    assert calls == [4]  # one forward of the batch: no profiling pass, no extra "pred" pass
    calls.clear()
    attribute(net, torch.randn(2, 3, 20, 20), "saliency")
    assert calls == [1, 2]  # a new input shape is profiled once (one sample)


@pytest.mark.parametrize("target", ["pred", 2])
def test_saliency_and_input_x_gradient_equal_plain_autograd(target: Any) -> None:
    net = make_bn_net().eval()
    x = _images(5)
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    t = out.argmax(1) if target == "pred" else torch.full((5,), target)
    (grad,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xr)
    sal = attribute(net, x, "saliency", target=target)
    ixg = attribute(net, x, "input_x_gradient", target=target)
    assert torch.equal(sal.targets, t) and torch.equal(ixg.targets, t)
    assert torch.allclose(sal.attributions, grad.abs(), atol=1e-6)
    assert torch.allclose(ixg.attributions, grad * x, atol=1e-6)
    assert torch.allclose(
        attribute(net, x, "saliency", target=target, abs=False).attributions, grad, atol=1e-6
    )


def test_attribute_many_passes_common_arguments() -> None:
    net = make_bn_net()
    x = _images()
    labels = torch.tensor([1, 0, 3, 2])
    results = attribute_many(
        net, x, ["saliency", "integrated_gradients"], target="label", labels=labels
    )
    for res in results.values():
        assert isinstance(res, AttributionResult)
        assert torch.equal(res.targets, labels)
    by_tensor = attribute_many(net, x, ["grad_cam"], target=labels, layer="4")["grad_cam"]
    assert isinstance(by_tensor, AttributionResult) and by_tensor.layer == "4"
