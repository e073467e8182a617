"""Captum attributions that are safe to compute on a model while it trains.

One entry point, :func:`attribute`, computes any of eleven attribution methods by name through
Captum and returns an :class:`AttributionResult`. Every call runs inside
:func:`cnnviz.analysis.guard.observe`, so it changes nothing the model or training owns: module
modes, ``requires_grad`` and ``.grad`` of parameters, BatchNorm buffers, in-place flags, the
torch, NumPy and Python RNG streams, and the hooks on the model are all as before the call, also
when Captum raises. It works inside ``torch.inference_mode()`` (Lightning's validation hooks).

Work is split into batches that fit ``memory_budget_mb``: the activation memory of one sample is
estimated from one guarded forward pass of one sample (cached per model and input shape), and the
methods that evaluate the model on many perturbed copies of the input (integrated gradients,
SmoothGrad, GradientShap, occlusion, DeepLift) get a matching internal batch size.

Example:
    >>> result = attribute(model, images, "integrated_gradients", target="label", labels=y)
    >>> result.attributions.shape == images.shape
    True
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnviz.analysis.guard import HookSet, observe
from cnnviz.analysis.layers import CONV_TYPES, POOL_TYPES

__all__ = [
    "METHODS",
    "AttributionResult",
    "AttributionUnavailable",
    "attribute",
    "attribute_many",
    "available_methods",
    "estimate_internal_batch_size",
    "gradcam_layers",
]

#: Every method :func:`attribute` knows, in a sensible display order.
METHODS: tuple[str, ...] = (
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "gradient_shap",
    "deeplift",
    "guided_backprop",
    "deconvolution",
    "occlusion",
    "grad_cam",
    "guided_grad_cam",
)

# Methods that override module gradients with hooks: they need out-of-place activations.
_HOOK_BASED = frozenset({"guided_backprop", "deconvolution", "deeplift", "guided_grad_cam"})
# Methods whose model evaluations all see the unperturbed input: the head selects the target
# scores itself (the predicted class is read from the same forward pass, no extra one) and sums
# them, so Captum backpropagates from one scalar instead of N (the same gradient).
_SINGLE_PASS = frozenset(
    {
        "saliency",
        "input_x_gradient",
        "guided_backprop",
        "deconvolution",
        "grad_cam",
        "guided_grad_cam",
    }
)
_LAYER_METHODS = frozenset({"grad_cam", "guided_grad_cam"})
# Methods that draw random numbers (Captum uses torch's and NumPy's global generators).
_NOISY = frozenset({"smoothgrad", "gradient_shap"})
# Samples evaluated per input sample in the smallest pass a method can make.
_MIN_EXPANSION = {"deeplift": 2}
# Keyword arguments each method accepts (passed on to Captum's ``attribute``).
_METHOD_KWARGS: dict[str, frozenset[str]] = {
    "saliency": frozenset({"abs"}),
    "input_x_gradient": frozenset(),
    "integrated_gradients": frozenset({"n_steps", "baselines", "method"}),
    "smoothgrad": frozenset({"nt_samples", "stdevs", "abs"}),
    "gradient_shap": frozenset({"n_samples", "baselines", "stdevs"}),
    "deeplift": frozenset({"baselines"}),
    "guided_backprop": frozenset(),
    "deconvolution": frozenset(),
    "occlusion": frozenset({"sliding_window_shapes", "strides", "baselines"}),
    "grad_cam": frozenset({"interpolate_mode"}),
    "guided_grad_cam": frozenset({"interpolate_mode"}),
}
_DEEPLIFT_NONLINEAR = (
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
# Attributes DeepLift sets on modules during a call; removed again if Captum leaves them.
_CAPTUM_MODULE_ATTRS = ("input", "output", "input_ref")
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_BACKWARD_FACTOR = 3  # activations kept for backward + gradients + workspace, per forward byte
_CPU_PASS_BYTES = 4 * 2**20  # estimated memory of one pass beyond which CPU throughput drops


class AttributionUnavailable(RuntimeError):
    """A method cannot run on this model.

    For example Grad-CAM on a model without a spatial layer, or DeepLift on a model that calls
    one activation module twice. :func:`attribute_many` reports these instead of raising.

    Attributes:
        method: The method's name.
        reason: Why it cannot run, in one sentence.
    """

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"{method}: {reason}")
        self.method = method
        self.reason = reason


@dataclass
class AttributionResult:
    """Attributions of one method for a batch of inputs.

    Attributes:
        attributions: Same shape as the inputs, detached, on the CPU, ``float32``. Grad-CAM's
            one-channel map is repeated over the input channels.
        method: The method's name (one of :data:`METHODS`).
        targets: The class attributed for each input, ``int64`` of shape ``(N,)``.
        layer: Qualified name of the layer used by Grad-CAM / guided Grad-CAM, else ``None``.
        note: Remarks worth showing next to the maps (all-zero maps, a method that reduces to
            another on this model); empty when there is nothing to say.
        seconds: Wall time of the call.
        settings: The effective method parameters (``n_steps``, ``nt_samples``...) and the
            ``internal_batch_size`` used.
    """

    attributions: torch.Tensor
    method: str
    targets: torch.Tensor
    layer: str | None = None
    note: str = ""
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def available_methods() -> list[str]:
    """Names accepted by :func:`attribute`'s ``method`` argument.

    Example:
        >>> "integrated_gradients" in available_methods()
        True
    """
    return list(METHODS)


# --------------------------------------------------------------------------------------------
# Model profile: forward order, output shapes and activation memory of one sample (cached).


@dataclass(frozen=True)
class _Profile:
    calls: tuple[tuple[str, tuple[int, ...]], ...]  # (name, output shape) in finishing order
    counts: dict[str, int]  # how often each module was called
    bytes_per_sample: int  # sum of leaf output sizes for one sample
    num_outputs: int


_PROFILES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Profile]] = weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple[tuple[int, ...], torch.device | None]:
    """Module identities of the whole tree, and the device of a parameter or buffer, in one walk.

    The identities are a cheap check that a cached profile still describes the model.
    """
    out = []
    device = None
    stack = [model]
    while stack:
        m = stack.pop()
        out.append(id(m))
        if device is None:
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is not None:
                    device = t.device
                    break
        stack.extend(c for c in m._modules.values() if c is not None)
    return tuple(out), device


def _profile(
    model: nn.Module, sample: torch.Tensor, structure: tuple[int, ...] | None = None
) -> _Profile:
    """One forward of ``sample[:1]`` with a hook on every module; call inside ``observe``.

    Cached per model, input shape, dtype, device and module tree.
    """
    if structure is None:
        structure = _structure(model)[0]
    key = (tuple(sample.shape[1:]), sample.dtype, sample.device, structure)
    cache = _PROFILES.get(model)
    if cache is None:
        cache = _PROFILES[model] = {}
    elif key in cache:
        return cache[key]
    modules = list(model.named_modules())
    calls: list[tuple[str, tuple[int, ...]]] = []
    counts: dict[str, int] = {}
    leaf_bytes = [0]

    def make_hook(name: str, leaf: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            counts[name] = counts.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                calls.append((name, tuple(out.shape)))
                if leaf:
                    leaf_bytes[0] += out.numel() * out.element_size()

        return hook

    with HookSet() as hooks, torch.no_grad():
        for name, module in modules:
            if name:
                leaf = next(iter(module.children()), None) is None
                hooks.add(module.register_forward_hook(make_hook(name, leaf)))
        out = model(sample[:1])
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"`model` must return class scores of shape (N, num_classes); got {shape}. "
            "Wrap the model so that its forward returns logits."
        )
    input_bytes = sample[:1].numel() * sample.element_size()
    profile = _Profile(
        calls=tuple(calls),
        counts=counts,
        bytes_per_sample=leaf_bytes[0] + input_bytes,
        num_outputs=int(out.shape[1]),
    )
    cache.clear()  # one input shape per model is the common case; keep memory bounded
    cache[key] = profile
    return profile


def _device_of(model: nn.Module, inputs: torch.Tensor) -> torch.device:
    """The device the model runs on (that of a parameter or buffer; else the inputs')."""
    return _structure(model)[1] or inputs.device


def _budget_samples(profile: _Profile, memory_budget_mb: float) -> int:
    per_sample = max(1, profile.bytes_per_sample * _BACKWARD_FACTOR)
    return max(1, int(memory_budget_mb * 2**20 // per_sample))


def _auto_samples(profile: _Profile, memory_budget_mb: float, n: int, device: torch.device) -> int:
    """Samples per pass: within the memory budget; on CPU also small enough to run fast."""
    samples = _budget_samples(profile, memory_budget_mb)
    if device.type == "cpu":
        # Large batches run slower *per sample* on CPU (conv backward leaves the cache): LeNet-5
        # at 32 px takes 1.5 ms per 8 images in batches of 16, 3 ms in batches of 32 or more.
        per_sample = max(1, profile.bytes_per_sample * _BACKWARD_FACTOR)
        samples = min(samples, max(n, _CPU_PASS_BYTES // per_sample))
    return samples


def estimate_internal_batch_size(
    model: nn.Module, inputs: torch.Tensor, memory_budget_mb: float = 256
) -> int:
    """How many samples one forward+backward pass may evaluate within ``memory_budget_mb``.

    Runs one guarded forward pass of one sample and sums the output sizes of the leaf modules,
    times 3 for what the backward pass keeps (a rough but safe-side estimate).

    Args:
        model: The classifier.
        inputs: A batch (only its first sample is used).
        memory_budget_mb: Memory one pass may use, in MiB.

    Returns:
        The number of samples, at least 1.

    Raises:
        ValueError: If ``memory_budget_mb`` is not positive or ``inputs`` is not a batch.
    """
    _check_inputs(inputs)
    _check_budget(memory_budget_mb)
    with observe(model, extra_devices=[inputs.device]):
        x = inputs[:1].detach().to(_device_of(model, inputs)).clone()
        return _budget_samples(_profile(model, x), memory_budget_mb)


def _spatial_layers(model: nn.Module, profile: _Profile, input_ndim: int) -> list[str]:
    """Conv and pooling modules whose output has the input's layout, in forward order."""
    seen: dict[str, None] = {}
    for name, shape in profile.calls:
        module = model.get_submodule(name)
        if isinstance(module, CONV_TYPES + POOL_TYPES) and len(shape) == input_ndim:
            seen.pop(name, None)
            seen[name] = None
    return list(seen)


def gradcam_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Names of the conv and pooling layers Grad-CAM can use, in forward order.

    The default layer of :func:`attribute` is the last of these whose output has more than one
    position.

    Args:
        model: The classifier.
        inputs: A batch of the model's inputs (one sample is run).

    Returns:
        Qualified module names, e.g. ``["features.c1", "features.s2", ...]``.

    Example:
        >>> gradcam_layers(model, images)[-1]
        'features.s4'
    """
    _check_inputs(inputs)
    with observe(model, extra_devices=[inputs.device]):
        x = inputs[:1].detach().to(_device_of(model, inputs)).clone()
        return _spatial_layers(model, _profile(model, x), inputs.ndim)


def _resolve_layer(
    model: nn.Module, profile: _Profile, layer: str | None, input_ndim: int, method: str
) -> str:
    candidates = _spatial_layers(model, profile, input_ndim)
    shapes = dict(profile.calls)
    if layer is None:
        usable = [n for n in candidates if math.prod(shapes[n][2:]) > 1]
        if not usable:
            raise AttributionUnavailable(
                method,
                "the model has no conv or pooling layer with spatial output larger than 1x1; "
                "Grad-CAM needs one",
            )
        return usable[-1]
    if not isinstance(layer, str):
        raise TypeError(f"`layer` must be a module name (str) or None; got {type(layer).__name__}")
    if layer in shapes and len(shapes[layer]) == input_ndim:
        return layer  # any module with spatial output (e.g. a ResNet stage) is accepted
    raise ValueError(
        f"`layer`: unknown layer {layer!r} for {method}; conv/pool layers with spatial output "
        f"are: {', '.join(candidates) or '(none)'}"
    )


# --------------------------------------------------------------------------------------------
# Safety nets around Captum.


_SIGNATURE = inspect.Signature([inspect.Parameter("x", inspect.Parameter.POSITIONAL_OR_KEYWORD)])


class _Head:
    """Wraps the model for Captum.

    Checks the output shape. With ``reduce=True`` it returns the sum over the batch of each
    input's target score, shape ``(1, 1)`` — its gradient is exactly the per-input gradient
    Captum would compute from N separate scores — where the targets are ``self.targets`` or,
    when that is ``None``, the predicted classes of this very forward pass (kept in
    ``self.picked``).
    """

    # Captum inspects the forward function's signature on every model evaluation; a fixed one
    # saves that work.
    __signature__ = _SIGNATURE

    def __init__(self, model: nn.Module, reduce: bool) -> None:
        self.model = model
        self.reduce = reduce
        self.targets: torch.Tensor | None = None
        self.picked: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ValueError("`model` must return class scores of shape (N, num_classes)")
        if not self.reduce:
            return out
        idx = self.targets
        if idx is None:
            idx = out.detach().argmax(dim=1)
            self.picked = idx
        return out.gather(1, idx[:, None]).sum().reshape(1, 1)


class _HeadModule(nn.Module):
    """:class:`_Head` as an ``nn.Module``, for the Captum methods that hook the model's modules.

    They find those modules through ``self.model.apply``.
    """

    __signature__ = _SIGNATURE

    def __init__(self, head: _Head) -> None:
        super().__init__()
        self.model = head.model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def _check_targets(targets: torch.Tensor, num_outputs: int) -> None:
    low, high = (int(v) for v in torch.aminmax(targets))
    if low < 0 or high >= num_outputs:
        raise ValueError(
            f"`target`: class indices must lie in [0, {num_outputs - 1}] for this model; "
            f"got values from {low} to {high}"
        )


@contextlib.contextmanager
def _no_leftovers(model: nn.Module, attrs: bool) -> Iterator[None]:
    """Remove hooks (and, with ``attrs``, DeepLift's module attributes) Captum leaves behind.

    Captum removes its hooks itself, but not always (e.g. DeepLift's ``module.input`` when a
    forward pass raises); this is the safety net.

    Hook handle ids grow monotonically, so every hook registered inside the window has an id
    at least the value of the counter on entry.
    """
    first_id = RemovableHandle.next_id
    before = [(m, set(vars(m))) for m in model.modules()] if attrs else []
    try:
        yield
    finally:
        for m in model.modules() if RemovableHandle.next_id != first_id else ():
            for d in _HOOK_DICTS:
                table = getattr(m, d, None)
                if table:
                    for k in [k for k in table if isinstance(k, int) and k >= first_id]:
                        del table[k]
        for m, names in before:
            for a in _CAPTUM_MODULE_ATTRS:
                if a not in names and a in vars(m):
                    delattr(m, a)


@contextlib.contextmanager
def _seeded(seed: int | None, cuda: Sequence[int]) -> Iterator[None]:
    """Fork NumPy's and Python's global RNG (torch's is forked by ``observe``) and seed them.

    Noise-based methods become reproducible, and training's random streams do not move.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# --------------------------------------------------------------------------------------------
# Input checking.


def _check_inputs(inputs: Any) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"`inputs` must be a torch.Tensor batch; got {type(inputs).__name__}")
    if inputs.ndim not in (3, 4) or inputs.shape[0] == 0:
        raise ValueError(
            "`inputs` must be a non-empty batch of shape (N, C, H, W) (or (N, C, L)); "
            f"got shape {tuple(inputs.shape)}. Add a batch dimension with inputs[None]."
        )
    if not inputs.is_floating_point():
        raise TypeError(f"`inputs` must be a floating point tensor; got {inputs.dtype}")


def _check_budget(memory_budget_mb: Any) -> None:
    if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float)):
        raise TypeError(f"`memory_budget_mb` must be a number; got {memory_budget_mb!r}")
    if not memory_budget_mb > 0:
        raise ValueError(f"`memory_budget_mb` must be > 0; got {memory_budget_mb}")


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"`method`: unknown method {method!r}; choose from: {', '.join(METHODS)}")
    return method


def _check_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - _METHOD_KWARGS[method])
    if unknown:
        allowed = ", ".join(sorted(_METHOD_KWARGS[method])) or "(none)"
        raise TypeError(
            f"{method}: unexpected keyword argument(s) {', '.join(unknown)}; "
            f"{method} accepts: {allowed} (batching is set with `internal_batch_size`)"
        )


def _fixed_targets(target: Any, labels: Any, n: int, device: torch.device) -> torch.Tensor | None:
    """The targets as a tensor, or ``None`` for ``"pred"``."""
    if isinstance(target, str):
        if target == "pred":
            return None
        if target == "label":
            if labels is None:
                raise ValueError(
                    "`labels` is required with target='label': pass labels=y (one class index "
                    "per input), or use target='pred' or a class index"
                )
            t = torch.as_tensor(labels)
            if t.ndim != 1 or t.shape[0] != n:
                raise ValueError(
                    f"`labels` must hold one class index per input ({n}); got shape "
                    f"{tuple(t.shape)}"
                )
            return t.detach().clone().to(device=device, dtype=torch.long)
        raise ValueError(
            "`target` must be 'pred', 'label', a class index or a tensor of indices; "
            f"got {target!r}"
        )
    if isinstance(target, bool):
        raise TypeError("`target` must be 'pred', 'label', an int or a tensor; got a bool")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=device)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.ndim > 1 or target.numel() not in (1, n):
            raise ValueError(
                f"`target` tensor must hold one integer class index, or one per input ({n}); "
                f"got {target.dtype} of shape {tuple(target.shape)}"
            )
        return target.detach().clone().to(device=device, dtype=torch.long).reshape(-1).expand(n)
    raise TypeError(
        f"`target` must be 'pred', 'label', an int or a tensor; got {type(target).__name__}"
    )


# --------------------------------------------------------------------------------------------
# The methods. Each runner gets one chunk of inputs and returns its attributions.


@dataclass
class _Job:
    method: str
    head: _Head
    layer: nn.Module | None
    kwargs: dict[str, Any]
    samples: int  # samples one model evaluation may hold
    full: torch.Tensor  # the whole (cloned) batch
    settings: dict[str, Any]


def _per_chunk(value: Any, sl: slice, n: int) -> Any:
    """Slice per-example baselines along with the inputs."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n and n > 1:
        return value[sl]
    return value


def _run_saliency(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import Saliency

    abs_ = job.kwargs.get("abs", True)
    job.settings.update(abs=abs_)
    return Saliency(job.head).attribute(x, target=t, abs=abs_)


def _run_input_x_gradient(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import InputXGradient

    return InputXGradient(job.head).attribute(x, target=t)


def _run_integrated_gradients(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    n_steps = int(job.kwargs.get("n_steps", 50))
    baselines = _per_chunk(job.kwargs.get("baselines", 0.0), sl, job.full.shape[0])
    n = x.shape[0]
    ibs = None if n * n_steps <= job.samples else max(n, job.samples)
    job.settings.update(
        n_steps=n_steps, baselines="zeros" if "baselines" not in job.kwargs else "given"
    )
    return IntegratedGradients(job.head).attribute(
        x,
        baselines=baselines,
        target=t,
        n_steps=n_steps,
        method=job.kwargs.get("method", "gausslegendre"),
        internal_batch_size=ibs,
    )


def _run_smoothgrad(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import NoiseTunnel, Saliency

    nt_samples = int(job.kwargs.get("nt_samples", 16))
    stdevs = job.kwargs.get("stdevs")
    if stdevs is None:
        stdevs = 0.15 * float(job.full.max() - job.full.min())
    per_eval = min(nt_samples, max(1, job.samples // x.shape[0]))
    abs_ = job.kwargs.get("abs", True)
    job.settings.update(nt_samples=nt_samples, stdevs=stdevs, abs=abs_)
    return NoiseTunnel(Saliency(job.head)).attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=nt_samples,
        nt_samples_batch_size=per_eval,
        stdevs=stdevs,
        target=t,
        abs=abs_,
    )


def _run_gradient_shap(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import GradientShap

    n_samples = int(job.kwargs.get("n_samples", 16))
    baselines = job.kwargs.get("baselines")
    if baselines is None:
        # Expected gradients: the batch itself is the reference distribution, plus a black image.
        baselines = torch.cat([torch.zeros_like(job.full[:1]), job.full])
    stdevs = job.kwargs.get("stdevs", 0.0)
    per_eval = min(n_samples, max(1, job.samples // x.shape[0]))
    job.settings.update(n_samples=n_samples, stdevs=stdevs, baselines=int(baselines.shape[0]))
    gs = GradientShap(job.head)
    total: torch.Tensor | None = None
    done = 0
    while done < n_samples:  # GradientShap has no internal batching: average groups of samples
        k = min(per_eval, n_samples - done)
        part = gs.attribute(x, baselines=baselines, n_samples=k, stdevs=stdevs, target=t)
        total = part * k if total is None else total + part * k
        done += k
    assert total is not None
    return total / n_samples


def _run_deeplift(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import DeepLift

    baselines = _per_chunk(job.kwargs.get("baselines", 0.0), sl, job.full.shape[0])
    job.settings.update(baselines="zeros" if "baselines" not in job.kwargs else "given")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            return DeepLift(_HeadModule(job.head)).attribute(x, baselines=baselines, target=t)
    except (RuntimeError, AssertionError) as err:
        text = str(err)
        if "used more than once" in text or "maxpool modul" in text:
            raise AttributionUnavailable("deeplift", text.splitlines()[0]) from err
        raise


def _run_guided_backprop(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        return GuidedBackprop(_HeadModule(job.head)).attribute(x, target=t)


def _run_deconvolution(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import Deconvolution

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        return Deconvolution(_HeadModule(job.head)).attribute(x, target=t)


def _occlusion_window(x: torch.Tensor, kwargs: dict[str, Any]) -> tuple[tuple, Any]:
    spatial = tuple(x.shape[2:])
    window = kwargs.get("sliding_window_shapes")
    if window is None:
        window = (x.shape[1], *(max(1, s // 4) for s in spatial))
    strides = kwargs.get("strides")
    if strides is None:
        strides = (x.shape[1], *(max(1, w // 2) for w in window[1:]))
    return tuple(window), strides


def _run_occlusion(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import Occlusion

    window, strides = _occlusion_window(x, job.kwargs)
    st = strides if isinstance(strides, tuple) else (strides,) * len(window)
    positions = math.prod(
        (size - w) // s + 1 for size, w, s in zip(x.shape[1:], window, st, strict=True)
    )
    per_eval = min(positions, max(1, job.samples // x.shape[0]))
    baselines = _per_chunk(job.kwargs.get("baselines", 0.0), sl, job.full.shape[0])
    job.settings.update(sliding_window_shapes=window, strides=strides, windows=positions)
    return Occlusion(job.head).attribute(
        x,
        sliding_window_shapes=window,
        strides=strides,
        baselines=baselines,
        target=t,
        perturbations_per_eval=per_eval,
    )


def _interp_mode(job: _Job, x: torch.Tensor) -> str:
    mode = job.kwargs.get("interpolate_mode")
    if mode is None:
        mode = "bilinear" if x.ndim == 4 else "linear"
    job.settings.update(interpolate_mode=mode)
    return mode


def _run_grad_cam(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import LayerAttribution, LayerGradCam

    assert job.layer is not None
    cam = LayerGradCam(job.head, job.layer).attribute(x, target=t, relu_attributions=True)
    cam = LayerAttribution.interpolate(
        cam, tuple(x.shape[2:]), interpolate_mode=_interp_mode(job, x)
    )
    return cam.expand_as(x)


def _run_guided_grad_cam(job: _Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import GuidedGradCam

    assert job.layer is not None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks")
        return GuidedGradCam(_HeadModule(job.head), job.layer).attribute(
            x, target=t, interpolate_mode=_interp_mode(job, x)
        )


_RUNNERS: dict[str, Callable[[_Job, torch.Tensor, Any, slice], torch.Tensor]] = {
    "saliency": _run_saliency,
    "input_x_gradient": _run_input_x_gradient,
    "integrated_gradients": _run_integrated_gradients,
    "smoothgrad": _run_smoothgrad,
    "gradient_shap": _run_gradient_shap,
    "deeplift": _run_deeplift,
    "guided_backprop": _run_guided_backprop,
    "deconvolution": _run_deconvolution,
    "occlusion": _run_occlusion,
    "grad_cam": _run_grad_cam,
    "guided_grad_cam": _run_guided_grad_cam,
}


def _availability(method: str, model: nn.Module, profile: _Profile) -> str:
    """Raise for methods that cannot run on ``model``; return a note for degenerate ones."""
    if method == "deeplift":
        reused = [
            n
            for n, c in profile.counts.items()
            if c > 1 and isinstance(model.get_submodule(n), _DEEPLIFT_NONLINEAR)
        ]
        if reused:
            raise AttributionUnavailable(
                method,
                f"module(s) {', '.join(reused)} are called more than once per forward pass; "
                "Captum's DeepLift needs each activation module used once",
            )
        if not any(isinstance(m, _DEEPLIFT_NONLINEAR) for m in model.modules()):
            return "no activation modules found (functional activations?): equals gradient x input"
    if method in ("guided_backprop", "deconvolution", "guided_grad_cam") and not any(
        isinstance(m, nn.ReLU) for m in model.modules()
    ):
        return f"the model has no nn.ReLU module, so {method} does not modify any gradient"
    return ""


def _predict(model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [model(x[i : i + samples]).argmax(dim=1) for i in range(0, len(x), samples)]
        )


def attribute(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    *,
    target: str | int | torch.Tensor = "pred",
    labels: torch.Tensor | Sequence[int] | None = None,
    layer: str | None = None,
    internal_batch_size: int | None = None,
    memory_budget_mb: float = 256,
    seed: int | None = 0,
    **method_kwargs: Any,
) -> AttributionResult:
    """Compute attributions of ``method`` for a batch, without changing the model or training.

    Methods and their defaults (override with ``method_kwargs``, which go to Captum):

    - ``saliency``: absolute input gradient (``abs=True``).
    - ``input_x_gradient``: gradient times input.
    - ``integrated_gradients``: 50 steps (``n_steps``), Gauss-Legendre, zero baseline.
    - ``smoothgrad``: NoiseTunnel over Saliency, 16 samples (``nt_samples``), noise standard
      deviation 0.15 x the batch's value range (``stdevs``).
    - ``gradient_shap``: 16 samples (``n_samples``); baselines are the batch itself plus an
      all-zero image (expected gradients with the probe batch as reference distribution).
    - ``deeplift``: zero baseline (Rescale rule).
    - ``guided_backprop``, ``deconvolution``: modified ReLU gradients.
    - ``occlusion``: zero patches of 1/4 of the image side, stride 1/8 (49 windows for any
      square image); ``sliding_window_shapes``, ``strides``, ``baselines``.
    - ``grad_cam``: LayerGradCam with ``relu_attributions=True`` (as in the paper) on ``layer``,
      upsampled bilinearly to the input size and repeated over the input channels.
    - ``guided_grad_cam``: guided backprop times the upsampled Grad-CAM map.

    Inside the call the model is in eval mode, parameters are frozen (no weight gradients),
    the torch/NumPy/Python RNGs are forked and seeded with ``seed``, in-place activations are
    made out-of-place for the hook-based methods; all of it is restored afterwards, and any hook
    Captum leaves behind (also when it raises) is removed.

    Args:
        model: A classifier returning ``(N, num_classes)`` scores.
        inputs: Batch ``(N, C, H, W)`` (or ``(N, C, L)``), on the model's device. May be an
            inference-mode tensor: it is cloned.
        method: One of :func:`available_methods`.
        target: ``"pred"`` (predicted class), ``"label"`` (needs ``labels``), a class index, or
            a tensor with one index per input.
        labels: True classes, one per input, for ``target="label"``.
        layer: Qualified name of the layer for Grad-CAM / guided Grad-CAM (any module with
            spatial output); default: the last conv or pooling layer whose output is larger
            than 1x1. Ignored by other methods.
        internal_batch_size: The most samples one forward/backward pass evaluates (inputs,
            interpolation steps, noisy copies or occluded copies together). Default: chosen from
            ``memory_budget_mb``.
        memory_budget_mb: Memory one pass may use, estimated as 3 x the activation memory of
            a forward pass (measured once per model and input shape).
        seed: Seed of the noise of ``smoothgrad`` and ``gradient_shap`` (drawn from forked
            streams); ``None`` draws from the current state without advancing it.
        **method_kwargs: Method parameters listed above.

    Returns:
        The :class:`AttributionResult`.

    Raises:
        ValueError: Unknown ``method`` or ``layer`` (the message lists the valid ones), bad
            ``target``/``labels``, or a model that does not return ``(N, classes)`` scores.
        TypeError: Wrong argument types or keyword arguments the method does not take.
        AttributionUnavailable: The method cannot run on this model (e.g. Grad-CAM without a
            spatial layer, DeepLift with a reused activation module).

    Example:
        >>> res = attribute(model, images, "grad_cam", target="label", labels=y)
        >>> res.attributions.shape, res.layer
        (torch.Size([8, 3, 32, 32]), 'features.s4')
    """
    start = time.perf_counter()
    method = _check_method(method)
    _check_inputs(inputs)
    _check_budget(memory_budget_mb)
    _check_kwargs(method, method_kwargs)
    if internal_batch_size is not None and (
        isinstance(internal_batch_size, bool)
        or not isinstance(internal_batch_size, int)
        or internal_batch_size < 1
    ):
        raise ValueError(
            f"`internal_batch_size` must be a positive int or None; got {internal_batch_size!r}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module; got {type(model).__name__}")
    n = inputs.shape[0]
    structure, model_device = _structure(model)
    device = model_device or inputs.device
    cuda = sorted({d.index or 0 for d in (device, inputs.device) if d.type == "cuda"})

    with (
        observe(
            model,
            grad=True,
            freeze_params=True,
            no_inplace=method in _HOOK_BASED,
            extra_devices=[inputs.device],
        ),
        _seeded(seed, cuda) if method in _NOISY else contextlib.nullcontext(),
    ):
        x = inputs.detach().to(device).clone()  # a normal tensor even under inference mode
        method_kwargs = {
            k: v.detach().to(device).clone() if isinstance(v, torch.Tensor) else v
            for k, v in method_kwargs.items()
        }
        fixed = _fixed_targets(target, labels, n, device)
        profile = _profile(model, x, structure)  # cached per model and input shape
        samples = internal_batch_size or _auto_samples(profile, memory_budget_mb, n, device)
        if fixed is not None:
            _check_targets(fixed, profile.num_outputs)
        note = _availability(method, model, profile)
        layer_name = None
        layer_module = None
        if method in _LAYER_METHODS:
            layer_name = _resolve_layer(model, profile, layer, x.ndim, method)
            layer_module = model.get_submodule(layer_name)
        single = method in _SINGLE_PASS
        fused = fixed is None and single
        if fixed is None and not fused:
            fixed = _predict(model, x, samples)
        head = _Head(model, reduce=single)
        job = _Job(method, head, layer_module, method_kwargs, samples, x, {})
        chunk = max(1, min(n, samples // _MIN_EXPANSION.get(method, 1)))
        parts: list[torch.Tensor] = []
        picked: list[torch.Tensor] = []
        with _no_leftovers(model, attrs=method == "deeplift"):
            for i in range(0, n, chunk):
                sl = slice(i, min(n, i + chunk))
                t = None if single else fixed[sl]  # type: ignore[index]
                head.targets = None if fused else fixed[sl]  # type: ignore[index]
                xc = x[sl].detach().requires_grad_(method != "occlusion")
                parts.append(_RUNNERS[method](job, xc, t, sl).detach())
                if fused:
                    picked.append(head.picked)  # type: ignore[arg-type]
        attributions = (parts[0] if len(parts) == 1 else torch.cat(parts)).to("cpu", torch.float32)
        targets = (picked[0] if len(picked) == 1 else torch.cat(picked)) if fused else fixed
    assert targets is not None
    empty = torch.count_nonzero(attributions.flatten(1), dim=1) == 0
    if bool(empty.any()):
        zero = empty.nonzero().flatten().tolist()
        shown = ", ".join(map(str, zero[:8])) + (", ..." if len(zero) > 8 else "")
        extra = f"all-zero map for {len(zero)} of {n} inputs (indices {shown})"
        if method in _LAYER_METHODS:
            extra += ": no positive evidence for the target class at this layer"
        note = f"{note}; {extra}" if note else extra
    job.settings["internal_batch_size"] = samples
    return AttributionResult(
        attributions=attributions,
        method=method,
        targets=targets.detach().to("cpu", torch.long),
        layer=layer_name,
        note=note,
        seconds=time.perf_counter() - start,
        settings=job.settings,
    )


def attribute_many(
    model: nn.Module,
    inputs: torch.Tensor,
    methods: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, AttributionResult | str]:
    """Run several methods on the same batch; report, never raise on, unavailable methods.

    With ``target="pred"`` (default) the predicted classes are computed once and shared, so every
    method explains the same class.

    Args:
        model: The classifier.
        inputs: The batch.
        methods: Method names (default: all of :func:`available_methods`).
        **kwargs: Passed to :func:`attribute` (``target``, ``labels``, ``layer``,
            ``memory_budget_mb``...; not method-specific parameters).

    Returns:
        ``{method: AttributionResult}``, or ``{method: "reason"}`` for a method that cannot run
        on this model.

    Raises:
        ValueError: An unknown method name (before anything runs), or bad common arguments.

    Example:
        >>> results = attribute_many(model, images, ["saliency", "grad_cam"])
        >>> {k: type(v).__name__ for k, v in results.items()}
        {'saliency': 'AttributionResult', 'grad_cam': 'AttributionResult'}
    """
    names = list(METHODS) if methods is None else [_check_method(m) for m in methods]
    _check_inputs(inputs)
    target = kwargs.get("target", "pred")
    if isinstance(target, str) and target == "pred":
        samples = kwargs.get("internal_batch_size") or estimate_internal_batch_size(
            model, inputs, kwargs.get("memory_budget_mb", 256)
        )
        with observe(model, grad=False, extra_devices=[inputs.device]):
            x = inputs.detach().to(_device_of(model, inputs))
            kwargs = {**kwargs, "target": _predict(model, x, samples)}
    out: dict[str, AttributionResult | str] = {}
    for name in names:
        try:
            out[name] = attribute(model, inputs, name, **kwargs)
        except AttributionUnavailable as err:
            out[name] = err.reason
    return out
