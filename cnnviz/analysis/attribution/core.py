"""The entry points: :func:`attribute`, :func:`attribute_many` and two lookups."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.attribution._checks import (
    check_budget,
    check_inputs,
    check_internal_batch_size,
    check_kwargs,
    check_method,
    check_model,
    check_targets,
    fixed_targets,
)
from cnnviz.analysis.attribution._head import Head, TokenSwap, no_leftovers, seeded
from cnnviz.analysis.attribution._model import (
    Facts,
    Profile,
    auto_samples,
    budget_samples,
    facts,
    forward_key,
    profile,
    resolve_embedding,
    resolve_layer,
    spatial_layers,
    walk,
    work_dtype,
)
from cnnviz.analysis.attribution.methods import (
    METHOD_SPECS,
    METHODS,
    Job,
    MethodSpec,
    TokenContext,
    availability,
)
from cnnviz.analysis.attribution.results import (
    AttributionResult,
    AttributionUnavailable,
    InputKind,
)
from cnnviz.analysis.guard import cuda_indices, observe

Forward = Callable[[torch.Tensor], torch.Tensor]


def available_methods(inputs: InputKind | None = None) -> list[str]:
    """Names accepted by :func:`attribute`'s ``method`` argument.

    Args:
        inputs: ``"tokens"`` lists only the methods that run on token ids; ``None``,
            ``"image"`` or ``"sequence"``: all.

    Example:
        >>> "integrated_gradients" in available_methods()
        True
        >>> "guided_grad_cam" in available_methods("tokens")
        False
    """
    if inputs == "tokens":
        return [name for name, spec in METHOD_SPECS.items() if spec.tokens is not None]
    if inputs not in (None, "image", "sequence"):
        raise ValueError(f"`inputs` must be 'image', 'sequence', 'tokens' or None; got {inputs!r}")
    return list(METHODS)


# ----------------------------------------------------------------------------------- context
@dataclass
class Prepared:
    """A model and a batch made ready for analysis (inside ``observe``)."""

    kind: InputKind
    facts: Facts
    device: torch.device
    dtype: torch.dtype  # the dtype cnnviz computes in (float32 or float64)
    x: torch.Tensor  # the cloned batch on the model's device (ids stay integer)
    head: Head
    profile: Profile

    @property
    def layout_ndim(self) -> int:
        """Dimensions of a conv/pool output that maps onto the input positions."""
        return 3 if self.kind == "tokens" else self.x.ndim

    def predictions(self, samples: int) -> torch.Tensor:
        """The predicted classes of the batch, in passes of ``samples``."""
        return scores(self.head, self.x, samples).argmax(dim=1)


def to_work(
    inputs: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    share: bool = False,
) -> torch.Tensor:
    """A copy of ``inputs`` on ``device``, floats in ``dtype``.

    Also a normal tensor when the inputs are inference-mode tensors. With ``share``, float
    inputs that are already normal tensors on ``device`` in ``dtype`` are not copied: a
    detached view is returned. Only for methods that differentiate with respect to the input,
    whose leaf then requires grad, so a model that writes into its input in place raises
    instead of changing the caller's batch.
    """
    if inputs.is_floating_point():
        if (
            share
            and inputs.dtype == dtype
            and inputs.device == device
            and not inputs.is_inference()
            and (not channels_last or inputs.ndim != 4)
        ):
            return inputs.detach()
        x = inputs.detach().to(device=device, dtype=dtype, copy=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    ids_dtype = inputs.dtype if inputs.dtype in (torch.int32, torch.int64) else torch.int64
    return inputs.detach().to(device=device, dtype=ids_dtype, copy=True)


def prepare(
    model: nn.Module,
    inputs: torch.Tensor,
    forward: Forward | None = None,
    *,
    kind: InputKind | None = None,
    model_facts: Facts | None = None,
    reduce: bool = False,
    share: bool = False,
) -> Prepared:
    """Check ``inputs``, copy them to the model's device and dtype, and profile the model.

    Call inside ``observe``. ``share``: see :func:`to_work`.
    """
    kind = kind or check_inputs(inputs)
    f = model_facts or facts(model)
    device = f.device or inputs.device
    dtype = work_dtype(f.dtype, inputs)
    x = to_work(inputs, device, dtype, f.channels_last, share)
    head = Head(model, reduce, fn=forward, dtype=f.dtype)
    prof = profile(
        model, x, head.scores, structure=f.structure, key=forward_key(forward), source=head.source
    )
    return Prepared(kind, f, device, dtype, x, head, prof)


def scores(head: Head, x: torch.Tensor, samples: int) -> torch.Tensor:
    """The model's scores for ``x`` without gradients, in passes of ``samples``."""
    with torch.no_grad():
        parts = [head.scores(x[i : i + samples]) for i in range(0, len(x), samples)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def embed(
    head: Head, module: nn.Module, ids: torch.Tensor, samples: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding vectors of ``ids`` (``dtype``) and the scores, from guarded forwards."""
    vectors: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []

    def keep(_m: nn.Module, _i: Any, out: Any) -> None:
        vectors.append(out)

    with torch.no_grad():
        for i in range(0, len(ids), samples):
            handle = module.register_forward_hook(keep)
            try:
                logits.append(head.scores(ids[i : i + samples]))
            finally:
                handle.remove()
    if len(vectors) != len(logits) or not all(isinstance(v, torch.Tensor) for v in vectors):
        raise ValueError("`embedding`: the layer must return one tensor per forward pass")
    return torch.cat(vectors).to(dtype), torch.cat(logits)


def pad_id_of(module: nn.Module) -> int:
    """The embedding's ``padding_idx``, else 0."""
    pad = getattr(module, "padding_idx", None)
    return int(pad) if pad is not None else 0


def token_ids(value: Any, like: torch.Tensor, argument: str) -> torch.Tensor:
    """``value`` (an id, or ids of shape ``(L,)`` or ``(N, L)``) as a batch like ``like``."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.Tensor)):
        raise TypeError(
            f"`{argument}` for token inputs must be a token id (int) or integer ids of shape "
            f"(L,) or (N, L); got {type(value).__name__}"
        )
    if isinstance(value, int):
        return torch.full_like(like[:1], value)
    if value.is_floating_point() or value.shape[-1] != like.shape[1] or value.ndim > 2:
        raise ValueError(
            f"`{argument}` for token inputs must hold integer ids of shape (L,) or (N, L) with "
            f"L = {like.shape[1]}; got {value.dtype} of shape {tuple(value.shape)}"
        )
    return value.to(like.device, like.dtype).reshape(-1, like.shape[1])


def _token_inputs(
    spec: MethodSpec,
    model: nn.Module,
    ready: Prepared,
    embedding: str | None,
    kwargs: dict[str, Any],
    samples: int,
) -> tuple[str, torch.Tensor, torch.Tensor | None, TokenContext]:
    """Resolve the embedding layer, and prepare embedding-space methods.

    For those: the token vectors, the scores of the batch and the baselines as vectors, and
    the head switched to take vectors.

    Returns:
        ``(embedding name, work batch, scores or None, token context)``; ``kwargs``'s
        ``baselines`` (token ids) are replaced by their vectors.
    """
    x, head = ready.x, ready.head
    name = resolve_embedding(model, ready.profile, embedding)
    module = model.get_submodule(name)
    pad = pad_id_of(module)
    if spec.tokens != "embedding":  # perturbs the ids themselves
        return name, x, None, TokenContext(x, name, pad, torch.empty(0))
    calls = ready.profile.counts.get(name, 0)
    if calls != 1:
        raise AttributionUnavailable(
            spec.name,
            f"the embedding layer {name!r} runs {calls} times per forward pass; attributions "
            "in the embedding space need exactly one call",
        )
    vectors, logits = embed(head, module, x, samples, ready.dtype)
    pad_vectors = embed(head, module, token_ids(pad, x, "pad"), 1, ready.dtype)[0]
    if "baselines" in kwargs:
        ids = token_ids(kwargs["baselines"], x, "baselines")
        kwargs["baselines"] = embed(head, module, ids, samples, ready.dtype)[0]
    head.tokens = TokenSwap(module, interleave=spec.token_expand == "interleave")
    return name, vectors, logits, TokenContext(x, name, pad, pad_vectors)


class _Rows:
    """Takes one chunk's rows of a batch tensor (the tensor itself when there is one chunk)."""

    __slots__ = ("sl", "whole")

    def __init__(self, sl: slice, whole: bool) -> None:
        self.sl, self.whole = sl, whole

    def __call__(self, t: torch.Tensor | None) -> torch.Tensor:
        assert t is not None
        return t if self.whole else t[self.sl]


def _on_cpu(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` detached, on the CPU, in ``dtype`` and contiguous; no call for what already holds.

    (After a pass every tensor operation is slow while the caches refill: skipping the no-op
    ones is measurable at LeNet-5 scale.)
    """
    if t.requires_grad:
        t = t.detach()
    if not t.is_cpu or t.dtype != dtype:
        t = t.to("cpu", dtype)
    return t if t.is_contiguous() else t.contiguous()


# ---------------------------------------------------------------------------------- attribute
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
    forward: Forward | None = None,
    embedding: str | None = None,
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
    - ``deeplift``: zero baseline (Rescale rule; computed by cnnviz, or by Captum for models
      with max pooling or softmax modules).
    - ``guided_backprop``, ``deconvolution``: modified ReLU gradients.
    - ``occlusion``: zero patches of 1/4 of the image side, stride 1/8 (49 windows for any
      square image); ``sliding_window_shapes``, ``strides``, ``baselines``.
    - ``grad_cam``: Layer Grad-CAM with ReLU (as in the paper) on ``layer``, upsampled
      bilinearly to the input size and repeated over the input channels.
    - ``guided_grad_cam``: guided backprop times the upsampled Grad-CAM map.

    **Token ids.** Integer inputs ``(N, L)`` are token ids. The methods then work in the space
    of the ``nn.Embedding`` that consumes the ids (found automatically, or ``embedding=``), as
    Captum's layer methods do: the model runs on the ids while the embedding's output is
    replaced by the vectors being differentiated. Attributions are ``(N, L)``, summed over the
    embedding dimension. Baselines (``integrated_gradients``, ``deeplift``, the blank reference
    of ``gradient_shap``, ``occlusion``) are the pad id (the embedding's ``padding_idx``, else
    0); pass ``baselines=`` a token id or integer ids to change it. ``occlusion`` replaces one
    token at a time by the pad id; ``grad_cam`` maps a 1-D conv layer's map onto the tokens;
    ``guided_grad_cam`` is unavailable.

    **Models as users have them.** ``forward`` replaces ``model(x)``: a function from the
    (perturbed) input batch to class scores ``(N, num_classes)``, for models whose forward
    takes a dict or returns a dict or tuple. ``model`` is still the module that is guarded and
    whose layers are looked up. A ``bfloat16``/``float16``/``float64`` model gets its inputs
    in its own dtype (Captum's arithmetic around a half-precision model runs in ``float32``);
    ``channels_last`` models get ``channels_last`` inputs. Results are ``float32`` on the CPU.

    Inside the call the model is in eval mode, parameters are frozen (no weight gradients),
    the torch/NumPy/Python RNGs are forked and seeded with ``seed``, in-place activations are
    made out-of-place for the hook-based methods; all of it is restored afterwards, and any hook
    Captum leaves behind (also when it raises) is removed.

    Args:
        model: The classifier (the module ``forward`` calls, if given).
        inputs: Batch ``(N, C, H, W)``, ``(N, C, L)`` or integer token ids ``(N, L)``, on any
            device. May be an inference-mode tensor: it is copied.
        method: One of :func:`available_methods`.
        target: ``"pred"`` (predicted class), ``"label"`` (needs ``labels``), a class index, or
            a tensor with one index per input.
        labels: True classes, one per input, for ``target="label"``.
        layer: Qualified name of the layer for Grad-CAM / guided Grad-CAM (any module with
            spatial output); default: the last conv or pooling layer whose output is larger
            than 1x1. Ignored by other methods.
        internal_batch_size: The most samples one forward/backward pass evaluates (inputs,
            interpolation steps, noisy copies or occluded copies together). Default: chosen from
            ``memory_budget_mb`` (on the CPU also at most 64, or N if larger: the fastest size).
        memory_budget_mb: Memory one pass may use, estimated as 3 x the activation memory of
            a forward pass (measured once per model and input shape).
        seed: Seed of the noise of ``smoothgrad`` and ``gradient_shap`` (drawn from forked
            streams); ``None`` draws from the current state without advancing it.
        forward: Function from the input batch to ``(N, num_classes)`` scores, used instead of
            ``model(x)``.
        embedding: For token ids: the name of the ``nn.Embedding`` to attribute at (default:
            the one that consumes the ids).
        **method_kwargs: Method parameters listed above.

    Returns:
        The :class:`AttributionResult`.

    Raises:
        ValueError: Unknown ``method``, ``layer`` or ``embedding`` (the message lists the valid
            ones), bad ``target``/``labels``/``inputs``, or a model that does not return
            ``(N, classes)`` scores.
        TypeError: Wrong argument types or keyword arguments the method does not take.
        AttributionUnavailable: The method cannot run on this model or these inputs (e.g.
            Grad-CAM without a spatial layer, DeepLift with a reused activation module in a
            model with max pooling, guided Grad-CAM on token ids).

    Example:
        >>> res = attribute(model, images, "grad_cam", target="label", labels=y)
        >>> res.attributions.shape, res.layer
        (torch.Size([8, 3, 32, 32]), 'features.s4')
        >>> attribute(kim_cnn, token_ids, "integrated_gradients").attributions.shape
        torch.Size([8, 32])
    """
    start = time.perf_counter()
    spec = check_method(method)
    kind = check_inputs(inputs)
    check_budget(memory_budget_mb)
    check_kwargs(spec, method_kwargs)
    check_internal_batch_size(internal_batch_size)
    check_model(model, forward)
    tokens = kind == "tokens"
    if tokens and spec.tokens is None:
        raise AttributionUnavailable(spec.name, spec.no_tokens)
    n = inputs.shape[0]
    f, modules = walk(model)
    device = f.device or inputs.device

    with (
        observe(
            model,
            grad=True,
            freeze_params=True,
            no_inplace=spec.hook_based,
            extra_devices=(inputs.device,),
            modules=modules,
        ),
        seeded(seed, cuda_indices([device, inputs.device]))
        if spec.noisy
        else contextlib.nullcontext(),
    ):
        ready = prepare(
            model,
            inputs,
            forward,
            kind=kind,
            model_facts=f,
            reduce=spec.single_pass,
            share=spec.input_grad,  # the batch is a leaf that requires grad: never written
        )
        x, head, prof = ready.x, ready.head, ready.profile
        kwargs = {
            k: v.detach().to(
                device=device, dtype=ready.dtype if v.is_floating_point() else v.dtype, copy=True
            )
            if isinstance(v, torch.Tensor)
            else v
            for k, v in method_kwargs.items()
        }
        fixed = fixed_targets(target, labels, n, device)
        if fixed is not None:
            check_targets(fixed, prof.num_outputs)
        samples = internal_batch_size or auto_samples(prof, memory_budget_mb, n, device)
        note = availability(spec, model, prof, f)
        layer_name = layer_module = None
        if spec.layer:
            layer_name = resolve_layer(model, prof, layer, ready.layout_ndim, spec.name)
            layer_module = model.get_submodule(layer_name)
        settings: dict[str, Any] = {}
        work, logits, context, emb_name = x, None, None, None
        if tokens:
            emb_name, work, logits, context = _token_inputs(
                spec, model, ready, embedding, kwargs, samples
            )
            settings.update(embedding=emb_name, pad_id=context.pad_id)
        fused = fixed is None and spec.single_pass
        if fixed is None and not fused:
            fixed = logits.argmax(dim=1) if logits is not None else ready.predictions(samples)
        positions = tuple(x.shape[1:]) if tokens else tuple(x.shape[2:])
        job = Job(spec, head, layer_module, kwargs, samples, work, settings, positions, context)
        chunk = max(1, min(n, samples // spec.min_expansion))
        parts: list[torch.Tensor] = []
        picked: list[torch.Tensor] = []
        with no_leftovers(model, attrs=spec.name == "deeplift", modules=modules):
            for i in range(0, n, chunk):
                sl = slice(i, min(n, i + chunk))
                rows = _Rows(sl, whole=chunk >= n)  # one chunk: no slicing (a view per tensor)
                t = None if spec.single_pass else rows(fixed)
                head.targets = None if fused else rows(fixed)
                if head.tokens is not None:
                    head.tokens.ids = rows(x)
                xc = (
                    rows(work).detach().requires_grad_(spec.input_grad and work.is_floating_point())
                )
                out = spec.run(job, xc, t, sl)
                if tokens and out.ndim == 3:
                    out = out.sum(dim=-1, dtype=torch.float32)
                parts.append(out)
                if fused:
                    picked.append(head.picked)  # type: ignore[arg-type]
        # inside the window (not inference mode): normal tensors
        attributions = _on_cpu(parts[0] if len(parts) == 1 else torch.cat(parts), torch.float32)
        targets = (picked[0] if len(picked) == 1 else torch.cat(picked)) if fused else fixed
    assert targets is not None
    settings["internal_batch_size"] = samples
    return AttributionResult(
        attributions=attributions,
        method=spec.name,
        targets=_on_cpu(targets, torch.long),
        layer=layer_name,
        note=note,
        seconds=time.perf_counter() - start,
        settings=settings,
        input_kind=kind,
        embedding=emb_name,
        _zero_check="layer" if spec.layer else "maps",
    )


def attribute_many(
    model: nn.Module,
    inputs: torch.Tensor,
    methods: Sequence[str] | None = None,
    *,
    forward: Forward | None = None,
    embedding: str | None = None,
    **kwargs: Any,
) -> dict[str, AttributionResult | str]:
    """Run several methods on the same batch; report, never raise on, unavailable methods.

    With ``target="pred"`` (default) the predicted classes are computed once and shared, so every
    method explains the same class.

    Args:
        model: The classifier.
        inputs: The batch (images, float sequences or token ids).
        methods: Method names (default: all of :func:`available_methods`).
        forward: As in :func:`attribute`.
        embedding: As in :func:`attribute`.
        **kwargs: Passed to :func:`attribute` (``target``, ``labels``, ``layer``,
            ``memory_budget_mb``...; not method-specific parameters).

    Returns:
        ``{method: AttributionResult}``, or ``{method: "reason"}`` for a method that cannot run
        on this model or these inputs.

    Raises:
        ValueError: An unknown method name (before anything runs), or bad common arguments.

    Example:
        >>> results = attribute_many(model, images, ["saliency", "grad_cam"])
        >>> {k: type(v).__name__ for k, v in results.items()}
        {'saliency': 'AttributionResult', 'grad_cam': 'AttributionResult'}
    """
    names = list(METHODS) if methods is None else [check_method(m).name for m in methods]
    kind = check_inputs(inputs)
    check_model(model, forward)
    target = kwargs.get("target", "pred")
    if isinstance(target, str) and target == "pred":
        budget = kwargs.get("memory_budget_mb", 256)
        check_budget(budget)
        with observe(model, grad=False, extra_devices=[inputs.device]):
            ready = prepare(model, inputs, forward, kind=kind)
            samples = kwargs.get("internal_batch_size") or auto_samples(
                ready.profile, budget, len(inputs), ready.device
            )
            kwargs = {**kwargs, "target": ready.predictions(samples)}
    out: dict[str, AttributionResult | str] = {}
    for name in names:
        try:
            out[name] = attribute(
                model, inputs, name, forward=forward, embedding=embedding, **kwargs
            )
        except AttributionUnavailable as err:
            out[name] = err.reason
    return out


def estimate_internal_batch_size(
    model: nn.Module,
    inputs: torch.Tensor,
    memory_budget_mb: float = 256,
    *,
    forward: Forward | None = None,
) -> int:
    """How many samples one forward+backward pass may evaluate within ``memory_budget_mb``.

    Runs one guarded forward pass of one sample and sums the output sizes of the leaf modules,
    times 3 for what the backward pass keeps (a rough but safe-side estimate).

    Args:
        model: The classifier.
        inputs: A batch (only its first sample is used).
        memory_budget_mb: Memory one pass may use, in MiB.
        forward: As in :func:`attribute`.

    Returns:
        The number of samples, at least 1.

    Raises:
        ValueError: If ``memory_budget_mb`` is not positive or ``inputs`` is not a batch.
    """
    check_inputs(inputs)
    check_budget(memory_budget_mb)
    check_model(model, forward)
    with observe(model, extra_devices=[inputs.device]):
        ready = prepare(model, inputs[:1], forward)
        return budget_samples(ready.profile, memory_budget_mb)


def gradcam_layers(
    model: nn.Module, inputs: torch.Tensor, *, forward: Forward | None = None
) -> list[str]:
    """Names of the conv and pooling layers Grad-CAM can use, in forward order.

    The default layer of :func:`attribute` is the last of these whose output has more than one
    position. For token ids these are the 1-D layers (output ``(N, C, L')``).

    Args:
        model: The classifier.
        inputs: A batch of the model's inputs (one sample is run).
        forward: As in :func:`attribute`.

    Returns:
        Qualified module names, e.g. ``["features.c1", "features.s2", ...]``.

    Example:
        >>> gradcam_layers(model, images)[-1]
        'features.s4'
    """
    check_inputs(inputs)
    check_model(model, forward)
    with observe(model, extra_devices=[inputs.device]):
        ready = prepare(model, inputs[:1], forward)
        return spatial_layers(model, ready.profile, ready.layout_ndim)
