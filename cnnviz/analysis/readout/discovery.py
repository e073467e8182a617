"""Discovery: :func:`find_readouts` runs one guarded forward pass and says what to read."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.guard import HookSet, observe
from cnnviz.analysis.readout._dataflow import _Discovery
from cnnviz.analysis.readout.sites import Readout, _modules_or_raise, _role

#: Samples of ``example_input`` used for discovery (one forward pass).
DISCOVERY_SAMPLES = 2


def _runner(model: nn.Module, example_input: Any) -> tuple[Callable[[], Any], str]:
    """A function that runs the discovery forward pass, and a description of its input."""
    if callable(example_input) and not isinstance(example_input, (torch.Tensor, nn.Module)):
        return example_input, "the forward pass run by `example_input`"
    items = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise TypeError(
            "`example_input` must be a tensor, a tuple of tensors passed to forward "
            "positionally, or a function that runs the forward pass (e.g. "
            f"`lambda: model(batch)`); got {type(example_input).__name__}"
        )
    with torch.inference_mode(False):  # tensors made here get version counters
        inputs = tuple((t[:DISCOVERY_SAMPLES] if t.dim() > 0 else t).clone() for t in items)
    shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
    return (lambda: model(*inputs)), f"`example_input` ({shapes})"


def find_readouts(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor] | Callable[[], Any],
    layers: str | Sequence[str] | None = None,
) -> dict[str, Readout]:
    """Find, by data flow, the tensor to read for each layer: after the conv's activation.

    One forward pass of the first :data:`DISCOVERY_SAMPLES` samples of ``example_input`` runs
    under :func:`~cnnviz.analysis.guard.observe` (eval mode, RNG forked, modes restored) with
    ``torch.no_grad()``. Each conv's output (first call) is followed through normalisation
    (batch/layer/group/instance norm, module or functional), dropout/identity/contiguous/clone,
    permutations, one residual ``add`` (also ``+=``) and channel concatenation (tracking the
    channel offset) up to the first activation (ReLU, ReLU6/hardtanh, LeakyReLU, PReLU, ELU,
    SELU, CELU, GELU, SiLU, Mish, Hardswish, Hardsigmoid, Softplus, Tanh, Sigmoid...; modules,
    ``F.*``, ``torch.*``, tensor methods and in-place variants). Where no activation follows,
    the maps are read after the last normalisation before any residual add (stage ``"norm"``),
    else raw. Pooling and other layers are read as they are. Every hook is removed on return.

    Args:
        model: Any ``nn.Module`` (any dtype, memory format or output type).
        example_input: A batch the model accepts (a tensor, or a tuple of tensors passed
            positionally; only its first samples are used), or a function without arguments
            that runs one forward pass of ``model`` (for models called with a dict batch:
            ``lambda: model(batch)``; keep that batch small).
        layers: Qualified module names (or one name); ``None`` for every conv and pooling layer.

    Returns:
        One :class:`Readout` per layer, in the order of ``layers`` (or of
        ``model.named_modules()``). A layer whose following failed is read raw; the readout's
        ``reason`` says why.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``example_input`` not a tensor.
        ValueError: If a layer name is unknown (the message lists the valid names) or the
            model's forward pass fails on ``example_input``.

    Example:
        >>> r = find_readouts(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))
        >>> r["layer1.0.conv1"].path
        ('layer1.0.bn1', 'layer1.0.relu')
    """
    if layers is None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module; got {type(model).__name__}")
        names = [n for n, m in model.named_modules() if _role(m) != "other"]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
    chosen = _modules_or_raise(model, names)
    run, what = _runner(model, example_input)
    if not names:
        return {}
    all_modules = dict(model.named_modules())
    convs = {n for n, m in chosen.items() if _role(m) == "conv"}
    tracker = _Discovery(all_modules, convs)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(observe(model))
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.no_grad())
            hooks = stack.enter_context(HookSet())
            for name, module in all_modules.items():
                hooks.add(  # the root's first, like ReadoutHooks' reset: counts agree
                    module.register_forward_pre_hook(
                        lambda m, a, n=name: tracker.pre_hook(n, m, a), prepend=name == ""
                    )
                )
                hooks.add(
                    module.register_forward_hook(
                        lambda m, a, o, n=name: tracker.post_hook(n, m, a, o)
                    )
                )
            stack.enter_context(tracker)
            run()
    except Exception as err:
        raise ValueError(
            f"find_readouts: the forward pass of {type(model).__name__} failed on {what}: "
            f"{type(err).__name__}: {err}. Pass a batch the model accepts (same shape, dtype "
            "and device as its training inputs)."
        ) from err
    try:
        return {n: tracker.readout(n, chosen[n]) for n in names}
    finally:
        tracker.latest.clear()
        tracker.final.clear()
        tracker.fallback.clear()
