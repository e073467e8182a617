"""``cnnviz.analysis.guard``: HookSet, hook_count and the observe() window."""

from __future__ import annotations

import pytest
import torch
from cnnviz_test_helpers import make_bn_net, make_lenet, modes
from torch import nn

from cnnviz.analysis.guard import HookSet, hook_count, model_devices, observe


def _noop(*_args: object) -> None:
    return None


def test_hook_count_counts_every_kind_of_module_hook() -> None:
    net = make_lenet()
    assert hook_count(net) == 0
    handles = [
        net[0].register_forward_hook(_noop),
        net[3].register_forward_pre_hook(_noop),
        net[7].register_full_backward_hook(_noop),
        net[7].register_full_backward_pre_hook(_noop),
        net.register_forward_hook(_noop),
    ]
    assert hook_count(net) == 5
    assert hook_count(net[0]) == 1
    for handle in handles:
        handle.remove()
    assert hook_count(net) == 0


def test_hookset_removes_all_hooks_once_and_is_idempotent() -> None:
    net = make_lenet()
    hooks = HookSet()
    hooks.add(net[0].register_forward_hook(_noop))
    hooks.add(net[3].register_forward_hook(_noop))
    assert len(hooks) == 2 and hook_count(net) == 2
    hooks.remove()
    assert len(hooks) == 0 and hook_count(net) == 0
    hooks.remove()  # a second call does nothing
    assert hook_count(net) == 0


def test_hookset_removes_hooks_when_the_body_raises() -> None:
    net = make_lenet()
    with pytest.raises(RuntimeError, match="inside"), HookSet() as hooks:
        hooks.add(net[0].register_forward_hook(_noop))
        assert hook_count(net) == 1
        raise RuntimeError("inside")
    assert hook_count(net) == 0


def _mixed_mode_net() -> nn.Sequential:
    net = make_bn_net()
    net.train()
    net[1].eval()  # a frozen BatchNorm
    net[10].eval()
    return net


@pytest.mark.parametrize("raises", [False, True])
def test_observe_restores_modes_flags_grads_and_rng(raises: bool) -> None:
    net = _mixed_mode_net()
    before = modes(net)
    net[0].weight.requires_grad_(False)  # a frozen parameter stays frozen
    sentinel = torch.full_like(net[4].weight, 3.0)
    net[4].weight.grad = sentinel
    requires = [p.requires_grad for p in net.parameters()]
    grads = [p.grad for p in net.parameters()]
    rng = torch.get_rng_state()

    def body() -> None:
        with observe(net, no_inplace=True) as model:
            assert model is net
            assert not any(m.training for m in net.modules())
            assert not any(p.requires_grad for p in net.parameters())
            assert net[2].inplace is False
            torch.rand(10)  # drawing inside the window does not move the global stream
            net[4].weight.grad = None  # even if analysis code drops a .grad reference
            if raises:
                raise KeyError("boom")

    if raises:
        with pytest.raises(KeyError):
            body()
    else:
        body()
    assert modes(net) == before
    assert [p.requires_grad for p in net.parameters()] == requires
    assert all(p.grad is g for p, g in zip(net.parameters(), grads, strict=True))
    assert net[4].weight.grad is sentinel
    assert net[2].inplace is True and net[6].inplace is True
    assert torch.equal(torch.get_rng_state(), rng)


def test_observe_keeps_train_mode_and_params_when_asked() -> None:
    net = make_lenet().train()
    with observe(net, eval_mode=False, freeze_params=False):
        assert all(m.training for m in net.modules())
        assert all(p.requires_grad for p in net.parameters())


def test_observe_grad_leaves_inference_mode() -> None:
    net = make_lenet()
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        with observe(net, grad=True):
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            xi = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(net(xi).sum(), xi)
            assert g.shape == x.shape
        assert torch.is_inference_mode_enabled()
    assert all(p.grad is None for p in net.parameters())


def test_model_devices() -> None:
    net = make_bn_net()
    assert model_devices(net) == [torch.device("cpu")]
    assert model_devices(nn.ReLU()) == []
