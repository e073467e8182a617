from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from cnnviz.analysis.guard import HookSet


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP
    # spinning makes them 10-100x slower. Restored after each test.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _model_input(model: nn.Module, batch: int = 2, size: int | None = None) -> torch.Tensor:
    """A random input of the model's expected shape (token ids for text models)."""
    shape = tuple(model.expected_input_shape)
    device = next(model.parameters()).device
    if len(shape) == 1:
        length = shape[0] if size is None else size
        return torch.randint(1, 50, (batch, length), device=device)
    if size is not None:
        shape = (shape[0], size, size)
    return torch.randn(batch, *shape, device=device)


def _layer_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every named leaf module for input ``x``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape[1:])

        return hook

    with HookSet() as hooks, torch.no_grad():
        for name, module in model.named_modules():
            if name and not list(module.children()):
                hooks.add(module.register_forward_hook(recorder(name)))
        model(x)
    return shapes


@pytest.fixture
def model_input():
    """``model_input(model, batch=2, size=None)``: a random input the model accepts."""
    return _model_input


@pytest.fixture
def layer_shapes():
    """``layer_shapes(model, x)``: output shape (without batch) of every named leaf module."""
    return _layer_shapes
