"""The streaming update of :class:`~cnnviz.analysis.dissect.DissectionCounts`.

:class:`_Streaming` holds the per-unit state arrays and adds one batch to them: it grows each
unit's range (re-binning exactly), lifts the floors below which pixels cannot reach the
threshold, upsamples only the maps and rows that reach them, and counts the pixels above
against every concept group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from cnnviz.analysis.concepts import ConceptBatch
from cnnviz.analysis.dissect.grid import _cell_sizes, _grid, _matrix, _rank, _rebin

if TYPE_CHECKING:
    from cnnviz.analysis.dissect.counts import DissectionCounts


Mode = Literal["stream", "count", "fixed"]
_MODES: tuple[Mode, ...] = ("stream", "count", "fixed")

#: Floors are kept at multiples of this many bins, so the range may grow 4x after a floor
#: was set without merging a complete bin with an incomplete one.
_ALIGN = 4
#: Upsampled elements processed at a time (bounds the working memory: ~16 MiB of float32).
_BLOCK_ELEMENTS = 1 << 22
_INT32_LIMIT = (1 << 31) - 1


class _Streaming:
    """The state arrays of :class:`~cnnviz.analysis.dissect.DissectionCounts` and its update.

    A mixin: ``DissectionCounts.__init__`` checks and sets the settings, then calls
    :meth:`_alloc`; lifecycle, merging, the second pass and the result live there.
    """

    num_channels: int
    num_concepts: int
    quantile: float
    bins: int
    expected_images: int | None
    mode: Mode

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
