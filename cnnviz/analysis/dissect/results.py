"""The result of a dissection: :class:`Dissection` (one layer) and :class:`UnitLabel` (one unit)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from cnnviz._checks import check_number
from cnnviz.analysis.concepts import Concept


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
