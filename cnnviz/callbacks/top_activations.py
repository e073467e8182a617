"""``TopActivations``: per channel, the dataset patches that excite it most (Zeiler & Fergus)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
)
from typing_extensions import override

from cnnviz.analysis.guard import is_compiled, observe
from cnnviz.analysis.modelio import Spec, cast_input, find_input
from cnnviz.analysis.readout import Readout, ReadoutHooks, raw_readout
from cnnviz.analysis.receptive_field import ReceptiveField, ReceptiveFieldError, receptive_fields
from cnnviz.analysis.topk import TopKActivations
from cnnviz.callbacks.base import Event, VizCallback, check_count, guarded, layer_options
from cnnviz.callbacks.budget import DEFAULT_SHARE, Plan
from cnnviz.callbacks.probe import first_loader
from cnnviz.figures.images import image_mosaic
from cnnviz.figures.topk import topk_figure
from cnnviz.loggers import log_figure, wants_figures

__all__ = ["TopActivations"]


def _first_tensor(item: Any, spec: Spec = None) -> torch.Tensor | None:
    """The model input of a batch or sample (see :func:`cnnviz.analysis.modelio.find_input`)."""
    try:
        return find_input(item, spec)[0]
    except ValueError:
        return None


class TopActivations(VizCallback):
    """Keep each channel's ``k`` strongest activations over the validation set, with patches.

    While validation runs — no extra pass over the data — forward hooks on the selected layers
    feed a streaming :class:`~cnnviz.analysis.topk.TopKActivations` per layer (per channel the
    maximum over positions, reduced on the device, ``O(C·k)`` memory: candidates, never
    activations). Conv layers are read after the activation that follows them, as in
    ``ActivationMaps``. At the end of the validation epoch each winner's receptive field is
    cropped from its input image (unclipped, so every patch of a layer has the same size; outside
    the image it is ``pad_value``) and one ``topk`` record per layer is written: ``patches``
    ``[C, k, h, w, 3]`` (or ``[C, k, h, w]`` grey) in [0, 1], ``values``, ``samples`` (indices
    into the validation data set) and ``positions`` ``[C, k, 2]`` (``[C, k, 1]`` for 1-D
    layers). Token-id models get ``tokens`` ``[C, k, l]`` (-1 outside the sequence) instead of
    patches.

    The hooks exist only during the validation epochs that end a logging epoch (and are removed
    at its end, on an exception, and in ``teardown``); other epochs cost an int comparison. The
    sanity-check validation is skipped unless ``log_on_start``. Sample indices are
    ``batch_idx * batch_size + offset`` through the loader's sampler: sequential, or under DDP
    Lightning's ``DistributedSampler``, whose index list maps each rank's batches back to the
    data set. Then every rank's results are merged (an all-gather, on every rank) and rank zero
    writes. Only the first validation loader is watched.

    When hooks on the validation pass would cost the user's training — a model compiled with
    ``torch.compile`` (hooks change dynamo's guards and force recompiles) — or the validation
    order cannot be mapped back to data-set indices (a shuffled loader), the callback instead
    runs its own eager pass over the first validation samples (by index, at most
    ``max_samples``) at the end of the logging epoch, on global rank zero.

    Args:
        layers: Layer names or glob patterns (default: every conv and pooling layer; the stage
            outputs of a deep network).
        module: Submodule to watch (default: the LightningModule).
        k: Activations (patches) kept per channel.
        every_n_epochs: Record the validation of every n-th epoch (default 1).
        max_channels: Channels per layer: the first ``max_channels`` (``None``: all).
        max_patch_size: Patches larger than this per axis are area-downsampled for the store
            (``None``: full size).
        max_samples: The most validation samples of the callback's own pass (when it needs
            one; see above).
        interior_only: Rank only units whose receptive field lies inside the image (no zero
            padding in their patches). Either way each entry's share of padding is recorded
            (``padding``) and the report marks it.
        post_activation: Read conv layers after their activation.
        pad_value: Display value of the parts of a field outside the image.
        log_on_start: Also record the sanity-check validation (the untrained model, over the
            batches it sees).
        store_dir: Run store directory (default ``<log_dir>/cnnviz``).
        log_to_loggers: Send the patch mosaics to the trainer's loggers.
        probe_input: Where the input is in a batch (key, index or function; shared by all
            cnnviz callbacks).
        budget: Share of the fit's time cnnviz may take; at the default ``layers`` and
            ``max_channels`` this callback watches fewer layers and channels, and skips
            epochs, to stay within its part. ``None``: no budget.
        strict: Raise on failures instead of warning (tests).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range; in ``setup``, if a layer name is unknown.

    Example:
        >>> trainer = Trainer(callbacks=[TopActivations(k=9, layers="net.features.c1")])
    """

    layer_kind = "all"
    needs = frozenset({"probe", "forward"})

    def __init__(
        self,
        *,
        layers: str | Sequence[str] | None = None,
        module: str | None = None,
        k: int = 9,
        every_n_epochs: int | None = 1,
        max_channels: int | None = 16,
        max_patch_size: int | None = 64,
        max_samples: int = 512,
        interior_only: bool = False,
        post_activation: bool = True,
        pad_value: float = 0.5,
        log_on_start: bool = False,
        store_dir: str | os.PathLike[str] | None = None,
        log_to_loggers: bool = True,
        probe_input: Spec = None,
        budget: float | None = DEFAULT_SHARE,
        strict: bool | None = None,
    ) -> None:
        super().__init__(
            layers=layers,
            module=module,
            every_n_epochs=every_n_epochs,
            every_n_steps=None,
            log_on_start=log_on_start,
            store_dir=store_dir,
            log_to_loggers=log_to_loggers,
            probe_input=probe_input,
            budget=budget,
            strict=strict,
        )
        check_count("TopActivations", "k", k)
        check_count("TopActivations", "max_channels", max_channels, allow_none=True)
        check_count("TopActivations", "max_patch_size", max_patch_size, allow_none=True)
        check_count("TopActivations", "max_samples", max_samples)
        if isinstance(pad_value, bool) or not isinstance(pad_value, (int, float)):
            raise TypeError(f"TopActivations: `pad_value` must be a float; got {pad_value!r}")
        if not 0 <= pad_value <= 1:
            raise ValueError(f"TopActivations: `pad_value` must be in [0, 1]; got {pad_value}")
        self.k = k
        self.max_channels = max_channels
        self.max_patch_size = max_patch_size
        self.max_samples = max_samples
        self.interior_only = interior_only
        self.post_activation = post_activation
        self._interior: dict[str, torch.Tensor] = {}
        self.pad_value = float(pad_value)
        self._readouts: dict[str, Readout] = {}
        self._hooks: ReadoutHooks | None = None
        self._mode: str | None = None  # "hooks" or "own" during a due validation epoch
        self._tops: dict[str, TopKActivations] = {}
        self._full_channels: dict[str, int] = {}
        self._batch: torch.Tensor | None = None
        self._seen: set[str] = set()
        self._index_map: torch.Tensor | None = None
        self._batch_size = 0
        self._dataset: Any = None
        self._collate: Any = None
        self._pending: dict[str, TopKActivations] = {}
        self._rf_cache: dict[tuple[int, ...], dict[str, ReceptiveField]] = {}
        self._own_pass = False
        self._hook_seconds = 0.0
        self._began = 0.0

    @override
    def _state_fields(self) -> dict[str, Any]:
        return {**super()._state_fields(), "k": self.k, "max_channels": self.max_channels}

    @override
    def on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._own_pass = is_compiled(pl_module)
        self._readouts = {}

    @override
    def prepare(self, trainer: pl.Trainer) -> None:
        super().prepare(trainer)
        if self.disabled is not None or self._readouts:
            return
        names = [i.name for i in self.selected]
        self._readouts = {n: raw_readout(self.target, n) for n in names}
        if self.post_activation and self.model_io is not None and self._probe is not None:
            assert self.session is not None
            self._readouts.update(
                self.session.readouts(self.target, names, self.model_io, self._probe)
            )

    def _warn(self, key: str, message: str) -> None:
        self.warn_once(key, message)

    # -- the budget ---------------------------------------------------------------------------
    @override
    def plans(self, trainer: pl.Trainer, event: Event) -> list[Plan]:
        """Fewer channels (at the default ``max_channels``), then fewer layers."""
        names = [i.name for i in self.selected]
        channel_options = [self.max_channels]
        if self.max_channels == 16:
            channel_options += [8, 4]
        plans = []
        for layers in layer_options(names, self._auto_layers, 2):
            for channels in channel_options:
                cuts = []
                if channels != self.max_channels:
                    cuts.append(
                        f"keeps the top patches of {channels} of {self.max_channels} channels"
                    )
                if len(layers) < len(names):
                    cuts.append(f"watches {len(layers)} of {len(names)} layers")
                units = len(layers) * (1 + (channels or 64) / 16)
                plans.append(Plan({"layers": layers, "channels": channels}, units, tuple(cuts)))
        return plans

    def _decide(self, trainer: pl.Trainer, event: Event) -> Plan | None:
        """The plan of this epoch, the same on every rank (rank zero decides)."""
        plans = self.plans(trainer, event)
        plan = self._choose(trainer, event)
        index = plans.index(plan) if plan in plans else -1
        if trainer.world_size > 1:
            index = trainer.strategy.broadcast(index, src=0)
        return plans[index] if index >= 0 else None

    # -- the window: hooks during one validation epoch --------------------------------------
    def _due(self, trainer: pl.Trainer) -> bool:
        if self._target is None:  # not set up for fit (trainer.validate): nothing to do
            return False
        if trainer.sanity_checking:
            return self.log_on_start and self.events == 0 and trainer.global_step == 0
        return self.epoch_due(trainer)

    def _plan_loader(self, trainer: pl.Trainer) -> bool:
        """Find the loader's data set, batch size and sample-index map; False if impossible."""
        loader = first_loader(trainer.val_dataloaders)
        if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
            self._warn("loader", "the validation data is not a map-style DataLoader; skipped")
            return False
        self._dataset, self._collate = loader.dataset, loader.collate_fn
        sampler, batch_size = loader.sampler, loader.batch_size
        if batch_size is None:
            if not isinstance(loader.batch_sampler, BatchSampler):
                self._warn("sampler", "a custom `batch_sampler`: top patches come from own pass")
                self._batch_size = 32
                return False
            sampler, batch_size = loader.batch_sampler.sampler, loader.batch_sampler.batch_size
        self._batch_size = batch_size
        if isinstance(sampler, SequentialSampler):
            self._index_map = None
        elif isinstance(sampler, DistributedSampler):  # deterministic: seed + epoch, own RNG
            with torch.random.fork_rng(devices=[]):
                self._index_map = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
        else:
            self._warn(
                "sampler",
                f"validation samples come from a {type(sampler).__name__}, whose order cannot "
                "be mapped back to data-set indices: the callback runs its own pass over the "
                "first validation samples instead",
            )
            return False
        return True

    @override
    @guarded
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self._pending = {}
        if not self._due(trainer):
            return
        if not self._readouts:  # the sanity check runs before train start
            self.prepare(trainer)
        if not self._readouts or self.disabled is not None:
            return
        event = self._event(trainer)
        plan = self._decide(trainer, event)
        if plan is None:
            self._postponed(event)
            return
        self.plan = plan
        self._hook_seconds = 0.0
        self._tops, self._full_channels = {}, {}
        if not self._plan_loader(trainer) or self._own_pass:
            if trainer.world_size > 1 and not self._own_pass:
                return  # an own pass would differ between ranks: nothing this epoch
            self._mode = "own"  # the work happens at the epoch's end
            return
        self._mode = "hooks"
        channels = self.plan.settings.get("channels", self.max_channels)
        names = self.plan.settings.get("layers", [i.name for i in self.selected])

        def on_output(name: str, out: torch.Tensor) -> None:
            indices = self._batch
            if indices is None or name in self._seen:  # only the batch's first call counts
                return
            if out.dim() not in (3, 4) or out.shape[0] != indices.shape[0]:
                return  # a forward on something else than the batch
            self._seen.add(name)
            self._update(name, out, indices, channels)

        hooks = ReadoutHooks(self.target, [self._readouts[n] for n in names], on_output)
        hooks.__enter__()
        self._hooks = hooks

    def _event(self, trainer: pl.Trainer) -> Event:
        if trainer.sanity_checking:
            return Event("start", trainer.current_epoch, 0)
        return Event("epoch", trainer.current_epoch, trainer.global_step)

    def _update(
        self, name: str, out: torch.Tensor, indices: torch.Tensor, channels: int | None
    ) -> None:
        clock = self.session.budget.clock if self.session is not None else None
        begin = clock() if clock is not None else 0.0
        if self.interior_only:
            mask = self._interior_mask(name, out)
            if mask is not None:
                out = out.masked_fill(~mask, float("-inf"))
        top = self._tops.get(name)
        if top is None:
            count = out.shape[1] if channels is None else channels
            top = TopKActivations(min(count, out.shape[1]), self.k, device=out.device)
            self._tops[name] = top
            self._full_channels[name] = out.shape[1]
        top.update(out.detach()[:, : top.num_channels].float(), indices.to(out.device))
        if clock is not None:
            self._hook_seconds += clock() - begin

    @override
    @guarded
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._mode != "hooks":
            return
        self._seen.clear()
        self._batch = None
        x = _first_tensor(batch, self.probe_input)
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
    @guarded
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
    @guarded
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._mode is None:
            return
        own = self._mode == "own"
        tops = self._tops
        hook_seconds = self._hook_seconds  # spent inside the validation steps
        self._close()
        assert self.session is not None
        budget = self.session.budget
        with budget.charge(self.state_key):
            begin = budget.clock()
            if own:
                if self.store is None:
                    return  # the own pass runs on global rank zero only
                tops = self._run_own_pass(trainer)
            elif trainer.world_size > 1:
                self._sync(tops)  # a collective: every rank takes part, in the same order
            self._pending = tops
            event = self._event(trainer)
            self._last_step = event.step
            self.events += 1
            try:
                self.log_event(trainer, pl_module, event)
            finally:
                self._pending = {}
            self.cost.observe(self.plan.units, budget.clock() - begin + hook_seconds)
        budget.add(self.state_key, hook_seconds)

    def _run_own_pass(self, trainer: pl.Trainer) -> dict[str, TopKActivations]:
        """The top-k over the first validation samples, by index, in one eager pass."""
        if self._dataset is None:
            return {}
        assert self.session is not None
        probe = self.session.probe(trainer, None, 1, self.name)
        io = self.session.io(self.target, probe)
        total = min(len(self._dataset), self.max_samples)
        size = max(1, self._batch_size or 32)
        self._tops, self._full_channels = {}, {}
        names = self.plan.settings.get("layers", [i.name for i in self.selected])
        channels = self.plan.settings.get("channels", self.max_channels)

        def on_output(name: str, out: torch.Tensor) -> None:
            if self._batch is None or name in self._seen:
                return
            if out.dim() in (3, 4) and out.shape[0] == self._batch.shape[0]:
                self._seen.add(name)
                self._update(name, out, self._batch, channels)

        readouts = [self._readouts[n] for n in names]
        with observe(self.target), torch.no_grad(), ReadoutHooks(self.target, readouts, on_output):
            for start in range(0, total, size):
                if trainer.received_sigterm:
                    break
                index = list(range(start, min(total, start + size)))
                with torch.random.fork_rng(devices=[]):
                    batch = (self._collate or torch.utils.data.default_collate)(
                        [self._dataset[i] for i in index]
                    )
                x, _ = find_input(batch, self.probe_input)
                self._seen.clear()
                self._batch = torch.as_tensor(index)
                io.forward(self.target, batch, cast_input(x, self.target))
            self._batch = None
        tops, self._tops = self._tops, {}
        return tops

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
            self._hooks.__exit__(None, None, None)
        self._hooks = None
        self._mode = None
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
        events, self.log_on_start = self.log_on_start, False  # its start is the sanity check
        try:
            super().on_train_start(trainer, pl_module)
        finally:
            self.log_on_start = events

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.session is not None:
            self.session.write_metrics(trainer, self)

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
                    x = _first_tensor(self._dataset[index], self.probe_input)
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
            record = self._record(info.name, top, get_raw, get_image)
            self.put(record, event, layer=info.name)
            patches = record.patches
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
                            patches,
                            record.values,
                            layer=info.name,
                            channels=list(record.channels),
                            samples=record.samples,
                        )
                        if figures
                        else None
                    ),
                )

    def _interior_mask(self, name: str, out: torch.Tensor) -> torch.Tensor | None:
        if name not in self._interior:
            rf = None
            if self._probe is not None:
                rf = self._field(name, tuple(self._probe.x.shape[1:]))
            if rf is None or tuple(rf.output_spatial) != tuple(out.shape[2:]):
                self._warn("interior", f"no receptive field of {name}: every unit is ranked")
                return None
            self._interior[name] = rf.interior_mask().to(out.device)
            if not bool(self._interior[name].any()):
                self._warn(f"interior:{name}", f"no unit of {name} sees only the image")
        return self._interior[name]

    def _fields_by_parts(self, input_shape: tuple[int, ...]) -> dict[str, ReceptiveField]:
        """Fields of the whole module, else of its parts that see the input (shared, once)."""
        if self.session is None:
            return receptive_fields(self.target, input_shape)
        probe = self._probe
        if probe is not None and tuple(probe.x.shape[1:]) != tuple(input_shape):
            probe = None
        fields, first, _ = self.session.fields(self.target, input_shape, probe, self.model_io)
        if not fields:
            raise ReceptiveFieldError(str(first or "no part of the model takes the input"))
        return fields

    def _field(self, name: str, input_shape: tuple[int, ...]) -> ReceptiveField | None:
        if input_shape not in self._rf_cache:
            try:
                self._rf_cache[input_shape] = self._fields_by_parts(input_shape)
            except (ReceptiveFieldError, ValueError, RuntimeError, TypeError, LookupError) as err:
                self._warn(
                    "rf",
                    f"no receptive fields, so no patches (values kept): {err}. A model whose "
                    "forward takes the whole batch: pass `module=` for the submodule that takes "
                    "the input tensor",
                )
                self._rf_cache[input_shape] = {}
        return self._rf_cache[input_shape].get(name)

    def _record(self, name: str, top: TopKActivations, get_raw: Any, get_image: Any) -> Any:
        """The layer's ``topk`` record (patches cut from the inputs where the field is known)."""
        from cnnviz.recording import topk_record

        samples = top.samples[:, : int(top.count.max())]
        first = int(samples[samples >= 0][0])
        rf = self._field(name, tuple(get_raw(first).shape))
        kw: dict[str, Any] = {
            "pad_value": self.pad_value,
            "max_patch_size": self.max_patch_size,
            "num_channels": self._full_channels.get(name, top.num_channels),
            "readout": self._readouts.get(name),
            "layer_type": type(self.target.get_submodule(name)).__name__,
            "interior_only": self.interior_only,
        }
        try:
            return topk_record(top, rf, get_raw, get_image, **kw)
        except ValueError as err:  # e.g. inputs of varying size: the field does not match
            self._warn(f"patch:{name}", f"no patches for {name!r}: {err}")
            return topk_record(top, None, get_raw, get_image, **kw)


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
