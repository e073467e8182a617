"""Observer-effect guards shared by every analysis that touches a live model.

Everything cnnviz does to a model while training runs goes through :func:`observe`, so the
guarantees of the design (modes restored, no ``.grad`` touched, BatchNorm buffers and RNG streams
unchanged, no hook left behind) live in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "HookSet",
    "cuda_indices",
    "eager",
    "eager_stance",
    "hook_count",
    "is_compiled",
    "model_devices",
    "observe",
]


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


def _compiled_forward(module: nn.Module) -> bool:
    """Whether ``module`` has an instance ``forward`` wrapped by ``torch.compile``.

    Lightning's ``trainer.fit(torch.compile(m))`` unwraps ``m`` but sets ``m.forward`` to the
    compiled function; ``m.compile()`` sets ``_compiled_call_impl``.
    """
    forward = module.__dict__.get("forward")
    compiled = forward is not None and getattr(forward, "_torchdynamo_orig_callable", None)
    return bool(compiled) or module.__dict__.get("_compiled_call_impl") is not None


def _optimized_type() -> type | None:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return None
    return OptimizedModule


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or any submodule runs through ``torch.compile``."""
    optimized = _optimized_type()
    return any(
        (optimized is not None and isinstance(m, optimized)) or _compiled_forward(m)
        for m in model.modules()
    )


def eager(model: nn.Module) -> nn.Module:
    """A view of ``model`` that runs eagerly, for analysis passes of a compiled model.

    Registering hooks on, or switching the mode of, a module that runs through
    ``torch.compile`` changes dynamo's guards, so the next training step recompiles. cnnviz
    therefore never runs analysis through the compiled module: the view replaces every
    ``OptimizedModule`` by its original module and drops compiled ``forward`` wrappers. Only the
    modules on the way to a compiled part are copied (shallowly, with their own child table);
    parameters, buffers and every other module are shared, so the view sees the live weights
    and hooks land on the real layers. Qualified names in the view carry no ``_orig_mod.``.
    A model with nothing compiled is returned as it is.

    Args:
        model: The module to view.

    Returns:
        ``model`` itself, or the eager view.
    """
    optimized = _optimized_type()
    if optimized is None:
        return model

    def needs(m: nn.Module) -> bool:
        return any(isinstance(x, optimized) or _compiled_forward(x) for x in m.modules())

    def view(m: nn.Module) -> nn.Module:
        while isinstance(m, optimized):
            m = m._orig_mod
        if not needs(m):
            return m
        children = {k: (view(c) if c is not None else None) for k, c in m._modules.items()}
        copy = object.__new__(type(m))
        copy.__dict__.update(m.__dict__)
        copy.__dict__["_modules"] = children
        copy.__dict__.pop("_compiled_call_impl", None)
        copy.__dict__.pop("forward", None)
        return copy

    return view(model)


def _stance_setter() -> Any:
    """``(set, force_eager)``: dynamo's stance switch and the force-eager stance, or ``None``.

    The public ``torch.compiler.set_stance`` builds and validates a new context object (three
    switches) per use; the guard runs at every analysis call, so it switches directly when
    this torch has the (private) function, and falls back to the public API otherwise.
    """
    try:
        from torch._dynamo.eval_frame import DynamoStance, _set_stance

        return _set_stance, DynamoStance("force_eager")
    except (ImportError, TypeError, AttributeError):  # pragma: no cover - other torch versions
        return None


_STANCE: list[Any] = []  # the cached _stance_setter() result, once looked up


def eager_stance() -> contextlib.AbstractContextManager[None]:
    """Run everything inside eagerly (``torch.compiler.set_stance("force_eager")``).

    Code under ``torch.compile`` (a compiled function called inside ``forward``) then neither
    compiles nor checks its guards; the training's compiled graphs stay as they are.
    """
    if not _STANCE:
        _STANCE.append(_stance_setter())
    if _STANCE[0] is not None:
        return _EagerStance(*_STANCE[0])
    set_stance = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if set_stance is None:  # torch < 2.6
        return contextlib.nullcontext()
    return set_stance("force_eager")  # type: ignore[no-any-return]


class _EagerStance:
    """Switches dynamo's stance to force-eager and back (no context object per switch)."""

    def __init__(self, switch: Any, force_eager: Any) -> None:
        self.switch, self.force_eager = switch, force_eager

    def __enter__(self) -> None:
        self.prior = self.switch(self.force_eager)

    def __exit__(self, *exc: object) -> None:
        self.switch(self.prior)


def model_devices(model: nn.Module) -> list[torch.device]:
    """Return the distinct devices of ``model``'s parameters and buffers."""
    seen: dict[str, torch.device] = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        seen.setdefault(str(tensor.device), tensor.device)
    return list(seen.values())


def cuda_indices(devices: Sequence[torch.device]) -> list[int]:
    """The distinct CUDA device indices among ``devices``, sorted; ``[]`` without one.

    An unindexed ``cuda`` device counts as the current one.
    """
    if all(d.type == "cpu" for d in devices):
        return []
    out = []
    for d in devices:
        if d.type == "cuda":
            out.append(d.index if d.index is not None else torch.cuda.current_device())
    return sorted(set(out))


def observe(
    model: nn.Module,
    *,
    eval_mode: bool = True,
    grad: bool = False,
    freeze_params: bool = True,
    no_inplace: bool = False,
    extra_devices: Iterable[torch.device] = (),
    modules: Sequence[nn.Module] | None = None,
) -> contextlib.AbstractContextManager[nn.Module]:
    """Run analysis code on ``model`` without changing anything the model or training owns.

    Inside the window the model is in eval mode (optional), the global RNG streams are forked
    (CPU and the model's CUDA devices), parameters' ``requires_grad`` may be switched off so
    gradients flow to inputs only, and in-place activations can be made out-of-place (for
    hook-based attribution methods). Anything compiled with ``torch.compile`` runs eagerly
    inside the window (:func:`eager_stance`; pass an :func:`eager` view to avoid the compiled
    wrappers altogether). On exit — normal or by exception — every module's
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
        modules: ``list(model.modules())``, when the caller has just walked the tree anyway
            (saves a second walk; attribution calls run this guard thousands of times).

    Returns:
        A context manager whose ``__enter__`` returns the same ``model``.
    """
    return _Observed(
        model, eval_mode, grad, freeze_params, no_inplace, tuple(extra_devices), modules
    )


class _Observed:
    """The window of :func:`observe`.

    A plain context manager, as it runs at every analysis call: it sets flags through
    ``__dict__`` (skipping ``Module.__setattr__``'s checks), builds its lists by
    comprehensions, saves and restores the RNG states directly (what
    ``torch.random.fork_rng`` does) and enters no grad-mode context that would change nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        eval_mode: bool,
        grad: bool,
        freeze_params: bool,
        no_inplace: bool,
        extra_devices: tuple[torch.device, ...],
        modules: Sequence[nn.Module] | None,
    ) -> None:
        self.model = model
        self.eval_mode, self.grad = eval_mode, grad
        self.freeze_params, self.no_inplace = freeze_params, no_inplace
        self.extra_devices = extra_devices
        self.mods = list(model.modules()) if modules is None else modules
        self.contexts: list[Any] = []

    def __enter__(self) -> nn.Module:
        mods = self.mods
        self.training = [m.training for m in mods]
        self.inplace = [
            (m, f) for m in mods if (f := m.__dict__.get("inplace")) is True or f is False
        ]
        # shared parameters once (a tensor hashes by identity)
        self.params = list(
            dict.fromkeys(p for m in mods for p in m._parameters.values() if p is not None)
        )
        self.requires = [p.requires_grad for p in self.params]
        self.grads = [p.grad for p in self.params]
        cuda_devices: set[torch.device] = set()
        if torch.cuda.is_initialized():  # else no tensor can be on a CUDA device
            cuda_devices.update(p.device for p in self.params if p.is_cuda)
            cuda_devices.update(
                b.device for m in mods for b in m._buffers.values() if b is not None and b.is_cuda
            )
        self.cuda = cuda_indices([*cuda_devices, *self.extra_devices])
        self.cpu_rng = torch.default_generator.get_state()
        self.cuda_rng = [torch.cuda.get_rng_state(i) for i in self.cuda]
        try:
            self._enter(eager_stance())
            if self.grad and torch.is_inference_mode_enabled():
                self._enter(torch.inference_mode(False))
            if self.grad and not torch.is_grad_enabled():
                self._enter(torch.enable_grad())
            if self.eval_mode:
                for m in mods:
                    m.__dict__["training"] = False
            if self.freeze_params:
                for p in self.params:
                    p.requires_grad = False
            if self.no_inplace:
                for m, _ in self.inplace:
                    m.__dict__["inplace"] = False
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.model

    def _enter(self, context: Any) -> None:
        context.__enter__()
        self.contexts.append(context)  # entered: exited again on the way out

    def __exit__(self, *exc: object) -> None:
        try:
            while self.contexts:
                self.contexts.pop().__exit__(None, None, None)
        finally:
            torch.default_generator.set_state(self.cpu_rng)
            for i, state in zip(self.cuda, self.cuda_rng, strict=True):
                torch.cuda.set_rng_state(state, i)
            for m, flag in zip(self.mods, self.training, strict=True):
                m.__dict__["training"] = flag
            for p, flag, g in zip(self.params, self.requires, self.grads, strict=True):
                if p.requires_grad is not flag:
                    p.requires_grad = flag
                if p.grad is not g:
                    p.grad = g
            for m, flag in self.inplace:
                m.__dict__["inplace"] = flag
