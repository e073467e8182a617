"""Reading: :class:`ReadoutHooks` hands each layer's read tensor on in every forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz.analysis.guard import HookSet
from cnnviz.analysis.readout._ops import _op_key
from cnnviz.analysis.readout.sites import Readout, ReadSite


def _due(site: ReadSite, count: int) -> bool:
    """Whether call ``count`` (from 0, since the model was last called) is the site's call.

    Counts wrap around every ``site.calls`` calls, so a site is still read when the forward
    passes run a submodule of the model rather than the model itself (no reset then).
    """
    return count % max(site.calls, 1) == site.index


class _SiteMode(TorchFunctionMode):
    """Counts functions by name in each forward and hands the wanted occurrences on."""

    def __init__(self, owner: ReadoutHooks, sites: dict[str, list[Readout]]) -> None:
        super().__init__()
        self.owner = owner
        self.sites = sites

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        owner = self.owner
        if owner.busy:
            return out
        key = _op_key(func)
        spots = self.sites.get(key)
        if spots is None:
            return out
        count = owner.op_counts.get(key, 0)
        owner.op_counts[key] = count + 1
        chosen = [r for r in spots if _due(r.site, count)]
        if chosen and isinstance(out, torch.Tensor):
            owner.emit(chosen, out)
        return out


class ReadoutHooks:
    """Context manager that hands each layer's read tensor to ``on_output`` in every forward.

    Module sites are read with forward hooks; a minimal :class:`~torch.overrides.TorchFunctionMode`
    (counting function calls per forward; counts reset by a forward pre-hook on ``model``) is
    entered only when some readout has a functional site. The tensor passed on is already
    sliced to the layer's channels and permuted back to ``(N, C, ...)``; it is a view that later
    in-place operations of the model may change, so reduce or copy it inside ``on_output``.

    Every hook (and the mode) is removed on exit, also when the body raises; :meth:`remove` is
    idempotent. Nothing the model owns is changed; use it inside
    :func:`~cnnviz.analysis.guard.observe` for eval mode and a forked RNG.

    Args:
        model: The model the readouts were found for (its root: call counts reset when it is
            called).
        readouts: :class:`Readout` objects, or a mapping of them (from :func:`find_readouts`).
        on_output: Called as ``on_output(layer, tensor)`` for each layer in each forward pass.

    Raises:
        TypeError: If ``on_output`` is not callable or a readout is not a :class:`Readout`.
        ValueError: If a readout names a module ``model`` does not have.

    Example:
        >>> maps = {}
        >>> with ReadoutHooks(model, readouts, lambda n, t: maps.setdefault(n, t.clone())):
        ...     model(x)
    """

    def __init__(
        self,
        model: nn.Module,
        readouts: Mapping[str, Readout] | Iterable[Readout],
        on_output: Callable[[str, torch.Tensor], Any],
    ) -> None:
        if not callable(on_output):
            raise TypeError(f"`on_output` must be callable; got {type(on_output).__name__}")
        items = list(readouts.values()) if isinstance(readouts, Mapping) else list(readouts)
        bad = [r for r in items if not isinstance(r, Readout)]
        if bad:
            raise TypeError(
                f"`readouts` must hold Readout objects (from find_readouts); got "
                f"{type(bad[0]).__name__}"
            )
        modules = dict(model.named_modules())
        missing = [r for r in items if r.site.kind == "module" and r.site.name not in modules]
        if missing:
            raise ValueError(
                f"`readouts`: {missing[0].layer} is read at module {missing[0].site.name!r}, "
                f"which {type(model).__name__} does not have; find the readouts for this model "
                "with find_readouts(model, example_input)"
            )
        self.model = model
        self.readouts = items
        self.on_output = on_output
        self.busy = False
        self.module_calls: dict[str, int] = {}
        self.op_counts: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self._modules = modules
        self._hooks = HookSet()
        self._mode: _SiteMode | None = None

    def __enter__(self) -> ReadoutHooks:
        try:
            self._install()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and leave the function mode (idempotent)."""
        try:
            self._hooks.remove()
        finally:
            mode, self._mode = self._mode, None
            if mode is not None:
                mode.__exit__(None, None, None)

    def _install(self) -> None:
        by_module: dict[str, list[Readout]] = {}
        by_function: dict[str, list[Readout]] = {}
        for r in self.readouts:
            if r.site.kind == "module":
                by_module.setdefault(r.site.name, []).append(r)
            else:
                by_function.setdefault(r.site.name, []).append(r)
        counted = False
        for name, group in by_module.items():
            count = any(r.site.calls > 1 for r in group)
            counted = counted or count
            hook = self._module_hook(name, group, count)
            self._hooks.add(self._modules[name].register_forward_hook(hook))
        if by_function or counted:
            self._hooks.add(self.model.register_forward_pre_hook(self._reset, prepend=True))
        if by_function:
            mode = _SiteMode(self, by_function)
            mode.__enter__()
            self._mode = mode

    def _reset(self, _module: nn.Module, _args: Any) -> None:
        self.module_calls.clear()
        self.op_counts.clear()

    def _module_hook(self, name: str, group: list[Readout], count: bool) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            index = 0
            if count:
                index = self.module_calls.get(name, 0)
                self.module_calls[name] = index + 1
            chosen = [r for r in group if _due(r.site, index)]
            if isinstance(output, (tuple, list)) and output:  # MaxPool2d(return_indices=True)
                output = output[0]
            if chosen and isinstance(output, torch.Tensor):
                self.emit(chosen, output)

        return hook

    def emit(self, readouts: Sequence[Readout], tensor: torch.Tensor) -> None:
        """Slice ``tensor`` for each readout and pass it to ``on_output`` (used by the hooks)."""
        self.busy = True
        try:
            for r in readouts:
                view = self._view(r, tensor)
                if view is not None:
                    self.on_output(r.layer, view)
        finally:
            self.busy = False

    def _view(self, r: Readout, tensor: torch.Tensor) -> torch.Tensor | None:
        t = tensor
        if r.permute is not None:
            if len(r.permute) != t.dim():
                self.skipped[r.layer] = f"expected {len(r.permute)} dims, got {t.dim()}"
                return None
            t = t.permute(r.permute)
        if r.channel_count is not None and t.dim() >= 2:
            stop = r.channel_offset + r.channel_count
            if stop > t.shape[1]:
                self.skipped[r.layer] = f"expected >= {stop} channels, got {t.shape[1]}"
                return None
            if r.channel_offset or stop != t.shape[1]:
                t = t.narrow(1, r.channel_offset, r.channel_count)
        return t
