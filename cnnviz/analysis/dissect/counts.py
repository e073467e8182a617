"""The streaming Network Dissection counts of one layer: :class:`DissectionCounts`.

Its lifecycle (settings, state for ``all_gather`` and checkpoints), merging of partial results
(:meth:`~DissectionCounts.merge`, :meth:`~DissectionCounts.sync` under DDP), the second pass
(:meth:`~DissectionCounts.refinement`, :meth:`~DissectionCounts.absorb`) and the result; the
per-batch update is inherited from :class:`~cnnviz.analysis.dissect._streaming._Streaming`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cnnviz._checks import check_count, check_int, check_number
from cnnviz.analysis.concepts import Concept
from cnnviz.analysis.dissect._streaming import _INT32_LIMIT, _MODES, Mode, _Streaming
from cnnviz.analysis.dissect.grid import _grid, _rank, _rebin
from cnnviz.analysis.dissect.results import Dissection
from cnnviz.analysis.readout import Readout


class DissectionCounts(_Streaming):
    """Streaming Network Dissection counts of one layer, mergeable across processes.

    Keeps, per unit, a histogram of its upsampled activations over ``bins`` power-of-two
    aligned bins and, per bin, how many of those pixels each concept holds (see the package
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
