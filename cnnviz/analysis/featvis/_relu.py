"""Lucid's redirected ReLU gradient, so images do not start at dead units.

``nn.ReLU`` modules get it through a forward hook (:func:`_redirect_relu`); functional ReLU
calls outside such modules through :class:`_ReLUMode`, which can also just count them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz.analysis.guard import HookSet


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward does not let an image start at a dead unit (Lucid's redirected grad).

    The forward is an ordinary ReLU. In the backward, an example whose ReLU gradient is zero
    everywhere (every unit the objective depends on is negative) gets the incoming gradient
    wherever it would push a negative input *up*, instead of nothing; examples with any
    nonzero ReLU gradient get the exact gradient.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        exact = grad * (x > 0)
        # ``grad`` is of a loss (the negated objective): grad > 0 pushes the input lower.
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        if x.dim() < 2:  # an unbatched tensor is one example
            return exact if bool(exact.any()) else redirected
        alive = exact.flatten(1).ne(0).any(dim=1).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(alive, exact, redirected)


def _wants_redirect(x: object) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and torch.is_grad_enabled()
        and x.requires_grad
        and x.is_floating_point()
    )


def _redirect_relu(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> object:
    """Forward hook: recompute an ``nn.ReLU``'s output with :class:`_RedirectedReLU`."""
    x = inputs[0] if inputs else None
    if not _wants_redirect(x):
        return None
    return _RedirectedReLU.apply(x)


_RELU_NAMES = frozenset({"relu", "relu_"})


def _relu_call(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool | None:
    """``None`` if ``func`` is not a ReLU call, else whether it is in place."""
    name = getattr(func, "__name__", None)
    if name not in _RELU_NAMES or not args:
        return None
    if name == "relu_":
        return True
    flag = kwargs.get("inplace", args[1] if len(args) > 1 else False)
    return flag is True


class _ReLUMode(TorchFunctionMode):
    """Redirects (or, with ``count_only``, counts) functional ReLUs outside ``nn.ReLU`` modules.

    ``F.relu``, ``torch.relu``, ``Tensor.relu`` and the in-place ``relu_`` forms are recomputed
    with :class:`_RedirectedReLU`; in-place calls write the result back into their input, as
    the original would. Calls made by an ``nn.ReLU`` module (``depth > 0``, kept by the module
    hooks of :meth:`track`) are left to that module's forward hook.
    """

    def __init__(self, count_only: bool) -> None:
        super().__init__()
        self.count_only = count_only
        self.depth = 0
        self.calls = 0

    def track(self, model: nn.Module, hooks: HookSet) -> None:
        """Count how deep inside ``nn.ReLU`` modules the forward is (reset per model call)."""
        hooks.add(model.register_forward_pre_hook(self._reset, prepend=True))
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                hooks.add(module.register_forward_pre_hook(self._enter))
                hooks.add(module.register_forward_hook(self._leave, always_call=True))

    def _reset(self, *_: object) -> None:
        self.depth = 0

    def _enter(self, *_: object) -> None:
        self.depth += 1

    def _leave(self, *_: object) -> None:
        self.depth = max(0, self.depth - 1)

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        inplace = _relu_call(func, args, kwargs)
        if inplace is None or self.depth > 0:
            return func(*args, **kwargs)
        self.calls += 1
        x = args[0]
        if self.count_only or not _wants_redirect(x):
            return func(*args, **kwargs)
        if inplace:
            return x.copy_(_RedirectedReLU.apply(x.clone()))
        return _RedirectedReLU.apply(x)
