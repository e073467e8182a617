"""Snapshots of everything an analysis call must leave as it was (shared by the attribution,
sanity and faithfulness tests)."""

from __future__ import annotations

import random

import numpy as np
import torch
from cnnviz_test_helpers import modes
from torch import nn

from cnnviz.analysis.guard import hook_count


class ModelState:
    """Modes, parameters (values, ``requires_grad``, ``.grad`` objects), buffers, in-place
    flags, hooks and module attributes of a model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = modes(model)
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.param_ids = {n: id(p) for n, p in model.named_parameters()}
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
            assert id(p) == self.param_ids[n], n  # the same Parameter object
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


class RngState:
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
