"""Analytical receptive fields: trace the model, walk its graph, build the records."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn

from cnnviz.analysis.guard import model_devices, observe
from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES
from cnnviz.analysis.receptive_field.geometry import ReceptiveField, ReceptiveFieldError, _State
from cnnviz.analysis.receptive_field.walker import _Walker

# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer that remembers which module was being traced when tracing failed.

    Conv and pool layers are leaves even when they subclass PyTorch's (timm's ``Conv2dSame``
    pads at run time with Python arithmetic on the shape, which ``torch.fx`` cannot trace),
    so every one is a graph node of its own that the walk can report.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or isinstance(
            m, CONV_TYPES + POOL_TYPES
        )

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            if not hasattr(exc, "_cnnviz_module"):
                try:
                    where = self.path_of_module(m)
                except NameError:
                    where = "<unregistered>"
                with contextlib.suppress(AttributeError):  # exceptions with __slots__
                    exc._cnnviz_module = (where, type(m).__name__)  # type: ignore[attr-defined]
            raise


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where, kind = getattr(exc, "_cnnviz_module", ("", type(model).__name__))
        place = f"module {where!r} ({kind})" if where else f"the forward of {kind}"
        raise ReceptiveFieldError(
            f"`model`: torch.fx could not trace {place}: {type(exc).__name__}: {exc}. Receptive "
            "fields need a traceable graph; remove data-dependent Python control flow from that "
            "forward (or wrap the offending function with torch.fx.wrap)."
        ) from exc
    return fx.GraphModule(tracer.root, graph)


def _check_input_size(input_size: Any) -> tuple[int, ...]:
    if not isinstance(input_size, (tuple, list, torch.Size)) or not 1 <= len(input_size) <= 3:
        raise TypeError(
            "`input_size` must be the input shape without batch: (C, H, W) for images, (C, L) "
            f"for sequences or (L,) for token ids; got {input_size!r}"
        )
    for v in input_size:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`input_size` must hold positive ints; got {tuple(input_size)!r}")
    return tuple(int(v) for v in input_size)


def _example(
    model: nn.Module, input_size: tuple[int, ...], device: torch.device | None = None
) -> torch.Tensor:
    if device is None:
        devices = model_devices(model)
        device = devices[0] if devices else torch.device("cpu")
    if len(input_size) == 1:
        return torch.zeros((1, *input_size), dtype=torch.long, device=device)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return torch.zeros((1, *input_size), dtype=dtype, device=device)


class _Call(nn.Module):
    """Wraps ``fn(x)`` over ``module`` so ``functional_call`` can swap ``module``'s tensors."""

    def __init__(self, module: nn.Module, fn: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn(x)


def shape_run(
    model: nn.Module, input_size: tuple[int, ...], fn: Callable[[torch.Tensor], Any]
) -> Any:
    """Call ``fn(zero batch of one)`` for shapes only, on the ``meta`` device when possible.

    ``torch.func.functional_call`` swaps in meta copies of ``model``'s parameters and buffers
    for the duration of the call (and always swaps the real ones back), so no arithmetic is
    done. If some op has no meta kernel the call is repeated for real on the model's device.
    Run it inside :func:`~cnnviz.analysis.guard.observe`.

    Args:
        model: The model whose tensors ``fn`` uses.
        input_size: Input shape without batch (``(L,)`` means token ids).
        fn: Runs the model (or a graph of it) on the example input.

    Returns:
        What ``fn`` returns.
    """
    meta = {
        name: torch.empty_like(t, device="meta")
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    wrapper = _Call(model, fn)
    try:
        return torch.func.functional_call(
            wrapper,
            {f"module.{name}": t for name, t in meta.items()},
            (_example(model, input_size, torch.device("meta")),),
            tie_weights=False,
            strict=False,
        )
    except ReceptiveFieldError:
        raise
    except Exception:
        return fn(_example(model, input_size))


def _walk(model: nn.Module, input_size: tuple[int, ...]) -> _Walker:
    """Trace ``model`` and propagate geometry over one shape-only forward pass."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    nd = 1 if len(input_size) <= 2 else 2
    tokens = len(input_size) == 1
    with observe(model), torch.no_grad():
        gm = _trace(model)
        walkers: list[_Walker] = []

        def run(x: torch.Tensor) -> None:
            walkers.append(_Walker(gm, nd, tokens))
            walkers[-1].run(x)

        shape_run(gm, input_size, run)
    return walkers[-1]


def receptive_fields(model: nn.Module, input_size: Sequence[int]) -> dict[str, ReceptiveField]:
    """Theoretical receptive field of every conv (1-D/2-D) and pooling layer of ``model``.

    The model is traced with ``torch.fx`` and run once on a zero batch of one (under
    :func:`~cnnviz.analysis.guard.observe`: eval mode, RNG forked, nothing changed) to get the
    actual shapes, which adaptive pools need. Branches are handled: at additions and
    concatenations the largest field over all paths is kept, and merges of misaligned paths are
    reported in :attr:`ReceptiveField.misaligned`.

    Element-wise and channel-wise operations (activations, BatchNorm, LRN, dropout, ``+``,
    ``torch.cat`` along channels) pass the field through; a flatten or a global reduction ends
    the spatial structure (linear layers after it are not listed). Statistics-based
    normalisation (GroupNorm, InstanceNorm, LayerNorm) is treated as position-wise, as is usual.

    Global context is reported apart: after a squeeze-and-excitation gate (global pool -> fc ->
    sigmoid -> multiply) or any other value that is the same for every position and is merged
    back onto a spatial map, every later unit's field is the whole input. That is what
    :attr:`ReceptiveField.size` and :meth:`ReceptiveField.region` say; such layers also have
    :attr:`ReceptiveField.global_context` set and :attr:`ReceptiveField.local`, the field along
    the local paths (the conv/pool stack the gates modulate), which is what a reader wants to
    see (``region(i, j, local=True)``).

    Args:
        model: Any ``nn.Module`` that ``torch.fx`` can trace.
        input_size: Input shape without batch: ``(C, H, W)``, ``(C, L)``, or ``(L,)`` for a
            model that takes token ids (the field is then in token positions).

    Returns:
        ``{qualified layer name: ReceptiveField}`` in forward order. A module called twice is
        reported for its first call.

    Raises:
        TypeError: If ``model`` is not a module or ``input_size`` is not a shape.
        ValueError: If ``input_size`` holds non-positive sizes.
        ReceptiveFieldError: (a ``ValueError``) if tracing fails (the message names the module)
            or a layer changes spatial geometry in a way that cannot be modelled
            (``nn.Upsample``, ``F.interpolate`` except of a 1x1 map, transposed convolutions,
            attention over positions...).

    Example:
        >>> rfs = receptive_fields(torchvision.models.alexnet(), (3, 224, 224))
        >>> rfs["features.10"].size
        (163, 163)
    """
    size = _check_input_size(input_size)
    walker = _walk(model, size)
    out: dict[str, ReceptiveField] = {}
    for name, (module, full, local, out_shape) in walker.records.items():
        rf = _record(name, module, full, size, out_shape)
        if full.context_at:
            rf = replace(
                rf,
                global_context=True,
                global_context_at=tuple(sorted(full.context_at)),
                local=_record(name, module, local, size, out_shape),
            )
        out[name] = rf
    return out


def _record(
    name: str,
    module: nn.Module,
    state: _State,
    input_size: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> ReceptiveField:
    """The record of one state (its ``global_context`` and ``local`` are left unset)."""
    nd = len(state.axes)
    spatial_out = out_shape[-nd:] if state.layout is not None else (1,) * nd
    sizes, jumps, pads, groups = [], [], [], []
    for a in range(nd):
        n = spatial_out[a]
        triples = tuple((s, p, p + e + 1) for s, p, e in state.axes[a])
        groups.append(triples)
        pads.append(max(g[1] for g in triples))
        jumps.append(max(g[0] for g in triples))
        ends = [
            max(i * g[0] - g[1] + g[2] for g in triples) - min(i * g[0] - g[1] for g in triples)
            for i in {0, n - 1}
        ]
        sizes.append(max(ends))
    return ReceptiveField(
        name=name,
        type=type(module).__name__,
        size=tuple(sizes),
        jump=tuple(jumps),
        padding=tuple(pads),
        input_shape=input_size,
        output_shape=out_shape,
        misaligned=bool(state.misaligned_at),
        misaligned_at=tuple(sorted(state.misaligned_at)),
        exact=state.exact,
        groups=tuple(groups),
        clipped=state.tables,
    )
