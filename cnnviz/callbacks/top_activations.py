"""``TopActivations``: per channel, the dataset patches that excite it most (Zeiler & Fergus)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
)
from typing_extensions import override

from cnnviz.analysis.guard import HookSet
from cnnviz.analysis.layers import activation_after
from cnnviz.analysis.receptive_field import ReceptiveField, ReceptiveFieldError, receptive_fields
from cnnviz.analysis.topk import TopKActivations
from cnnviz.callbacks.base import Event, VizCallback, check_count
from cnnviz.figures.images import image_mosaic
from cnnviz.figures.topk import topk_figure
from cnnviz.loggers import log_figure, wants_figures

__all__ = ["TopActivations"]


def _first_tensor(item: Any) -> torch.Tensor | None:
    """The input of a batch or sample: the first tensor of a tuple/list, or ``x``/``input``."""
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    if isinstance(item, dict):
        for key in ("x", "input", "image"):
            if isinstance(item.get(key), torch.Tensor):
                return item[key]
    return None


def _first_loader(loaders: Any) -> Any:
    if isinstance(loaders, (list, tuple)):
        return loaders[0] if loaders else None
    if isinstance(loaders, dict):
        return next(iter(loaders.values()), None)
    return loaders


class TopActivations(VizCallback):
    """Keep each channel's ``k`` strongest activations over the validation set, with patches.

    While validation runs — no extra pass over the data — forward hooks on the selected layers
    feed a streaming :class:`~cnnviz.analysis.topk.TopKActivations` per layer (per channel the
    maximum over positions, reduced on the device, ``O(C·k)`` memory). Conv layers followed by
    an activation in the same ``nn.Sequential`` are read after it, as in ``ActivationMaps``.
    At the end of the validation epoch each winner's receptive field is cropped from its input
    image (unclipped, so every patch of a layer has the same size; outside the image it is
    ``pad_value``) and one ``topk`` record per layer is written: ``patches``
    ``[C, k, h, w, 3]`` (or ``[C, k, h, w]`` grey) float16 in [0, 1], ``values``, ``samples``
    (indices into the validation data set) and ``positions`` ``[C, k, 2]`` (``[C, k, 1]`` for
    1-D layers). Token-id models get ``tokens`` ``[C, k, l]`` (-1 outside the sequence) instead
    of patches.

    The hooks exist only during the validation epochs that end a logging epoch (and are removed
    at its end, on an exception, and in ``teardown``); other epochs cost an int comparison. The
    sanity-check validation is skipped unless ``log_on_start``. Sample indices are
    ``batch_idx * batch_size + offset`` through the loader's sampler: sequential, or under DDP
    Lightning's ``DistributedSampler``, whose index list maps each rank's batches back to the
    data set. Then every rank's results are merged (an all-gather, on every rank) and rank zero
    writes. Loaders with other samplers (shuffled validation) or iterable data sets cannot be
    mapped back: a warning says so and nothing is recorded. Only the first validation loader is
    watched.

    Args:
        layers: Layer names or glob patterns (default: every conv and pooling layer).
        module: Submodule to watch (default: the LightningModule).
        k: Activations (patches) kept per channel.
        every_n_epochs: Record the validation of every n-th epoch (default 1).
        max_channels: Channels per layer: the first ``max_channels`` (``None``: all).
        max_patch_size: Patches larger than this per axis are area-downsampled for the store
            (``None``: full size).
        post_activation: Read conv layers after their activation.
        pad_value: Display value of the parts of a field outside the image.
        log_on_start: Also record the sanity-check validation (the untrained model, over the
            batches it sees).
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        log_to_loggers: Send the patch mosaics to the trainer's loggers.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range; in ``setup``, if a layer name is unknown.

    Example:
        >>> trainer = Trainer(callbacks=[TopActivations(k=9, layers="net.features.c1")])
    """

    layer_kind = "all"

    def __init__(
        self,
        *,
        layers: str | Sequence[str] | None = None,
        module: str | None = None,
        k: int = 9,
        every_n_epochs: int | None = 1,
        max_channels: int | None = 16,
        max_patch_size: int | None = 64,
        post_activation: bool = True,
        pad_value: float = 0.5,
        log_on_start: bool = False,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
    ) -> None:
        super().__init__(
            layers=layers,
            module=module,
            every_n_epochs=every_n_epochs,
            every_n_steps=None,
            log_on_start=log_on_start,
            store_dir=store_dir,
            log_to_loggers=log_to_loggers,
        )
        check_count("TopActivations", "k", k)
        check_count("TopActivations", "max_channels", max_channels, allow_none=True)
        check_count("TopActivations", "max_patch_size", max_patch_size, allow_none=True)
        if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float)):
            raise TypeError(f"TopActivations: `pad_value` must be a float; got {pad_value!r}")
        if not 0 <= pad_value <= 1:
            raise ValueError(f"TopActivations: `pad_value` must be in [0, 1]; got {pad_value}")
        self.k = k
        self.max_channels = max_channels
        self.max_patch_size = max_patch_size
        self.post_activation = post_activation
        self.pad_value = float(pad_value)
        self._sources: dict[str, str] = {}
        self._hooks: HookSet | None = None
        self._tops: dict[str, TopKActivations] = {}
        self._full_channels: dict[str, int] = {}
        self._batch: torch.Tensor | None = None
        self._seen: set[str] = set()
        self._index_map: torch.Tensor | None = None
        self._batch_size = 0
        self._dataset: Any = None
        self._pending: dict[str, TopKActivations] = {}
        self._rf_cache: dict[tuple[int, ...], dict[str, ReceptiveField]] = {}
        self._warned: set[str] = set()

    @override
    def _state_fields(self) -> dict[str, Any]:
        return {**super()._state_fields(), "k": self.k, "max_channels": self.max_channels}

    @override
    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sources = {}
        for info in self.selected:
            after = None
            if self.post_activation and info.kind == "conv":
                after = activation_after(self.target, info.name)
            self._sources[info.name] = after or info.name

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"TopActivations: {message}")

    # -- the window: hooks during one validation epoch --------------------------------------
    def _due(self, trainer: pl.Trainer) -> bool:
        if self._target is None:  # not set up for fit (trainer.validate): nothing to do
            return False
        if trainer.sanity_checking:
            return self.log_on_start and self.events == 0 and trainer.global_step == 0
        return self.epoch_due(trainer)

    def _plan(self, trainer: pl.Trainer) -> bool:
        """Find the loader's data set, batch size and sample-index map; False if impossible."""
        loader = _first_loader(trainer.val_dataloaders)
        if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
            self._warn("loader", "the validation data is not a map-style DataLoader; skipped")
            return False
        sampler, batch_size = loader.sampler, loader.batch_size
        if batch_size is None:
            if not isinstance(loader.batch_sampler, BatchSampler):
                self._warn("sampler", "a custom `batch_sampler` cannot be mapped to indices")
                return False
            sampler, batch_size = loader.batch_sampler.sampler, loader.batch_sampler.batch_size
        if isinstance(sampler, SequentialSampler):
            self._index_map = None
        elif isinstance(sampler, DistributedSampler):  # deterministic: seed + epoch, own RNG
            with torch.random.fork_rng(devices=[]):
                self._index_map = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        else:
            self._warn(
                "sampler",
                f"validation samples come from a {type(sampler).__name__}, whose order cannot "
                "be mapped back to data-set indices; use a sequential validation loader",
            )
            return False
        self._dataset, self._batch_size = loader.dataset, batch_size
        return True

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due(trainer) or not self._plan(trainer):
            return
        self._tops, self._full_channels = {}, {}
        self._hooks = HookSet()
        for info in self.selected:
            module = self.target.get_submodule(self._sources[info.name])
            self._hooks.add(module.register_forward_hook(self._hook(info.name)))

    def _hook(self, name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            indices = self._batch
            if indices is None or name in self._seen:  # only the batch's first call counts
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
                return
            if out.shape[0] != indices.shape[0]:  # a forward on something else than the batch
                return
            self._seen.add(name)
            top = self._tops.get(name)
            if top is None:
                count = out.shape[1] if self.max_channels is None else self.max_channels
                top = TopKActivations(min(count, out.shape[1]), self.k, device=out.device)
                self._tops[name] = top
                self._full_channels[name] = out.shape[1]
            top.update(out.detach()[:, : top.num_channels], indices)

        return hook

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._hooks is None:
            return
        self._seen.clear()
        self._batch = None
        x = _first_tensor(batch)
        if dataloader_idx != 0 or x is None:
            return
        start, n = batch_idx * self._batch_size, x.shape[0]
        if self._index_map is None:
            indices = torch.arange(start, start + n)
        else:
            indices = self._index_map[start : start + n]
        if indices.shape[0] == n:
            self._batch = indices

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch = None

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hooks is None:
            return
        tops = self._tops
        self._close()
        if trainer.world_size > 1:
            self._sync(tops)  # a collective: every rank takes part, in the same order
        event = (
            Event("start", trainer.current_epoch, 0)
            if trainer.sanity_checking
            else Event("epoch", trainer.current_epoch, trainer.global_step)
        )
        self._pending = tops
        try:
            self._fire(trainer, pl_module, event)
        finally:
            self._pending = {}

    def _sync(self, tops: dict[str, TopKActivations]) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        mine = {name: top.num_channels for name, top in tops.items()}
        everyone: list[dict[str, int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        device = self.module_device(self.target)
        for info in self.selected:  # a rank that saw no batch joins with an empty state
            counts = [c[info.name] for c in everyone if c and info.name in c]
            if counts and info.name not in tops:
                tops[info.name] = TopKActivations(counts[0], self.k, device=device)
            if counts:
                tops[info.name].sync()

    def _close(self) -> None:
        if self._hooks is not None:
            self._hooks.remove()
        self._hooks = None
        self._batch = None
        self._seen.clear()
        self._tops = {}

    @override
    def release(self) -> None:
        self._close()  # hooks never outlive a failing validation (on_exception, teardown)
        self._pending = {}

    # -- lifecycle: no start event of its own; metrics as every callback -----------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_run(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_metrics(trainer)

    # -- the records -------------------------------------------------------------------------
    @override
    def log_event(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: Event) -> None:
        if self.store is None or not self._pending:
            return
        raws: dict[int, torch.Tensor] = {}
        dm = getattr(trainer, "datamodule", None)

        def get_raw(index: int) -> torch.Tensor:
            if index not in raws:
                with torch.random.fork_rng(devices=[]):  # random transforms: not training's RNG
                    x = _first_tensor(self._dataset[index])
                if x is None:
                    raise ValueError("TopActivations: validation samples hold no input tensor")
                raws[index] = x.detach().cpu()
            return raws[index]

        def get_image(index: int) -> torch.Tensor:
            return _display(get_raw(index), dm)

        figures = self.log_to_loggers and wants_figures(trainer.loggers)
        for info in self.selected:
            top = self._pending.get(info.name)
            if top is None or not int(top.count.max()):
                continue
            arrays, meta = self._arrays(info.name, top, get_raw, get_image)
            self.write("topk", arrays, event, layer=info.name, meta=meta)
            patches = arrays.get("patches")
            if patches is not None and self.log_to_loggers and trainer.loggers:
                log_figure(
                    trainer.loggers,
                    f"cnnviz/topk/{info.name}",
                    step=event.step,
                    image=partial(_mosaic, patches),
                    submit=self.store.submit,
                    figure=(
                        partial(
                            topk_figure,
                            patches.astype(np.float32),
                            arrays["values"],
                            layer=info.name,
                            channels=meta["channels"],
                            samples=arrays["samples"],
                        )
                        if figures
                        else None
                    ),
                )

    def _field(self, name: str, input_shape: tuple[int, ...]) -> ReceptiveField | None:
        if input_shape not in self._rf_cache:
            try:
                self._rf_cache[input_shape] = receptive_fields(self.target, input_shape)
            except ReceptiveFieldError as err:
                self._warn("rf", f"no receptive fields, so no patches (values kept): {err}")
                self._rf_cache[input_shape] = {}
        return self._rf_cache[input_shape].get(name)

    def _arrays(
        self, name: str, top: TopKActivations, get_raw: Any, get_image: Any
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        kk = int(top.count.max())
        values = top.values[:, :kk].float().cpu().numpy()
        samples = top.samples[:, :kk].cpu().numpy()
        flat = top.positions[:, :kk].cpu().numpy()
        positions = np.stack(np.unravel_index(np.maximum(flat, 0), top.spatial_shape), axis=-1)
        positions[samples < 0] = -1
        arrays: dict[str, np.ndarray] = {
            "values": np.where(samples >= 0, values, np.nan).astype(np.float32),
            "samples": samples,
            "positions": positions,
        }
        raw = get_raw(int(samples[samples >= 0][0]))
        rf = self._field(name, tuple(raw.shape))
        meta: dict[str, Any] = {
            "channels": list(range(top.num_channels)),
            "k": kk,
            "num_channels": self._full_channels.get(name, top.num_channels),
            "read_from": self._sources.get(name, name),
            "layer_type": type(self.target.get_submodule(name)).__name__,
            "rf_size": None if rf is None else list(rf.size),
        }
        if rf is None:
            return arrays, meta
        tokens = not raw.is_floating_point()
        pad = -1.0 if tokens else self.pad_value
        try:
            crops = [top.patches(c, rf, get_image, pad_value=pad) for c in range(len(values))]
        except ValueError as err:  # e.g. inputs of varying size: the field does not match
            self._warn(f"patch:{name}", f"no patches for {name!r}: {err}")
            return arrays, meta
        if tokens:
            out = np.full((len(crops), kk, *crops[0].shape[1:]), -1, dtype=np.int64)
            for c, crop in enumerate(crops):
                out[c, : len(crop)] = crop.numpy()
            arrays["tokens"] = out
            meta["tokens"] = True
            return arrays, meta
        arrays["patches"], meta["patch_scale"] = self._stack(crops, kk)
        return arrays, meta

    def _stack(self, crops: list[torch.Tensor], kk: int) -> tuple[np.ndarray, float]:
        """Per-channel crops ``[m, C, h, w]`` (or ``[m, C, l]``) as ``[C, k, h, w(, 3)]``."""
        first = crops[0]
        spatial = tuple(first.shape[2:]) if first.dim() == 4 else tuple(first.shape[1:])
        scale = 1.0
        if self.max_patch_size is not None and max(spatial) > self.max_patch_size:
            scale = self.max_patch_size / max(spatial)
            spatial = tuple(max(1, round(s * scale)) for s in spatial)
        colour = first.dim() == 4 and first.shape[1] == 3
        out = np.full((len(crops), kk, *spatial, *((3,) if colour else ())), self.pad_value)
        for c, crop in enumerate(crops):
            img = crop.float()
            if img.dim() == 4 and tuple(img.shape[2:]) != spatial:
                img = F.interpolate(img, size=spatial, mode="area")
            elif img.dim() == 3 and tuple(img.shape[1:]) != spatial:  # 1-D: rows are channels
                img = F.interpolate(img[:, None], size=spatial, mode="area")[:, 0]
            if img.dim() == 4:
                img = img.permute(0, 2, 3, 1) if colour else img[:, 0]
            out[c, : len(img)] = img.numpy()
        return out.astype(np.float16), scale


def _display(x: torch.Tensor, datamodule: Any) -> torch.Tensor:
    """One input as shown to people: ``[3|1, H, W]`` or ``[C, L]`` in [0, 1]; tokens as is."""
    if not x.is_floating_point():
        return x
    img = x.float()
    if img.dim() == 3 and img.shape[0] in (1, 3) and hasattr(datamodule, "denormalize"):
        return datamodule.denormalize(img[None])[0].clamp(0, 1)
    if img.dim() == 3 and img.shape[0] not in (1, 3):
        img = img.mean(dim=0, keepdim=True)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo).clamp_min(1e-12)


def _mosaic(patches: np.ndarray) -> np.ndarray:
    """Rows: channels, columns: their top-k patches, as an ``[H, W, 3]`` uint8 image."""
    c, k = patches.shape[:2]
    flat = patches.astype(np.float32).reshape(c * k, *patches.shape[2:])
    return image_mosaic(flat, columns=k, gap=1)[0]
