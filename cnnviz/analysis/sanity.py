"""Sanity checks for attribution maps.

* :func:`model_randomisation_check` — the cascading model-parameter randomisation test of
  Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): re-initialise the weights
  from the logits layer downwards, one more layer per step, and measure how similar the maps
  stay (Spearman rank correlation). A method whose maps barely change explains the input, not
  the model.
* :func:`object_mask_share` — where the data comes with object masks (the built-in Shapes data
  does, most data does not), the share of positive attribution that falls inside each object's
  mask next to the mask's share of the image (what a map that ignores the object scores on
  average). Its result says whether masks were available, so a caller never describes a mask
  check that did not run; :func:`describe_checks` words the explanation accordingly.
  :func:`mask_share` is the bare computation.
* :func:`spearman` — per-row Spearman rank correlation in torch (ties get average ranks).

Faithfulness by deletion and insertion curves lives in :mod:`cnnviz.analysis.faithfulness`.

Everything runs through :func:`cnnviz.analysis.attribution.attribute`, so the model's state is
never changed: randomised weights are drawn from a forked, seeded RNG into new tensors that
stand in for the layer's parameters only while the randomised maps are computed (the original
parameter objects are never written to), and the model's own hooks are set aside meanwhile.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.attribution import attribute
from cnnviz.analysis.attribution._head import HOOK_DICTS
from cnnviz.analysis.attribution.core import prepare
from cnnviz.analysis.guard import cuda_indices, model_devices, observe

__all__ = [
    "MaskShareResult",
    "RandomisationResult",
    "describe_checks",
    "mask_share",
    "model_randomisation_check",
    "object_mask_share",
    "randomisable_layers",
    "spearman",
]

_WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class RandomisationResult:
    """Outcome of :func:`model_randomisation_check`.

    Attributes:
        method: The attribution method.
        layers: Layer randomised at each step, top (logits) first. With ``cascading=True``, step
            ``k`` has ``layers[:k + 1]`` randomised.
        spearman_abs: Per step, the Spearman correlation between the trained and randomised
            model's maps of absolute values (summed over channels), averaged over images.
        spearman_signed: The same for the signed maps.
        per_image_abs: ``(steps, N)`` correlations per image (NaN where a map is constant).
        per_image_signed: ``(steps, N)`` signed correlations per image.
        targets: The classes explained (those of the trained model; fixed across steps).
        cascading: Whether randomisation accumulated from the top (else one layer at a time).
    """

    method: str
    layers: list[str]
    spearman_abs: list[float]
    spearman_signed: list[float]
    per_image_abs: torch.Tensor
    per_image_signed: torch.Tensor
    targets: torch.Tensor
    cascading: bool = True

    def as_rows(self) -> list[dict[str, Any]]:
        """One ``{"layer", "spearman_abs", "spearman_signed"}`` dict per step (for tables)."""
        return [
            {"layer": name, "spearman_abs": a, "spearman_signed": s}
            for name, a, s in zip(self.layers, self.spearman_abs, self.spearman_signed, strict=True)
        ]


def _average_ranks(row: torch.Tensor) -> torch.Tensor:
    """Ranks 1..D of a 1-D tensor, ties sharing their average rank."""
    order = torch.argsort(row, stable=True)
    values = row[order]
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(row, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between matching rows of ``a`` and ``b``.

    Each row is flattened; ties get their average rank (as ``scipy.stats.spearmanr`` does).
    A row that is constant in ``a`` or ``b`` has no defined correlation and gives NaN.

    Args:
        a: ``(N, ...)`` tensor.
        b: Tensor of the same shape.

    Returns:
        ``float64`` tensor of shape ``(N,)`` with values in [-1, 1] or NaN.

    Raises:
        ValueError: If the shapes differ or there is no batch dimension.

    Example:
        >>> spearman(torch.tensor([[1., 2., 3.]]), torch.tensor([[10., 20., 25.]]))
        tensor([1.], dtype=torch.float64)
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("`a` and `b` must be tensors")
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(
            f"`a` and `b` must have the same shape (N, ...); got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    a2 = a.detach().flatten(1).cpu()
    b2 = b.detach().flatten(1).cpu()
    out = torch.empty(a2.shape[0], dtype=torch.float64)
    for i in range(a2.shape[0]):
        ra = _average_ranks(a2[i])
        rb = _average_ranks(b2[i])
        ra = ra - ra.mean()
        rb = rb - rb.mean()
        denom = ra.norm() * rb.norm()
        out[i] = (ra @ rb) / denom if denom > 0 else float("nan")
    return out


def _nanmean(x: torch.Tensor) -> float:
    valid = x[~torch.isnan(x)]
    return float(valid.mean()) if valid.numel() else float("nan")


def _call_order(model: nn.Module, inputs: torch.Tensor, forward: Forward | None) -> list[str]:
    """Module names in the order their calls finish (one guarded forward of one sample)."""
    with observe(model, extra_devices=[inputs.device]):
        ready = prepare(model, inputs[:1], forward)
    return [name for name, _ in ready.profile.calls]


def randomisable_layers(
    model: nn.Module, inputs: torch.Tensor, *, forward: Forward | None = None
) -> list[str]:
    """Conv, linear and embedding layers of ``model`` in forward order.

    The default cascade of :func:`model_randomisation_check` is this list reversed.

    Args:
        model: The classifier.
        inputs: A batch of its inputs (one sample is run, guarded).
        forward: Function from the input batch to class scores, used instead of ``model(x)``.

    Returns:
        Qualified module names, first layer first.
    """
    seen: dict[str, None] = {}
    for name in _call_order(model, inputs, forward):
        if isinstance(model.get_submodule(name), _WEIGHT_TYPES):
            seen.setdefault(name, None)
    return list(seen)


def _with_params(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(False))]


def _cascade(
    model: nn.Module,
    inputs: torch.Tensor,
    layers: Sequence[str] | None,
    forward: Forward | None,
) -> list[str]:
    """Layers to randomise, top (logits) first."""
    if layers is None:
        order = randomisable_layers(model, inputs, forward=forward)
        if not order:
            raise ValueError(
                "`model` has no conv, linear or embedding layer to randomise; pass `layers` with "
                f"the names of modules that have parameters: "
                f"{', '.join(_with_params(model)) or '(none)'}"
            )
        return order[::-1]
    if isinstance(layers, str) or not all(isinstance(n, str) for n in layers):
        raise TypeError("`layers` must be a list of module names (e.g. ['fc', 'conv2'])")
    valid = _with_params(model)
    unknown = [n for n in layers if n not in valid]
    if unknown or not layers:
        raise ValueError(
            f"`layers`: unknown or parameter-free layer(s) {unknown}; layers with parameters "
            f"are: {', '.join(valid)}"
        )
    calls = _call_order(model, inputs, forward)
    position = {name: i for i, name in enumerate(calls)}  # last call wins: forward position
    return sorted(dict.fromkeys(layers), key=lambda n: position.get(n, -1), reverse=True)


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-draw ``module``'s own parameters from a forked RNG seeded with ``seed``."""
    devices = model_devices(module)
    cuda = cuda_indices(devices)
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
        else:
            for p in module.parameters(recurse=False):
                scale = float(p.detach().float().std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, scale if scale > 0 else 0.01)


class _Randomised:
    """Stand-in parameters for some modules of a model, for a window.

    :meth:`randomise` draws new parameters (and buffers, which ``reset_parameters`` may reset)
    for a module on a copy of it and puts them in the module's parameter table; :meth:`restore`
    puts the original objects back, last change first. The original tensors are never written
    to, so the optimizer, checkpoints and training see nothing. Used instead of a deep copy of
    the model so that a user's ``forward`` function, which calls the original model, runs on the
    randomised weights.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]] = []

    def randomise(self, module: nn.Module, seed: int) -> None:
        with torch.inference_mode(False), torch.no_grad():
            twin = copy.deepcopy(module)
        _reinitialise(twin, seed)
        self._saved.append((module, dict(module._parameters), dict(module._buffers)))
        for name in module._parameters:
            module._parameters[name] = twin._parameters[name]
        for name in module._buffers:
            module._buffers[name] = twin._buffers[name]

    def restore(self) -> None:
        while self._saved:
            module, params, buffers = self._saved.pop()
            module._parameters.update(params)
            module._buffers.update(buffers)


@contextlib.contextmanager
def _hooks_set_aside(model: nn.Module) -> Iterator[None]:
    """Hide every module hook of ``model`` for the window.

    Other observers must not see the randomised model. Hooks registered inside the window are
    dropped at its end.
    """
    saved: list[tuple[nn.Module, str, Any]] = []
    try:
        for m in model.modules():
            for d in HOOK_DICTS:
                table = m.__dict__.get(d)
                if table is not None:
                    saved.append((m, d, table))
                    m.__dict__[d] = type(table)()
        yield
    finally:
        for m, d, table in saved:
            m.__dict__[d] = table


def _maps(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position maps: channels summed, of absolute values and of signed values."""
    if a.ndim >= 3:
        return a.abs().sum(1), a.sum(1)
    return a.abs(), a


def model_randomisation_check(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    *,
    target: str | int | torch.Tensor = "pred",
    labels: torch.Tensor | Sequence[int] | None = None,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    cascading: bool = True,
    forward: Forward | None = None,
    max_steps: int | None = None,
    **attribute_kwargs: Any,
) -> RandomisationResult:
    """Cascading model-parameter randomisation test (Adebayo et al., 2018).

    Computes ``method``'s maps on the trained model, then with its layers re-initialised from
    the top (logits) layer downwards — one more layer per step, each drawn from a forked RNG
    seeded with ``seed + step`` — and reports the Spearman rank correlation between the trained
    and randomised maps (of absolute and of signed values, summed over channels), per image and
    averaged. Faithful methods give low correlations once the top layers are random.

    The randomised parameters are new tensors that stand in for the layer's own only while
    the randomised maps are computed, so a ``forward`` function that calls ``model`` sees
    them; the original parameter tensors are never written to, the model's hooks are set
    aside meanwhile (no other observer sees the randomised model), and everything is back in
    place when the call returns or raises.

    Args:
        model: The trained classifier.
        inputs: Batch ``(N, C, H, W)``, ``(N, C, L)`` or token ids ``(N, L)``.
        method: Any method of :func:`cnnviz.analysis.attribution.available_methods`.
        target: As in :func:`~cnnviz.analysis.attribution.attribute`; resolved once on the
            trained model, then kept fixed for the randomised ones.
        labels: True classes, for ``target="label"``.
        layers: Names of the modules to randomise (any modules with parameters); default: every
            conv, linear and embedding layer. Always processed top (last in forward order)
            first.
        seed: Seed of the re-initialisation (and of noise-based methods).
        cascading: ``True``: randomisation accumulates (Adebayo's cascading test); ``False``:
            each step randomises only its own layer (independent test).
        forward: Function from the input batch to class scores, used instead of ``model(x)``
            (see :func:`~cnnviz.analysis.attribution.attribute`).
        max_steps: Measure the maps at most this many times (``None``: after every layer). A
            deep network's cascade still randomises every layer, one after the other, but the
            maps are compared only at evenly spaced depths (always the first and the last);
            ``layers`` then lists the deepest layer randomised at each measured step.
        **attribute_kwargs: Passed to ``attribute`` (``layer``, ``memory_budget_mb``,
            ``embedding``, method parameters such as ``n_steps``).

    Returns:
        The :class:`RandomisationResult`.

    Raises:
        ValueError: Unknown ``layers`` (lists the valid names) or bad ``attribute`` arguments.
        AttributionUnavailable: The method cannot run on this model.

    Example:
        >>> res = model_randomisation_check(model, images, "grad_cam", target="label", labels=y)
        >>> res.layers[0], round(res.spearman_abs[-1], 2)
        ('classifier.output', 0.05)
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {seed!r}")
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
    ):
        raise ValueError(f"`max_steps` must be a positive int or None; got {max_steps!r}")
    order = _cascade(model, inputs, layers, forward)
    measured = set(range(len(order)))
    if max_steps is not None and len(order) > max_steps:
        if max_steps == 1:
            measured = {len(order) - 1}
        else:
            span = len(order) - 1
            measured = {round(i * span / (max_steps - 1)) for i in range(max_steps)}
    kwargs = {**attribute_kwargs, "forward": forward, "seed": seed}
    reference = attribute(model, inputs, method, target=target, labels=labels, **kwargs)
    targets = reference.targets.to(inputs.device)
    ref_abs, ref_signed = _maps(reference.attributions)
    per_abs, per_signed = [], []
    steps: list[str] = []
    randomised = _Randomised()
    with _hooks_set_aside(model):
        try:
            for step, name in enumerate(order):
                if not cascading:
                    randomised.restore()
                    if step not in measured:
                        continue
                randomised.randomise(model.get_submodule(name), seed + step)
                if step not in measured:
                    continue
                steps.append(name)
                result = attribute(model, inputs, method, target=targets, **kwargs)
                rand_abs, rand_signed = _maps(result.attributions)
                per_abs.append(spearman(ref_abs, rand_abs))
                per_signed.append(spearman(ref_signed, rand_signed))
        finally:
            randomised.restore()
    abs_t = torch.stack(per_abs) if per_abs else torch.empty(0, inputs.shape[0])
    signed_t = torch.stack(per_signed) if per_signed else torch.empty(0, inputs.shape[0])
    return RandomisationResult(
        method=reference.method,
        layers=steps,
        spearman_abs=[_nanmean(r) for r in abs_t],
        spearman_signed=[_nanmean(r) for r in signed_t],
        per_image_abs=abs_t,
        per_image_signed=signed_t,
        targets=reference.targets,
        cascading=cascading,
    )


def mask_share(
    attributions: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of positive attribution inside each object mask, next to the mask's area share.

    Attributions are summed over channels per pixel; only the positive part counts. A map that
    ignores the object puts, on average, the mask's area share inside the mask; a faithful map
    of a model that looks at the object puts clearly more.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps.
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` boolean (or 0/1) object masks.

    Returns:
        ``(share_inside, mask_area_share)``, each ``float64`` of shape ``(N,)``. ``share_inside``
        is NaN for an image without positive attribution.

    Raises:
        ValueError: If the shapes do not match.

    Example:
        >>> inside, area = mask_share(result.attributions, masks)
        >>> float(inside.nanmean()) > float(area.mean())
        True
    """
    if not isinstance(attributions, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise TypeError("`attributions` and `masks` must be tensors")
    a = attributions.detach().cpu().to(torch.float64)
    if a.ndim == 4:
        a = a.sum(1)
    m = masks.detach().cpu()
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if a.ndim != 3 or m.shape != a.shape:
        raise ValueError(
            f"`masks` must have shape (N, H, W) matching `attributions` (N, C, H, W) or "
            f"(N, H, W); got masks {tuple(masks.shape)} and attributions "
            f"{tuple(attributions.shape)}"
        )
    m = m.to(torch.float64)
    if ((m != 0) & (m != 1)).any():
        raise ValueError("`masks` must be boolean or contain only 0 and 1")
    positive = a.clamp(min=0)
    total = positive.flatten(1).sum(1)
    inside = (positive * m).flatten(1).sum(1)
    share = torch.where(total > 0, inside / total.clamp(min=1e-300), torch.nan)
    return share, m.flatten(1).mean(1)


@dataclass
class MaskShareResult:
    """Outcome of :func:`object_mask_share`: the mask check, or why it did not run.

    Attributes:
        available: Whether object masks were available and the check ran.
        reason: When not available, why (e.g. "the data has no object masks"); else empty.
        inside: ``(N,)`` ``float64`` share of positive attribution inside each mask (NaN for an
            image without positive attribution); ``None`` when not available.
        area: ``(N,)`` ``float64`` share of the image each mask covers (what a map that ignores
            the object scores on average); ``None`` when not available.
    """

    available: bool
    reason: str = ""
    inside: torch.Tensor | None = None
    area: torch.Tensor | None = None

    @property
    def mean_inside(self) -> float:
        """Mean share inside the masks over the images with positive attribution (NaN if none)."""
        return _nanmean(self.inside) if self.inside is not None else float("nan")

    @property
    def mean_area(self) -> float:
        """Mean mask area share (NaN when not available)."""
        return float(self.area.mean()) if self.area is not None else float("nan")

    def summary(self) -> str:
        """One sentence for a report: the numbers, or that there were no masks to check."""
        if not self.available:
            return f"Mask share not computed: {self.reason}."
        return (
            f"{self.mean_inside:.0%} of the positive attribution falls inside the object masks, "
            f"which cover {self.mean_area:.0%} of the image (chance)."
        )


def object_mask_share(attributions: torch.Tensor, masks: torch.Tensor | None) -> MaskShareResult:
    """:func:`mask_share` when object masks exist; a result saying why not, when they do not.

    Args:
        attributions: ``(N, C, H, W)`` or ``(N, H, W)`` maps (other layouts, such as token
            attributions ``(N, L)``, give an unavailable result).
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` object masks, or ``None`` (no masks in the
            data).

    Returns:
        The :class:`MaskShareResult`.

    Raises:
        ValueError: If masks are given but do not match the attributions (see
            :func:`mask_share`).

    Example:
        >>> object_mask_share(result.attributions, None).summary()
        'Mask share not computed: the data has no object masks.'
    """
    if masks is None:
        return MaskShareResult(available=False, reason="the data has no object masks")
    if not isinstance(attributions, torch.Tensor) or attributions.ndim not in (3, 4):
        shape = tuple(attributions.shape) if isinstance(attributions, torch.Tensor) else None
        return MaskShareResult(
            available=False,
            reason=f"object masks apply to image attributions (N, C, H, W); got shape {shape}",
        )
    inside, area = mask_share(attributions, masks)
    return MaskShareResult(available=True, inside=inside, area=area)


def describe_checks(
    *, masks_available: bool, randomisation: bool = True, faithfulness: bool = False
) -> str:
    """The explanation of the attribution checks that ran, for a report or a log.

    Only checks that ran are described; without masks the text says the mask check was not
    possible instead of describing it.

    Args:
        masks_available: Whether the data had object masks (:attr:`MaskShareResult.available`).
        randomisation: Whether the model-randomisation check ran.
        faithfulness: Whether deletion/insertion curves
            (:func:`cnnviz.analysis.faithfulness.deletion_insertion`) ran.

    Returns:
        A few plain-text sentences.

    Example:
        >>> describe_checks(masks_available=False)[:40]
        'Model randomisation (Adebayo et al., 201'
    """
    parts = []
    if randomisation:
        parts.append(
            "Model randomisation (Adebayo et al., 2018): the layers are replaced by random "
            "weights from the top down; a map that explains the model must change, so its rank "
            "correlation with the trained model's map should fall towards 0."
        )
    if faithfulness:
        parts.append(
            "Deletion and insertion (Petsiuk et al., 2018): the input is removed from (or "
            "restored into) a blank baseline in the order of the map; a faithful map makes the "
            "class probability fall faster (lower deletion area) and rise faster (higher "
            "insertion area) than random orderings do."
        )
    if masks_available:
        parts.append(
            "Mask share: the part of the positive attribution that falls on the object (its "
            "mask), next to the part of the image the object covers (chance)."
        )
    else:
        parts.append("Mask share: not computed, the data has no object masks.")
    return " ".join(parts)
