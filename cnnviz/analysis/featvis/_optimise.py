"""The optimisation loop: Adam on the image parameters, and copies of a duplicate's images."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace

import torch
from torch import nn

from cnnviz.analysis.featvis._reading import _objective, _Plan, _Reader
from cnnviz.analysis.featvis._relu import _redirect_relu, _ReLUMode
from cnnviz.analysis.featvis._settings import _Settings
from cnnviz.analysis.featvis.image import _Image, _random_affines, _transform
from cnnviz.analysis.featvis.result import FeatVisResult
from cnnviz.analysis.guard import HookSet

_ADAM_EPS = 1.0  # relative to each image's gradient RMS: see _unit_rms


def _unit_rms(grad: torch.Tensor) -> torch.Tensor:
    """Scale each image's gradient to unit root-mean-square over its parameters.

    Adam is invariant to the gradient's scale except through its ``eps``; with unit-RMS
    gradients, ``eps`` is relative: a parameter whose gradient is far below the image's RMS
    moves in proportion to it instead of by a full step (see :mod:`cnnviz.analysis.featvis`).
    """
    dims = tuple(range(1, grad.dim()))
    rms = grad.pow(2).mean(dim=dims, keepdim=True).sqrt()
    return grad / rms.clamp(min=torch.finfo(grad.dtype).tiny)


def _optimise(
    model: nn.Module,
    cfg: _Settings,
    plan: _Plan,
    chosen: list[int],
    done_before: int = 0,
) -> tuple[FeatVisResult, int]:
    """Optimise one image per channel of ``chosen`` (inside the guarded window).

    Returns the result and the count of steps done, ``done_before`` included (what
    ``cfg.progress`` was last called with).
    """
    start = time.perf_counter()
    steps = cfg.steps
    generator = torch.Generator().manual_seed(cfg.seed)
    per_batch = cfg.batch_size or len(chosen)
    record = sorted({*range(0, steps, cfg.history_every), steps - 1})
    recorded = set(record)
    images, finals, histories, kept = [], [], [], []
    stopped_at: int | None = None
    done = done_before
    with contextlib.ExitStack() as stack:
        hooks = stack.enter_context(HookSet())
        if cfg.relu_redirect:  # before the read hooks: the read sees the redirected output
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    hooks.add(module.register_forward_hook(_redirect_relu))
            if plan.functional_relu:
                mode = _ReLUMode(count_only=False)
                mode.track(model, hooks)
                stack.enter_context(mode)
        read = stack.enter_context(_Reader(model, plan.readout))
        for first in range(0, len(chosen), per_batch):
            group = chosen[first : first + per_batch]
            if first and cfg.should_stop is not None and cfg.should_stop():
                stopped_at = steps  # the batches returned are complete; the rest never began
                break
            index = torch.tensor(group, device=cfg.device)
            image = _Image(cfg.param, len(group), cfg.shape, cfg.decorrelate, generator, cfg.device)
            optimizer = torch.optim.Adam([image.param], lr=cfg.lr, eps=_ADAM_EPS)
            if cfg.transforms:
                thetas = _random_affines(steps, len(group), *cfg.shape[1:], generator)
                thetas = thetas.to(cfg.device)
            history = []
            for step in range(steps):
                if cfg.should_stop is not None and cfg.should_stop():
                    stopped_at = step
                    break
                x = image()
                if cfg.transforms:
                    x = _transform(x, thetas[step])
                value = _objective(read(cfg.model_input(x)), index, plan.units)
                (grad,) = torch.autograd.grad(-value.sum(), image.param)
                image.param.grad = _unit_rms(grad)
                optimizer.step()
                if step in recorded:
                    history.append(value.detach())
                done += 1
                if cfg.progress is not None:
                    cfg.progress(done)
            with torch.no_grad():
                final = image()
                finals.append(_objective(read(cfg.model_input(final)), index, plan.units).cpu())
            images.append(final.float().cpu())
            histories.append(history)
            kept.extend(group)
            if stopped_at is not None:
                break
    rows = max(len(h) for h in histories)
    table = []
    for history, group_images in zip(histories, images, strict=True):
        block = torch.full((rows, group_images.shape[0]), math.nan)
        if history:
            block[: len(history)] = torch.stack(history).float().cpu()
        table.append(block)
    result = FeatVisResult(
        images=torch.cat(images),
        activations=torch.cat(finals),
        channels=kept,
        layer=plan.layer,
        objective="logit" if plan.layer is None else cfg.objective,
        param=cfg.param,
        mean=cfg.mean,
        std=cfg.std,
        history=torch.cat(table, dim=1),
        history_steps=record[:rows],
        seconds=time.perf_counter() - start,
        steps=steps,
        lr=float(cfg.lr),
        seed=cfg.seed,
        readout=plan.readout,
        units=plan.units,
        units_reason=plan.reason,
        stopped_at=stopped_at,
    )
    return result, done


def _copy(
    model: nn.Module, cfg: _Settings, plan: _Plan, source: FeatVisResult, chosen: list[int]
) -> FeatVisResult:
    """``source``'s images for ``chosen`` as this layer's result, measured on this layer."""
    start = time.perf_counter()
    where = [source.channels.index(c) for c in chosen]
    images = source.images[where]
    index = torch.tensor(chosen, device=cfg.device)
    with _Reader(model, plan.readout) as read, torch.no_grad():
        out = read(cfg.model_input(images.to(cfg.device)))
        values = _objective(out, index, plan.units).cpu()
    return replace(
        source,
        images=images,
        activations=values,
        channels=list(chosen),
        layer=plan.layer,
        history=source.history[:, where],
        seconds=time.perf_counter() - start,
        readout=plan.readout,
        units=plan.units,
        units_reason=plan.reason,
        same_as=source.layer,
    )
