"""What cnnviz needs to know about a model, measured once and cached.

* :func:`facts` — one walk over the module tree: module identities (a cheap check that cached
  knowledge still describes the model), the device and floating dtype of the parameters, whether
  the model is in ``channels_last`` memory format, and the module types some methods care about.
* :func:`profile` — one guarded forward pass of one sample with a hook on every module: the
  forward order and output shapes, how often each module runs, the activation memory of one
  sample, the number of classes and the embedding layers that consume token ids. Cached per
  model, input shape, dtype, device, module tree and ``forward`` function.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.attribution.results import AttributionUnavailable
from cnnviz.analysis.guard import HookSet
from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES

BACKWARD_FACTOR = 3  # activations kept for backward + gradients + workspace, per forward byte
# Samples per pass on the CPU. Measured (IG, 50 steps, 8 images, one thread, CPU time): passes
# of about 100-128 samples are the fastest for LeNet-5 at 32 px and ResNet-18 at 64 px alike;
# passes of 8 are 15-25 % slower, one pass of all 400 samples 10-20 % slower.
CPU_PASS_SAMPLES = 128

DEEPLIFT_NONLINEAR = (
    nn.ReLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.Softmax,
)


# --------------------------------------------------------------------------------- model facts
@dataclass(frozen=True)
class Facts:
    """What one walk over the module tree tells."""

    structure: tuple[int, ...]  # module identities, depth first
    device: torch.device | None  # of the first parameter or buffer
    dtype: torch.dtype | None  # of the first floating parameter or buffer
    channels_last: bool  # the first 4-D parameter is stored channels_last
    has_relu: bool
    has_deeplift_nonlinear: bool


_FACTS: weakref.WeakKeyDictionary[nn.Module, Facts] = weakref.WeakKeyDictionary()


def facts(model: nn.Module) -> Facts:
    """One walk over ``model``'s modules (``_modules`` dicts: no generator overhead).

    The walk collects the module identities and the first parameters; what depends on module
    types only (ReLUs, DeepLift's nonlinearities) is reused while the identities are unchanged.
    """
    return walk(model)[0]


def walk(model: nn.Module) -> tuple[Facts, list[nn.Module]]:
    """:func:`facts`, and the modules walked (for ``observe(modules=...)``)."""
    modules: list[nn.Module] = []
    device = dtype = None
    channels_last = None
    stack: list[nn.Module | None] = [model]
    while stack:
        m = stack.pop()
        if m is None:
            continue
        modules.append(m)
        if channels_last is None and (m._parameters or m._buffers):
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is None:
                    continue
                if device is None:
                    device = t.device
                if dtype is None and t.is_floating_point():
                    dtype = t.dtype
                if t.ndim == 4:
                    channels_last = not t.is_contiguous() and t.is_contiguous(
                        memory_format=torch.channels_last
                    )
                    break
        stack.extend(m._modules.values())
    ids = tuple(map(id, modules))
    channels_last = bool(channels_last)
    cached = _FACTS.get(model)
    if cached is not None and cached.structure == ids:
        if (cached.device, cached.dtype, cached.channels_last) == (device, dtype, channels_last):
            return cached, modules  # the common case: nothing changed since the last call
        has_relu, has_nonlinear = cached.has_relu, cached.has_deeplift_nonlinear
    else:
        has_relu = any(isinstance(m, nn.ReLU) for m in modules)
        has_nonlinear = any(isinstance(m, DEEPLIFT_NONLINEAR) for m in modules)
    result = Facts(
        structure=ids,
        device=device,
        dtype=dtype,
        channels_last=channels_last,
        has_relu=has_relu,
        has_deeplift_nonlinear=has_nonlinear,
    )
    _FACTS[model] = result
    return result, modules


def work_dtype(model_dtype: torch.dtype | None, inputs: torch.Tensor) -> torch.dtype:
    """The dtype cnnviz computes in: the model's, but at least ``float32``.

    A ``bfloat16``/``float16`` model still gets its inputs in its own dtype (the head casts),
    but Captum's arithmetic around it (interpolation, summing steps) runs in ``float32``.
    """
    if model_dtype is None:
        return inputs.dtype if inputs.is_floating_point() else torch.float32
    if model_dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return model_dtype


def forward_key(forward: Callable[..., Any] | None) -> object:
    """A cache key for a ``forward`` function that survives re-creating the same lambda."""
    if forward is None:
        return None
    fn = getattr(forward, "__func__", forward)
    code = getattr(fn, "__code__", None)
    if code is not None:
        owner = getattr(forward, "__self__", None)
        return (code, id(owner)) if owner is not None else code
    return (type(forward), id(forward))


def scores_message(out: Any, source: str) -> str:
    """The error for a model (or ``forward``) that does not return ``(N, num_classes)``."""
    if isinstance(out, torch.Tensor):
        got = f"a tensor of shape {tuple(out.shape)}"
    elif isinstance(out, dict):
        got = f"a dict with keys {sorted(map(str, out))[:6]}"
    elif isinstance(out, (tuple, list)):
        got = f"a {type(out).__name__} of {len(out)}"
    else:
        got = type(out).__name__
    if source == "`forward`":
        return (
            f"`forward` must return class scores of shape (N, num_classes); got {got}. Make it "
            "return the logits, e.g. forward=lambda x: model(x)['logits']."
        )
    return (
        f"`model` must return class scores of shape (N, num_classes); got {got}. Pass "
        "`forward=`, a function from the input batch to the logits (e.g. "
        "forward=lambda x: model(x)['logits']), or wrap the model so that it returns logits."
    )


# ------------------------------------------------------------------------------------ profile
@dataclass(frozen=True)
class Profile:
    """One forward pass of one sample, hooked."""

    calls: tuple[tuple[str, tuple[int, ...]], ...]  # (name, output shape) in finishing order
    counts: dict[str, int]  # how often each module was called
    bytes_per_sample: int  # sum of leaf output sizes (+ the input) for one sample
    num_outputs: int
    embeddings: tuple[tuple[str, bool], ...]  # (name, consumes the input ids) per nn.Embedding
    # Lookups derived from the profile (the same module tree), computed once: see spatial_layers.
    memo: dict[object, Any] = field(default_factory=dict, compare=False, repr=False)


_PROFILES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Profile]] = weakref.WeakKeyDictionary()


def profile(
    model: nn.Module,
    sample: torch.Tensor,
    call: Callable[[torch.Tensor], Any],
    *,
    structure: tuple[int, ...],
    key: object = None,
    source: str = "`model`",
) -> Profile:
    """One forward of ``sample[:1]`` through ``call`` with a hook on every module of ``model``.

    Call inside ``observe``. Cached per model, input shape, dtype, device, module tree and
    ``key`` (the ``forward`` function's).

    Raises:
        ValueError: If ``call`` does not return ``(N, num_classes)`` scores.
    """
    cache_key = (tuple(sample.shape[1:]), sample.dtype, sample.device, structure, key)
    cache = _PROFILES.get(model)
    if cache is None:
        cache = _PROFILES[model] = {}
    elif cache_key in cache:
        return cache[cache_key]
    one = sample[:1]
    calls: list[tuple[str, tuple[int, ...]]] = []
    counts: dict[str, int] = {}
    leaf_bytes = [0]
    embeddings: dict[str, bool] = {}

    def make_hook(name: str, leaf: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            counts[name] = counts.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                calls.append((name, tuple(out.shape)))
                if leaf:
                    leaf_bytes[0] += out.numel() * out.element_size()

        return hook

    def make_pre_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            ids = args[0] if args else None
            consumes = ids is one or (
                isinstance(ids, torch.Tensor)
                and ids.shape == one.shape
                and ids.device == one.device
                and bool(torch.equal(ids, one))
            )
            embeddings[name] = embeddings.get(name, False) or consumes

        return hook

    with HookSet() as hooks, torch.no_grad():
        for name, module in model.named_modules():
            if name:
                leaf = next(iter(module.children()), None) is None
                hooks.add(module.register_forward_hook(make_hook(name, leaf)))
                if isinstance(module, nn.Embedding) and not one.is_floating_point():
                    hooks.add(module.register_forward_pre_hook(make_pre_hook(name)))
        try:
            out = call(one)
        except (TypeError, KeyError, IndexError, AttributeError) as err:
            if source != "`model`":
                raise
            raise TypeError(
                f"`model` could not be called on the input batch ({type(err).__name__}: {err}). "
                "If its forward takes something else than one tensor (a dict, several "
                "arguments), pass `forward=`, a function from the input batch to the logits, "
                "e.g. forward=lambda x: model({'image': x})['logits']."
            ) from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ValueError(scores_message(out, source))
    result = Profile(
        calls=tuple(calls),
        counts=counts,
        bytes_per_sample=leaf_bytes[0] + one.numel() * one.element_size(),
        num_outputs=int(out.shape[1]),
        embeddings=tuple(embeddings.items()),
    )
    cache.clear()  # one input shape per model is the common case; keep memory bounded
    cache[cache_key] = result
    return result


def budget_samples(prof: Profile, memory_budget_mb: float, factor: float = BACKWARD_FACTOR) -> int:
    """Samples one pass may hold within ``memory_budget_mb`` (``factor`` x activation memory)."""
    per_sample = max(1, int(prof.bytes_per_sample * factor))
    return max(1, int(memory_budget_mb * 2**20 // per_sample))


def auto_samples(
    prof: Profile, memory_budget_mb: float, n: int, device: torch.device, factor: float = 3
) -> int:
    """Samples per pass: within the memory budget; on the CPU also about the fastest size."""
    samples = budget_samples(prof, memory_budget_mb, factor)
    if device.type == "cpu":
        samples = min(samples, max(n, CPU_PASS_SAMPLES))
    return samples


# ----------------------------------------------------------------------------- layer lookups
def spatial_layers(model: nn.Module, prof: Profile, layout_ndim: int) -> list[str]:
    """Conv and pooling modules whose output has the layout ``(N, C, *spatial)``, in order.

    Memoised on the profile, which is cached per module tree (the same names, the same types).
    """
    key = ("spatial", layout_ndim)
    cached = prof.memo.get(key)
    if cached is None:
        seen: dict[str, None] = {}
        for name, shape in prof.calls:
            module = model.get_submodule(name)
            if isinstance(module, CONV_TYPES + POOL_TYPES) and len(shape) == layout_ndim:
                seen.pop(name, None)
                seen[name] = None
        cached = prof.memo[key] = tuple(seen)
    return list(cached)


def resolve_layer(
    model: nn.Module, prof: Profile, layer: str | None, layout_ndim: int, method: str
) -> str:
    """The Grad-CAM layer: ``layer`` checked, or the last conv/pool larger than one position."""
    if layer is None and ("default layer", layout_ndim) in prof.memo:
        return prof.memo["default layer", layout_ndim]
    candidates = spatial_layers(model, prof, layout_ndim)
    shapes = dict(prof.calls)
    if layer is None:
        usable = [n for n in candidates if math.prod(shapes[n][2:]) > 1]
        if not usable:
            raise AttributionUnavailable(
                method,
                "the model has no conv or pooling layer with spatial output larger than 1x1; "
                "Grad-CAM needs one",
            )
        prof.memo["default layer", layout_ndim] = usable[-1]
        return usable[-1]
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a module name (str) or None; got {type(layer).__name__}")
    if layer in shapes and len(shapes[layer]) == layout_ndim:
        return layer  # any module with spatial output (e.g. a ResNet stage) is accepted
    raise ValueError(
        f"`layer`: unknown layer {layer!r} for {method}; conv/pool layers with spatial output "
        f"are: {', '.join(candidates) or '(none)'}"
    )


def resolve_embedding(model: nn.Module, prof: Profile, embedding: str | None) -> str:
    """The ``nn.Embedding`` that turns the token ids into vectors.

    ``embedding`` checked, else the one embedding layer that receives the input ids (or, when
    ``forward`` transforms the ids first, the only embedding layer called).

    Raises:
        TypeError: If ``embedding`` is not a string.
        ValueError: If it names no called ``nn.Embedding``, or none / several qualify.
    """
    called = dict(prof.embeddings)
    if embedding is not None:
        if not isinstance(embedding, str):
            raise TypeError(
                f"`embedding` must be the name of an nn.Embedding module; got "
                f"{type(embedding).__name__}"
            )
        if embedding not in called:
            names = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
            raise ValueError(
                f"`embedding`: {embedding!r} is not an nn.Embedding called in the forward pass; "
                f"nn.Embedding layers called: {', '.join(called) or '(none)'} "
                f"(all nn.Embedding layers: {', '.join(names) or '(none)'})"
            )
        return embedding
    consuming = [n for n, c in called.items() if c]
    candidates = consuming or list(called)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ValueError(
            "`inputs` are integer token ids of shape (N, L), but the model calls no nn.Embedding "
            "on them, so there is nothing to attribute through. Pass float inputs "
            "(N, C, H, W) or (N, C, L), or a model that embeds the ids with nn.Embedding."
        )
    raise ValueError(
        "`embedding`: several nn.Embedding layers could hold the token vectors "
        f"({', '.join(candidates)}); pass embedding='name' to choose one"
    )
