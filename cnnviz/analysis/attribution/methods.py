"""One specification per attribution method: how it runs and what it needs.

:data:`METHOD_SPECS` is the single table :func:`~cnnviz.analysis.attribution.attribute` reads:
for each method its runner, the keyword arguments it accepts, and the properties the caller acts
on (one pass over the unperturbed input, gradient-overriding hooks, random noise, a Grad-CAM
layer, the smallest expansion of a pass, how it runs on token ids).

A runner gets one chunk of the work batch — images ``(n, C, H, W)``, float sequences
``(n, C, L)`` or, for token ids, the embedding vectors ``(n, L, D)`` (or the ids themselves for
methods that perturb ids) — and returns its attributions in the same layout (token Grad-CAM:
``(n, L)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.analysis.attribution._head import Head
from cnnviz.analysis.attribution._model import DEEPLIFT_NONLINEAR, Facts, Profile
from cnnviz.analysis.attribution.results import AttributionUnavailable
from cnnviz.analysis.guard import HookSet

__all__ = ["METHODS", "METHOD_SPECS", "MethodSpec"]


@dataclass
class TokenContext:
    """What embedding-space runners need besides the vectors."""

    ids: torch.Tensor  # the whole batch of token ids (n, L)
    embedding: str  # qualified name of the nn.Embedding
    pad_id: int
    pad_vectors: torch.Tensor  # the embedding of an all-pad sequence, (1, L, D)


@dataclass
class Job:
    """One :func:`attribute` call, as the runners see it."""

    spec: MethodSpec
    head: Head
    layer: nn.Module | None
    kwargs: dict[str, Any]
    samples: int  # samples one model evaluation may hold
    full: torch.Tensor  # the whole work batch (cloned)
    settings: dict[str, Any]
    positions: tuple[int, ...]  # the input's spatial size: (H, W), (L,)
    tokens: TokenContext | None = None

    def baselines(self, sl: slice, default: Any = 0.0) -> Any:
        """The ``baselines`` argument (or ``default``), sliced with the chunk when per-input."""
        value = self.kwargs.get("baselines")
        if value is None:
            value = self.tokens.pad_vectors if self.tokens is not None else default
            self.settings.update(baselines="pad" if self.tokens is not None else "zeros")
        else:
            self.settings.update(baselines="given")
        return _per_chunk(value, sl, self.full.shape[0])


Runner = Callable[[Job, torch.Tensor, Any, slice], torch.Tensor]


@dataclass(frozen=True)
class MethodSpec:
    """How one attribution method runs.

    Attributes:
        name: The method's name.
        run: The runner (one chunk in, its attributions out).
        kwargs: Keyword arguments the method accepts (passed on to Captum).
        summary: One line: what it computes, with its defaults.
        single_pass: Every model evaluation sees the unperturbed input: the head selects the
            target scores itself (the predicted class comes from the same forward pass) and sums
            them, so one scalar is backpropagated instead of N (the same gradient).
        hook_based: Changes the model's gradients through hooks on its modules: needs
            out-of-place activations (an in-place ReLU would apply its own gradient again).
        noisy: Draws random numbers (seeded, from forked streams).
        layer: Needs a conv/pool layer (Grad-CAM).
        input_grad: Needs the gradient with respect to the input (else the input is a constant).
        min_expansion: Samples evaluated per input in the smallest pass.
        tokens: How it runs on token ids: ``"embedding"`` (in the embedding space, attributions
            summed over the embedding dimension), ``"ids"`` (perturbing the ids), or ``None``
            (unavailable; ``no_tokens`` says why).
        token_expand: How Captum expands a batch of embedding vectors (``"repeat"``: copies one
            after another; ``"interleave"``: the copies of each input together), so the ids
            are repeated to match.
        no_tokens: Why the method does not apply to token ids.
    """

    name: str
    run: Runner
    kwargs: frozenset[str]
    summary: str
    single_pass: bool = False
    hook_based: bool = False
    noisy: bool = False
    layer: bool = False
    input_grad: bool = True
    min_expansion: int = 1
    tokens: Literal["embedding", "ids"] | None = "embedding"
    token_expand: Literal["repeat", "interleave"] = "repeat"
    no_tokens: str = field(default="")


# ------------------------------------------------------------------------------------ helpers
def _per_chunk(value: Any, sl: slice, n: int) -> Any:
    """Slice per-example baselines along with the inputs."""
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n and n > 1:
        return value[sl]
    return value


def _balanced(total: int, most: int) -> int:
    """Items per group when ``total`` items are split into groups of at most ``most``, evenly."""
    most = max(1, min(total, most))
    groups = math.ceil(total / most)
    return math.ceil(total / groups)


def _input_gradient(head: Head, x: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(head(x), x)  # the head sums the target scores
    return grad


# ------------------------------------------------------------------------------------ runners
def _run_saliency(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    # Captum's Saliency is this (one input gradient); done directly it skips Captum's wrapping.
    abs_ = job.kwargs.get("abs", True)
    job.settings.update(abs=abs_)
    grad = _input_gradient(job.head, x)
    return grad.abs_() if abs_ else grad  # autograd's fresh tensor: in place


def _run_input_x_gradient(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    # Captum's InputXGradient, directly (in place on autograd's fresh gradient tensor)
    return _input_gradient(job.head, x).mul_(x.detach())


def _run_integrated_gradients(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    n_steps = int(job.kwargs.get("n_steps", 50))
    n = x.shape[0]
    ibs = None if n * n_steps <= job.samples else n * _balanced(n_steps, job.samples // n)
    job.settings.update(n_steps=n_steps)
    return IntegratedGradients(job.head).attribute(
        x,
        baselines=job.baselines(sl),
        target=t,
        n_steps=n_steps,
        method=job.kwargs.get("method", "gausslegendre"),
        internal_batch_size=ibs,
    )


def _target_gradient(head: Head, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each input's gradient of its target score: one backward pass from their sum.

    Captum's gradient methods backpropagate the N target scores as N roots; their sum has the
    same per-input gradient and is one root.
    """
    score = head.scores(x).gather(1, targets.unsqueeze(1)).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


def _positive_int(job: Job, name: str, default: int) -> int:
    value = job.kwargs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{job.spec.name}: `{name}` must be a positive int; got {value!r}")
    return value


def _groups(total: int, job: Job, n: int) -> list[int]:
    """Sizes of the groups of ``total`` samples per input evaluated together (N inputs each)."""
    per = _balanced(total, max(1, job.samples // n))
    sizes = [per] * (total // per)
    return [*sizes, total % per] if total % per else sizes


def _sample_mean(
    job: Job, x: torch.Tensor, total: int, evaluate: Callable[[int], torch.Tensor]
) -> torch.Tensor:
    """The mean over ``total`` samples per input, evaluated group by group.

    ``evaluate(k)`` returns the maps of ``k`` samples of every input, the ``k`` of each input
    together (``repeat_interleave`` order), shape ``(N * k, *x.shape[1:])``.
    """
    n, rest = x.shape[0], x.shape[1:]
    summed: torch.Tensor | None = None
    for k in _groups(total, job, n):
        part = evaluate(k).view(n, k, *rest).sum(dim=1)
        summed = part if summed is None else summed + part
    assert summed is not None
    return summed / total


def _run_smoothgrad(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    # Captum's NoiseTunnel(Saliency), nt_type="smoothgrad", directly: the same noise (drawn in
    # the same order, group by group), one backward pass per group instead of one root per
    # noisy copy, and no sum of squares that smoothgrad does not use.
    nt_samples = _positive_int(job, "nt_samples", 16)
    stdevs = job.kwargs.get("stdevs")
    if stdevs is None:
        stdevs = 0.15 * float(job.full.max() - job.full.min())
    stdevs = float(stdevs)
    abs_ = job.kwargs.get("abs", True)
    job.settings.update(nt_samples=nt_samples, stdevs=stdevs, abs=abs_)
    base = x.detach()

    def noisy_saliency(k: int) -> torch.Tensor:
        noise = torch.randn((x.shape[0] * k, *x.shape[1:]), device=x.device) * stdevs
        noisy = (base.repeat_interleave(k, dim=0) + noise).requires_grad_()
        grad = _target_gradient(job.head, noisy, t.repeat_interleave(k))
        return grad.abs() if abs_ else grad

    return _sample_mean(job, x, nt_samples, noisy_saliency)


def _run_gradient_shap(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    # Captum's GradientShap, directly, group by group as Captum draws: baselines picked at
    # random from the reference set (NumPy), the noise (torch, only when stdevs > 0), a random
    # point between baseline and input (NumPy); gradient there times (input - baseline),
    # averaged. One backward pass per group.
    n_samples = _positive_int(job, "n_samples", 16)
    baselines = job.kwargs.get("baselines")
    if baselines is None:
        # Expected gradients: the batch itself is the reference distribution, plus a black
        # image (for token ids: an all-pad sequence).
        blank = job.tokens.pad_vectors if job.tokens is not None else torch.zeros_like(job.full[:1])
        baselines = torch.cat([blank, job.full])
    stdevs = float(job.kwargs.get("stdevs", 0.0))
    job.settings.update(n_samples=n_samples, stdevs=stdevs, baselines=int(baselines.shape[0]))
    base = x.detach()

    def expected_gradients(k: int) -> torch.Tensor:
        rows = x.shape[0] * k
        picked = baselines[np.random.choice(baselines.shape[0], rows).tolist()]
        inputs = base.repeat_interleave(k, dim=0)
        if stdevs:
            inputs = inputs + torch.randn(inputs.shape, device=x.device) * stdevs
        alpha = torch.tensor(np.random.uniform(0.0, 1.0, rows), device=x.device, dtype=x.dtype)
        alpha = alpha.view(-1, *(1,) * (x.ndim - 1))
        scaled = (alpha * inputs + (1.0 - alpha) * picked).requires_grad_()
        grad = _target_gradient(job.head, scaled, t.repeat_interleave(k))
        return (inputs - picked) * grad

    return _sample_mean(job, x, n_samples, expected_gradients)


# Captum's DeepLift applies its "nonlinear" Rescale rule to these module types (exact types);
# max pooling and softmax have rules of their own, for which cnnviz calls Captum.
_RESCALE_TYPES = (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus)
_CAPTUM_RULE_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Softmax)
_DEEPLIFT_EPS = 1e-10  # Captum's default


class _Rescale(torch.autograd.Function):
    """DeepLift's Rescale rule on an activation evaluated on ``cat([inputs, baselines])``.

    The multiplier ``delta_out / delta_in`` (the two halves' differences) replaces the local
    gradient; where ``|delta_in| < eps`` the activation's own gradient is kept, as in Captum:
    the gradient to ``inp`` carries the rescaled part, the gradient to ``out`` (which then
    flows through the activation's own backward) the rest.
    """

    @staticmethod
    def forward(ctx: Any, inp: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        half = inp.shape[0] // 2
        ctx.save_for_backward(inp[:half] - inp[half:], out[:half] - out[half:])
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        delta_in, delta_out = (torch.cat([d, d]) for d in ctx.saved_tensors)
        small = delta_in.abs() < _DEEPLIFT_EPS
        zero = grad.new_zeros(())
        return (
            torch.where(small, zero, grad * delta_out / delta_in),
            torch.where(small, grad, zero),
        )


def _rescale_hooks(model: nn.Module, hooks: HookSet) -> None:
    def hook(_m: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        return _Rescale.apply(args[0], out) if isinstance(out, torch.Tensor) else None

    for m in model.modules():
        # as Captum: exact types, and not on a module that already has backward hooks
        if type(m) in _RESCALE_TYPES and not m._backward_hooks:
            hooks.add(m.register_forward_hook(hook))


def _needs_captum_deeplift(model: nn.Module) -> bool:
    """Whether ``model`` has modules whose DeepLift rule cnnviz leaves to Captum."""
    return any(type(m) in _CAPTUM_RULE_TYPES for m in model.modules())


def _run_deeplift(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    baselines = job.baselines(sl)
    model = job.head.model
    if _needs_captum_deeplift(model):
        return _captum_deeplift(job, x, t, baselines)
    # Captum's DeepLift (Rescale rule) directly: one pass over cat([inputs, baselines]), the
    # rule as a tensor-level autograd function on each activation, one backward pass from the
    # sum of the inputs' target scores (the baseline half adds nothing to the inputs'
    # gradient: rows do not interact in eval mode). Each call of an activation module gets
    # its own multipliers, so a module used twice (torchvision's BasicBlock) is fine here.
    if isinstance(baselines, torch.Tensor):
        base = baselines.to(x.dtype).expand_as(x) if baselines.shape[0] == 1 else baselines
    else:
        base = torch.full_like(x, float(baselines))
    base = base.detach()
    with HookSet() as hooks:
        _rescale_hooks(model, hooks)
        scores = job.head.scores(torch.cat([x, base]))
    n = x.shape[0]
    (grad,) = torch.autograd.grad(scores[:n].gather(1, t.unsqueeze(1)).sum(), x)
    return (x.detach() - base) * grad


def _captum_deeplift(job: Job, x: torch.Tensor, t: Any, baselines: Any) -> torch.Tensor:
    from captum.attr import DeepLift

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            return DeepLift(job.head.as_module()).attribute(x, baselines=baselines, target=t)
    except (RuntimeError, AssertionError) as err:
        text = str(err)
        if "used more than once" in text or "maxpool modul" in text:
            raise AttributionUnavailable("deeplift", text.splitlines()[0]) from err
        raise


class _Rule:
    """Which gradient rule the ReLUs of a modified-gradient pass apply (switchable)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode  # "guided", "deconvolution" or "plain"


def _relu_hooks(model: nn.Module, rule: _Rule, hooks: HookSet) -> None:
    """Apply ``rule`` to the gradients of every ``nn.ReLU`` of ``model`` (forward hooks).

    The same rules as Captum's GuidedBackprop / Deconvolution (which override the ReLU modules'
    gradients with module backward hooks), cheaper: a tensor hook clips the gradient of each
    ReLU output at zero (read at backward time, so guided Grad-CAM can switch from the plain
    rule). Guided backprop: the ReLU's own backward then masks it. Deconvolution: the output is
    replaced by ``x - (x - relu(x)).detach()`` — the same values exactly (``relu(x)`` is ``x``
    or 0), but the gradient reaches ``x`` unmasked.
    """

    def positive(grad: torch.Tensor) -> torch.Tensor | None:
        return grad.clamp(min=0) if rule.mode != "plain" else None

    def hook(_m: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return None
        if rule.mode == "deconvolution":
            x = args[0]
            out = x - (x - out).detach()
            out.register_hook(positive)
            return out
        out.register_hook(positive)
        return None

    for m in model.modules():
        if isinstance(m, nn.ReLU):
            hooks.add(m.register_forward_hook(hook))


def _modified_gradient(job: Job, x: torch.Tensor, mode: str) -> torch.Tensor:
    with HookSet() as hooks:
        _relu_hooks(job.head.model, _Rule(mode), hooks)
        score = job.head(x)
    (grad,) = torch.autograd.grad(score, x)
    return grad


def _run_guided_backprop(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    return _modified_gradient(job, x, "guided")


def _run_deconvolution(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    return _modified_gradient(job, x, "deconvolution")


def _occlusion_window(job: Job, x: torch.Tensor) -> tuple[tuple[int, ...], Any]:
    window = job.kwargs.get("sliding_window_shapes")
    strides = job.kwargs.get("strides")
    if job.tokens is not None:  # token ids (n, L): one token at a time
        return tuple(window or (1,)), strides or (1,)
    if window is None:
        window = (x.shape[1], *(max(1, s // 4) for s in x.shape[2:]))
    if strides is None:
        strides = (x.shape[1], *(max(1, w // 2) for w in window[1:]))
    return tuple(window), strides


def _run_occlusion(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    from captum.attr import Occlusion

    window, strides = _occlusion_window(job, x)
    st = strides if isinstance(strides, tuple) else (strides,) * len(window)
    if len(window) != x.ndim - 1 or len(st) != len(window):
        raise ValueError(
            f"occlusion: `sliding_window_shapes` and `strides` need one entry per input dimension "
            f"after the batch ({x.ndim - 1} for inputs of shape {tuple(x.shape)}); got {window} "
            f"and {strides}"
        )
    positions = math.prod(
        (size - w) // s + 1 for size, w, s in zip(x.shape[1:], window, st, strict=True)
    )
    per_eval = _balanced(positions, job.samples // x.shape[0])
    if job.tokens is not None:
        baselines = job.kwargs.get("baselines", job.tokens.pad_id)
    else:
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


def _interp_mode(job: Job) -> str:
    mode = job.kwargs.get("interpolate_mode")
    if mode is None:
        mode = "bilinear" if len(job.positions) == 2 else "linear"
    job.settings.update(interpolate_mode=mode)
    return mode


def _layer_hook(layer: nn.Module, acts: list[torch.Tensor], hooks: HookSet) -> None:
    """Keep ``layer``'s output (as a tensor autograd can differentiate with respect to)."""

    def keep(_m: nn.Module, _i: Any, out: Any) -> Any:
        if not isinstance(out, torch.Tensor):
            return None
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
        acts.append(out)
        return out.clone()  # later in-place ops (`out += identity`) must not change it

    hooks.add(layer.register_forward_hook(keep))


def _cam(job: Job, score: torch.Tensor, acts: list[torch.Tensor], retain: bool) -> torch.Tensor:
    """Grad-CAM with ReLU from the layer's activations, upsampled to the input positions."""
    if not acts:
        raise AttributionUnavailable(job.spec.name, "the layer returned no tensor")
    act = acts[-1]
    (grad,) = torch.autograd.grad(score, act, retain_graph=retain)
    weights = grad.mean(dim=tuple(range(2, grad.ndim)), keepdim=True)
    cam = torch.relu((weights * act).sum(dim=1, keepdim=True)).float()
    return F.interpolate(cam, size=job.positions, mode=_interp_mode(job))


def _run_grad_cam(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    # Captum's LayerGradCam (relu_attributions=True) + LayerAttribution.interpolate, directly:
    # the backward pass stops at the layer instead of running on to the input.
    assert job.layer is not None
    acts: list[torch.Tensor] = []
    with HookSet() as hooks:
        _layer_hook(job.layer, acts, hooks)
        score = job.head(x)
    cam = _cam(job, score, acts, retain=False)
    if job.tokens is not None:
        return cam[:, 0]
    return cam.expand(x.shape[0], x.shape[1], *job.positions)


def _run_guided_grad_cam(job: Job, x: torch.Tensor, t: Any, sl: slice) -> torch.Tensor:
    # Captum's GuidedGradCam in one forward pass: the ReLUs follow the plain rule for the
    # backward pass to the layer (Grad-CAM), then the guided rule for the one to the input.
    assert job.layer is not None
    acts: list[torch.Tensor] = []
    rule = _Rule("plain")
    with HookSet() as hooks:
        _layer_hook(job.layer, acts, hooks)
        _relu_hooks(job.head.model, rule, hooks)
        score = job.head(x)
    cam = _cam(job, score, acts, retain=True)
    rule.mode = "guided"
    (guided,) = torch.autograd.grad(score, x)
    return guided * cam.to(guided.dtype)


# -------------------------------------------------------------------------------------- table
_TABLE = (
    MethodSpec(
        "saliency",
        _run_saliency,
        frozenset({"abs"}),
        "absolute input gradient (abs=True)",
        single_pass=True,
    ),
    MethodSpec(
        "input_x_gradient",
        _run_input_x_gradient,
        frozenset(),
        "gradient times input",
        single_pass=True,
    ),
    MethodSpec(
        "integrated_gradients",
        _run_integrated_gradients,
        frozenset({"n_steps", "baselines", "method"}),
        "50 steps (n_steps), Gauss-Legendre, zero baseline (token ids: the pad id)",
    ),
    MethodSpec(
        "smoothgrad",
        _run_smoothgrad,
        frozenset({"nt_samples", "stdevs", "abs"}),
        "NoiseTunnel over Saliency, 16 samples, noise 0.15 x the batch's value range",
        noisy=True,
        token_expand="interleave",
    ),
    MethodSpec(
        "gradient_shap",
        _run_gradient_shap,
        frozenset({"n_samples", "baselines", "stdevs"}),
        "16 samples; baselines: the batch itself plus a black image (expected gradients)",
        noisy=True,
        token_expand="interleave",
    ),
    MethodSpec(
        "deeplift",
        _run_deeplift,
        frozenset({"baselines"}),
        "DeepLift (Rescale rule), zero baseline (token ids: the pad id)",
        hook_based=True,
        min_expansion=2,
    ),
    MethodSpec(
        "guided_backprop",
        _run_guided_backprop,
        frozenset(),
        "input gradient with ReLU gradients clipped at zero",
        single_pass=True,
        hook_based=True,
    ),
    MethodSpec(
        "deconvolution",
        _run_deconvolution,
        frozenset(),
        "ReLU gradients passed through a ReLU of the gradient",
        single_pass=True,
        hook_based=True,
    ),
    MethodSpec(
        "occlusion",
        _run_occlusion,
        frozenset({"sliding_window_shapes", "strides", "baselines"}),
        "zero patches of 1/4 of the side, stride 1/8 (token ids: one token at a time, pad id)",
        input_grad=False,
        tokens="ids",
    ),
    MethodSpec(
        "grad_cam",
        _run_grad_cam,
        frozenset({"interpolate_mode"}),
        "Layer Grad-CAM (ReLU) on the last conv/pool layer, upsampled to the input",
        single_pass=True,
        layer=True,
        input_grad=False,
    ),
    MethodSpec(
        "guided_grad_cam",
        _run_guided_grad_cam,
        frozenset({"interpolate_mode"}),
        "guided backprop times the upsampled Grad-CAM map",
        single_pass=True,
        hook_based=True,
        layer=True,
        tokens=None,
        no_tokens=(
            "guided Grad-CAM multiplies an input-space gradient by a map upsampled to the "
            "input; token ids have no such input space (use grad_cam and integrated_gradients)"
        ),
    ),
)

#: Every method's specification, by name, in display order (read-only).
METHOD_SPECS: Mapping[str, MethodSpec] = MappingProxyType({s.name: s for s in _TABLE})

#: Every method :func:`~cnnviz.analysis.attribution.attribute` knows, in display order.
METHODS: tuple[str, ...] = tuple(METHOD_SPECS)


def availability(spec: MethodSpec, model: nn.Module, prof: Profile, facts: Facts) -> str:
    """Raise for a method that cannot run on ``model``; return a note for a degenerate one."""
    if spec.name == "deeplift":
        if facts.dtype == torch.float16:
            raise AttributionUnavailable(
                spec.name,
                "Captum's DeepLift divides by differences of activations that float16 rounds to "
                "zero (NaN maps); run it on a float32 or bfloat16 copy of the model",
            )
        reused = [
            n
            for n, c in prof.counts.items()
            if c > 1 and isinstance(model.get_submodule(n), DEEPLIFT_NONLINEAR)
        ]
        if reused and _needs_captum_deeplift(model):
            raise AttributionUnavailable(
                spec.name,
                f"module(s) {', '.join(reused)} are called more than once per forward pass; "
                "Captum's DeepLift, which cnnviz runs for models with max pooling or softmax "
                "modules, needs each activation module used once",
            )
        if not facts.has_deeplift_nonlinear:
            return "no activation modules found (functional activations?): equals gradient x input"
    notes = []
    if spec.name in ("guided_backprop", "deconvolution", "guided_grad_cam") and not facts.has_relu:
        notes.append(
            f"the model has no nn.ReLU module, so {spec.name} does not modify any gradient"
        )
    if facts.dtype in (torch.float16, torch.bfloat16):
        notes.append(
            f"the model computes in {str(facts.dtype).removeprefix('torch.')}: the maps carry its "
            "rounding error"
        )
    return "; ".join(notes)
