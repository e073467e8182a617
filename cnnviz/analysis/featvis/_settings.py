"""Argument checking (errors name the argument and the fix) and the validated settings.

:func:`_settings` checks every option of the public functions and collects them in
:class:`_Settings`, which also casts the image to the model's dtype and memory format.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnviz._checks import check_int
from cnnviz.analysis.guard import model_devices, observe

_OWNER = "visualize_channels"


def _check_int(name: str, value: object, low: int) -> int:
    return int(check_int(_OWNER, name, value, low=low))  # type: ignore[arg-type]


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{_OWNER}: `{name}` must be one of {listed}; got {value!r}.")
    return str(value)


def _check_callable(name: str, value: object, example: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(
            f"{_OWNER}: `{name}` must be a callable or None (e.g. {example}); "
            f"got {type(value).__name__}."
        )


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, int, int]:
    if input_shape is None:
        input_shape = getattr(model, "expected_input_shape", None)
        if input_shape is None:
            raise ValueError(
                f"{_OWNER}: `input_shape` is required for {type(model).__name__} (it has no "
                "`expected_input_shape`); pass the input's (C, H, W), e.g. (3, 32, 32)."
            )
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(
            f"{_OWNER}: `input_shape` must be three positive ints (C, H, W); got {input_shape!r}."
        )
    return shape  # type: ignore[return-value]


def _per_channel(name: str, value: object, channels: int, default: float) -> torch.Tensor:
    if value is None:
        return torch.full((channels,), default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [float(value)] * channels
    else:
        try:
            values = [float(v) for v in torch.as_tensor(value).detach().flatten().tolist()]
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"{_OWNER}: `{name}` must be a number or a sequence of {channels} numbers; "
                f"got {type(value).__name__}."
            ) from None
        if len(values) == 1:
            values = values * channels
    if len(values) != channels:
        raise ValueError(
            f"{_OWNER}: `{name}` needs one value per input channel ({channels}); got {len(values)}."
        )
    out = torch.tensor(values, dtype=torch.float32)
    if not torch.isfinite(out).all() or (name == "std" and not (out > 0).all()):
        raise ValueError(f"{_OWNER}: `{name}` must be finite (and > 0 for std); got {values}.")
    return out


def _valid_layers(model: nn.Module) -> list[str]:
    from cnnviz.analysis.layers import list_layers

    return [info.name for info in list_layers(model, "all") if info.dims == 2]


def _check_layers(model: nn.Module, layers: Sequence[str | None]) -> None:
    valid: list[str] | None = None
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, str):
            raise TypeError(
                f"{_OWNER}: `layer` must be a qualified module name (str) or None for the "
                f"logits; got {type(layer).__name__}."
            )
        valid = _valid_layers(model) if valid is None else valid
        if layer not in valid:
            raise ValueError(
                f"{_OWNER}: unknown layer {layer!r}; 2-D conv or pooling layers are: "
                f"{', '.join(valid) or '(none)'}. Use layer=None for the class logits."
            )


def _resolve_channels(channels: Sequence[int] | None, count: int, what: str) -> list[int]:
    if channels is None:
        return list(range(count))
    if isinstance(channels, torch.Tensor):
        channels = channels.flatten().tolist()
    if isinstance(channels, (int, str)) or not isinstance(channels, Sequence):
        raise TypeError(
            f"{_OWNER}: `channels` must be a sequence of ints (e.g. [0, 3]) or None for all; "
            f"got {type(channels).__name__}."
        )
    chosen = list(channels)
    if not chosen:
        raise ValueError(f"{_OWNER}: `channels` is empty; pass None for all {count} {what}.")
    bad = [c for c in chosen if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < count]
    if bad:
        raise ValueError(
            f"{_OWNER}: `channels` {bad} out of range; the target has {count} {what} "
            f"(valid indices 0..{count - 1})."
        )
    return chosen


@dataclass
class _Settings:
    """Validated arguments, and the tensors made from them inside the guarded window."""

    shape: tuple[int, int, int]
    objective: str
    param: str
    decorrelate: bool
    steps: int
    lr: float
    transforms: bool
    relu_redirect: bool
    seed: int
    batch_size: int | None
    history_every: int
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    mean: torch.Tensor
    std: torch.Tensor
    should_stop: Callable[[], bool] | None
    progress: Callable[[int], None] | None
    norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def enter(self) -> None:
        """Make fresh tensors (usable by autograd even inside ``torch.inference_mode``)."""
        self.mean, self.std = self.mean.clone(), self.std.clone()
        self.norm = (
            self.mean.to(self.device).view(1, -1, 1, 1),
            self.std.to(self.device).view(1, -1, 1, 1),
        )

    def model_input(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise a float32 image batch and cast it to the model's dtype and format."""
        if self.norm is None:
            self.enter()
        mean, std = self.norm  # type: ignore[misc]
        x = ((image - mean) / std).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def grey(self) -> torch.Tensor:
        """A grey image of one, as the model sees it."""
        return self.model_input(torch.full((1, *self.shape), 0.5, device=self.device))


def _uses_channels_last(model: nn.Module) -> bool:
    return any(
        p.dim() == 4
        and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in model.parameters()
    )


def _settings(
    model: nn.Module,
    *,
    input_shape: Sequence[int] | None,
    objective: object,
    mean: object = None,
    std: object = None,
    param: object = "fourier",
    decorrelate: bool = True,
    steps: int = 1,
    lr: float = 0.15,
    transforms: bool = True,
    relu_redirect: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    history_every: int = 1,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> _Settings:
    """Check every argument (errors name it and the fix) and collect them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_OWNER}: `model` must be a torch.nn.Module; got {type(model).__name__}.")
    shape = _input_shape(model, input_shape)
    objective = _check_choice("objective", objective, ("mean", "center"))
    param = _check_choice("param", param, ("fourier", "pixel"))
    _check_int("steps", steps, 1)
    _check_int("seed", seed, -(2**63))
    _check_int("history_every", history_every, 1)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"{_OWNER}: `lr` must be a positive finite number; got {lr!r}.")
    _check_callable("should_stop", should_stop, "`lambda: trainer.should_stop`")
    _check_callable("progress", progress, "`bar.update`")
    mean_t = _per_channel("mean", mean, shape[0], 0.0)
    std_t = _per_channel("std", std, shape[0], 1.0)
    devices = model_devices(model)
    dev = torch.device(device) if device is not None else (devices or [torch.device("cpu")])[0]
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if devices and dev not in devices:
        raise ValueError(
            f"{_OWNER}: `device` is {dev} but the model is on {', '.join(map(str, devices))}; "
            "leave `device=None` or move the model there first."
        )
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return _Settings(
        shape=shape,
        objective=objective,
        param=param,
        decorrelate=bool(decorrelate),
        steps=steps,
        lr=float(lr),
        transforms=bool(transforms),
        relu_redirect=bool(relu_redirect),
        seed=seed,
        batch_size=batch_size,
        history_every=history_every,
        device=dev,
        dtype=floats[0] if floats else torch.float32,
        channels_last=_uses_channels_last(model),
        mean=mean_t,
        std=std_t,
        should_stop=should_stop,
        progress=progress,
    )


def _guarded(model: nn.Module, cfg: _Settings) -> Any:
    return observe(
        model,
        grad=True,
        freeze_params=True,
        no_inplace=cfg.relu_redirect,
        extra_devices=[cfg.device],
    )


def _layer_list(layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise TypeError(
            f"{_OWNER}: `layers` must be a sequence of layer names (e.g. ['features.0']); "
            f"got {type(layers).__name__}."
        )
    names = list(layers)
    if not names:
        raise ValueError(f"{_OWNER}: `layers` is empty; name at least one conv or pooling layer.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{_OWNER}: `layers` repeats {repeated}; name each layer once.")
    return names


def _channels_for(
    channels: Sequence[int] | Mapping[str, Sequence[int] | None] | None, layer: str
) -> Sequence[int] | None:
    if isinstance(channels, Mapping):
        return channels.get(layer)
    return channels
