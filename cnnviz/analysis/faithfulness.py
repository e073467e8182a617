"""Faithfulness of attribution maps by deletion and insertion (Petsiuk et al., 2018, RISE).

A map is faithful when the input it marks as important really drives the prediction. The
deletion test removes the input in the order of the map — most important first, in ``steps``
equal steps — and records the probability of the explained class after each step: a faithful
map makes it fall fast, so the area under the curve (AUC) is small. The insertion test starts
from a blank input (a blurred image by default) and puts the input back in the same order: a
faithful map makes the probability rise fast, so the AUC is large. Both are compared with the
same procedure under random orderings (the mean over a few seeds), which is what a map that
knows nothing scores; :meth:`FaithfulnessResult.score` summarises a method as
``(random deletion AUC - deletion AUC) + (insertion AUC - random insertion AUC)``: positive is
better than random, and methods can be ranked by it.

Correspondence with Quantus (``quantus.metrics``), the reference implementations:

* **Deletion** is Quantus's ``PixelFlipping`` (Bach et al., 2015) with ``abs=False``,
  ``softmax=True``, ``features_in_step = P / steps`` (``P`` pixels or tokens) and
  ``perturb_baseline`` set to the deletion baseline: attributions summed over channels, pixels
  sorted by descending signed attribution, a pixel's channels replaced together, the class
  probability recorded after each step. Differences: the curve here also holds the
  unperturbed input at fraction 0 (Quantus's starts after the first step), step ``k`` removes
  ``round(k P / steps)`` pixels (Quantus needs ``P`` divisible by ``features_in_step``), ties
  are broken in a seeded random order (Quantus: ``np.argsort`` order), and the AUC is RISE's
  normalised one, the trapezoid over fractions 0..1 (``dx = 1 / steps``), so it lies in
  [0, 1] for probabilities and does not grow with ``steps``. Quantus's ``calculate_auc`` is
  ``np.trapz(curve, dx=1)`` over its curve: ours equals
  ``(quantus_auc + (p_0 + p_1) / 2) / steps``.
* **Insertion** has no image counterpart in Quantus; its ``TokenFlipping(task="activation")``
  is the token version (start from all-``[UNK]`` tokens, put tokens back in descending
  relevance, record the label's score): ours with ``score="logit"`` and the pad id as mask
  token. Quantus's ``TokenFlipping(task="pruning")`` removes the *least* relevant tokens
  first; deletion here removes the most relevant first, as PixelFlipping and RISE do.
* **Random baseline**: the same curves for uniformly random orderings, drawn from a private
  ``torch.Generator`` seeded with ``seed`` (the global RNG streams never move), averaged over
  ``random_orderings`` draws.

Token ids ``(N, L)`` are deleted by replacing tokens with the pad id (the embedding's
``padding_idx``, else 0) and inserted into an all-pad sequence.

Everything runs inside :func:`cnnviz.analysis.guard.observe` (eval mode, forked RNG, nothing
the model owns changes) without gradients, in passes that fit ``memory_budget_mb``.

Example:
    >>> results = attribute_many(model, images, ["saliency", "integrated_gradients"])
    >>> faith = deletion_insertion(model, images, results)
    >>> faith.ranking()[0]
    ('integrated_gradients', 0.21)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.analysis.attribution import AttributionResult
from cnnviz.analysis.attribution._checks import (
    check_budget,
    check_inputs,
    check_targets,
    fixed_targets,
)
from cnnviz.analysis.attribution._model import auto_samples, resolve_embedding
from cnnviz.analysis.attribution.core import Prepared, pad_id_of, prepare, scores
from cnnviz.analysis.guard import observe

__all__ = ["Curves", "FaithfulnessResult", "deletion_insertion"]

Baseline = Literal["zeros", "blur", "mean"] | float | torch.Tensor
Score = Literal["probability", "logit"]
Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Curves:
    """Deletion and insertion curves of one ordering (a method's, or random).

    Attributes:
        deletion: ``(N, steps + 1)`` score of the explained class with the first
            ``fractions[k]`` of the input removed (step 0: the input itself).
        insertion: ``(N, steps + 1)`` score with the first ``fractions[k]`` of the input put
            into the blank baseline (step 0: the baseline; the last step: the input).
        deletion_auc: ``(N,)`` area under each deletion curve over fractions 0..1 (lower is
            more faithful).
        insertion_auc: ``(N,)`` area under each insertion curve (higher is more faithful).
    """

    deletion: torch.Tensor
    insertion: torch.Tensor
    deletion_auc: torch.Tensor
    insertion_auc: torch.Tensor

    @property
    def mean_deletion_auc(self) -> float:
        """Deletion AUC averaged over the inputs."""
        return float(self.deletion_auc.mean())

    @property
    def mean_insertion_auc(self) -> float:
        """Insertion AUC averaged over the inputs."""
        return float(self.insertion_auc.mean())


@dataclass
class FaithfulnessResult:
    """Outcome of :func:`deletion_insertion`.

    Attributes:
        fractions: ``(steps + 1,)`` share of the input removed / inserted at each step.
        methods: Curves per method (in the order given).
        random: Curves of random orderings, averaged over the draws.
        random_deletion_auc: ``(draws, N)`` deletion AUC of each random draw (its spread says
            how far apart two random maps land).
        random_insertion_auc: ``(draws, N)`` insertion AUC of each random draw.
        targets: ``(N,)`` the class whose score is recorded.
        score: ``"probability"`` (softmax of the target class) or ``"logit"``.
        skipped: Methods given as unavailable (``{method: reason}``, from
            :func:`~cnnviz.analysis.attribution.attribute_many`).
        settings: ``steps``, baselines, ``random_orderings``, ``seed``, ``internal_batch_size``
            and, for token ids, ``pad_id``.
    """

    fractions: torch.Tensor
    methods: dict[str, Curves]
    random: Curves
    random_deletion_auc: torch.Tensor
    random_insertion_auc: torch.Tensor
    targets: torch.Tensor
    score: Score = "probability"
    skipped: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def method_score(self, method: str) -> float:
        """``(random deletion AUC - deletion AUC) + (insertion AUC - random insertion AUC)``.

        Averaged over the inputs; 0 is what a random map scores, higher is more faithful.

        Raises:
            KeyError: If ``method`` has no curves (the message lists those that do).
        """
        if method not in self.methods:
            raise KeyError(
                f"`method`: no curves for {method!r}; methods: {', '.join(self.methods)}"
            )
        c = self.methods[method]
        gain = (self.random.deletion_auc - c.deletion_auc) + (
            c.insertion_auc - self.random.insertion_auc
        )
        return float(gain.mean())

    def ranking(self) -> list[tuple[str, float]]:
        """Methods with their :meth:`method_score`, most faithful first."""
        scored = [(m, self.method_score(m)) for m in self.methods]
        return sorted(scored, key=lambda item: item[1], reverse=True)

    def as_rows(self) -> list[dict[str, Any]]:
        """One row per method, then one for random orderings (for tables and the store)."""
        rows = [
            {
                "method": m,
                "deletion_auc": c.mean_deletion_auc,
                "insertion_auc": c.mean_insertion_auc,
                "score": self.method_score(m),
            }
            for m, c in self.methods.items()
        ]
        rows.append(
            {
                "method": "random",
                "deletion_auc": self.random.mean_deletion_auc,
                "insertion_auc": self.random.mean_insertion_auc,
                "score": 0.0,
            }
        )
        return rows


# ------------------------------------------------------------------------------------ helpers
def _named_maps(
    attributions: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``{method: map}`` and ``{method: reason}`` from whatever the caller has."""
    if isinstance(attributions, (torch.Tensor, AttributionResult)):
        attributions = {getattr(attributions, "method", "attribution"): attributions}
    if not isinstance(attributions, Mapping):
        raise TypeError(
            "`attributions` must be a tensor, an AttributionResult, or a mapping from method "
            f"names to those (attribute_many's result); got {type(attributions).__name__}"
        )
    maps: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    for name, value in attributions.items():
        if isinstance(value, str):
            skipped[str(name)] = value
        elif isinstance(value, AttributionResult):
            maps[str(name)] = value.attributions
        elif isinstance(value, torch.Tensor):
            maps[str(name)] = value
        else:
            raise TypeError(
                f"`attributions`[{name!r}] must be a tensor or an AttributionResult; got "
                f"{type(value).__name__}"
            )
    if not maps:
        raise ValueError(
            "`attributions` holds no maps to test"
            + (f" (all unavailable: {', '.join(skipped)})" if skipped else "")
        )
    return maps, skipped


def _position_scores(a: torch.Tensor, x: torch.Tensor, kind: str, name: str) -> torch.Tensor:
    """``(N, P)`` importance of each position (pixel, time step or token): channels summed."""
    a = a.detach().to("cpu", torch.float64)
    n = x.shape[0]
    positions = tuple(x.shape[1:]) if kind == "tokens" else tuple(x.shape[2:])
    if tuple(a.shape) == (n, *positions):
        return a.reshape(n, -1)
    if kind != "tokens" and a.ndim == x.ndim and a.shape[0] == n and a.shape[2:] == x.shape[2:]:
        return a.sum(dim=1).reshape(n, -1)
    expected = f"({n}, {', '.join(map(str, positions))})"
    if kind != "tokens":
        expected = f"{tuple(x.shape)} or {expected}"
    raise ValueError(
        f"`attributions`[{name!r}] must have shape {expected} to match the inputs; got "
        f"{tuple(a.shape)}"
    )


def _order_ranks(scores_: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rank of each position in descending order of ``scores_`` (ties in random order)."""
    n, p = scores_.shape
    shuffle = torch.rand(n, p, generator=gen).argsort(dim=1)
    shuffled = scores_.gather(1, shuffle)
    order = shuffle.gather(1, shuffled.argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(p).expand(n, p).contiguous())
    return ranks


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the spatial dimensions of ``(N, C, H, W)`` or ``(N, C, L)``.

    Edges are extended (replicate padding), so the blur keeps the image's mean brightness.
    """
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    if x.ndim == 3:
        weight = kernel.reshape(1, 1, -1).repeat(c, 1, 1)
        return F.conv1d(F.pad(x, (radius, radius), mode="replicate"), weight, groups=c)
    across = kernel.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1)
    down = kernel.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1)
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), across, groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), down, groups=c)


def _blank(x: torch.Tensor, baseline: Any, argument: str, blur_sigma: float | None) -> torch.Tensor:
    """The blank input a baseline name or value stands for, shaped like ``x``."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "mean":
            dims = tuple(range(2, x.ndim))
            return x.mean(dim=dims, keepdim=True).expand_as(x)
        if baseline == "blur":
            sigma = blur_sigma if blur_sigma is not None else max(1.0, max(x.shape[2:]) / 8)
            return _gaussian_blur(x, float(sigma))
        raise ValueError(
            f"`{argument}` must be 'zeros', 'blur', 'mean', a number or a tensor; got {baseline!r}"
        )
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)):
        raise TypeError(
            f"`{argument}` must be 'zeros', 'blur', 'mean', a number or a tensor; got "
            f"{type(baseline).__name__}"
        )
    value = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError as err:
        raise ValueError(
            f"`{argument}` tensor of shape {tuple(value.shape)} does not broadcast to the inputs "
            f"{tuple(x.shape)}"
        ) from err


def _curves(
    ready: Prepared,
    ranks: torch.Tensor,
    source: torch.Tensor,
    blank: torch.Tensor,
    counts: Sequence[int],
    targets: torch.Tensor,
    samples: int,
    score: Score,
) -> torch.Tensor:
    """Scores ``(N, len(counts))`` of ``source`` with its top-ranked positions replaced.

    Step ``k`` replaces the first ``counts[k]`` positions in rank order by ``blank``'s; the
    inputs are evaluated in passes of at most ``samples``.
    """
    n = source.shape[0]
    ranks = ranks.to(source.device)
    per_pass = max(1, samples // n)
    out: list[torch.Tensor] = []
    spatial = source.shape[1:] if ready.kind == "tokens" else source.shape[2:]
    for i in range(0, len(counts), per_pass):
        thresholds = torch.tensor(counts[i : i + per_pass], device=source.device)
        mask = ranks[None] < thresholds[:, None, None]  # (s, N, P)
        if ready.kind == "tokens":
            mask = mask.reshape(len(thresholds), n, *spatial)
        else:
            mask = mask.reshape(len(thresholds), n, 1, *spatial)
        batch = torch.where(mask, blank[None], source[None]).flatten(0, 1)
        logits = scores(ready.head, batch, samples)
        values = logits.float().softmax(dim=1) if score == "probability" else logits
        picked = values.gather(1, targets.repeat(len(thresholds))[:, None])[:, 0]
        out.append(picked.reshape(len(thresholds), n).T)
    return torch.cat(out, dim=1).to("cpu", torch.float64)


def _auc(curve: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.trapezoid(curve, dx=1.0 / steps, dim=1)


# -------------------------------------------------------------------------------------- entry
def deletion_insertion(
    model: nn.Module,
    inputs: torch.Tensor,
    attributions: Mapping[str, AttributionResult | torch.Tensor | str]
    | AttributionResult
    | torch.Tensor,
    *,
    target: str | int | torch.Tensor = "pred",
    labels: torch.Tensor | Sequence[int] | None = None,
    steps: int = 16,
    deletion_baseline: Baseline = "zeros",
    insertion_baseline: Baseline = "blur",
    blur_sigma: float | None = None,
    random_orderings: int = 3,
    seed: int = 0,
    score: Score = "probability",
    forward: Forward | None = None,
    pad_id: int | None = None,
    embedding: str | None = None,
    memory_budget_mb: float = 256,
) -> FaithfulnessResult:
    """Deletion and insertion curves of each method's maps, next to random orderings.

    See the module docstring for the procedure and its correspondence with Quantus. The
    model is evaluated ``(methods + random_orderings) x 2 x (steps - 1) x N + 2N`` times,
    without gradients, in passes within ``memory_budget_mb``.

    Args:
        model: The classifier (the module ``forward`` calls, if given).
        inputs: The batch the maps explain: ``(N, C, H, W)``, ``(N, C, L)`` or token ids
            ``(N, L)``.
        attributions: ``{method: AttributionResult or map}`` (what
            :func:`~cnnviz.analysis.attribution.attribute_many` returns; unavailable methods,
            given as reason strings, are skipped), or a single result or map. Maps have the
            inputs' shape or one value per position (``(N, H, W)``, ``(N, L)``); channels are
            summed.
        target: The class whose score is recorded: ``"pred"`` (the model's prediction on the
            unperturbed input), ``"label"`` (needs ``labels``), a class index or one per input.
            Use the targets the maps explain (e.g. ``target=result.targets``).
        labels: True classes, for ``target="label"``.
        steps: Number of deletion/insertion steps (the curves have ``steps + 1`` points).
        deletion_baseline: What removed input becomes: ``"zeros"``, ``"blur"`` (a Gaussian
            blur of the input), ``"mean"`` (each image's channel means), a number or a tensor
            broadcastable to the inputs. Ignored for token ids (the pad id).
        insertion_baseline: The blank input insertion starts from (same choices); default a
            blurred input, as in RISE.
        blur_sigma: Standard deviation of the blur in pixels (default: the longest side / 8).
        random_orderings: Random orderings averaged for the baseline (at least 1).
        seed: Seed of the random orderings and of the tie breaking (a private generator).
        score: ``"probability"`` (softmax of the target class) or ``"logit"``.
        forward: Function from the input batch to class scores, used instead of
            ``model(x)``.
        pad_id: Token id that deletes a token (default: the embedding's ``padding_idx``,
            else 0).
        embedding: For token ids, the ``nn.Embedding`` whose ``padding_idx`` is the default
            ``pad_id`` (found automatically).
        memory_budget_mb: Memory one forward pass may use.

    Returns:
        The :class:`FaithfulnessResult`.

    Raises:
        ValueError: Bad ``steps``, baselines, ``target``, or maps that do not match the inputs.
        TypeError: Arguments of the wrong type.

    Example:
        >>> faith = deletion_insertion(model, images, attribute_many(model, images))
        >>> [row["method"] for row in faith.as_rows()][-1]
        'random'
    """
    kind = check_inputs(inputs)
    maps, skipped = _named_maps(attributions)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"`steps` must be an int >= 2; got {steps!r}")
    if (
        isinstance(random_orderings, bool)
        or not isinstance(random_orderings, int)
        or random_orderings < 1
    ):
        raise ValueError(f"`random_orderings` must be an int >= 1; got {random_orderings!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {seed!r}")
    if score not in ("probability", "logit"):
        raise ValueError(f"`score` must be 'probability' or 'logit'; got {score!r}")
    if blur_sigma is not None and not (isinstance(blur_sigma, (int, float)) and blur_sigma > 0):
        raise ValueError(f"`blur_sigma` must be a positive number or None; got {blur_sigma!r}")
    check_budget(memory_budget_mb)
    n = inputs.shape[0]
    settings: dict[str, Any] = {
        "steps": steps,
        "random_orderings": random_orderings,
        "seed": seed,
    }

    with observe(model, grad=False, extra_devices=[inputs.device]):
        ready = prepare(model, inputs, forward, kind=kind)
        x = ready.x
        positions = {name: _position_scores(a, x, ready.kind, name) for name, a in maps.items()}
        samples = auto_samples(ready.profile, memory_budget_mb, n, ready.device, factor=1)
        settings["internal_batch_size"] = samples
        if ready.kind == "tokens":
            if pad_id is None:
                emb = model.get_submodule(resolve_embedding(model, ready.profile, embedding))
                pad_id = pad_id_of(emb)
            if isinstance(pad_id, bool) or not isinstance(pad_id, int):
                raise TypeError(f"`pad_id` must be an int token id; got {pad_id!r}")
            settings["pad_id"] = pad_id
            deleted = inserted_from = torch.full_like(x, pad_id)
        else:
            deleted = _blank(x, deletion_baseline, "deletion_baseline", blur_sigma)
            inserted_from = _blank(x, insertion_baseline, "insertion_baseline", blur_sigma)
            settings.update(
                deletion_baseline=deletion_baseline
                if isinstance(deletion_baseline, (str, int, float))
                else "tensor",
                insertion_baseline=insertion_baseline
                if isinstance(insertion_baseline, (str, int, float))
                else "tensor",
            )
        fixed = fixed_targets(target, labels, n, ready.device)
        full_logits = scores(ready.head, x, samples)
        if fixed is None:
            fixed = full_logits.argmax(dim=1)
        check_targets(fixed, ready.profile.num_outputs)
        blank_logits = scores(ready.head, deleted, samples)
        start_logits = scores(ready.head, inserted_from, samples)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            values = logits.float().softmax(dim=1) if score == "probability" else logits
            return values.gather(1, fixed[:, None])[:, 0].to("cpu", torch.float64)

        full, deleted_score, start_score = pick(full_logits), pick(blank_logits), pick(start_logits)
        total = positions[next(iter(positions))].shape[1]
        counts = [round(k * total / steps) for k in range(steps + 1)]
        inner = counts[1:-1]

        def ties(k: int) -> torch.Generator:  # the same tie breaking for every map
            return torch.Generator().manual_seed(seed * 1_000_003 + k)

        def curves_for(ranks: torch.Tensor) -> Curves:
            middle_del = _curves(ready, ranks, x, deleted, inner, fixed, samples, score)
            # Insertion puts the top-ranked positions back: the first count positions come from
            # the input, the rest from the blank one (``where`` picks blank where mask holds).
            middle_ins = _curves(ready, ranks, inserted_from, x, inner, fixed, samples, score)
            deletion = torch.cat([full[:, None], middle_del, deleted_score[:, None]], dim=1)
            insertion = torch.cat([start_score[:, None], middle_ins, full[:, None]], dim=1)
            return Curves(deletion, insertion, _auc(deletion, steps), _auc(insertion, steps))

        methods = {name: curves_for(_order_ranks(p, ties(0))) for name, p in positions.items()}
        keys = torch.rand(
            random_orderings,
            n,
            total,
            generator=torch.Generator().manual_seed(seed),
            dtype=torch.float64,
        )
        draws = [curves_for(_order_ranks(k, ties(1))) for k in keys]
    random_curves = Curves(
        deletion=torch.stack([d.deletion for d in draws]).mean(0),
        insertion=torch.stack([d.insertion for d in draws]).mean(0),
        deletion_auc=torch.stack([d.deletion_auc for d in draws]).mean(0),
        insertion_auc=torch.stack([d.insertion_auc for d in draws]).mean(0),
    )
    return FaithfulnessResult(
        fractions=torch.tensor(counts, dtype=torch.float64) / total,
        methods=methods,
        random=random_curves,
        random_deletion_auc=torch.stack([d.deletion_auc for d in draws]),
        random_insertion_auc=torch.stack([d.insertion_auc for d in draws]),
        targets=fixed.detach().to("cpu", torch.long),
        score=score,
        skipped=skipped,
        settings=settings,
    )
