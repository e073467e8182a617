"""Observer-effect guards shared by every analysis that touches a live model.

Everything cnnviz does to a model while training runs goes through :func:`observe`, so the
guarantees of the design (modes restored, no ``.grad`` touched, BatchNorm buffers and RNG streams
unchanged, no hook left behind) live in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HookSet", "hook_count", "model_devices", "observe"]


class HookSet:
    """Owns a set of hook handles and removes all of them exactly once.

    Removal is idempotent and also happens when the set is used as a context manager and the
    body raises.

    Example:
        >>> with HookSet() as hooks:
        ...     hooks.add(model.conv.register_forward_hook(fn))
        ...     model(x)
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        """Keep ``handle`` so :meth:`remove` removes it."""
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        """Remove every hook held; calling it again does nothing."""
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def hook_count(model: nn.Module) -> int:
    """Count every module hook registered on ``model`` and its submodules.

    Used by tests (and available to users) to check that nothing was left behind.
    """
    total = 0
    for module in model.modules():
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            total += len(getattr(module, name, {}) or {})
    return total


def model_devices(model: nn.Module) -> list[torch.device]:
    """Return the distinct devices of ``model``'s parameters and buffers."""
    seen: dict[str, torch.device] = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        seen.setdefault(str(tensor.device), tensor.device)
    return list(seen.values())


def _cuda_indices(devices: Iterable[torch.device]) -> list[int]:
    out = []
    for d in devices:
        if d.type == "cuda":
            out.append(d.index if d.index is not None else torch.cuda.current_device())
    return sorted(set(out))


@contextlib.contextmanager
def observe(
    model: nn.Module,
    *,
    eval_mode: bool = True,
    grad: bool = False,
    freeze_params: bool = True,
    no_inplace: bool = False,
    extra_devices: Iterable[torch.device] = (),
) -> Iterator[nn.Module]:
    """Run analysis code on ``model`` without changing anything the model or training owns.

    Inside the window the model is in eval mode (optional), the global RNG streams are forked
    (CPU and the model's CUDA devices), parameters' ``requires_grad`` may be switched off so
    gradients flow to inputs only, and in-place activations can be made out-of-place (for
    hook-based attribution methods). On exit — normal or by exception — every module's
    ``.training`` and ``inplace`` flag, every parameter's ``requires_grad`` and ``.grad``
    reference, and the RNG states are as before.

    Args:
        model: The module to observe.
        eval_mode: Switch every module to eval mode inside the window, so BatchNorm running
            statistics are not updated and dropout draws no randomness.
        grad: Leave ``torch.inference_mode`` and enable autograd inside the window (needed for
            gradients during Lightning's validation hooks).
        freeze_params: Set ``requires_grad=False`` on every parameter inside the window so no
            weight gradient is computed (input gradients still are).
        no_inplace: Set ``inplace=False`` on modules that have that attribute (``nn.ReLU``...).
        extra_devices: Further devices whose RNG state is forked (e.g. the probe's device).

    Yields:
        The same ``model``.
    """
    # One walk over the modules; flags are set through __dict__ (plain attributes), which skips
    # Module.__setattr__'s parameter/buffer/module checks: this guard runs at every analysis call.
    modes: list[tuple[nn.Module, bool]] = []
    inplace: list[tuple[nn.Module, bool]] = []
    for m in model.modules():
        modes.append((m, m.training))
        flag = m.__dict__.get("inplace")
        if isinstance(flag, bool):
            inplace.append((m, flag))
    params = list(model.parameters())
    requires = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    devices = {p.device for p in params} | {b.device for b in model.buffers()}
    cuda = _cuda_indices([*devices, *extra_devices])
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(torch.random.fork_rng(devices=cuda, enabled=True))
        if grad:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
        if eval_mode:
            for m, _ in modes:
                m.__dict__["training"] = False
        if freeze_params:
            for p in params:
                p.requires_grad_(False)
        if no_inplace:
            for m, _ in inplace:
                m.__dict__["inplace"] = False
        yield model
    finally:
        try:
            stack.close()
        finally:
            for m, flag in modes:
                m.__dict__["training"] = flag
            for p, flag, g in zip(params, requires, grads, strict=True):
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
                if p.grad is not g:
                    p.grad = g
            for m, flag in inplace:
                m.__dict__["inplace"] = flag
