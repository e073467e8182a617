"""Sanity and faithfulness checks for attribution maps.

* :func:`model_randomisation_check` — the cascading model-parameter randomisation test of
  Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): re-initialise the weights
  from the logits layer downwards, one more layer per step, and measure how similar the maps
  stay (Spearman rank correlation). A method whose maps barely change explains the input, not
  the model.
* :func:`mask_share` — the share of positive attribution that falls inside the object's mask,
  next to the mask's share of the image (what a map that ignores the object scores on average).
* :func:`spearman` — per-row Spearman rank correlation in torch (ties get average ranks).

Everything runs through :func:`cnnviz.analysis.attribution.attribute`, so the original model is
never changed; randomised weights live in a deep copy, drawn from a forked, seeded RNG.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.attribution import _device_of, _profile, attribute
from cnnviz.analysis.guard import model_devices, observe

__all__ = [
    "RandomisationResult",
    "mask_share",
    "model_randomisation_check",
    "randomisable_layers",
    "spearman",
]

_WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


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


def randomisable_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Conv and linear layers of ``model`` in forward order (the default cascade, reversed).

    Args:
        model: The classifier.
        inputs: A batch of its inputs (one sample is run, guarded).

    Returns:
        Qualified module names, first layer first.
    """
    with observe(model, extra_devices=[inputs.device]):
        profile = _profile(model, inputs[:1].detach().to(_device_of(model, inputs)).clone())
    seen: dict[str, None] = {}
    for name, _ in profile.calls:
        if isinstance(model.get_submodule(name), _WEIGHT_TYPES):
            seen.setdefault(name, None)
    return list(seen)


def _with_params(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(False))]


def _cascade(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str] | None) -> list[str]:
    """Layers to randomise, top (logits) first."""
    order = randomisable_layers(model, inputs)
    if layers is None:
        if not order:
            raise ValueError(
                "`model` has no conv or linear layer to randomise; pass `layers` with the names "
                f"of modules that have parameters: {', '.join(_with_params(model)) or '(none)'}"
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
    with observe(model, extra_devices=[inputs.device]):
        x = inputs[:1].detach().to(_device_of(model, inputs)).clone()
        calls = [name for name, _ in _profile(model, x).calls]
    position = {name: i for i, name in enumerate(calls)}  # last call wins: forward position
    return sorted(dict.fromkeys(layers), key=lambda n: position.get(n, -1), reverse=True)


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Re-draw ``module``'s own parameters from a forked RNG seeded with ``seed``."""
    devices = model_devices(module)
    cuda = sorted({d.index or 0 for d in devices if d.type == "cuda"})
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


def _detached_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without any hook (other observers must not fire on it)."""
    with torch.inference_mode(False), torch.no_grad():
        twin = copy.deepcopy(model)
    for m in twin.modules():
        for d in _HOOK_DICTS:
            table = getattr(m, d, None)
            if table:
                table.clear()
    return twin


def _maps(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel maps: channels summed, of absolute values and of signed values."""
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
    **attribute_kwargs: Any,
) -> RandomisationResult:
    """Cascading model-parameter randomisation test (Adebayo et al., 2018).

    Computes ``method``'s maps on the trained model, then on a deep copy whose layers are
    re-initialised from the top (logits) layer downwards — one more layer per step, each drawn
    from a forked RNG seeded with ``seed + step`` — and reports the Spearman rank correlation
    between the trained and randomised maps (of absolute and of signed values, summed over
    channels), per image and averaged. Faithful methods give low correlations once the top
    layers are random. The original model is never modified.

    Args:
        model: The trained classifier.
        inputs: Batch ``(N, C, H, W)``.
        method: Any method of :func:`cnnviz.analysis.attribution.available_methods`.
        target: As in :func:`~cnnviz.analysis.attribution.attribute`; resolved once on the
            trained model, then kept fixed for the randomised ones.
        labels: True classes, for ``target="label"``.
        layers: Names of the modules to randomise (any modules with parameters); default: every
            conv and linear layer. Always processed top (last in forward order) first.
        seed: Seed of the re-initialisation (and of noise-based methods).
        cascading: ``True``: randomisation accumulates (Adebayo's cascading test); ``False``:
            each step randomises only its own layer (independent test).
        **attribute_kwargs: Passed to ``attribute`` (``layer``, ``memory_budget_mb``, method
            parameters such as ``n_steps``).

    Returns:
        The :class:`RandomisationResult`.

    Raises:
        ValueError: Unknown ``layers`` (lists the valid names) or bad ``attribute`` arguments.

    Example:
        >>> res = model_randomisation_check(model, images, "grad_cam", target="label", labels=y)
        >>> res.layers[0], round(res.spearman_abs[-1], 2)
        ('classifier.output', 0.05)
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {seed!r}")
    order = _cascade(model, inputs, layers)
    reference = attribute(
        model, inputs, method, target=target, labels=labels, seed=seed, **attribute_kwargs
    )
    targets = reference.targets.to(inputs.device)
    ref_abs, ref_signed = _maps(reference.attributions)
    twin = _detached_copy(model) if cascading else None
    per_abs, per_signed = [], []
    for step, name in enumerate(order):
        current = twin if cascading else _detached_copy(model)
        assert current is not None
        _reinitialise(current.get_submodule(name), seed + step)
        result = attribute(current, inputs, method, target=targets, seed=seed, **attribute_kwargs)
        rand_abs, rand_signed = _maps(result.attributions)
        per_abs.append(spearman(ref_abs, rand_abs))
        per_signed.append(spearman(ref_signed, rand_signed))
    abs_t = torch.stack(per_abs) if per_abs else torch.empty(0, inputs.shape[0])
    signed_t = torch.stack(per_signed) if per_signed else torch.empty(0, inputs.shape[0])
    return RandomisationResult(
        method=method,
        layers=list(order),
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
