"""Top-k dataset patches: per channel, the inputs (and positions) that excite it most.

:class:`TopKActivations` streams over a dataset batch by batch and keeps, for every channel of a
layer, the ``k`` strongest activations with their sample index and position, in ``O(C·k)``
memory on the activations' device. The order is total and deterministic — value (descending),
then sample index, then position (ascending) — so merging partial results (two halves of a data
set, or the ranks of a DDP run via :meth:`TopKActivations.sync`) gives exactly the result of a
single pass. With the layer's receptive field, :func:`crop_patch` cuts the image patch each unit
sees (Zeiler & Fergus 2014, Fig. 2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from cnnviz._checks import check_int
from cnnviz.analysis.receptive_field import ReceptiveField

__all__ = ["TopKActivations", "TopKEntry", "crop_patch"]

_LOW = 1 << 32
_INVALID = torch.iinfo(torch.int64).max


class TopKEntry(NamedTuple):
    """One of a channel's top activations.

    Attributes:
        value: The activation.
        sample: Index of the input in the data set (as given to ``update``).
        position: Unit index in the layer's output: ``(row, column)`` or ``(position,)``.
    """

    value: float
    sample: int
    position: tuple[int, ...]


def _order_key(values: torch.Tensor) -> torch.Tensor:
    """Map floats to int64 keys with the same order (NaN lowest, -0.0 == +0.0)."""
    v = values.float()
    v = torch.where(torch.isnan(v), torch.full_like(v, float("-inf")), v) + 0.0
    bits = v.view(torch.int32).to(torch.int64)
    return torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


def _check_int(name: str, value: Any, minimum: int) -> int:
    return int(check_int(None, name, value, low=minimum))  # type: ignore[arg-type]


class TopKActivations:
    """Streaming per-channel top-k of a layer's activations over a data set.

    Args:
        num_channels: Channels of the layer (``C``).
        k: How many activations to keep per channel.
        one_per_sample: Keep at most one entry per input and channel (its strongest position),
            as in Zeiler & Fergus' "top 9 images". With ``False`` every position competes.
        device: Where to keep the state; default: the device of the first ``update``.

    Ties are broken by sample index, then by position (smaller first), so any split of the
    data merged with :meth:`merge` gives exactly the single-pass result. Merging is idempotent:
    an entry seen twice (same sample, and same position unless ``one_per_sample``) counts once.
    Within one ``update`` the sample indices must be unique.

    Example:
        >>> top = TopKActivations(num_channels=96, k=9)
        >>> for images, indices in loader:
        ...     top.update(capture(images), indices)
        >>> top.entries(channel=3)[0]
        TopKEntry(value=4.2, sample=1523, position=(17, 20))
    """

    def __init__(
        self,
        num_channels: int,
        k: int = 9,
        *,
        one_per_sample: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_channels = _check_int("num_channels", num_channels, 1)
        self.k = _check_int("k", k, 1)
        if not isinstance(one_per_sample, bool):
            raise TypeError(f"`one_per_sample` must be a bool; got {one_per_sample!r}")
        self.one_per_sample = one_per_sample
        self._device = torch.device(device) if device is not None else None
        self.spatial_shape: tuple[int, ...] | None = None
        self._alloc(self._device or torch.device("cpu"))

    # -- state ---------------------------------------------------------------------------
    def _alloc(self, device: torch.device) -> None:
        shape = (self.num_channels, self.k)
        self.values = torch.full(shape, float("-inf"), device=device)
        self.samples = torch.full(shape, -1, dtype=torch.int64, device=device)
        self.positions = torch.full(shape, -1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Forget everything seen so far (keeps the device)."""
        self.spatial_shape = None
        self._alloc(self.values.device)

    def to(self, device: torch.device | str) -> TopKActivations:
        """Move the state to ``device`` (in place); returns ``self``."""
        self._device = torch.device(device)
        self.values = self.values.to(device)
        self.samples = self.samples.to(device)
        self.positions = self.positions.to(device)
        return self

    @property
    def count(self) -> torch.Tensor:
        """Number of valid entries per channel, ``[C]``."""
        return (self.samples >= 0).sum(dim=1)

    def state(self) -> dict[str, torch.Tensor]:
        """The state as plain tensors of fixed shapes (for ``all_gather`` and checkpoints).

        Returns:
            ``values [C, k]`` (float32, ``-inf`` where empty), ``samples [C, k]`` and
            ``positions [C, k]`` (int64, ``-1`` where empty; positions are flat indices into
            the spatial output), and ``spatial_shape [3]`` (int64: number of spatial axes, then
            the sizes, zero-padded; all zeros before the first update).
        """
        shape = torch.zeros(3, dtype=torch.int64, device=self.values.device)
        if self.spatial_shape is not None:
            shape[0] = len(self.spatial_shape)
            for i, n in enumerate(self.spatial_shape):
                shape[1 + i] = n
        return {
            "values": self.values.clone(),
            "samples": self.samples.clone(),
            "positions": self.positions.clone(),
            "spatial_shape": shape,
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, torch.Tensor], *, one_per_sample: bool = True
    ) -> TopKActivations:
        """Rebuild a :class:`TopKActivations` from :meth:`state`."""
        values = state["values"]
        top = cls(values.shape[0], values.shape[1], one_per_sample=one_per_sample)
        top._load(state)
        return top

    def _load(self, state: Mapping[str, torch.Tensor]) -> None:
        self.values = state["values"].float().clone()
        self.samples = state["samples"].long().clone()
        self.positions = state["positions"].long().clone()
        self.spatial_shape = self._shape_from(state)

    @staticmethod
    def _shape_from(state: Mapping[str, torch.Tensor]) -> tuple[int, ...] | None:
        raw = [int(v) for v in state["spatial_shape"].tolist()]
        return tuple(raw[1 : 1 + raw[0]]) if raw[0] else None

    def _check_shape(self, shape: tuple[int, ...], argument: str) -> None:
        if self.spatial_shape is None:
            self.spatial_shape = shape
        elif self.spatial_shape != shape:
            raise ValueError(
                f"`{argument}`: spatial shape {shape} differs from the {self.spatial_shape} seen "
                "before; use one TopKActivations per layer and input size"
            )

    # -- updates -------------------------------------------------------------------------
    def update(self, activations: torch.Tensor, sample_indices: torch.Tensor) -> None:
        """Add one batch.

        Runs with torch ops on the activations' device; nothing is copied to the host.

        Args:
            activations: ``[N, C, H, W]`` or ``[N, C, L]`` (detached or not; not modified).
            sample_indices: ``[N]`` integer data-set indices of the batch's inputs, unique
                within the batch.

        Raises:
            TypeError: If an argument is not a tensor of the right kind.
            ValueError: If shapes do not match ``num_channels`` / each other / earlier batches,
                or indices are negative or repeated.
        """
        if not isinstance(activations, torch.Tensor) or activations.dim() not in (3, 4):
            raise TypeError(
                "`activations` must be a tensor [N, C, H, W] or [N, C, L]; got "
                f"{getattr(activations, 'shape', type(activations).__name__)}"
            )
        if activations.shape[1] != self.num_channels:
            raise ValueError(
                f"`activations` has {activations.shape[1]} channels; this TopKActivations was "
                f"built for num_channels={self.num_channels}"
            )
        if not isinstance(sample_indices, torch.Tensor):
            sample_indices = torch.as_tensor(sample_indices)
        if sample_indices.dim() != 1 or sample_indices.shape[0] != activations.shape[0]:
            raise ValueError(
                f"`sample_indices` must be a 1-D tensor of {activations.shape[0]} indices (one "
                f"per input); got shape {tuple(sample_indices.shape)}"
            )
        if sample_indices.is_floating_point() or sample_indices.is_complex():
            raise TypeError("`sample_indices` must hold integers")
        n = activations.shape[0]
        if n == 0:
            return
        device = activations.device
        if self.values.device != device:
            self.to(device)
        samples = sample_indices.to(device=device, dtype=torch.int64)
        sorted_samples, order = torch.sort(samples, stable=True)
        if n > 1 and bool((sorted_samples[1:] == sorted_samples[:-1]).any()):
            raise ValueError("`sample_indices` must be unique within a batch")
        if bool(sorted_samples[0] < 0):
            raise ValueError("`sample_indices` must be >= 0")
        self._check_shape(tuple(activations.shape[2:]), "activations")
        acts = activations.detach().reshape(n, self.num_channels, -1)
        p = acts.shape[2]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=device)  # rank of each input by sample index
        key = _order_key(acts)  # [N, C, P]
        if self.one_per_sample:
            pos_key = key * _LOW + (p - 1 - torch.arange(p, device=device))
            pos = pos_key.argmax(dim=2)  # strongest position, smallest on ties: [N, C]
            vals = acts.gather(2, pos.unsqueeze(2)).squeeze(2)
            cand = key.gather(2, pos.unsqueeze(2)).squeeze(2) * _LOW + (n - 1 - rank)[:, None]
            cand, vals, pos = cand.t(), vals.t(), pos.t()  # [C, N]
            cand_samples = samples[None, :].expand(self.num_channels, n)
        else:
            if n * p > _LOW:
                raise ValueError(
                    f"`activations`: {n}·{p} candidates per channel exceed 2^32; pass smaller "
                    "batches"
                )
            low = n * p - 1 - (rank[:, None] * p + torch.arange(p, device=device)[None, :])
            cand = (key * _LOW + low[:, None, :]).permute(1, 0, 2).reshape(self.num_channels, -1)
            vals = acts.permute(1, 0, 2).reshape(self.num_channels, -1)
            pos = torch.arange(p, device=device).repeat(n)[None, :].expand_as(cand)
            cand_samples = samples.repeat_interleave(p)[None, :].expand_as(cand)
        kk = min(self.k, cand.shape[1])
        idx = cand.topk(kk, dim=1).indices
        self._absorb(
            vals.gather(1, idx).float(), cand_samples.gather(1, idx), pos.gather(1, idx).long()
        )

    def _absorb(self, values: torch.Tensor, samples: torch.Tensor, positions: torch.Tensor) -> None:
        """Merge candidate entries ``[C, m]`` into the state with the exact total order."""
        values = torch.cat([self.values, values.to(self.values.device)], dim=1)
        samples = torch.cat([self.samples, samples.to(self.values.device)], dim=1)
        positions = torch.cat([self.positions, positions.to(self.values.device)], dim=1)
        valid = _dedupe(samples, positions, values, samples >= 0, self.one_per_sample)
        values = torch.where(valid, values, float("-inf"))
        p = 1
        for n in self.spatial_shape or ():
            p *= n
        secondary = torch.where(valid, samples * p + positions, torch.full_like(samples, _INVALID))
        order = torch.sort(secondary, dim=1, stable=True).indices
        key = _order_key(values).gather(1, order)
        order = order.gather(1, torch.sort(key, dim=1, descending=True, stable=True).indices)
        keep = order[:, : self.k]
        self.values = values.gather(1, keep)
        self.samples = torch.where(valid.gather(1, keep), samples.gather(1, keep), -1)
        self.positions = torch.where(valid.gather(1, keep), positions.gather(1, keep), -1)
        self.values = torch.where(self.samples >= 0, self.values, float("-inf"))

    def merge(self, other: TopKActivations | Mapping[str, torch.Tensor]) -> None:
        """Merge another partial result (an instance or its :meth:`state`) into this one.

        Args:
            other: Results over *other* samples of the same layer.

        Raises:
            ValueError: If the channel counts or spatial shapes differ.
        """
        state = other.state() if isinstance(other, TopKActivations) else other
        values = state["values"]
        if values.dim() != 2 or values.shape[0] != self.num_channels:
            raise ValueError(
                f"`other` holds {values.shape[0] if values.dim() else '?'} channels; expected "
                f"{self.num_channels}"
            )
        shape = self._shape_from(state)
        if shape is not None:
            self._check_shape(shape, "other")
        self._absorb(values, state["samples"], state["positions"])

    def sync(self, group: Any = None) -> None:
        """All-gather every rank's state and merge (a collective: call it on every rank).

        Does nothing unless ``torch.distributed`` is initialised with more than one process.
        Afterwards every rank holds the global top-k.

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
        gathered: dict[str, list[torch.Tensor]] = {}
        for name, tensor in mine.items():
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.contiguous(), group=group)
            gathered[name] = parts
        for rank in range(world):
            if rank != dist.get_rank(group):
                self.merge({name: parts[rank] for name, parts in gathered.items()})

    # -- reading -------------------------------------------------------------------------
    def _unravel(self, flat: int) -> tuple[int, ...]:
        if self.spatial_shape is None:
            return (flat,)
        out = []
        for n in reversed(self.spatial_shape):
            out.append(flat % n)
            flat //= n
        return tuple(reversed(out))

    def entries(self, channel: int) -> list[TopKEntry]:
        """The channel's entries, strongest first (copied to the host).

        Raises:
            ValueError: If ``channel`` is out of range.
        """
        if isinstance(channel, bool) or not isinstance(channel, int):
            raise TypeError(f"`channel` must be an int; got {channel!r}")
        if not 0 <= channel < self.num_channels:
            raise ValueError(f"`channel` must be in [0, {self.num_channels}); got {channel}")
        values = self.values[channel].tolist()
        samples = self.samples[channel].tolist()
        positions = self.positions[channel].tolist()
        return [
            TopKEntry(float(v), int(s), self._unravel(int(p)))
            for v, s, p in zip(values, samples, positions, strict=True)
            if s >= 0
        ]

    def patches(
        self,
        channel: int,
        receptive_field: ReceptiveField,
        get_image: Callable[[int], torch.Tensor],
        *,
        pad_value: float = 0.0,
        max_size: int | None = None,
    ) -> torch.Tensor:
        """Crop the input patch seen by each of the channel's top units.

        Args:
            channel: The channel.
            receptive_field: The layer's receptive field (its output shape must match).
            get_image: Returns the input ``(C, H, W)`` (or ``(C, L)``) for a sample index.
            pad_value: Fill for the parts of a field outside the image.
            max_size: Patches whose field is larger than this per axis are downsampled while
                they are cropped (area averaging of the part inside the image): the cost and
                memory follow the image, not the field, which deep layers make many times
                larger than the image. ``None``: full size.

        Returns:
            ``[m, C, size_h, size_w]`` (``[m, C, size]`` for 1-D), ``m <= k`` valid entries, all
            the size of the unclipped field (times the downsampling scale).

        Raises:
            ValueError: If the receptive field's output shape differs from the activations'.
        """
        if self.spatial_shape is not None and tuple(receptive_field.output_spatial) != tuple(
            self.spatial_shape
        ):
            raise ValueError(
                f"`receptive_field` is for an output of {receptive_field.output_spatial}, but the "
                f"activations were {self.spatial_shape}; pass the same layer's field"
            )
        scale = 1.0
        if max_size is not None and max(receptive_field.size) > max_size:
            scale = max_size / max(receptive_field.size)
        crops = []
        for entry in self.entries(channel):
            region = list(receptive_field.region(*entry.position, clip=False))
            for a, size in enumerate(receptive_field.size):  # equal sizes, also if misaligned
                region[2 * a + 1] = region[2 * a] + size
            crops.append(
                crop_patch(get_image(entry.sample), tuple(region), pad_value=pad_value, scale=scale)
            )
        if not crops:
            image = get_image(0)
            sizes = [max(1, round(s * scale)) for s in receptive_field.size]
            return image.new_zeros((0, image.shape[0], *sizes))
        return torch.stack(crops)


def _dedupe(
    samples: torch.Tensor,
    positions: torch.Tensor,
    values: torch.Tensor,
    valid: torch.Tensor,
    one_per_sample: bool,
) -> torch.Tensor:
    """Validity mask keeping one entry per sample (or per sample and position) and channel.

    Duplicates only arise when partial results overlap (a state merged twice, a sample fed
    twice); the best one is kept (value, then smaller position), so merging is idempotent.
    """
    m = samples.shape[1]
    key = _order_key(values)
    pos_rank = torch.argsort(torch.argsort(positions, dim=1, stable=True), dim=1)
    best = key * _LOW + (m - pos_rank)
    same = (samples[:, :, None] == samples[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    if not one_per_sample:
        same &= positions[:, :, None] == positions[:, None, :]
    beaten = same & (best[:, None, :] > best[:, :, None])
    return valid & ~beaten.any(dim=2)


def crop_patch(
    image: torch.Tensor, region: Sequence[int], pad_value: float = 0.0, *, scale: float = 1.0
) -> torch.Tensor:
    """Crop ``region`` from ``image``, padding where the region leaves the image.

    Args:
        image: ``(C, H, W)``, ``(H, W)``, ``(C, L)`` with a 2-element region, or ``(L,)``.
        region: Half-open, possibly outside the image: ``(top, bottom, left, right)``, or
            ``(start, stop)`` for sequences, e.g. ``ReceptiveField.region(i, j, clip=False)``.
        pad_value: Value for the parts outside the image.
        scale: Downsample the patch by this factor (<= 1) as it is cropped: only the part
            inside the image is resampled (area averaging), so a field far larger than the
            image costs no more than the image. Integer inputs (token ids) are not scaled.

    Returns:
        A tensor of shape ``(C, bottom - top, right - left)`` (leading dims kept; each size
        times ``scale``, rounded, at least 1), so every patch of a layer has the same size.

    Raises:
        TypeError: If ``image`` is not a tensor or ``region`` is not a sequence of ints.
        ValueError: If ``region`` has the wrong length for ``image`` or an empty extent.

    Example:
        >>> crop_patch(torch.ones(3, 8, 8), (-2, 3, 6, 11)).shape
        torch.Size([3, 5, 5])
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`image` must be a torch.Tensor; got {type(image).__name__}")
    if not isinstance(region, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in region
    ):
        raise TypeError(f"`region` must be a tuple of ints; got {region!r}")
    nd = len(region) // 2
    if len(region) not in (2, 4) or image.dim() < nd:
        raise ValueError(
            f"`region` must be (top, bottom, left, right) for an image or (start, stop) for a "
            f"sequence; got {tuple(region)} for an image of shape {tuple(image.shape)}"
        )
    spatial = image.shape[image.dim() - nd :]
    lead = image.shape[: image.dim() - nd]
    sizes = [region[2 * a + 1] - region[2 * a] for a in range(nd)]
    if any(s <= 0 for s in sizes):
        raise ValueError(f"`region` {tuple(region)} is empty; stops must exceed starts")
    if not 0 < scale <= 1:
        raise ValueError(f"`scale` must be in (0, 1]; got {scale!r}")
    if scale < 1 and image.is_floating_point():
        return _scaled_crop(image, region, pad_value, scale, nd, spatial, lead)
    out = image.new_full((*lead, *sizes), pad_value)
    src, dst = [], []
    for a in range(nd):
        lo, hi = region[2 * a], region[2 * a + 1]
        a0, a1 = max(lo, 0), min(hi, spatial[a])
        if a0 >= a1:
            return out
        src.append(slice(a0, a1))
        dst.append(slice(a0 - lo, a1 - lo))
    out[(..., *dst)] = image[(..., *src)]
    return out


def _scaled_crop(
    image: torch.Tensor,
    region: Sequence[int],
    pad_value: float,
    scale: float,
    nd: int,
    spatial: Sequence[int],
    lead: Sequence[int],
) -> torch.Tensor:
    """:func:`crop_patch` at ``scale``: the in-image part resampled into a padded canvas."""
    import torch.nn.functional as F

    sizes = [max(1, round((region[2 * a + 1] - region[2 * a]) * scale)) for a in range(nd)]
    out = image.new_full((*lead, *sizes), pad_value)
    src, dst, target = [], [], []
    for a in range(nd):
        lo, hi = region[2 * a], region[2 * a + 1]
        a0, a1 = max(lo, 0), min(hi, spatial[a])
        if a0 >= a1:
            return out
        d0 = min(sizes[a] - 1, round((a0 - lo) * scale))
        d1 = max(d0 + 1, min(sizes[a], round((a1 - lo) * scale)))
        src.append(slice(a0, a1))
        dst.append(slice(d0, d1))
        target.append(d1 - d0)
    part = image[(..., *src)].float()
    flat = part.reshape(-1, 1, *part.shape[part.dim() - nd :])
    mode = "area" if all(t <= s for t, s in zip(target, flat.shape[2:], strict=True)) else "nearest"
    resized = F.interpolate(flat, size=tuple(target), mode=mode)
    out[(..., *dst)] = resized.reshape(*part.shape[: part.dim() - nd], *target).to(out.dtype)
    return out
