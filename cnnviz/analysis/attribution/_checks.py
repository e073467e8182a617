"""Argument checking: every message names the argument and the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cnnviz.analysis.attribution.methods import METHOD_SPECS, METHODS, MethodSpec
from cnnviz.analysis.attribution.results import InputKind


def check_inputs(inputs: Any) -> InputKind:
    """Classify ``inputs`` as image, float sequence or token-id batch, or raise saying why not."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"`inputs` must be a torch.Tensor batch; got {type(inputs).__name__}")
    shape = tuple(inputs.shape)
    if inputs.dtype == torch.bool or inputs.is_complex():
        raise TypeError(
            f"`inputs` must be a floating point tensor (or integer token ids); got {inputs.dtype}"
        )
    if not inputs.is_floating_point():
        if inputs.ndim == 2 and shape[0] > 0 and shape[1] > 0:
            return "tokens"
        if inputs.ndim in (3, 4):
            raise TypeError(
                f"`inputs` must be a floating point tensor for images (N, C, H, W) or sequences "
                f"(N, C, L); got {inputs.dtype} of shape {shape}. Convert 8-bit images with "
                "inputs.float() / 255. (Integer inputs of shape (N, L) are read as token ids.)"
            )
        raise ValueError(
            f"`inputs`: integer inputs are read as token ids and must have shape (N, L) with "
            f"N, L >= 1; got {inputs.dtype} of shape {shape}. "
            + ("Add the batch dimension with inputs[None]." if inputs.ndim == 1 else "")
        )
    if inputs.ndim in (3, 4) and shape[0] > 0:
        return "image" if inputs.ndim == 4 else "sequence"
    if inputs.ndim in (3, 4):
        raise ValueError(f"`inputs` must be a non-empty batch; got shape {shape}")
    if inputs.ndim == 2:
        hint = (
            "If these are token ids, pass them as integers (inputs.long()); if this is one "
            "(C, L) sequence, add the batch dimension with inputs[None]; a single-channel batch "
            "(N, L) needs inputs[:, None]."
        )
    elif inputs.ndim < 2:
        hint = "Add the missing batch and channel dimensions (e.g. inputs[None, None])."
    else:
        hint = "Only 2-D (N, C, H, W) and 1-D (N, C, L) inputs are supported."
    raise ValueError(
        "`inputs` must be a non-empty float batch of shape (N, C, H, W) or (N, C, L), or "
        f"integer token ids (N, L); got a {inputs.dtype} tensor of shape {shape}. {hint}"
    )


def check_budget(memory_budget_mb: Any) -> None:
    if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, (int, float)):
        raise TypeError(f"`memory_budget_mb` must be a number; got {memory_budget_mb!r}")
    if not memory_budget_mb > 0:
        raise ValueError(f"`memory_budget_mb` must be > 0; got {memory_budget_mb}")


def check_method(method: Any) -> MethodSpec:
    spec = METHOD_SPECS.get(method) if isinstance(method, str) else None
    if spec is None:
        raise ValueError(f"`method`: unknown method {method!r}; choose from: {', '.join(METHODS)}")
    return spec


def check_kwargs(spec: MethodSpec, kwargs: dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - spec.kwargs)
    if unknown:
        allowed = ", ".join(sorted(spec.kwargs)) or "(none)"
        raise TypeError(
            f"{spec.name}: unexpected keyword argument(s) {', '.join(unknown)}; "
            f"{spec.name} accepts: {allowed} (batching is set with `internal_batch_size`)"
        )


def check_model(model: Any, forward: Any) -> Callable[[torch.Tensor], Any] | None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"`model` must be a torch.nn.Module; got {type(model).__name__} (a plain function "
            "goes in `forward=`, with the module it calls as `model`)"
        )
    if forward is not None and not callable(forward):
        raise TypeError(
            f"`forward` must be a function from the input batch to class scores, or None; got "
            f"{type(forward).__name__}"
        )
    return forward


def check_internal_batch_size(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`internal_batch_size` must be a positive int or None; got {value!r}")


def fixed_targets(target: Any, labels: Any, n: int, device: torch.device) -> torch.Tensor | None:
    """The targets as a tensor, or ``None`` for ``"pred"``."""
    if isinstance(target, str):
        if target == "pred":
            return None
        if target == "label":
            if labels is None:
                raise ValueError(
                    "`labels` is required with target='label': pass labels=y (one class index "
                    "per input), or use target='pred' or a class index"
                )
            t = torch.as_tensor(labels)
            if t.ndim != 1 or t.shape[0] != n:
                raise ValueError(
                    f"`labels` must hold one class index per input ({n}); got shape "
                    f"{tuple(t.shape)}"
                )
            return t.detach().clone().to(device=device, dtype=torch.long)
        raise ValueError(
            "`target` must be 'pred', 'label', a class index or a tensor of indices; "
            f"got {target!r}"
        )
    if isinstance(target, bool):
        raise TypeError("`target` must be 'pred', 'label', an int or a tensor; got a bool")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=device)
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.ndim > 1 or target.numel() not in (1, n):
            raise ValueError(
                f"`target` tensor must hold one integer class index, or one per input ({n}); "
                f"got {target.dtype} of shape {tuple(target.shape)}"
            )
        t = target.to(device=device, dtype=torch.long, copy=True)  # integers: no graph
        if t.ndim != 1:
            t = t.reshape(-1)
        return t if t.shape[0] == n else t.expand(n)
    raise TypeError(
        f"`target` must be 'pred', 'label', an int or a tensor; got {type(target).__name__}"
    )


def check_targets(targets: torch.Tensor, num_outputs: int) -> None:
    values = targets.tolist()  # one transfer; cheaper than aminmax for a batch of indices
    low, high = min(values), max(values)
    if low < 0 or high >= num_outputs:
        raise ValueError(
            f"`target`: class indices must lie in [0, {num_outputs - 1}] for this model; "
            f"got values from {low} to {high}"
        )
