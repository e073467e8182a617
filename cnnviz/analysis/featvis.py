"""Feature visualization by optimization: the image each filter wants to see.

After Olah, Mordvintsev and Schubert, "Feature Visualization" (Distill, 2017) and the Lucid
library. Starting from near-grey noise, the input image is changed by gradient ascent until it
maximally drives one channel of a conv or pooling layer (or one class logit). Many channels are
optimised at once as one batch: one image per channel.

Three ingredients make the result an image rather than adversarial noise:

* **Fourier parametrisation with 1/f scaling.** The optimised parameters are the image's 2-D
  Fourier coefficients, each scaled by ``1 / max(f, 1/max(H, W))``, so a gradient step changes
  low frequencies about as much as natural images vary in them and high-frequency noise is
  suppressed (a preconditioner, not a constraint).
* **Colour decorrelation.** For 3-channel inputs, the three optimised "colour" planes are mixed by
  a fixed 3x3 matrix: the square root of the colour correlation of ImageNet, as published by
  Lucid, normalised by its largest column norm. The planes therefore are roughly decorrelated
  colour components. A sigmoid maps the result into the valid ``[0, 1]`` pixel range. Inputs with
  another channel count get only the spatial (Fourier) part.
* **Transformation robustness.** Every step the image goes through random padding, jitter,
  scaling and rotation (Lucid's "standard transforms") before the model sees it, so only
  patterns that survive small shifts and rescalings are reinforced. The transforms are
  differentiable (one ``affine_grid``/``grid_sample`` per step, each image its own draw) and
  their randomness comes from a dedicated :class:`torch.Generator` seeded with ``seed``; the
  global RNG is never drawn from (and is forked anyway).

Dead starts: a unit behind a ReLU that is negative for the initial image has zero gradient and
would never move. As Lucid does, every ``nn.ReLU`` module gets a "redirected" gradient while
optimising (``relu_redirect=True``): for an image whose ReLU gradient is zero everywhere, the
gradient passes wherever it pushes a negative input up. Forward values are unchanged.

A plain pixel parametrisation (``param="pixel"``: a logit per pixel, then a sigmoid) is
available for comparison: it optimises the same objective but tends towards high-frequency
patterns.

The image lives in ``[0, 1]`` pixel space. When the model was trained on normalised data, pass
the data's per-channel ``mean`` and ``std`` (``ShapesDataModule.mean``/``.std``): the model
then sees ``(image - mean) / std``, exactly as it saw its training data.
:attr:`FeatVisResult.images` are in ``[0, 1]``; :meth:`FeatVisResult.normalized` gives what the
model saw (without the random transforms).

Defaults and why:

* ``steps=256``, ``lr=0.05`` (Adam). Lucid uses ``lr=0.05`` with 512 steps at 128 px. At the
  28–64 px of the small case-study models, measured on a trained LeNet-5 (Shapes, 32 px), the
  objective of conv and pooling channels levels off within 128–256 steps; unbounded deep units
  and logits still creep up by 5–10 % from 256 to 512 steps (see ``history``). 256 steps keep
  the whole of LeNet-5 (164 channels) in about 15 CPU-seconds (``scripts/bench_featvis.py``).
  For 224 px ImageNet-size models use ``steps=512`` as Lucid does (and a GPU).
* Image size: ``input_shape`` defaults to the model's ``expected_input_shape`` (every cnnviz
  model has one), i.e. the full input the model was built for, so the optimised image and
  dataset patches are judged with the same receptive field.
* Transform magnitudes: Lucid's values at 128 px and above (pad 12 with grey, random crops of 8
  then 4 pixels, i.e. shifts of up to ±4 then ±2 pixels, scale 0.9–1.1, rotation ±10°; drawn
  uniformly here rather than from Lucid's short lists). Below 128 px the pixel magnitudes (pad,
  shifts) scale with ``min(H, W) / 128``, at least one pixel: a 32 px image is padded by 3 and
  shifted by up to ±1 then ±1 pixels. Scale and rotation are dimensionless and stay as they
  are.
* Objective ``"mean"``: the mean of the channel's map (Lucid's ``channel`` objective);
  ``"center"``: the single unit at the centre of the map (Lucid's ``neuron``), whose value is
  what a top-k dataset patch of that channel shows.

Caveats: the optimised quantity is the hooked module's own output (for a conv layer, the
pre-activation; a monotone activation after it does not change which image wins). When a module
is called several times in one forward, its first call counts. Results are deterministic for a
fixed ``seed``, ``batch_size`` and device, but depend on how channels are grouped into batches
(one generator per call, drawn batch after batch). Bounded activations cap what any image can
reach: a pooled ``tanh`` unit cannot exceed 1, so for saturating channels the optimised image
and the best dataset patches tie (up to rounding) instead of the image winning clearly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz.analysis.guard import HookSet, model_devices, observe

__all__ = ["COLOR_CORRELATION_SQRT", "FeatVisResult", "visualize_channels"]

Objective = Literal["mean", "center"]
Param = Literal["fourier", "pixel"]

_OWNER = "visualize_channels"

#: Square root of ImageNet's RGB colour correlation matrix, as published with Lucid.
COLOR_CORRELATION_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)

_FOURIER_INIT_SD = 0.01
_FOURIER_DIVISOR = 4.0  # Lucid's constant: keeps the initial sigmoid far from saturation
_PIXEL_INIT_SD = 0.01
_PAD_VALUE = 0.5
_LUCID_SIZE = 128  # image size at which Lucid's transform magnitudes were set
_LUCID_PAD, _LUCID_JITTER1, _LUCID_JITTER2 = 12, 8, 4
_SCALE_RANGE = (0.9, 1.1)
_MAX_ROTATION_DEG = 10.0


@dataclass
class FeatVisResult:
    """Optimised images for a set of channels of one layer (or for class logits).

    Attributes:
        images: ``[K, C, H, W]`` float32 on the CPU, in ``[0, 1]`` pixel space: row ``k`` is the
            image for ``channels[k]``. Apply :meth:`normalized` for the model's input space.
        activations: ``[K]``: the objective of each channel for its final image, measured
            without random transforms.
        channels: The channel (or class) indices, in the order of ``images``.
        layer: Qualified name of the layer, or ``None`` for the model's logits.
        objective: ``"mean"``, ``"center"`` or ``"logit"``.
        param: ``"fourier"`` or ``"pixel"``.
        mean: ``[C]`` per-channel mean used to normalise the image before the model.
        std: ``[C]`` per-channel standard deviation used likewise.
        history: ``[T, K]`` objective of each channel during optimisation (with transforms).
        history_steps: The ``T`` step indices at which ``history`` was recorded.
        seconds: Wall-clock time of the optimisation.
        steps: Optimisation steps per image.
        lr: Adam learning rate.
        seed: Seed of the generator for initialisation and transforms.
    """

    images: torch.Tensor
    activations: torch.Tensor
    channels: list[int]
    layer: str | None
    objective: str
    param: str
    mean: torch.Tensor
    std: torch.Tensor
    history: torch.Tensor
    history_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    lr: float = 0.0
    seed: int = 0

    def normalized(self) -> torch.Tensor:
        """Return ``(images - mean) / std``: the images in the model's input space."""
        shape = (1, -1, 1, 1)
        return (self.images - self.mean.view(shape)) / self.std.view(shape)


class _Stop(Exception):
    """Raised by the hook to end the forward pass once the target layer has run."""


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_OWNER}: `{name}` must be an int; got {type(value).__name__}.")
    if value < low:
        raise ValueError(f"{_OWNER}: `{name}` must be >= {low}; got {value}.")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{_OWNER}: `{name}` must be one of {listed}; got {value!r}.")
    return str(value)


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


def _resolve_layer(model: nn.Module, layer: str | None) -> nn.Module | None:
    if layer is None:
        return None
    if not isinstance(layer, str):
        raise TypeError(
            f"{_OWNER}: `layer` must be a qualified module name (str) or None for the logits; "
            f"got {type(layer).__name__}."
        )
    valid = _valid_layers(model)
    if layer not in valid:
        raise ValueError(
            f"{_OWNER}: unknown layer {layer!r}; 2-D conv or pooling layers are: "
            f"{', '.join(valid) or '(none)'}. Use layer=None for the class logits."
        )
    return model.get_submodule(layer)


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


# --------------------------------------------------------------------------- parametrisations


def _fourier_scale(height: int, width: int) -> torch.Tensor:
    """``1 / max(f, 1/max(H, W))`` on the ``rfft2`` grid, shape ``[H, W // 2 + 1]``."""
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / max(height, width))


def _color_matrix() -> torch.Tensor:
    return COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()


class _Image:
    """An image batch in ``[0, 1]`` as a differentiable function of a leaf parameter tensor."""

    def __init__(
        self,
        param: str,
        count: int,
        shape: tuple[int, int, int],
        decorrelate: bool,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        channels, height, width = shape
        self.kind = param
        self.size = (height, width)
        if param == "fourier":
            init = torch.randn(
                count, channels, height, width // 2 + 1, 2, generator=generator
            ).mul_(_FOURIER_INIT_SD)
            self.scale = _fourier_scale(height, width).to(device)
        else:
            init = torch.randn(count, channels, height, width, generator=generator)
            init.mul_(_PIXEL_INIT_SD)
        self.param = init.to(device).requires_grad_(True)
        self.color = _color_matrix().to(device) if decorrelate and channels == 3 else None

    def __call__(self) -> torch.Tensor:
        if self.kind == "fourier":
            spectrum = torch.view_as_complex(self.param) * self.scale
            logits = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / _FOURIER_DIVISOR
        else:
            logits = self.param
        if self.color is not None:
            logits = torch.einsum("dc,kchw->kdhw", self.color, logits)
        return torch.sigmoid(logits)


# --------------------------------------------------------------------------- transforms


def _magnitudes(height: int, width: int) -> tuple[int, float, float]:
    """Padding and the two jitter half-ranges (pixels) for an image of this size."""
    ratio = min(1.0, min(height, width) / _LUCID_SIZE)
    pad = max(1, round(_LUCID_PAD * ratio))
    # Lucid's jitter(d) crops d pixels at a random offset: a shift of at most d/2 about the centre.
    jitter1 = max(1.0, round(_LUCID_JITTER1 * ratio) / 2)
    jitter2 = max(1.0, round(_LUCID_JITTER2 * ratio) / 2)
    return pad, jitter1, jitter2


def _random_affines(
    steps: int, count: int, height: int, width: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw every step's transform at once: ``[steps, count, 2, 3]`` ``affine_grid`` matrices.

    Each matrix maps the output image (the input's size) into the padded image by
    ``x_in = R(-a) (y + d2) / s + d1`` in pixels about the centre: jitter ``d1``, scale ``s``,
    rotation ``a``, jitter ``d2``. Drawing all steps up front costs one generator call and one
    host-to-device copy per batch instead of one per step.
    """
    pad, jitter1, jitter2 = _magnitudes(height, width)
    u = torch.rand(steps, count, 6, generator=generator, dtype=torch.float64)
    d1 = (u[..., 0:2] * 2 - 1) * jitter1
    d2 = (u[..., 2:4] * 2 - 1) * jitter2
    scale = _SCALE_RANGE[0] + u[..., 4] * (_SCALE_RANGE[1] - _SCALE_RANGE[0])
    angle = (u[..., 5] * 2 - 1) * math.radians(_MAX_ROTATION_DEG)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # rotation by -angle, divided by the scale, acting on (x, y) pixel offsets
    rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    out_half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    in_half = torch.tensor([(width + 2 * pad) / 2, (height + 2 * pad) / 2], dtype=torch.float64)
    linear = rot * out_half.view(2) / in_half.view(2, 1)  # pixels in and out -> [-1, 1] units
    shift = (torch.einsum("...ij,...j->...i", rot, d2) + d1) / in_half
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1).float()


def _transform(image: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Pad with grey, then sample each image through its affine map; differentiable."""
    count, channels, height, width = image.shape
    pad = _magnitudes(height, width)[0]
    padded = F.pad(image, (pad, pad, pad, pad), value=_PAD_VALUE)
    grid = F.affine_grid(theta, [count, channels, height, width], align_corners=False)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------- forward


class _Target:
    """Hooks the target layer for the optimisation window; each run stops right after it."""

    def __init__(self, module: nn.Module | None, hooks: HookSet) -> None:
        self.module = module
        self._box: list[object] = []
        if module is not None:
            hooks.add(module.register_forward_hook(self._hook))

    def _hook(self, _module: nn.Module, _inputs: object, output: object) -> None:
        if not self._box:  # the first call of a module used several times
            self._box.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise _Stop

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run ``model`` until the target layer has produced its output (or to the logits)."""
        if self.module is None:
            out = model(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"{_OWNER}: layer=None optimises class logits, but the model returned {got}, "
                    "not [N, classes]; name a conv or pooling `layer` instead."
                )
            return out
        self._box.clear()
        with contextlib.suppress(_Stop):
            model(x)
        if not self._box:
            raise ValueError(
                f"{_OWNER}: the layer was not called in the model's forward pass; choose a "
                "layer that the forward uses."
            )
        out = self._box.pop()
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ValueError(
                f"{_OWNER}: the layer's output is not a [N, C, H, W] map; choose a 2-D conv or "
                "pooling layer."
            )
        return out


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward does not let an image start at a dead unit (Lucid's redirected grad).

    The forward is an ordinary ReLU. In the backward, an example whose ReLU gradient is zero
    everywhere (every unit the objective depends on is negative) gets the incoming gradient
    wherever it would push a negative input *up*, instead of nothing; examples with any
    nonzero ReLU gradient get the exact gradient.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        exact = grad * (x > 0)
        # ``grad`` is of a loss (the negated objective): grad > 0 pushes the input lower.
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        if x.dim() < 2:  # an unbatched tensor is one example
            return exact if bool(exact.any()) else redirected
        alive = exact.flatten(1).ne(0).any(dim=1).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(alive, exact, redirected)


def _redirect_relu(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> object:
    """Forward hook: recompute an ``nn.ReLU``'s output with :class:`_RedirectedReLU`."""
    x = inputs[0]
    if not torch.is_grad_enabled() or not x.requires_grad:
        return None
    return _RedirectedReLU.apply(x)


def _objective(out: torch.Tensor, channels: torch.Tensor, objective: str) -> torch.Tensor:
    rows = torch.arange(out.shape[0], device=out.device)
    if out.dim() == 2:
        return out[rows, channels]
    maps = out[rows, channels]  # [k, h, w]
    if objective == "center":
        return maps[:, maps.shape[1] // 2, maps.shape[2] // 2]
    return maps.mean(dim=(1, 2))


# --------------------------------------------------------------------------- public


def visualize_channels(
    model: nn.Module,
    layer: str | None,
    channels: Sequence[int] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    objective: Objective = "mean",
    mean: Sequence[float] | torch.Tensor | float | None = None,
    std: Sequence[float] | torch.Tensor | float | None = None,
    param: Param = "fourier",
    decorrelate: bool = True,
    steps: int = 256,
    lr: float = 0.05,
    transforms: bool = True,
    relu_redirect: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    history_every: int = 16,
) -> FeatVisResult:
    """Optimise one input image per channel so that it maximally activates that channel.

    The model is run under :func:`cnnviz.analysis.guard.observe` (eval mode, parameters frozen,
    autograd on even inside ``torch.inference_mode``, RNG forked); only the image parameters
    are updated (Adam). The layer is hooked for the optimisation only, and the forward pass stops
    as soon as the layer has run. See the module docstring for the method and its defaults.

    Args:
        model: Any ``nn.Module`` taking ``[N, C, H, W]`` images.
        layer: Qualified name of a 2-D conv or pooling layer (see
            :func:`cnnviz.analysis.layers.list_layers`), or ``None`` to maximise class logits.
        channels: Channel indices of ``layer`` (class indices when ``layer`` is ``None``);
            ``None`` for all of them. One image per entry.
        input_shape: ``(C, H, W)`` of the image; default: ``model.expected_input_shape``.
        objective: ``"mean"`` (mean of the channel's map) or ``"center"`` (its centre unit).
            Ignored for logits.
        mean: Per-channel mean of the data normalisation (a number or ``C`` numbers); default 0.
        std: Per-channel standard deviation of the normalisation; default 1.
        param: ``"fourier"`` (decorrelated, 1/f-scaled spectrum) or ``"pixel"``.
        decorrelate: Mix colour planes by the fixed colour-correlation matrix (3-channel inputs).
        steps: Adam steps per image.
        lr: Adam learning rate.
        transforms: Apply random pad/jitter/scale/rotation each step.
        relu_redirect: While optimising, give every ``nn.ReLU`` module of the model Lucid's
            "redirected" gradient, so an image whose target units all start negative (zero
            gradient) still moves towards activating them. The forward values are unchanged;
            in-place ReLUs are made out-of-place inside the window (and restored).
        seed: Seed of the dedicated generator for the initial image and the transforms.
        batch_size: Images optimised together; ``None`` for all channels in one batch.
        device: Where to optimise; default: the device of the model's parameters (CPU if none).
        history_every: Record the objective every this many steps (and at the last step).

    Returns:
        A :class:`FeatVisResult` (images in ``[0, 1]`` on the CPU, final activations, history).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``layer`` is not a 2-D conv/pooling layer (the message lists the valid
            names), a channel is out of range, ``input_shape`` does not fit the model, or an
            option is not one of its choices.

    Example:
        >>> res = visualize_channels(model, "features.c3", [0, 1, 2], objective="center",
        ...                          mean=dm.mean, std=dm.std)
        >>> res.images.shape, res.activations.shape
        (torch.Size([3, 3, 32, 32]), torch.Size([3]))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{_OWNER}: `model` must be a torch.nn.Module; got {type(model).__name__}.")
    shape = _input_shape(model, input_shape)
    objective = _check_choice("objective", objective, ("mean", "center"))  # type: ignore[assignment]
    param = _check_choice("param", param, ("fourier", "pixel"))  # type: ignore[assignment]
    _check_int("steps", steps, 1)
    _check_int("seed", seed, -(2**63))
    _check_int("history_every", history_every, 1)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"{_OWNER}: `lr` must be a positive finite number; got {lr!r}.")
    mean_t = _per_channel("mean", mean, shape[0], 0.0)
    std_t = _per_channel("std", std, shape[0], 1.0)
    target = _resolve_layer(model, layer)
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
    dtype = floats[0] if floats else torch.float32

    start = time.perf_counter()
    window = observe(
        model, grad=True, freeze_params=True, no_inplace=relu_redirect, extra_devices=[dev]
    )
    with window, HookSet() as hooks:
        if relu_redirect:
            for module in model.modules():
                if isinstance(module, nn.ReLU):
                    hooks.add(module.register_forward_hook(_redirect_relu))
        # Fresh tensors made inside the window: usable by autograd even when the caller is in
        # torch.inference_mode (tensors made out there cannot be saved for backward).
        mean_t, std_t = mean_t.clone(), std_t.clone()
        norm_mean = mean_t.to(dev).view(1, -1, 1, 1)
        norm_std = std_t.to(dev).view(1, -1, 1, 1)

        forward = _Target(target, hooks)

        def run(image: torch.Tensor) -> torch.Tensor:
            return forward(model, ((image - norm_mean) / norm_std).to(dtype))

        with torch.no_grad():
            try:
                probe = run(torch.full((1, *shape), 0.5, device=dev))
            except (RuntimeError, ValueError) as err:
                if str(err).startswith(_OWNER):
                    raise
                raise ValueError(
                    f"{_OWNER}: the model does not accept an input of shape {shape} "
                    f"(`input_shape`): {err}"
                ) from err
        what = "classes" if target is None else "channels"
        chosen = _resolve_channels(channels, probe.shape[1], what)
        generator = torch.Generator().manual_seed(seed)
        per_batch = batch_size or len(chosen)
        images, finals, histories = [], [], []
        record = sorted({*range(0, steps, history_every), steps - 1})
        recorded = set(record)
        for first in range(0, len(chosen), per_batch):
            group = chosen[first : first + per_batch]
            index = torch.tensor(group, device=dev)
            image = _Image(param, len(group), shape, decorrelate, generator, dev)
            optimizer = torch.optim.Adam([image.param], lr=lr)
            if transforms:
                thetas = _random_affines(steps, len(group), *shape[1:], generator).to(dev)
            history = []
            for step in range(steps):
                x = image()
                if transforms:
                    x = _transform(x, thetas[step].to(x.dtype))
                value = _objective(run(x), index, objective).float()
                (grad,) = torch.autograd.grad(-value.sum(), image.param)
                image.param.grad = grad
                optimizer.step()
                if step in recorded:
                    history.append(value.detach())
            with torch.no_grad():
                final = image()
                finals.append(_objective(run(final), index, objective).float().cpu())
            images.append(final.float().cpu())
            histories.append(torch.stack(history).cpu())
        seconds = time.perf_counter() - start
        return FeatVisResult(
            images=torch.cat(images),
            activations=torch.cat(finals),
            channels=chosen,
            layer=layer,
            objective="logit" if target is None else objective,
            param=param,
            mean=mean_t,
            std=std_t,
            history=torch.cat(histories, dim=1),
            history_steps=record,
            seconds=seconds,
            steps=steps,
            lr=float(lr),
            seed=seed,
        )
