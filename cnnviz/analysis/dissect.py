"""Network Dissection: name the concept each unit of a layer detects (Bau et al., CVPR 2017).

For every channel ``k`` of a conv or pooling layer, the unit's maps are read where it fires
(after the normalisation and activation that follow a conv, :func:`find_readouts`), upsampled
bilinearly to the resolution of the concept masks, and thresholded at ``T_k``, the value that
the top ``quantile`` of all its upsampled activations over the data set reach. The unit's
region ``M_k = {a_k >= T_k}`` is compared with every concept ``c`` (per-pixel masks ``L_c``,
:mod:`cnnviz.analysis.concepts`) by the data-set-wide intersection over union
``IoU(k, c) = Σ|M_k ∩ L_c| / Σ|M_k ∪ L_c|``, and the unit is labelled with the best concept when
its IoU reaches ``iou_threshold`` (0.04 in the paper).

How it is computed (:class:`DissectionCounts`): in **one pass** over the data, on the
activations' device, each unit keeps a histogram of its upsampled activations over ``bins``
bins and, per bin, how many of those pixels lie in each concept. The bins are a power-of-two
grid fitted to the unit's range (width ``2^e``, ``e`` the smallest exponent whose grid covers
the range with ``bins`` bins; the grid depends on the range alone), and when the range grows,
bins merge exactly. Only the top of each distribution is kept: pixels below a *floor* — the
bin of the ``⌈q·n_max⌉``-th largest value seen so far, ``n_max`` the pixels the data is
expected to hold (its length × mask pixels) — can never reach the threshold, so they are
neither histogrammed nor counted against concepts. Three things keep the work near the top:
a map whose maximum is below its unit's floor is never upsampled; of the other maps, only
output rows whose vertically interpolated values reach the floor are interpolated
horizontally (an output pixel mixes two values of its row); and the first batch bounds the
floor from below before upsampling (every upsampled pixel is at least the minimum of its
interpolation cell). Concepts arrive coded by groups of mutually exclusive concepts
(:class:`~cnnviz.analysis.concepts.ConceptBatch`), so counting a pixel against all concepts
is one histogram update per group. If a unit's floor ends above its threshold's bin (more
data than expected, or the range grew more than 4x after the floor was set), or the data has
no length, a second pass on the final grid recounts the affected units exactly
(:meth:`DissectionCounts.refinement`).

Accuracy: the threshold used, ``T̂_k``, is the lower edge of the bin holding the
``⌈q·n⌉``-th largest value (``n`` = images × mask pixels), so ``T̂_k <= T_k < T̂_k + w_k`` with
``w_k < 2·range_k / (bins - 2)`` — under 0.2 % of the unit's range with the default 1024 bins
(or the float32 resolution of the unit's values, if that is coarser) — and the region holds
at least the top ``q`` of the pixels plus the others of that one bin. Its share is reported
exactly (:attr:`Dissection.top_fraction`), and every count and IoU is exact for ``T̂_k``. The
lowest bin (it holds the unit's minimum) never belongs to a region: a unit whose
``⌈q·n⌉``-th value lies in it (one at its minimum — zero for a ReLU — on more than ``1 - q``
of the pixels) is thresholded at the next bin edge, so it never "fires" where it is at its
minimum, and a unit that never leaves its minimum has an empty region. Counts are integers,
and merging partial results (two halves of the data, DDP ranks:
:meth:`DissectionCounts.sync`) gives exactly the single-pass result.

:func:`dissect` and :func:`dissect_layers` run all of it under
:func:`~cnnviz.analysis.guard.observe` (eval mode, RNG forked, no ``.grad`` touched, every hook
removed, modes restored, also on error); :func:`randomised_control` dissects a re-initialised
copy of the model, the paper's baseline.

Example:
    >>> ds = ShapesDataset(500, image_size=32, split="val")
    >>> result = dissect(model, "features.c3", ds)  # concepts: ShapesConcepts.for_dataset(ds)
    >>> result.units()[0]
    UnitLabel(channel=0, concept='ring', category='object', iou=0.21, ...)
    >>> result.detector_counts()
    {'object': 3, 'part': 1, 'scene': 0, 'colour': 2}
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset, default_collate

from cnnviz._checks import check_count, check_int, check_number
from cnnviz.analysis.concepts import (
    Concept,
    ConceptBatch,
    ConceptSource,
    ShapesConcepts,
    concept_batch,
)
from cnnviz.analysis.guard import eager, model_devices, observe
from cnnviz.analysis.modelio import model_device, model_dtype
from cnnviz.analysis.readout import Readout, ReadoutHooks, find_readouts

__all__ = [
    "CachedConcepts",
    "ConceptBatch",
    "Dissection",
    "DissectionCounts",
    "UnitLabel",
    "cache_concepts",
    "dissect",
    "dissect_layers",
    "randomised_control",
    "randomised_copy",
    "upsample",
]

Mode = Literal["stream", "count", "fixed"]
_MODES: tuple[Mode, ...] = ("stream", "count", "fixed")

#: Floors are kept at multiples of this many bins, so the range may grow 4x after a floor
#: was set without merging a complete bin with an incomplete one.
_ALIGN = 4
#: Scaled activations stay below 2**_MANTISSA, so bin indices are exact in float32.
_MANTISSA = 23
#: Smallest grid exponent (2**-e must be a finite float32).
_E_MIN = -126
#: Upsampled elements processed at a time (bounds the working memory: ~16 MiB of float32).
_BLOCK_ELEMENTS = 1 << 22
_INT32_LIMIT = (1 << 31) - 1


class _StopForward(Exception):
    """Raised from a read hook once every dissected layer was read: ends the forward early."""


# --------------------------------------------------------------------------------- upsampling
@functools.lru_cache(maxsize=64)
def _interpolation_matrix(src: int, dst: int) -> Tensor:
    """``[dst, src]`` matrix of 1-D linear interpolation (``align_corners=False``) on the CPU."""
    eye = torch.eye(src, dtype=torch.float32).unsqueeze(0)
    return F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T.contiguous()


_DEVICE_MATRICES: dict[tuple[int, int, str], Tensor] = {}


def _matrix(src: int, dst: int, device: torch.device) -> Tensor:
    key = (src, dst, str(device))
    found = _DEVICE_MATRICES.get(key)
    if found is None:
        if len(_DEVICE_MATRICES) > 64:
            _DEVICE_MATRICES.clear()
        found = _DEVICE_MATRICES[key] = _interpolation_matrix(src, dst).to(device)
    return found


@functools.lru_cache(maxsize=64)
def _cell_sizes(src: int, dst: int) -> tuple[int, ...]:
    """Output pixels whose interpolation starts at each source pixel (``i0`` of each output).

    Output pixel ``y`` mixes source pixels ``i0`` and ``min(i0 + 1, src - 1)``; this counts the
    outputs of each ``i0`` (the edges take the clamped outputs too).
    """
    first = (_interpolation_matrix(src, dst) > 0).float().argmax(dim=1)
    return tuple(int(v) for v in torch.bincount(first, minlength=src).tolist())


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (``align_corners=False``) of ``[..., h, w]`` maps to ``size``.

    The same interpolation as ``F.interpolate(..., mode="bilinear", align_corners=False)``
    (to float32 rounding), computed as two small matrix products, and always a new float32
    tensor. Each map's result depends only on that map.

    Args:
        maps: ``[..., h, w]`` tensor.
        size: ``(H, W)``.

    Returns:
        ``[..., H, W]`` float32.
    """
    h, w = maps.shape[-2:]
    x = maps.float()
    if (h, w) == tuple(size):
        return x.clone()
    rows = _matrix(h, size[0], x.device)
    cols = _matrix(w, size[1], x.device)
    return torch.matmul(torch.matmul(rows, x), cols.T)


# ------------------------------------------------------------------------------- grid helpers
def _frexp_exponent(x: Tensor) -> Tensor:
    return torch.frexp(x).exponent.to(torch.int64)


def _grid(vmin: Tensor, vmax: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Exponent ``e`` and origin ``o`` of the bin grid for each channel's ``[vmin, vmax]``.

    Bin ``j`` covers ``[(o + j)·2^e, (o + j + 1)·2^e)``. ``e`` is the smallest exponent (at
    least :data:`_E_MIN`, and such that ``|v|·2^-e < 2^23``) for which ``vmin`` and ``vmax``
    fall at most ``bins - 1`` bins apart; it only grows when the range grows, so a grid is a
    function of the range alone (merging equals one pass). ``o = floor(vmin·2^-e)``.
    """
    lo, hi = vmin.double(), vmax.double()
    empty = ~(hi >= lo)
    lo = torch.where(empty, torch.zeros_like(lo), lo)
    hi = torch.where(empty, torch.zeros_like(hi), hi)
    span = hi - lo
    magnitude = torch.maximum(lo.abs(), hi.abs())
    e_mag = _frexp_exponent(magnitude) - _MANTISSA
    e_span = _frexp_exponent(span) - 1 - math.ceil(math.log2(bins))
    e = torch.maximum(torch.where(span > 0, e_span, e_mag), e_mag).clamp_min(_E_MIN)
    for _ in range(6):
        scale = torch.ldexp(torch.ones_like(lo), -e)
        fits = torch.floor(hi * scale) - torch.floor(lo * scale) <= bins - 1
        e = torch.where(fits, e, e + 1)
    origin = torch.floor(lo * torch.ldexp(torch.ones_like(lo), -e)).to(torch.int64)
    zero = torch.zeros_like(e)
    return torch.where(empty, zero, e), torch.where(empty, zero, origin)


def _floor_div_pow2(x: Tensor, d: Tensor) -> Tensor:
    """``floor(x / 2**d)`` for int64 ``x`` and ``d >= 0`` (arithmetic shift)."""
    return torch.bitwise_right_shift(x, d)


def _rebin(
    hist: Tensor,
    joint: Tensor | None,
    floor: Tensor,
    old: tuple[Tensor, Tensor],
    new: tuple[Tensor, Tensor],
    bins: int,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Move counts from grid ``old = (e, o)`` to the coarser or shifted grid ``new``.

    Exact: every old bin lies inside one new bin (new exponents are at least the old ones and
    both grids are aligned to powers of two). ``floor`` (bins at or above it are complete) is
    mapped to the first new bin that receives no incomplete old bin.
    """
    e_old, o_old = old
    e_new, o_new = new
    d = (e_new - e_old).clamp(0, 63)  # shifts past 63 bits: same result, defined everywhere
    j = torch.arange(bins, device=hist.device, dtype=torch.int64)
    target = _floor_div_pow2(o_old[:, None] + j[None, :], d[:, None]) - o_new[:, None]
    target = target.clamp(0, bins - 1)  # only empty bins can fall outside
    new_hist = torch.zeros_like(hist).scatter_add_(1, target, hist)
    new_joint = None
    if joint is not None and joint.shape[1]:
        index = target[:, :, None].expand(-1, -1, joint.shape[2])
        new_joint = torch.zeros_like(joint).scatter_add_(1, index, joint)
    elif joint is not None:
        new_joint = joint
    last_incomplete = _floor_div_pow2(o_old + floor - 1, d) - o_new
    new_floor = torch.where(
        floor <= 0,
        torch.zeros_like(floor),
        torch.where(floor >= bins, torch.full_like(floor, bins), last_incomplete + 1),
    ).clamp(0, bins)
    return new_hist, new_joint, new_floor


# ----------------------------------------------------------------------------------- results
class UnitLabel(NamedTuple):
    """What one unit was found to detect.

    Attributes:
        channel: The channel.
        concept: The best concept's name if its IoU reaches the threshold, else ``None``.
        category: That concept's category, or ``None``.
        iou: The best IoU (also when below the threshold).
        best: The best concept's name, labelled or not.
        runner_up: The second-best concept (``""`` with a single concept).
        runner_up_iou: Its IoU.
        threshold: The activation threshold ``T̂_k``.
        top_fraction: Share of all pixels in the unit's region (about the quantile).
    """

    channel: int
    concept: str | None
    category: str | None
    iou: float
    best: str
    runner_up: str
    runner_up_iou: float
    threshold: float
    top_fraction: float


@dataclass(frozen=True, eq=False)
class Dissection:
    """Network Dissection of one layer: a threshold, a best concept and an IoU per unit.

    Arrays are numpy, on the host; ``C`` channels, ``K`` concepts. :meth:`as_arrays` and
    :meth:`meta` give everything as plain arrays plus a small JSON-friendly dict, and
    :meth:`from_record` rebuilds the object from them.

    Attributes:
        layer: Qualified name of the layer.
        concepts: The concepts, in the order of the IoU matrix's columns.
        threshold: ``float64 [C]``: the activation threshold ``T̂_k`` of each unit (the
            region is ``{a >= T̂_k}`` on the upsampled maps).
        top_fraction: ``float64 [C]``: share of all pixels in the unit's region.
        iou: ``float64 [C, K]``: IoU of every unit with every concept.
        intersection: ``int64 [C, K]``: ``Σ|M_k ∩ L_c|``.
        region: ``int64 [C]``: ``Σ|M_k|``.
        concept_area: ``int64 [K]``: ``Σ|L_c|``.
        pixels: Pixels per unit over the data set (images × mask pixels).
        images: Images seen.
        quantile: The top quantile ``q`` (0.005 in the paper).
        iou_threshold: IoU needed for a label (0.04 in the paper).
        mask_size: ``(H, W)``, where units and concepts are compared.
        map_size: ``(h, w)``, the layer's own resolution.
        bins: Histogram bins per unit.
        passes: Passes over the data (1, or 2 when some units were recounted).
        readout: Where the maps were read (:meth:`Readout.as_dict`; empty if unknown).
        control: ``""`` for the model itself; ``"reinit"`` or ``"permute"`` for the randomised
            control (:func:`randomised_control`).
    """

    layer: str
    concepts: tuple[Concept, ...]
    threshold: np.ndarray
    top_fraction: np.ndarray
    iou: np.ndarray
    intersection: np.ndarray
    region: np.ndarray
    concept_area: np.ndarray
    pixels: int
    images: int
    quantile: float
    iou_threshold: float
    mask_size: tuple[int, int]
    map_size: tuple[int, int]
    bins: int = 1024
    passes: int = 1
    readout: dict[str, Any] = field(default_factory=dict)
    control: str = ""

    # -- derived --------------------------------------------------------------------------
    @property
    def num_channels(self) -> int:
        """``C``."""
        return int(self.iou.shape[0])

    @functools.cached_property
    def _order(self) -> np.ndarray:
        return np.argsort(-self.iou, axis=1, kind="stable")

    @property
    def best(self) -> np.ndarray:
        """``int64 [C]``: index of each unit's best concept (ties: the first concept)."""
        return self._order[:, 0].astype(np.int64)

    @property
    def best_iou(self) -> np.ndarray:
        """``float64 [C]``: each unit's best IoU."""
        return np.take_along_axis(self.iou, self._order[:, :1], axis=1)[:, 0]

    @property
    def runner_up(self) -> np.ndarray:
        """``int64 [C]``: index of the second-best concept (``-1`` with a single concept)."""
        if self.iou.shape[1] < 2:
            return np.full(self.num_channels, -1, dtype=np.int64)
        return self._order[:, 1].astype(np.int64)

    @property
    def runner_up_iou(self) -> np.ndarray:
        """``float64 [C]``: IoU of the second-best concept (0 with a single concept)."""
        if self.iou.shape[1] < 2:
            return np.zeros(self.num_channels)
        return np.take_along_axis(self.iou, self._order[:, 1:2], axis=1)[:, 0]

    @property
    def labelled(self) -> np.ndarray:
        """``bool [C]``: units whose best IoU reaches :attr:`iou_threshold` (and is above 0)."""
        best = self.best_iou
        return (best >= self.iou_threshold) & (best > 0)

    def units(self) -> list[UnitLabel]:
        """One :class:`UnitLabel` per channel."""
        best, best_iou = self.best, self.best_iou
        second, second_iou = self.runner_up, self.runner_up_iou
        labelled = self.labelled
        out = []
        for k in range(self.num_channels):
            concept = self.concepts[int(best[k])]
            out.append(
                UnitLabel(
                    channel=k,
                    concept=concept.name if labelled[k] else None,
                    category=concept.category if labelled[k] else None,
                    iou=float(best_iou[k]),
                    best=concept.name,
                    runner_up=self.concepts[int(second[k])].name if second[k] >= 0 else "",
                    runner_up_iou=float(second_iou[k]),
                    threshold=float(self.threshold[k]),
                    top_fraction=float(self.top_fraction[k]),
                )
            )
        return out

    def categories(self) -> list[str]:
        """The concepts' categories, in order of first appearance."""
        return list(dict.fromkeys(c.category for c in self.concepts))

    def detectors(self) -> dict[str, list[str]]:
        """Unique detectors per category: the distinct concepts that label at least one unit.

        Returns:
            ``{category: [concept names]}`` for every category of :attr:`concepts` (empty
            lists included), names in concept order.
        """
        chosen = set(self.best[self.labelled].tolist())
        out: dict[str, list[str]] = {c: [] for c in self.categories()}
        for index, concept in enumerate(self.concepts):
            if index in chosen:
                out[concept.category].append(concept.name)
        return out

    def detector_counts(self) -> dict[str, int]:
        """Number of unique detectors per category (the paper's Fig. 5 / 8 statistic)."""
        return {c: len(names) for c, names in self.detectors().items()}

    def unit_counts(self) -> dict[str, int]:
        """Number of labelled units per category (a concept may label several units)."""
        out = dict.fromkeys(self.categories(), 0)
        for index in self.best[self.labelled].tolist():
            out[self.concepts[index].category] += 1
        return out

    def summary(self) -> str:
        """One line, e.g. ``features.c3: 9/16 units labelled; unique detectors: object 4, ...``."""
        counts = ", ".join(f"{c} {n}" for c, n in self.detector_counts().items())
        tag = f" [{self.control} control]" if self.control else ""
        return (
            f"{self.layer}{tag}: {int(self.labelled.sum())}/{self.num_channels} units labelled "
            f"(IoU >= {self.iou_threshold:g}); unique detectors: {counts}"
        )

    # -- serialisation --------------------------------------------------------------------
    def as_arrays(self) -> dict[str, np.ndarray]:
        """Every per-unit and per-concept array (numpy), for an ``.npz`` file.

        Returns:
            ``threshold``, ``top_fraction``, ``best_iou``, ``runner_up_iou`` (float64 ``[C]``),
            ``best``, ``runner_up``, ``region`` (int64 ``[C]``), ``labelled`` (bool ``[C]``),
            ``iou`` (float64 ``[C, K]``), ``intersection`` (int64 ``[C, K]``) and
            ``concept_area`` (int64 ``[K]``).
        """
        return {
            "threshold": self.threshold,
            "top_fraction": self.top_fraction,
            "iou": self.iou,
            "intersection": self.intersection,
            "region": self.region,
            "concept_area": self.concept_area,
            "best": self.best,
            "best_iou": self.best_iou,
            "runner_up": self.runner_up,
            "runner_up_iou": self.runner_up_iou,
            "labelled": self.labelled,
        }

    def meta(self) -> dict[str, Any]:
        """Everything else as JSON-friendly values (a few hundred bytes plus the concepts).

        Returns:
            ``layer``, ``concepts`` (``[{"name", "category"}]``), ``quantile``,
            ``iou_threshold``, ``pixels``, ``images``, ``mask_size``, ``map_size``, ``bins``,
            ``passes``, ``readout``, ``control``, and the summaries ``labelled_units``,
            ``detectors`` (``{category: [names]}``) and ``detector_counts``.
        """
        return {
            "layer": self.layer,
            "concepts": [c.as_dict() for c in self.concepts],
            "quantile": self.quantile,
            "iou_threshold": self.iou_threshold,
            "pixels": self.pixels,
            "images": self.images,
            "mask_size": list(self.mask_size),
            "map_size": list(self.map_size),
            "bins": self.bins,
            "passes": self.passes,
            "readout": dict(self.readout),
            "control": self.control,
            "labelled_units": int(self.labelled.sum()),
            "detectors": self.detectors(),
            "detector_counts": self.detector_counts(),
        }

    @classmethod
    def from_record(cls, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> Dissection:
        """Rebuild a :class:`Dissection` from :meth:`as_arrays` and :meth:`meta`.

        Raises:
            KeyError: If an array or meta entry is missing.
            ValueError: If the arrays' shapes do not agree.
        """
        concepts = tuple(Concept(c["name"], c["category"]) for c in meta["concepts"])
        iou = np.asarray(arrays["iou"], dtype=np.float64)
        if iou.ndim != 2 or iou.shape[1] != len(concepts):
            raise ValueError(
                f"Dissection.from_record: `iou` has shape {iou.shape}; expected [C, "
                f"{len(concepts)}] for the {len(concepts)} concepts in `meta`"
            )
        return cls(
            layer=str(meta["layer"]),
            concepts=concepts,
            threshold=np.asarray(arrays["threshold"], dtype=np.float64),
            top_fraction=np.asarray(arrays["top_fraction"], dtype=np.float64),
            iou=iou,
            intersection=np.asarray(arrays["intersection"], dtype=np.int64),
            region=np.asarray(arrays["region"], dtype=np.int64),
            concept_area=np.asarray(arrays["concept_area"], dtype=np.int64),
            pixels=int(meta["pixels"]),
            images=int(meta["images"]),
            quantile=float(meta["quantile"]),
            iou_threshold=float(meta["iou_threshold"]),
            mask_size=tuple(int(v) for v in meta["mask_size"]),  # type: ignore[arg-type]
            map_size=tuple(int(v) for v in meta["map_size"]),  # type: ignore[arg-type]
            bins=int(meta.get("bins", 1024)),
            passes=int(meta.get("passes", 1)),
            readout=dict(meta.get("readout", {})),
            control=str(meta.get("control", "")),
        )

    def with_threshold(self, iou_threshold: float) -> Dissection:
        """The same counts labelled with another IoU threshold."""
        value = check_number("Dissection", "iou_threshold", iou_threshold, low=0.0, high=1.0)
        return replace(self, iou_threshold=float(value))


# --------------------------------------------------------------------------- streaming state
def _rank(quantile: float, pixels: int) -> int:
    """``⌈q·n⌉`` (at least 1), robust to the rounding of ``q·n``."""
    return max(1, math.ceil(quantile * pixels - 1e-9 * max(1.0, quantile * pixels)))


class DissectionCounts:
    """Streaming Network Dissection counts of one layer, mergeable across processes.

    Keeps, per unit, a histogram of its upsampled activations over ``bins`` power-of-two
    aligned bins and, per bin, how many of those pixels each concept holds (see the module
    docstring). Three modes:

    - ``"stream"`` (``expected_images`` given): one pass; only bins at or above a rising floor
      are kept complete (the floor assumes at most ``expected_images`` images in total — over
      all processes when merging — and a wrong guess only costs a second pass);
    - ``"count"`` (``expected_images=None``): the histogram only; a second pass counts the
      concepts (:meth:`refinement`);
    - ``"fixed"``: a second pass on a given grid (made by :meth:`refinement`).

    Memory: ``C · bins · (8 + 4 K)`` bytes on the activations' device (``C`` channels, ``K``
    concepts; 8 K bytes per cell once a state holds 2^31 pixels).

    Args:
        num_channels: Channels of the layer (``C``).
        num_concepts: Concepts (``K``).
        quantile: The top share ``q`` that defines each unit's threshold, in ``(0, 1)``.
        bins: Histogram bins per unit (at least 16).
        expected_images: How many images the data holds (an upper bound is fine); ``None``:
            unknown, count first and recount the concepts in a second pass.
        device: Where to keep the state; default: the device of the first ``update``.

    Example:
        >>> counts = DissectionCounts(16, len(source.concepts), expected_images=len(ds))
        >>> for images, masks in batches:
        ...     counts.update(maps_of(images), masks)
        >>> counts.sync()  # under DDP, on every rank
        >>> if (second := counts.refinement()) is not None:
        ...     ...  # run the same batches through second.update, then:
        ...     counts.absorb(second)
        >>> result = counts.result(source.concepts, layer="features.c3")
    """

    def __init__(
        self,
        num_channels: int,
        num_concepts: int,
        *,
        quantile: float = 0.005,
        bins: int = 1024,
        expected_images: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        owner = "DissectionCounts"
        self.num_channels = int(check_count(owner, "num_channels", num_channels))
        self.num_concepts = int(check_count(owner, "num_concepts", num_concepts))
        self.quantile = float(
            check_number(owner, "quantile", quantile, low=0.0, high=1.0, low_open=True)
        )
        if self.quantile >= 1.0:
            raise ValueError(f"{owner}: `quantile` must be below 1; got {quantile!r}")
        self.bins = int(check_int(owner, "bins", bins, low=16, high=1 << 20))
        if self.num_channels * self.bins > 1 << 24:  # global bin indices are exact in float32
            raise ValueError(
                f"{owner}: `num_channels` x `bins` must be at most 2^24; got "
                f"{self.num_channels} x {self.bins}: pass fewer bins"
            )
        self.expected_images = check_count(
            owner, "expected_images", expected_images, allow_none=True
        )
        self.mode: Mode = "stream" if self.expected_images is not None else "count"
        self._alloc(torch.device(device) if device is not None else torch.device("cpu"))

    # -- state ------------------------------------------------------------------------------
    def _alloc(self, device: torch.device) -> None:
        c, b, k = self.num_channels, self.bins, self.num_concepts
        self.vmin = torch.full((c,), float("inf"), device=device)
        self.vmax = torch.full((c,), float("-inf"), device=device)
        self.exponent = torch.zeros(c, dtype=torch.int64, device=device)
        self.origin = torch.zeros(c, dtype=torch.int64, device=device)
        # bin 0 holds the unit's minimum and never belongs to a region: it needs no counts
        first = 1 if self.mode == "stream" else 0
        self.floor = torch.full((c,), first, dtype=torch.int64, device=device)
        self.refined = torch.zeros(c, dtype=torch.bool, device=device)
        self.hist = torch.zeros((c, b), dtype=torch.int64, device=device)
        self.joint = torch.zeros(
            (c, b if self.mode != "count" else 0, k), dtype=torch.int32, device=device
        )
        self.area = torch.zeros(k, dtype=torch.int64, device=device)
        self.pixels = 0
        self.images = 0
        self.size: tuple[int, int, int, int] | None = None  # (H, W, h, w)

    @property
    def device(self) -> torch.device:
        """Where the state lives."""
        return self.hist.device

    def to(self, device: torch.device | str) -> DissectionCounts:
        """Move the state to ``device`` (in place); returns ``self``."""
        for name in (
            "vmin", "vmax", "exponent", "origin", "floor", "refined", "hist", "joint", "area"
        ):  # fmt: skip
            setattr(self, name, getattr(self, name).to(device))
        return self

    def state(self) -> dict[str, Tensor]:
        """The state as plain tensors of fixed shapes (for ``all_gather`` and checkpoints).

        Returns:
            ``hist [C, bins]`` and ``joint [C, bins, K]`` (int64; ``joint`` is ``[C, 0, K]``
            in ``"count"`` mode), ``vmin``/``vmax [C]`` (float32: the range of the maps seen),
            ``exponent``/``origin``/``floor [C]`` (int64: the grid and the lowest complete
            bin), ``refined [C]`` (uint8), ``area [K]`` (int64) and ``info [9]`` (int64:
            mode, pixels, images, H, W, h, w, expected images (0: unknown), bins), plus
            ``quantile [1]`` (float64).
        """
        size = self.size or (0, 0, 0, 0)
        info = [
            _MODES.index(self.mode),
            self.pixels,
            self.images,
            *size,
            self.expected_images or 0,
            self.bins,
        ]
        return {
            "hist": self.hist.clone(),
            "joint": self.joint.to(torch.int64),
            "vmin": self.vmin.clone(),
            "vmax": self.vmax.clone(),
            "exponent": self.exponent.clone(),
            "origin": self.origin.clone(),
            "floor": self.floor.clone(),
            "refined": self.refined.to(torch.uint8),
            "area": self.area.clone(),
            "info": torch.tensor(info, dtype=torch.int64, device=self.device),
            "quantile": torch.tensor([self.quantile], dtype=torch.float64, device=self.device),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Tensor]) -> DissectionCounts:
        """Rebuild from :meth:`state`."""
        info = [int(v) for v in state["info"].tolist()]
        hist = state["hist"]
        counts = cls(
            hist.shape[0],
            state["area"].shape[0],
            quantile=float(state["quantile"].reshape(-1)[0]),
            bins=hist.shape[1],
            expected_images=info[7] or None,
            device=hist.device,
        )
        counts._load(state)
        return counts

    def _load(self, state: Mapping[str, Tensor]) -> None:
        info = [int(v) for v in state["info"].tolist()]
        self.mode = _MODES[info[0]]
        self.pixels, self.images = info[1], info[2]
        self.size = tuple(info[3:7]) if info[1] else None  # type: ignore[assignment]
        self.expected_images = info[7] or None
        device = self.device
        self.hist = state["hist"].to(device, torch.int64).clone()
        joint = state["joint"].to(device)
        self.joint = joint.to(torch.int32) if self.pixels <= _INT32_LIMIT else joint.clone()
        self.vmin = state["vmin"].to(device, torch.float32).clone()
        self.vmax = state["vmax"].to(device, torch.float32).clone()
        self.exponent = state["exponent"].to(device, torch.int64).clone()
        self.origin = state["origin"].to(device, torch.int64).clone()
        self.floor = state["floor"].to(device, torch.int64).clone()
        self.refined = state["refined"].to(device).bool()
        self.area = state["area"].to(device, torch.int64).clone()

    def _reset(self) -> None:
        self.mode = "stream" if self.expected_images is not None else "count"
        self._alloc(self.device)

    # -- updates ----------------------------------------------------------------------------
    def update(self, activations: Tensor, masks: Tensor | ConceptBatch) -> None:
        """Add one batch: the layer's maps and the batch's concept masks.

        Args:
            activations: ``[N, C, h, w]`` maps (any float dtype; not modified).
            masks: ``bool [N, K, H, W]`` concept masks, or a :class:`ConceptBatch` of them;
                ``H, W >= h, w`` in practice (the maps are resized to ``H, W``).

        Raises:
            TypeError: If ``activations`` is not a 4-D tensor.
            ValueError: If the shapes disagree with each other or with earlier batches, or the
                maps hold NaN or infinite values.
        """
        owner = "DissectionCounts.update"
        if not isinstance(activations, Tensor) or activations.dim() != 4:
            raise TypeError(
                f"{owner}: `activations` must be a tensor [N, C, h, w] (dissection needs 2-D "
                f"maps); got {getattr(activations, 'shape', type(activations).__name__)}"
            )
        n, c, h, w = activations.shape
        if c != self.num_channels:
            raise ValueError(
                f"{owner}: `activations` has {c} channels; these counts were built for "
                f"num_channels={self.num_channels}"
            )
        device = activations.device
        if self.device != device:
            self.to(device)
        batch = masks if isinstance(masks, ConceptBatch) else ConceptBatch.from_masks(masks)
        batch = batch.to(device)
        if batch.count != n or batch.num_concepts != self.num_concepts:
            raise ValueError(
                f"{owner}: `masks` holds {batch.count} images x {batch.num_concepts} concepts; "
                f"expected {n} images (one per map) x {self.num_concepts} concepts"
            )
        size = (*batch.size, h, w)
        if self.size is not None and self.size != size:
            raise ValueError(
                f"{owner}: masks {batch.size} and maps {(h, w)} differ from the "
                f"{self.size[:2]} and {self.size[2:]} seen before; use one DissectionCounts per "
                "layer and input size"
            )
        if n == 0:
            return
        self.size = size  # type: ignore[assignment]
        x = activations.detach()
        flat = x.reshape(n, c, h * w)
        pair_max = flat.amax(dim=2)
        pair_min = flat.amin(dim=2)
        bad = int((~torch.isfinite(pair_max) | ~torch.isfinite(pair_min)).sum())
        if bad:
            raise ValueError(
                f"{owner}: the maps hold NaN or infinite values ({bad} of {n * c} maps); "
                "dissection needs finite activations"
            )
        self._extend(pair_min.amin(dim=0), pair_max.amax(dim=0))
        pixels = n * batch.size[0] * batch.size[1]
        seen_before = self.pixels
        if self.joint.dtype == torch.int32 and self.pixels + pixels > _INT32_LIMIT:
            self.joint = self.joint.to(torch.int64)
        self.pixels += pixels
        self.images += n
        self.area += batch.area
        big_h, big_w = batch.size
        limit = _rank(self.quantile, (self.expected_images or 0) * big_h * big_w)
        if self.mode == "stream" and seen_before < limit:  # until the histogram gives floors
            self._batch_floor(x, batch.size)
        self._count(x, pair_max, batch)

    def _extend(self, batch_min: Tensor, batch_max: Tensor) -> None:
        """Grow the range to cover a batch; move the counts to the new grid if it changed."""
        vmin = torch.minimum(self.vmin, batch_min.float())
        vmax = torch.maximum(self.vmax, batch_max.float())
        if torch.equal(vmin, self.vmin) and torch.equal(vmax, self.vmax):
            return  # the range, hence the grid, is as before
        if self.mode == "fixed":
            scale = torch.ldexp(torch.ones_like(self.exponent, dtype=torch.float64), -self.exponent)
            low = torch.floor(vmin.double() * scale) < self.origin
            high = torch.floor(vmax.double() * scale) > self.origin + self.bins - 1
            if bool((low | high).any()):
                raise ValueError(
                    "DissectionCounts.update: the maps leave the range seen in the first pass; "
                    "both passes must see the same data (no random augmentation, same model)"
                )
            self.vmin, self.vmax = vmin, vmax
            return
        exponent, origin = _grid(vmin, vmax, self.bins)
        seen = self.vmax >= self.vmin
        changed = seen & ((exponent != self.exponent) | (origin != self.origin))
        if bool(changed.any()):
            idx = changed.nonzero().squeeze(1)
            joint = self.joint[idx] if self.mode != "count" else None
            hist, joint, floor = _rebin(
                self.hist[idx],
                joint,
                self.floor[idx],
                (self.exponent[idx], self.origin[idx]),
                (exponent[idx], origin[idx]),
                self.bins,
            )
            self.hist[idx] = hist
            if joint is not None:
                self.joint[idx] = joint
            self.floor[idx] = floor if self.mode == "stream" else self.floor[idx]
        self.vmin, self.vmax = vmin, vmax
        self.exponent, self.origin = exponent, origin

    def _floor_values(self) -> Tensor:
        """Lower edge of each unit's floor bin (float64), for skipping whole maps."""
        edge = torch.ldexp((self.origin + self.floor).double(), self.exponent)
        slack = edge.abs() * 2.0**-20 + torch.ldexp(torch.ones_like(edge), self.exponent - 8)
        value = edge - slack  # a bilinear mix may exceed its largest input by a few ulps
        value = torch.where(self.floor <= 0, torch.full_like(value, float("-inf")), value)
        return torch.where(self.floor >= self.bins, torch.full_like(value, float("inf")), value)

    def _batch_floor(self, x: Tensor, size: tuple[int, int]) -> None:
        """Stream mode: lift floors with a bound from this batch's maps alone, before upsampling.

        Every upsampled pixel is a convex mix of the (at most) four source pixels of its cell,
        so it is at least their minimum. If the cells whose minimum reaches ``L`` hold at least
        ``⌈q·n_max⌉`` output pixels, the ``⌈q·n_max⌉``-th largest value is at least ``L``: a
        valid floor, found from the native maps (cheap) instead of from the first blocks.
        """
        n, c, h, w = x.shape
        limit = _rank(self.quantile, (self.expected_images or 0) * size[0] * size[1])
        rows = torch.tensor(_cell_sizes(h, size[0]), device=x.device)
        cols = torch.tensor(_cell_sizes(w, size[1]), device=x.device)
        weight = rows[:, None] * cols[None, :]  # output pixels per cell, [h, w]
        if n * int(weight.sum()) < limit:
            return
        xf = x.float()
        low = torch.minimum(xf, torch.cat([xf[:, :, 1:], xf[:, :, -1:]], dim=2))
        cell_min = torch.minimum(low, torch.cat([low[..., 1:], low[..., -1:]], dim=3))
        cell_min = cell_min - cell_min.abs() * 2.0**-20  # the computed mix may round below
        scale = torch.ldexp(torch.ones_like(self.exponent, dtype=torch.float32), -self.exponent)
        index = torch.floor(cell_min * scale.view(1, c, 1, 1)) - self.origin.view(1, c, 1, 1)
        index = index.clamp_(0, self.bins - 1).long()
        index += (torch.arange(c, device=x.device) * self.bins).view(1, c, 1, 1)
        weights = weight.to(torch.float64).expand(n, c, h, w).reshape(-1)
        counts = torch.bincount(index.reshape(-1), weights=weights, minlength=c * self.bins)
        suffix = counts.view(c, self.bins).flip(1).cumsum(1).flip(1)
        candidate = (suffix >= limit).sum(dim=1) - 1  # cells at or above it hold >= limit
        aligned = torch.div(self.origin + candidate, _ALIGN, rounding_mode="floor") * _ALIGN
        aligned = (aligned - self.origin).clamp(0, self.bins - 1)
        self.floor = torch.where(candidate >= 0, torch.maximum(self.floor, aligned), self.floor)

    def _raise_floor(self, first: int = 0, stop: int | None = None) -> None:
        """Stream mode: lift floors to the bin of the ``⌈q·n_max⌉``-th largest value seen.

        Only channels ``first:stop`` (all by default) are looked at.
        """
        h, w = self.size[:2] if self.size else (0, 0)
        limit = _rank(self.quantile, (self.expected_images or 0) * h * w)
        part = slice(first, stop)
        suffix = self.hist[part].flip(1).cumsum(1).flip(1)
        candidate = (suffix >= limit).sum(dim=1) - 1
        origin, floor = self.origin[part], self.floor[part]
        aligned = torch.div(origin + candidate, _ALIGN, rounding_mode="floor") * _ALIGN - origin
        raised = torch.maximum(floor, aligned.clamp_min(0))
        self.floor[part] = torch.where(candidate >= 0, raised, floor)

    def _count(self, x: Tensor, pair_max: Tensor, batch: ConceptBatch) -> None:
        """Histogram (and concept counts) of the upsampled pixels at or above each floor.

        Two filters keep the upsampling sparse: a map whose maximum is below its unit's floor
        is skipped, and of the others only the output rows whose vertically interpolated
        values reach the floor are interpolated horizontally (an output pixel mixes two
        values of its row). Blocks are channel-major, so the first batch lifts each unit's
        floor from all of the batch's pixels before counting concepts.
        """
        n, c, h, w = x.shape
        big_h, big_w = batch.size
        b = self.bins
        floors = self._floor_values()
        if self.mode == "count":
            active = torch.ones_like(pair_max, dtype=torch.bool)
        else:
            active = pair_max.double() >= floors[None, :]
        pairs = active.t().nonzero().flip(1)  # (image, channel), sorted by channel
        if not pairs.shape[0]:
            return
        if h == w == 1:
            self._count_constant(x.reshape(n, c).float(), pairs, batch)
            return
        maps = x.reshape(n * c, h, w).float()
        rows_matrix = _matrix(h, big_h, x.device)
        cols_matrix = _matrix(w, big_w, x.device).T
        scale = torch.ldexp(torch.ones_like(self.exponent, dtype=torch.float32), -self.exponent)
        origin = self.origin.float()
        step = max(1, _BLOCK_ELEMENTS // (big_h * big_w))
        for start in range(0, pairs.shape[0], step):
            block = pairs[start : start + step]
            images, channels = block[:, 0], block[:, 1]
            tall = maps.index_select(0, images * c + channels)
            if h != big_h:
                tall = torch.matmul(rows_matrix, tall)  # [a, H, w]
            if self.mode == "count":
                keep_rows = None
            else:
                row_max = tall.amax(dim=2).double()
                keep_rows = (row_max >= floors[channels][:, None]).reshape(-1).nonzero()
                keep_rows = keep_rows.squeeze(1)
                if not keep_rows.shape[0]:
                    continue
            flat = tall.reshape(-1, w)
            if keep_rows is not None and keep_rows.shape[0] < flat.shape[0]:
                flat = flat.index_select(0, keep_rows)
                rows = keep_rows
            else:
                rows = torch.arange(flat.shape[0], device=x.device)
            row_pair = torch.div(rows, big_h, rounding_mode="floor")
            row_channel = channels[row_pair]
            # pixel of element e (row r, column x): (image·H + y)·W + x = base[r] + e
            base = (images[row_pair] * big_h + rows - row_pair * big_h) * big_w
            base -= torch.arange(rows.shape[0], device=x.device) * big_w
            up = torch.matmul(flat, cols_matrix) if w != big_w else flat.clone()  # [r, W]
            up.mul_(scale[row_channel, None]).floor_()
            up.sub_(origin[row_channel, None]).clamp_(0, b - 1)  # bin, as float
            up.add_((row_channel * b).float()[:, None])  # global bin c·bins + j (exact)
            if self.mode == "count":
                self._add_hist(up.int().reshape(-1))
                continue
            row_floor = (self.floor[row_channel] + row_channel * b).float()[:, None]
            selected = None
            dense = self.mode == "stream" and bool((self.floor[channels] <= 1).all())
            if not dense:  # floors known: dense only if most of the block reaches them
                selected = up >= row_floor
                count = int(torch.count_nonzero(selected))
                dense = self.mode == "stream" and count * 4 > selected.numel()
            if dense:
                # most of the block is above the floor: histogram all of it (cheaper than
                # gathering), lift the floors, then select again
                self._add_hist(up.int().reshape(-1))
                self._raise_floor(int(channels[0]), int(channels[-1]) + 1)
                row_floor = (self.floor[row_channel] + row_channel * b).float()[:, None]
                chosen = (up >= row_floor).reshape(-1).nonzero().squeeze(1)
                index = up.reshape(-1)[chosen].int()
            else:
                if selected is None:
                    selected = up >= row_floor
                chosen = selected.reshape(-1).nonzero().squeeze(1)
                index = up.reshape(-1)[chosen].int()
                self._add_hist(index)
                if self.mode == "stream":
                    self._raise_floor(int(channels[0]), int(channels[-1]) + 1)
                    row = torch.div(chosen, big_w, rounding_mode="floor")
                    floor_of = self.floor[row_channel] + row_channel * b
                    keep = (index >= floor_of[row]).nonzero().squeeze(1)
                    chosen, index = chosen[keep], index[keep]
            row = torch.div(chosen, big_w, rounding_mode="floor")
            self._add_joint(index, base[row] + chosen, batch)

    def _count_constant(self, values: Tensor, pairs: Tensor, batch: ConceptBatch) -> None:
        """``1 x 1`` maps: each upsampled map is constant, so a map is one bin of ``H·W`` pixels.

        Its concept counts are the image's concept areas; no map is upsampled.
        """
        hw = batch.size[0] * batch.size[1]
        b = self.bins
        images, channels = pairs[:, 0], pairs[:, 1]
        scale = torch.ldexp(torch.ones_like(self.exponent, dtype=torch.float32), -self.exponent)
        value = values[images, channels]
        bins = torch.floor(value * scale[channels]) - self.origin[channels].float()
        bins = bins.clamp_(0, b - 1).long()
        index = channels * b + bins
        counts = torch.bincount(index, minlength=self.num_channels * b) * hw
        self.hist.view(-1).add_(counts)
        if self.mode == "stream":
            self._raise_floor()
        keep = (bins >= self.floor[channels]).nonzero().squeeze(1)
        if not keep.shape[0]:
            return
        areas = batch.image_areas()  # [N, K]
        table = self.joint.view(self.num_channels * b, self.num_concepts)
        table.index_add_(0, index[keep], areas[images[keep]].to(table.dtype))

    def _add_hist(self, index: Tensor) -> None:
        if index.numel():
            size = self.num_channels * self.bins
            self.hist.view(-1).add_(torch.bincount(index, minlength=size))

    def _add_joint(self, index: Tensor, pixels: Tensor, batch: ConceptBatch) -> None:
        """Count pixels (global bin ``index = channel·bins + bin``) against every concept."""
        if not index.numel():
            return
        b = self.bins
        low = int(index.min()) // b * b
        span = int(index.max()) // b * b + b - low  # the block's channels, whole
        local = index.int() - low
        table = self.joint.view(self.num_channels * b, self.num_concepts)[low : low + span]
        for g, members in enumerate(batch.groups):
            size = len(members) + 1
            code = batch.codes[g].index_select(0, pixels)
            counts = torch.bincount(local * size + code, minlength=span * size)
            counts = counts.view(span, size)[:, 1:].to(table.dtype)
            columns = torch.tensor(members, device=table.device)
            table.index_add_(1, columns, counts)

    # -- merging ----------------------------------------------------------------------------
    def merge(self, other: DissectionCounts | Mapping[str, Tensor]) -> None:
        """Merge another partial result (an instance or its :meth:`state`) into this one.

        Args:
            other: Counts over *other* images of the same layer, concepts and settings.

        Raises:
            ValueError: If the channels, concepts, bins, quantile, mode, sizes or (for a
                second pass) grids differ.
        """
        state = other.state() if isinstance(other, DissectionCounts) else other
        owner = "DissectionCounts.merge"
        info = [int(v) for v in state["info"].tolist()]
        hist = state["hist"]
        quantile = float(state["quantile"].reshape(-1)[0])
        if (
            tuple(hist.shape) != (self.num_channels, self.bins)
            or state["area"].shape[0] != self.num_concepts
        ):
            raise ValueError(
                f"{owner}: `other` has {hist.shape[0]} channels x {hist.shape[1]} bins x "
                f"{state['area'].shape[0]} concepts; expected {self.num_channels} x {self.bins} "
                f"x {self.num_concepts}"
            )
        if quantile != self.quantile or _MODES[info[0]] != self.mode:
            raise ValueError(
                f"{owner}: `other` was made with quantile={quantile}, mode={_MODES[info[0]]!r}; "
                f"this one with quantile={self.quantile}, mode={self.mode!r}"
            )
        if not info[1]:  # nothing seen
            return
        size = tuple(info[3:7])
        if self.size is not None and self.size != size:
            raise ValueError(f"{owner}: `other` has sizes {size}; this one {self.size}")
        if self.pixels == 0 and self.mode != "fixed":
            expected = self.expected_images
            self._load(state)
            self.expected_images = expected or self.expected_images
            return
        device = self.device
        o_hist = hist.to(device, torch.int64)
        o_joint = state["joint"].to(device, torch.int64)
        o_floor = state["floor"].to(device, torch.int64)
        o_grid = (state["exponent"].to(device), state["origin"].to(device))
        if self.mode == "fixed":
            if not (
                torch.equal(o_grid[0], self.exponent)
                and torch.equal(o_grid[1], self.origin)
                and torch.equal(o_floor, self.floor)
            ):
                raise ValueError(
                    f"{owner}: second-pass counts must share the grid and floors made by "
                    "refinement(); merge the first passes first"
                )
        else:
            vmin = torch.minimum(self.vmin, state["vmin"].to(device, torch.float32))
            vmax = torch.maximum(self.vmax, state["vmax"].to(device, torch.float32))
            grid = _grid(vmin, vmax, self.bins)
            joint = self.joint.to(torch.int64) if self.mode != "count" else None
            self.hist, joint, floor = _rebin(
                self.hist, joint, self.floor, (self.exponent, self.origin), grid, self.bins
            )
            o_hist, o_joint_moved, o_floor = _rebin(
                o_hist, o_joint if self.mode != "count" else None, o_floor, o_grid, grid, self.bins
            )
            if joint is not None and o_joint_moved is not None:
                self.joint = joint
                o_joint = o_joint_moved
            self.floor = torch.maximum(floor, o_floor) if self.mode == "stream" else floor
            self.exponent, self.origin = grid
            self.vmin, self.vmax = vmin, vmax
        pixels = self.pixels + info[1]
        self.hist += o_hist
        if self.mode != "count":
            total = self.joint.to(torch.int64) + o_joint
            self.joint = total.to(torch.int32) if pixels <= _INT32_LIMIT else total
        self.refined |= state["refined"].to(device).bool()
        self.area += state["area"].to(device, torch.int64)
        self.pixels = pixels
        self.images += info[2]
        self.size = size  # type: ignore[assignment]

    def sync(self, group: Any = None) -> None:
        """All-gather every rank's state and merge (a collective: call it on every rank).

        Does nothing unless ``torch.distributed`` is initialised with more than one process.
        Every rank merges the states in rank order, so all ranks end with identical counts.

        Args:
            group: Process group (default: the world).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        world = dist.get_world_size(group)
        if world == 1:
            return
        mine = self.state()
        gathered: dict[str, list[Tensor]] = {}
        for name, tensor in mine.items():
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.contiguous(), group=group)
            gathered[name] = parts
        floor, exponent, origin = self.floor, self.exponent, self.origin
        mode = self.mode
        self._reset()
        self.mode = mode
        if mode == "fixed":  # second pass: start from the shared grid, no counts
            self.joint = torch.zeros(
                (self.num_channels, self.bins, self.num_concepts),
                dtype=torch.int32,
                device=self.device,
            )
            self.floor, self.exponent, self.origin = floor, exponent, origin
        for rank in range(world):
            self.merge({name: parts[rank] for name, parts in gathered.items()})

    # -- second pass ------------------------------------------------------------------------
    def _suffix(self) -> Tensor:
        return self.hist.flip(1).cumsum(1).flip(1)

    def pending(self) -> Tensor:
        """``bool [C]``: units whose concept counts need a second pass (see :meth:`refinement`)."""
        if self.mode == "count":
            return ~self.refined
        if self.mode == "fixed" or not self.pixels:
            return torch.zeros_like(self.refined)
        limit = _rank(self.quantile, self.pixels)
        at_floor = self._suffix().gather(1, self.floor.clamp(0, self.bins - 1)[:, None])[:, 0]
        return (self.floor > 1) & (at_floor < limit) & ~self.refined

    def refinement(self) -> DissectionCounts | None:
        """Counts for a second pass over the same data, or ``None`` if every unit is exact.

        The second pass uses this pass's final grid: units counted without concepts
        (``"count"`` mode) are recounted from their threshold's bin up, units whose floor rose
        above their threshold from the bottom; the others are skipped. Feed it the same
        batches, :meth:`sync` it under DDP, then :meth:`absorb` it.
        """
        pending = self.pending()
        if not bool(pending.any()):
            return None
        second = DissectionCounts(
            self.num_channels,
            self.num_concepts,
            quantile=self.quantile,
            bins=self.bins,
            expected_images=None,
            device=self.device,
        )
        second.mode = "fixed"
        second.joint = torch.zeros(
            (self.num_channels, self.bins, self.num_concepts), dtype=torch.int32, device=self.device
        )
        second.exponent, second.origin = self.exponent.clone(), self.origin.clone()
        start = torch.ones_like(self.floor)  # bin 0 is never part of a region
        if self.mode == "count":
            limit = _rank(self.quantile, self.pixels)
            start = ((self._suffix() >= limit).sum(dim=1) - 1).clamp_min(1)
        second.floor = torch.where(pending, start, torch.full_like(start, self.bins))
        return second

    def absorb(self, second: DissectionCounts) -> None:
        """Take the second pass's counts for the units it recounted.

        Raises:
            ValueError: If ``second`` is not a second pass of these counts, or it saw a
                different number of pixels (the data changed between the passes).
        """
        owner = "DissectionCounts.absorb"
        if not isinstance(second, DissectionCounts) or second.mode != "fixed":
            raise ValueError(f"{owner}: `second` must come from refinement()")
        if not (
            torch.equal(second.exponent, self.exponent) and torch.equal(second.origin, self.origin)
        ):
            raise ValueError(f"{owner}: `second` was made for another grid; use refinement()")
        if second.pixels != self.pixels:
            raise ValueError(
                f"{owner}: the second pass saw {second.pixels} pixels, the first {self.pixels}; "
                "both passes must read the same data"
            )
        done = second.floor < self.bins
        if self.mode == "count":
            self.joint = torch.zeros(
                (self.num_channels, self.bins, self.num_concepts),
                dtype=second.joint.dtype,
                device=self.device,
            )
        idx = done.nonzero().squeeze(1)
        self.hist[idx] = second.hist[idx].to(self.device)
        self.joint = (
            self.joint.to(second.joint.dtype) if second.joint.dtype == torch.int64 else self.joint
        )
        self.joint[idx] = second.joint[idx].to(self.device, self.joint.dtype)
        self.floor[idx] = second.floor[idx].to(self.device)
        self.refined[idx] = True
        if self.mode == "count":
            self.mode = "stream"  # every unit now has concept counts above its floor

    # -- result -----------------------------------------------------------------------------
    def result(
        self,
        concepts: Sequence[Concept],
        *,
        layer: str = "",
        iou_threshold: float = 0.04,
        readout: Readout | Mapping[str, Any] | None = None,
        passes: int = 1,
        control: str = "",
    ) -> Dissection:
        """Thresholds, IoUs and labels from the counts.

        Args:
            concepts: The ``K`` concepts, in the masks' order.
            layer: The layer's name (for the result).
            iou_threshold: IoU a unit's best concept needs for a label.
            readout: Where the maps were read (stored in the result).
            passes: Passes made over the data (stored in the result).
            control: ``""``, or the kind of randomised control these counts come from.

        Returns:
            The :class:`Dissection`.

        Raises:
            ValueError: If nothing was counted or ``concepts`` has the wrong length.
            RuntimeError: If some units still need the second pass (:meth:`refinement`).
        """
        owner = "DissectionCounts.result"
        concepts = tuple(concepts)
        if len(concepts) != self.num_concepts or not all(isinstance(c, Concept) for c in concepts):
            raise ValueError(
                f"{owner}: `concepts` must be the {self.num_concepts} Concept objects of the "
                f"masks; got {len(concepts)} items"
            )
        iou_threshold = float(
            check_number(owner, "iou_threshold", iou_threshold, low=0.0, high=1.0)
        )
        if not self.pixels or self.size is None:
            raise ValueError(f"{owner}: no data was counted; call update() first")
        if bool(self.pending().any()):
            raise RuntimeError(
                f"{owner}: {int(self.pending().sum())} units need a second pass; run "
                "refinement() over the same data and absorb() it first"
            )
        limit = _rank(self.quantile, self.pixels)
        suffix = self._suffix()
        best_bin = ((suffix >= limit).sum(dim=1) - 1).clamp_min(0)
        chosen = torch.maximum(best_bin, self.floor.clamp(max=self.bins - 1))
        if bool((self.refined & (self.floor > best_bin) & (self.floor > 1)).any()):
            warnings.warn(
                f"{owner}: the second pass saw other activations than the first (the data or "
                "the model changed between the passes); some regions hold fewer than the top "
                f"{self.quantile:g} of the pixels (see top_fraction)",
                stacklevel=2,
            )
        chosen = torch.where(chosen == 0, torch.ones_like(chosen), chosen)  # at the minimum
        above = torch.arange(self.bins, device=self.device)[None, :] >= chosen[:, None]
        region = (self.hist * above).sum(dim=1)
        inter = (self.joint.to(torch.int64) * above[:, :, None]).sum(dim=1)
        union = region[:, None] + self.area[None, :] - inter
        iou = torch.where(union > 0, inter.double() / union.clamp_min(1).double(), 0.0)
        threshold = torch.ldexp((self.origin + chosen).double(), self.exponent)
        readout_info = readout.as_dict() if isinstance(readout, Readout) else dict(readout or {})
        h, w, mh, mw = self.size
        return Dissection(
            layer=layer,
            concepts=concepts,
            threshold=threshold.cpu().numpy(),
            top_fraction=(region.double() / self.pixels).cpu().numpy(),
            iou=iou.cpu().numpy(),
            intersection=inter.cpu().numpy(),
            region=region.cpu().numpy(),
            concept_area=self.area.cpu().numpy(),
            pixels=self.pixels,
            images=self.images,
            quantile=self.quantile,
            iou_threshold=iou_threshold,
            mask_size=(h, w),
            map_size=(mh, mw),
            bins=self.bins,
            passes=passes,
            readout=readout_info,
            control=control,
        )


# ------------------------------------------------------------------------------ data plumbing
def _is_shapes(data: Any) -> bool:
    return callable(getattr(data, "sample", None)) and hasattr(data, "class_names")


def _default_source(data: Any) -> ConceptSource | None:
    if isinstance(data, CachedConcepts):
        return data
    candidates = [data, getattr(data, "dataset", None)]
    candidates.append(getattr(candidates[-1], "dataset", None))
    for item in candidates:
        if item is not None and _is_shapes(item):
            return ShapesConcepts.for_dataset(item)
    return None


def _dataset_batches(dataset: Dataset, batch_size: int) -> Callable[[], Iterator[Any]]:
    get = dataset.sample if _is_shapes(dataset) else dataset.__getitem__  # type: ignore[attr-defined]
    total = len(dataset)  # type: ignore[arg-type]

    def batches() -> Iterator[Any]:
        for start in range(0, total, batch_size):
            yield default_collate([get(i) for i in range(start, min(total, start + batch_size))])

    return batches


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        moved = {k: _to_device(v, device) for k, v in value.items()}
        try:
            return type(value)(moved)  # type: ignore[call-arg]
        except TypeError:
            return moved
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_to_device(v, device) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _cast(inputs: Any, dtype: torch.dtype | None) -> Any:
    if dtype is not None and isinstance(inputs, Tensor) and inputs.is_floating_point():
        return inputs.to(dtype)
    return inputs


@dataclass
class _Plan:
    """Everything a pass needs, resolved once."""

    model: nn.Module
    source: ConceptSource
    batches: Callable[[], Iterator[Any]]
    run: Callable[[nn.Module, Any], Any]
    device: torch.device
    dtype: torch.dtype | None
    stop_early: bool
    expected_images: int | None
    sized: bool


def _resolve_data(
    data: Any, concepts: ConceptSource | None, batch_size: int, owner: str
) -> tuple[ConceptSource, Callable[[], Iterator[Any]], int | None, bool]:
    """The concept source, a batch-iterator factory, the images expected and whether sized."""
    source = concepts if concepts is not None else _default_source(data)
    if source is None:
        raise TypeError(
            f"{owner}: `concepts` is required unless `data` is a ShapesDataset; pass a "
            "ConceptSource such as ShapesConcepts, LabelMapConcepts or MaskConcepts "
            "(cnnviz.analysis.concepts)"
        )
    if not callable(source) or not isinstance(getattr(source, "concepts", None), tuple):
        raise TypeError(
            f"{owner}: `concepts` must be a ConceptSource (callable, with a `concepts` tuple); "
            f"got {type(source).__name__}"
        )
    if isinstance(data, IterableDataset):
        raise TypeError(
            f"{owner}: `data` is an IterableDataset of samples; wrap it in a DataLoader so it "
            "yields batches"
        )
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return source, _dataset_batches(data, batch_size), len(data), True  # type: ignore[arg-type]
    if isinstance(data, Iterable):
        if isinstance(data, Iterator):  # iter() itself may draw from the RNG (DataLoader)
            raise TypeError(
                f"{owner}: `data` is an iterator, which can be read only once; pass a "
                "re-iterable (a list of batches, a DataLoader) or a Dataset"
            )
        return source, lambda: iter(data), None, hasattr(data, "__len__")
    raise TypeError(
        f"{owner}: `data` must be a Dataset or an iterable of batches; got {type(data).__name__}"
    )


def _plan(
    model: nn.Module,
    data: Any,
    concepts: ConceptSource | None,
    batch_size: int,
    forward: Callable[[nn.Module, Any], Any] | None,
    device: torch.device | str | None,
    stop_early: bool,
) -> _Plan:
    owner = "dissect"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: `model` must be an nn.Module; got {type(model).__name__}")
    if forward is not None and not callable(forward):
        raise TypeError(f"{owner}: `forward` must be callable as forward(model, inputs)")
    source, batches, expected, sized = _resolve_data(data, concepts, batch_size, owner)
    target = torch.device(device) if device is not None else model_device(model)
    return _Plan(
        model=model,
        source=source,
        batches=batches,
        run=forward or (lambda m, x: m(x)),
        device=target,
        dtype=model_dtype(model),
        stop_early=stop_early,
        expected_images=expected,
        sized=sized,
    )


class CachedConcepts:
    """A data set with its concepts coded once: both the data and the concept source.

    Made by :func:`cache_concepts`. Iterating it yields ``(model_input, ConceptBatch)`` pairs;
    calling it with such a pair returns it unchanged. Pass it as ``data`` (``concepts`` may be
    left out) to dissect the same images again and again — every few epochs, the randomised
    control, one layer after another — without recomputing their concepts.

    Attributes:
        concepts: The concepts of the source it was made with.
        images: Number of images held.
    """

    def __init__(self, items: list[tuple[Any, ConceptBatch]], concepts: tuple[Concept, ...]):
        self.items = items
        self.concepts = concepts
        self.images = sum(coded.count for _, coded in items)

    def __iter__(self) -> Iterator[tuple[Any, ConceptBatch]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __call__(self, batch: tuple[Any, ConceptBatch]) -> tuple[Any, ConceptBatch]:
        """Return ``batch``: it already is ``(model_input, concepts)``."""
        return batch


def cache_concepts(
    data: Any,
    concepts: ConceptSource | None = None,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> CachedConcepts:
    """Read ``data`` once and code its concepts, for repeated dissections of the same images.

    Holds the model inputs and the concept codes (``G`` bytes per mask pixel, ``G`` groups of
    exclusive concepts: 4 for Shapes) on ``device``. The global RNG is forked while the data is
    read (a shuffling ``DataLoader`` changes nothing).

    Args:
        data: As for :func:`dissect`.
        concepts: As for :func:`dissect` (default: Shapes concepts for Shapes data).
        batch_size: Batch size when ``data`` is a ``Dataset``.
        device: Where to keep the batches (default: the CPU).

    Returns:
        A :class:`CachedConcepts` to pass as ``data``.

    Example:
        >>> cached = cache_concepts(ShapesDataset(1000, image_size=32, split="val"))
        >>> for epoch_model in checkpoints:
        ...     results = dissect_layers(epoch_model, layers, cached)
    """
    owner = "cache_concepts"
    batch_size = int(check_count(owner, "batch_size", batch_size))
    source, batches, _, _ = _resolve_data(data, concepts, batch_size, owner)
    target = torch.device(device) if device is not None else torch.device("cpu")
    items = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for batch in batches():
            inputs, coded = concept_batch(source, _to_device(batch, target), owner=owner)
            items.append((inputs, coded.to(target)))
    if not items:
        raise ValueError(f"{owner}: `data` yielded no batches")
    return CachedConcepts(items, tuple(source.concepts))


def _first_inputs(plan: _Plan) -> Any:
    for batch in plan.batches():
        inputs, _ = concept_batch(plan.source, _to_device(batch, plan.device), owner="dissect")
        return _cast(inputs, plan.dtype)
    raise ValueError("dissect: `data` yielded no batches")


def _run_pass(
    plan: _Plan,
    readouts: Mapping[str, Readout],
    counts: dict[str, DissectionCounts],
    make: Callable[[str, Tensor, int], DissectionCounts] | None,
    names: Sequence[str],
) -> None:
    """One pass over the data: every named layer's maps go to its counts (made on first use)."""
    current: dict[str, Any] = {"batch": None, "done": set()}
    wanted = set(names)

    def on_output(name: str, tensor: Tensor) -> None:
        if name not in wanted or name in current["done"]:
            return
        current["done"].add(name)
        if name not in counts:
            if make is None:
                return
            counts[name] = make(name, tensor, current["batch"].count)
        counts[name].update(tensor, current["batch"])
        if plan.stop_early and current["done"] >= wanted:
            raise _StopForward

    with ReadoutHooks(plan.model, [readouts[n] for n in names], on_output) as hooks:
        for batch in plan.batches():
            inputs, coded = concept_batch(
                plan.source, _to_device(batch, plan.device), owner="dissect"
            )
            current["batch"] = coded.to(plan.device)
            current["done"] = set()
            with contextlib.suppress(_StopForward):
                plan.run(plan.model, _cast(inputs, plan.dtype))
            missing = sorted(wanted - current["done"])
            if missing:
                why = "; ".join(f"{n}: {hooks.skipped[n]}" for n in missing if n in hooks.skipped)
                raise ValueError(
                    f"dissect: no maps were read for layer(s) {missing} in a forward pass"
                    + (f" ({why})" if why else "")
                    + "; dissect layers the forward pass runs"
                )


def dissect_layers(
    model: nn.Module,
    layers: Sequence[str] | None,
    data: Any,
    concepts: ConceptSource | None = None,
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    bins: int = 1024,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    device: torch.device | str | None = None,
    sync: bool = False,
    group: Any = None,
    stop_early: bool = True,
    control: str = "",
) -> dict[str, Dissection]:
    """Dissect several layers in the same pass(es) over the data (see :func:`dissect`).

    Args:
        model: The model (any ``nn.Module``; not changed).
        layers: Qualified names of conv or pooling layers with 2-D maps; ``None``: every
            ``Conv2d`` and 2-D pooling layer.
        data: The data, see :func:`dissect`.
        concepts: The concept source, see :func:`dissect`.
        quantile: See :func:`dissect`.
        iou_threshold: See :func:`dissect`.
        batch_size: See :func:`dissect`.
        bins: See :func:`dissect`.
        forward: See :func:`dissect`.
        device: See :func:`dissect`.
        sync: See :func:`dissect`.
        group: See :func:`dissect`.
        stop_early: See :func:`dissect`.
        control: Stored in the results (``randomised_control`` sets it).

    Returns:
        ``{layer: Dissection}`` in the order of ``layers``.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a layer is unknown (the message lists the valid names), has no 2-D
            maps, or the data is empty.
    """
    owner = "dissect"
    quantile = float(check_number(owner, "quantile", quantile, low=0.0, high=1.0, low_open=True))
    if quantile >= 1.0:
        raise ValueError(f"{owner}: `quantile` must be below 1; got {quantile!r}")
    iou_threshold = float(check_number(owner, "iou_threshold", iou_threshold, low=0.0, high=1.0))
    batch_size = int(check_count(owner, "batch_size", batch_size))
    bins = int(check_int(owner, "bins", bins, low=16, high=1 << 20))
    if not isinstance(stop_early, bool) or not isinstance(sync, bool):
        raise TypeError(f"{owner}: `stop_early` and `sync` must be True or False")
    plan = _plan(model, data, concepts, batch_size, forward, device, stop_early)
    if layers is None:
        names = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) or type(m).__name__.endswith("Pool2d")
        ]
    elif isinstance(layers, str):
        names = [layers]
    else:
        names = list(layers)
    if not names:
        raise ValueError(
            f"{owner}: `layers` is empty and the model has no 2-D conv or pooling layer"
        )
    world = 1
    if sync:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world = dist.get_world_size(group)
    num_concepts = len(plan.source.concepts)

    with observe(model, extra_devices=[plan.device]), torch.no_grad():
        first = _first_inputs(plan)
        example: Any = first
        if forward is not None or not isinstance(first, Tensor):
            example = lambda: plan.run(model, first)  # noqa: E731
        readouts = find_readouts(model, example, names)
        counts: dict[str, DissectionCounts] = {}

        def make(name: str, tensor: Tensor, batch_count: int) -> DissectionCounts:
            if tensor.dim() != 4:
                raise ValueError(
                    f"{owner}: layer {name!r} gives maps of shape {tuple(tensor.shape)}; "
                    "dissection needs 2-D maps [N, C, H, W]"
                )
            expected = plan.expected_images
            if expected is None and plan.sized:
                expected = len(data) * batch_count
            return DissectionCounts(
                int(tensor.shape[1]),
                num_concepts,
                quantile=quantile,
                bins=bins,
                expected_images=expected * world if expected else None,
                device=tensor.device,
            )

        _run_pass(plan, readouts, counts, make, names)
        missing = [n for n in names if n not in counts]
        if missing:
            raise ValueError(f"{owner}: `data` yielded no batches for {missing}")
        if sync:
            for name in names:
                counts[name].sync(group)
        seconds = {n: counts[n].refinement() for n in names}
        todo = {n: s for n, s in seconds.items() if s is not None}
        if todo:
            _run_pass(plan, readouts, todo, None, list(todo))  # type: ignore[arg-type]
            for name, second in todo.items():
                if sync:
                    second.sync(group)
                counts[name].absorb(second)
        return {
            name: counts[name].result(
                plan.source.concepts,
                layer=name,
                iou_threshold=iou_threshold,
                readout=readouts[name],
                passes=2 if name in todo else 1,
                control=control,
            )
            for name in names
        }


def dissect(
    model: nn.Module,
    layer: str,
    data: Any,
    concepts: ConceptSource | None = None,
    *,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    batch_size: int = 64,
    bins: int = 1024,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    device: torch.device | str | None = None,
    sync: bool = False,
    group: Any = None,
    stop_early: bool = True,
) -> Dissection:
    """Network Dissection of one layer: each unit's threshold, best concept, IoU and runner-up.

    Each unit's maps are read after the normalisation and activation that follow its conv
    (:func:`~cnnviz.analysis.readout.find_readouts`), upsampled bilinearly to the masks'
    resolution, thresholded at the unit's top-``quantile`` value over the whole data set and
    compared with every concept by IoU (module docstring: algorithm and accuracy). One pass
    over the data when its length is known (a second one for the few units that need it), on
    ``device``, in memory independent of the data set's size. Runs under
    :func:`~cnnviz.analysis.guard.observe`: the model, its BatchNorm buffers, parameters'
    ``.grad`` and the global RNG streams are as before, and no hook is left, also on error.

    Args:
        model: The model (any ``nn.Module``; not changed).
        layer: Qualified name of a conv or pooling layer with 2-D maps.
        data: A ``Dataset`` (batched here with ``batch_size``, in index order; a
            ``ShapesDataset`` yields ``(images, labels, masks)``), a re-iterable of batches
            (a ``DataLoader``, a list; each batch goes to ``concepts``), or a
            :class:`CachedConcepts` (:func:`cache_concepts`: concepts coded once, for
            repeated dissections of the same images).
        concepts: A :class:`~cnnviz.analysis.concepts.ConceptSource` turning a batch into
            ``(model_input, masks)``; default: :class:`~cnnviz.analysis.concepts.ShapesConcepts`
            when ``data`` is a ``ShapesDataset`` (or a loader over one, through
            :func:`~cnnviz.analysis.concepts.with_masks`).
        quantile: Top share ``q`` of each unit's activations that forms its region (0.005).
        iou_threshold: IoU the best concept needs to label a unit (0.04).
        batch_size: Batch size when ``data`` is a ``Dataset``.
        bins: Histogram bins per unit (precision of the threshold; memory
            ``C · bins · (8 + 4 K)`` bytes).
        forward: ``forward(model, model_input)`` runs the model (default ``model(input)``).
        device: Where to count (default: the model's device); batches are moved there.
        sync: Merge the counts of every DDP rank (each rank passes its share of the data;
            call on every rank). All ranks get the same result.
        group: Process group for ``sync``.
        stop_early: End each forward pass once the layer was read (its output is unused).

    Returns:
        The layer's :class:`Dissection`.

    Raises:
        TypeError: If an argument has the wrong type (a one-shot iterator as ``data``, no
            ``concepts`` for data other than Shapes...).
        ValueError: If the layer is unknown (the message lists the valid names), has no 2-D
            maps, the data is empty or the maps are not finite.

    Example:
        >>> ds = ShapesDataset(1000, image_size=32, split="val")
        >>> result = dissect(model, "features.c3", ds)
        >>> print(result.summary())
        features.c3: 9/16 units labelled (IoU >= 0.04); unique detectors: object 4, ...
    """
    if not isinstance(layer, str):
        raise TypeError(
            f"dissect: `layer` must be a layer name (str); got {type(layer).__name__}. Use "
            "dissect_layers() for several layers"
        )
    return dissect_layers(
        model,
        [layer],
        data,
        concepts,
        quantile=quantile,
        iou_threshold=iou_threshold,
        batch_size=batch_size,
        bins=bins,
        forward=forward,
        device=device,
        sync=sync,
        group=group,
        stop_early=stop_early,
    )[layer]


# ------------------------------------------------------------------------ randomised control
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
    cuda = sorted({d.index or 0 for d in model_devices(twin) if d.type == "cuda"})
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
