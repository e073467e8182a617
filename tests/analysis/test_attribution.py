"""``cnnviz.analysis.attribution``: every method, and the observer-effect guarantees of each."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import pytest
import torch
from cnnviz_test_helpers import make_bn_net, make_conv1d_net, make_lenet
from observer_state import ModelState as _State
from observer_state import RngState as _RngState
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


def _forget_captum_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    import captum.attr

    monkeypatch.setattr(captum.attr.DeepLift, "_remove_hooks", lambda self, *a: None)


def _forget_cnnviz_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    from cnnviz.analysis.guard import HookSet

    monkeypatch.setattr(HookSet, "remove", lambda self: None)


# Guided backprop, deconvolution and the Grad-CAMs hook the model with cnnviz's own forward
# hooks (no longer Captum's module backward hooks); the safety net must catch those too.
@pytest.mark.parametrize(
    ("method", "forget"),
    [
        ("deeplift", _forget_captum_hooks),
        ("guided_backprop", _forget_cnnviz_hooks),
        ("guided_grad_cam", _forget_cnnviz_hooks),
        ("grad_cam", _forget_cnnviz_hooks),
    ],
)
def test_hooks_and_attributes_removed_even_if_captum_forgets(
    method: str, forget: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = make_bn_net().eval()
    x = _images()
    attribute(net, x, method, target=0)
    forget(monkeypatch)
    state = _State(net)
    attribute(net, x, method, target=0)
    state.verify()  # a normal call leaves nothing either
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


def test_deeplift_on_reused_activation_module() -> None:
    """cnnviz's Rescale rule works per call, so a reused ReLU is fine (the maps sum to the
    score difference, DeepLift's completeness); Captum's DeepLift, which cnnviz runs for models
    with max pooling, is not, and says so."""
    net = _ReusedRelu().eval()
    x = _images()
    res = attribute(net, x, "deeplift", target=1)
    with torch.no_grad():
        delta = net(x)[:, 1] - net(torch.zeros_like(x))[:, 1]
    assert torch.allclose(res.attributions.sum(dim=(1, 2, 3)), delta, atol=1e-5)
    assert delta.abs().min() > 1e-3  # not trivially zero
    pooled = _ReusedRelu().eval()
    pooled.conv2 = nn.Sequential(nn.MaxPool2d(3, 1, 1), pooled.conv2)
    with pytest.raises(AttributionUnavailable, match=r"relu.*more than once.*max pooling"):
        attribute(pooled, x, "deeplift")
    assert isinstance(attribute_many(pooled, x, ["deeplift"])["deeplift"], str)
    assert hook_count(net) == 0 and hook_count(pooled) == 0


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
    kept = pickle.loads(pickle.dumps(res))  # the note is computed when read: also after a copy
    assert "all-zero map for 4 of 4" in res.note and kept.note == res.note
    cam = attribute(net, _images(), "grad_cam", target=0)
    assert "all-zero map" in cam.note and "no positive evidence" in cam.note
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


# --------------------------------------------------------------------------- the method table
def test_one_spec_per_method_drives_the_checks() -> None:
    from cnnviz.analysis.attribution import METHOD_SPECS, MethodSpec

    assert tuple(METHOD_SPECS) == METHODS
    for name, spec in METHOD_SPECS.items():
        assert isinstance(spec, MethodSpec) and spec.name == name and spec.summary
        assert (spec.tokens is None) == bool(spec.no_tokens), name
    assert {n for n, s in METHOD_SPECS.items() if s.hook_based} == set(HOOK_BASED)
    assert {n for n, s in METHOD_SPECS.items() if s.noisy} == {"smoothgrad", "gradient_shap"}
    assert available_methods("tokens") == [m for m in METHODS if m != "guided_grad_cam"]
    with pytest.raises(ValueError, match="`inputs`"):
        available_methods("video")  # type: ignore[arg-type]
    # the accepted keyword arguments come from the spec
    with pytest.raises(TypeError, match=r"occlusion: unexpected.*accepts: baselines, sliding"):
        attribute(make_lenet(), _images(), "occlusion", n_steps=3)


# ------------------------------------------------ native implementations equal Captum's own
def _relu_lenet() -> nn.Module:
    return make_lenet().eval()  # ReLU, max pooling: guided rules change the gradients


@pytest.mark.parametrize(
    ("method", "captum_call"),
    [
        (
            "saliency",
            lambda m, x, t, layer: (
                __import__("captum.attr").attr.Saliency(m).attribute(x, target=t, abs=True)
            ),
        ),
        (
            "input_x_gradient",
            lambda m, x, t, layer: (
                __import__("captum.attr").attr.InputXGradient(m).attribute(x, target=t)
            ),
        ),
        (
            "guided_backprop",
            lambda m, x, t, layer: (
                __import__("captum.attr").attr.GuidedBackprop(m).attribute(x, target=t)
            ),
        ),
        (
            "deconvolution",
            lambda m, x, t, layer: (
                __import__("captum.attr").attr.Deconvolution(m).attribute(x, target=t)
            ),
        ),
        (
            "guided_grad_cam",
            lambda m, x, t, layer: (
                __import__("captum.attr")
                .attr.GuidedGradCam(m, layer)
                .attribute(x, target=t, interpolate_mode="bilinear")
            ),
        ),
    ],
)
def test_native_methods_equal_captum(method: str, captum_call: Any) -> None:
    net = _relu_lenet()
    x = _images(5)
    t = torch.tensor([0, 1, 2, 3, 1])
    ours = attribute(net, x, method, target=t)
    layer = net.get_submodule(ours.layer) if ours.layer else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum: "Setting backward hooks", "required_grads"
        theirs = captum_call(net, x.clone(), t, layer)
    assert torch.allclose(ours.attributions, theirs.detach(), atol=1e-7, rtol=1e-5)
    assert ours.attributions.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "batch"),
    [({}, None), ({"nt_samples": 7, "stdevs": 0.4}, 10), ({"abs": False}, None)],
)
def test_native_smoothgrad_equals_captum_noise_tunnel(kwargs: dict, batch: int | None) -> None:
    """The same noise, drawn in the same order, gives Captum's maps; also when the noisy
    copies are evaluated in groups (``internal_batch_size``: 7 copies of 5 images in groups
    of 2, 2, 2 and 1, as Captum's ``nt_samples_batch_size=2`` groups them)."""
    from captum.attr import NoiseTunnel, Saliency

    net, x, t = _relu_lenet(), _images(5), torch.tensor([0, 1, 2, 3, 1])
    ours = attribute(net, x, "smoothgrad", target=t, seed=5, internal_batch_size=batch, **kwargs)
    settings = ours.settings
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NoiseTunnel(Saliency(net)).attribute(
            x.clone(),
            nt_type="smoothgrad",
            nt_samples=settings["nt_samples"],
            nt_samples_batch_size=None if batch is None else batch // 5,
            stdevs=settings["stdevs"],
            target=t,
            abs=settings["abs"],
        )
    assert torch.allclose(ours.attributions, theirs, atol=1e-7, rtol=1e-5)
    assert ours.attributions.abs().sum() > 0


@pytest.mark.parametrize("stdevs", [0.0, 0.3])
def test_native_gradient_shap_equals_captum(stdevs: float) -> None:
    """Random baselines and interpolation points (NumPy) and noise (torch) drawn as Captum
    draws them give Captum's maps."""
    import numpy as np
    from captum.attr import GradientShap

    net, x, t = _relu_lenet(), _images(5), torch.tensor([0, 1, 2, 3, 1])
    ours = attribute(net, x, "gradient_shap", target=t, seed=3, n_samples=6, stdevs=stdevs)
    torch.manual_seed(3)
    np.random.seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = GradientShap(net).attribute(
            x.clone(),
            baselines=torch.cat([torch.zeros_like(x[:1]), x]),
            n_samples=6,
            stdevs=stdevs,
            target=t,
        )
    assert torch.allclose(ours.attributions, theirs, atol=1e-7, rtol=1e-5)
    assert ours.attributions.abs().sum() > 0


def _elementwise_net() -> nn.Module:
    """Every activation Captum's DeepLift rescales (one in place), BatchNorm, no max pooling."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3),
        nn.ELU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.Sigmoid(),
        nn.Conv2d(8, 8, 3),
        nn.Softplus(),
        nn.Conv2d(8, 8, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(8, 8, 1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize("net_name", ["elementwise", "lenet5"])
@pytest.mark.parametrize("baselines", ["zeros", "per_input", "one_row"])
def test_native_deeplift_equals_captum(net_name: str, baselines: str) -> None:
    """The Rescale rule applied by cnnviz gives Captum's DeepLift maps, also for an input equal
    to its baseline (where Captum keeps each activation's own gradient)."""
    from captum.attr import DeepLift

    from cnnviz.models import create

    net = _elementwise_net() if net_name == "elementwise" else create("lenet5", input_size=28)
    net.eval()
    shape = (3, 16, 16) if net_name == "elementwise" else (1, 28, 28)
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(4))
    base = {
        "zeros": None,
        "per_input": torch.randn(5, *shape, generator=torch.Generator().manual_seed(5)),
        "one_row": torch.full((1, *shape), 0.2),
    }[baselines]
    ref = torch.zeros_like(x[:1]) if base is None else base
    x[2] = ref[2 % len(ref)]  # delta_in = 0 throughout for this input
    t = torch.tensor([0, 1, 2, 3, 1])
    kwargs = {} if base is None else {"baselines": base}
    ours = attribute(net, x, "deeplift", target=t, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DeepLift(net).attribute(x.clone(), target=t, **kwargs)
    assert torch.allclose(ours.attributions, theirs, atol=1e-6, rtol=1e-4)
    assert ours.attributions.abs().sum() > 0
    assert ours.attributions[2].abs().max() == 0  # input = baseline: nothing to attribute
    # completeness (summation to delta), DeepLift's defining property
    with torch.no_grad():
        delta = net(x).gather(1, t[:, None]) - net(ref.expand_as(x)).gather(1, t[:, None])
    assert torch.allclose(ours.attributions.sum(dim=(1, 2, 3)), delta[:, 0], atol=1e-4)


def test_noise_methods_reject_bad_sample_counts() -> None:
    net, x = _relu_lenet(), _images(2)
    with pytest.raises(ValueError, match="smoothgrad: `nt_samples` must be a positive int"):
        attribute(net, x, "smoothgrad", nt_samples=0)
    with pytest.raises(ValueError, match="gradient_shap: `n_samples` must be a positive int"):
        attribute(net, x, "gradient_shap", n_samples=2.5)


def test_grad_cam_equals_captum_layer_grad_cam_on_a_stage_with_in_place_addition() -> None:
    """A ResNet stage's output is modified in place (``out += identity``) after the hooked
    layer; Grad-CAM must still read the layer's own output."""
    from captum.attr import LayerAttribution, LayerGradCam

    from cnnviz.models import create

    net = create("resnet18", in_channels=3, num_classes=5, input_size=32).eval()
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    x = torch.randn(2, 3, 32, 32)
    for layer in ("layer3.1.bn2", "layer2"):
        ours = attribute(net, x, "grad_cam", target=1, layer=layer).attributions
        cam = LayerGradCam(net, net.get_submodule(layer)).attribute(
            x, target=1, relu_attributions=True
        )
        theirs = LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear")
        assert torch.allclose(ours[:, :1], theirs.detach(), atol=1e-6), layer


# ---------------------------------------------------------------------- passes on the CPU
def test_integrated_gradients_runs_in_passes_of_the_fastest_cpu_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cnnviz.analysis.attribution._model import CPU_PASS_SAMPLES

    net = make_lenet()
    x = torch.randn(8, 3, 16, 16)
    calls: list[int] = []
    original = attr_mod._Head.__call__

    def spy(self: Any, inp: torch.Tensor) -> torch.Tensor:
        calls.append(inp.shape[0])
        return original(self, inp)

    monkeypatch.setattr(attr_mod._Head, "__call__", spy)
    res = attribute(net, x, "integrated_gradients", target=0, n_steps=50)
    assert res.settings["internal_batch_size"] == CPU_PASS_SAMPLES == 128
    # 400 samples in 4 even passes of at most 128 (13 steps x 8 images), not 50 passes of 8
    # nor one pass of 400
    assert calls == [104, 104, 104, 88]


# ------------------------------------------------------------------ models as users have them
class _DictModel(nn.Module):
    """Takes a batch dict and returns a dict: needs ``forward=``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_bn_net()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not isinstance(batch, dict):
            raise TypeError(f"expects a dict batch, got {type(batch).__name__}")
        return {"logits": self.net(batch["image"]), "aux": torch.zeros(1)}


def _dict_forward(model: _DictModel) -> Any:
    return lambda x: model({"image": x})["logits"]


@pytest.mark.parametrize("method", METHODS)
def test_forward_function_stands_in_for_the_model(method: str) -> None:
    wrapped = _DictModel().train()
    x = _images()
    plain = attribute(wrapped.net, x, method, target=1, seed=5)
    state = _State(wrapped)
    rng = _RngState()
    res = attribute(wrapped, x, method, target=1, seed=5, forward=_dict_forward(wrapped))
    rng.verify()
    state.verify()
    assert torch.allclose(res.attributions, plain.attributions, atol=1e-6)
    assert res.layer == (None if plain.layer is None else f"net.{plain.layer}")


def test_forward_function_with_attribute_many_and_the_lookups() -> None:
    wrapped = _DictModel()
    x = _images()
    fwd = _dict_forward(wrapped)
    results = attribute_many(wrapped, x, ["saliency", "grad_cam"], forward=fwd)
    assert all(isinstance(r, AttributionResult) for r in results.values())
    assert gradcam_layers(wrapped, x, forward=fwd) == ["net.0", "net.3", "net.4", "net.8"]
    assert estimate_internal_batch_size(wrapped, x, forward=fwd) == estimate_internal_batch_size(
        wrapped.net, x
    )


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        (nn.Conv2d(3, 32, 3), {}, r"`model` must return class scores.*\(1, 32, 14, 14\).*forward="),
        (_DictModel(), {}, r"`model` could not be called.*pass `forward=`"),
        (
            _DictModel(),
            {"forward": lambda x: x},
            r"`forward` must return class scores.*\(1, 3, 16, 16\)",
        ),
        (make_lenet(), {"forward": "logits"}, r"`forward` must be a function"),
    ],
)
def test_model_output_errors_name_the_fix(model: nn.Module, kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        attribute(model, _images(), "saliency", **kwargs)
    assert hook_count(model) == 0


def test_dict_output_error_lists_its_keys() -> None:
    class Out(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 16 * 16, 2)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.fc(x.flatten(1))}

    with pytest.raises(ValueError, match=r"a dict with keys \['logits'\].*forward="):
        attribute(Out(), _images(), "saliency")


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        (torch.zeros(8, 40), ValueError, r"got a torch.float32 tensor of shape \(8, 40\).*long"),
        (torch.zeros(40, dtype=torch.long), ValueError, r"token ids.*\(N, L\).*inputs\[None\]"),
        (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), TypeError, r"inputs.float\(\) / 255"),
        (torch.zeros(0, 3, 16, 16), ValueError, r"non-empty"),
        (torch.zeros(2, 1, 3, 16, 16), ValueError, r"\(N, C, H, W\) or \(N, C, L\)"),
        (torch.zeros(2, 5, dtype=torch.bool), TypeError, r"floating point"),
    ],
)
def test_input_errors_give_the_right_advice(inputs: torch.Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        attribute(make_lenet(), inputs, "saliency")


def test_no_batch_dimension_advice_for_a_batch_of_token_ids() -> None:
    """A 1-D text CNN on token ids (8, 40) is attributed, not told to add a batch dimension."""
    from cnnviz.models import create

    net = create("kim_cnn", vocab_size=50, embed_dim=8, input_size=32)
    res = attribute(net, torch.randint(1, 50, (8, 40)), "saliency")
    assert res.attributions.shape == (8, 40) and res.input_kind == "tokens"


# ------------------------------------------------------------------------------- precision
def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize(
    "method", ["saliency", "integrated_gradients", "smoothgrad", "grad_cam", "guided_backprop"]
)
def test_low_and_high_precision_models(dtype: torch.dtype, method: str) -> None:
    ref_net = make_lenet().eval()
    net = make_lenet().eval().to(dtype)
    x = _images()  # float32 inputs: cast to the model's dtype inside
    with torch.no_grad():
        target = ref_net(x).argmax(1)  # classes with positive Grad-CAM evidence
    ref = attribute(ref_net, x, method, target=target).attributions
    state = _State(net)
    res = attribute(net, x, method, target=target)
    state.verify()
    a = res.attributions
    assert a.dtype == torch.float32 and a.device.type == "cpu" and a.is_contiguous()
    assert torch.isfinite(a).all()
    if dtype == torch.float64:
        assert torch.allclose(a, ref, atol=1e-5, rtol=1e-4)
        assert "rounding error" not in res.note
    else:
        assert _corr(a, ref) > 0.95, _corr(a, ref)
        assert "rounding error" in res.note


def test_float16_deeplift_is_unavailable_with_the_reason() -> None:
    net = make_lenet().eval().half()
    with pytest.raises(AttributionUnavailable, match="float16"):
        attribute(net, _images(), "deeplift")
    assert isinstance(attribute(net.bfloat16(), _images(), "deeplift"), AttributionResult)


@pytest.mark.parametrize("method", METHODS)
def test_channels_last_model(method: str) -> None:
    net = make_bn_net().eval()
    x = _images()
    ref = attribute(net, x, method, target=2).attributions
    res = attribute(net.to(memory_format=torch.channels_last), x, method, target=2)
    assert res.attributions.is_contiguous()
    assert torch.allclose(res.attributions, ref, atol=1e-6)
