"""The randomised control of Bau et al. (2017): dissect a copy of the model with random weights."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

from cnnviz._checks import check_int
from cnnviz.analysis.concepts import ConceptSource
from cnnviz.analysis.dissect.core import dissect_layers
from cnnviz.analysis.dissect.results import Dissection
from cnnviz.analysis.guard import cuda_indices, eager, model_devices

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def randomised_copy(
    model: nn.Module, *, mode: Literal["reinit", "permute"] = "reinit", seed: int = 0
) -> nn.Module:
    """A copy of ``model`` with random weights: the control of Bau et al. (2017).

    The user's model is only read: it is deep-copied without its hooks (the copy carries no
    hook of other observers), compiled parts are copied eagerly, and the new weights are drawn
    from a generator seeded with ``seed`` inside a forked RNG (the global streams are as
    before). The copy is in eval mode with frozen parameters.

    Args:
        model: The model.
        mode: ``"reinit"``: every module's ``reset_parameters()`` (fresh initialisation, also of
            BatchNorm statistics; modules without it get Gaussian weights of the same standard
            deviation); ``"permute"``: each parameter tensor's entries shuffled (keeps the
            weight distribution, destroys the structure).
        seed: Seed of the new weights.

    Returns:
        The randomised copy.

    Raises:
        ValueError: If ``mode`` is unknown.
    """
    if mode not in ("reinit", "permute"):
        raise ValueError(f"randomised_copy: `mode` must be 'reinit' or 'permute'; got {mode!r}")
    check_int("randomised_copy", "seed", seed)
    source = eager(model)
    memo: dict[int, Any] = {}  # hook tables are not copied (they may hold other observers)
    for module in source.modules():
        for name in _HOOK_DICTS:
            hooks = module.__dict__.get(name)
            if hooks is not None:
                memo[id(hooks)] = type(hooks)()
    for tensor in [*source.parameters(), *source.buffers()]:
        hooks = getattr(tensor, "_backward_hooks", None)
        if hooks is not None:
            memo[id(hooks)] = type(hooks)()
    with torch.inference_mode(False), torch.no_grad():
        twin = copy.deepcopy(source, memo)
    cuda = cuda_indices(model_devices(twin))
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:  # only the forked streams: the others must not change
            torch.cuda.default_generators[index].manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        for module in twin.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            if mode == "permute":
                for p in own:
                    order = torch.randperm(p.numel(), generator=generator).to(p.device)
                    p.copy_(p.detach().reshape(-1)[order].reshape(p.shape))
            elif callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            else:
                for p in own:
                    std = float(p.detach().float().std()) if p.numel() > 1 else 0.0
                    noise = torch.randn(p.shape, generator=generator) * (std or 0.01)
                    p.copy_(noise.to(p.device, p.dtype))
    for p in twin.parameters():
        p.requires_grad_(False)
        p.grad = None
    return twin.eval()


def randomised_control(
    model: nn.Module,
    layer: str,
    data: Any,
    concepts: ConceptSource | None = None,
    *,
    mode: Literal["reinit", "permute"] = "reinit",
    seed: int = 0,
    **kwargs: Any,
) -> Dissection:
    """Dissect ``layer`` of a randomised copy of ``model`` (the paper's baseline).

    A trained network's interpretable units should far outnumber those of the same network
    with random weights; this runs :func:`dissect` on :func:`randomised_copy` and leaves
    ``model`` untouched.

    Args:
        model: The model (only read).
        layer: The layer to dissect.
        data: See :func:`dissect`.
        concepts: See :func:`dissect`.
        mode: ``"reinit"`` or ``"permute"`` (see :func:`randomised_copy`).
        seed: Seed of the random weights.
        **kwargs: Further :func:`dissect` arguments.

    Returns:
        The :class:`Dissection`, with ``control`` set to ``mode``.
    """
    twin = randomised_copy(model, mode=mode, seed=seed)
    if not isinstance(layer, str):
        raise TypeError(f"randomised_control: `layer` must be a layer name; got {layer!r}")
    return dissect_layers(twin, [layer], data, concepts, control=mode, **kwargs)[layer]
