"""Feature visualization by optimization: the image each unit fires for.

After Olah, Mordvintsev and Schubert, "Feature Visualization" (Distill, 2017) and the Lucid
library. Starting from near-grey noise, the input image is changed by gradient ascent until it
maximally drives one channel of a conv or pooling layer (or one class logit). Many channels are
optimised at once as one batch: one image per channel.

**What is maximised.** The objective is read where the activation maps are read
(:mod:`cnnviz.analysis.readout`): for a conv layer, *after* the normalisation and activation that
follow it (``conv → bn → relu`` is read after the ReLU, also when the ReLU is an ``F.relu`` in
``forward`` or a shared module), so the image shows what the unit fires for; pooling layers are
read as they are. Of that map, ``objective="mean"`` (the default) averages the *interior* units:
those whose receptive field (:func:`cnnviz.analysis.receptive_field.receptive_fields`) lies
inside the image, not clipped by the border. ``objective="center"`` takes the single centre unit
(the unit a top-k dataset patch of the channel shows).

Why both matter, on a first-layer filter ``w`` (a linear map of the image): the mean of its
*pre-activation* map over all positions telescopes to the image's borders (for an edge filter
the interior cancels), so the optimum is a saturated border around a flat field. After a ReLU
each unit counts only when its patch matches ``w``, and the sum of ReLUs is maximised by placing
the filter's own pattern (its positive weights white, negative black) at as many units as fit:
the image is ``w`` tiled, a grating for an edge filter, a colour field for a colour-opponent
filter. Border units would instead reward the constant padding. Measured on a 3x3 Sobel-x
filter with ReLU: the image optimised for the pre-activation mean reaches 0.58x (32 px) and
0.32x (64 px) of the post-ReLU mean of the best of 64 uniform random images; this objective
reaches 3.0x and 3.1x, with stripes whose horizontal gradient energy is 4-16x the vertical
(``tests/analysis/test_featvis.py`` checks such known answers: Sobel x/y, a diagonal edge, a
colour-opponent filter, BatchNorm and ``F.relu`` between conv and read).

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

**Optimiser.** Adam, with each image's gradient scaled to unit root-mean-square before the
step and ``eps=1`` (so: an ``eps`` relative to the gradient's RMS). With Adam's usual tiny
``eps`` every Fourier coefficient moves by a full step whatever its gradient, so coefficients
the objective barely cares about fill the image with broadband structure; a first-layer edge
filter then gets a labyrinth of edges (measured: gradient energy along the filter's axis only
2x that across it, for any ``lr``, number of steps, preconditioner cut-off or squash). With the
relative ``eps`` a coefficient whose gradient is far below the RMS moves in proportion to it:
the same filter gets straight stripes (4-16x) and the objective ends higher, also for deep
layers (trained LeNet-5 on Shapes, 256 steps, against Adam's usual ``eps`` at ``lr=0.05``:
+14 to +19 % per layer for ``"mean"``, +1 to +19 % for ``"center"``, with ``lr=0.15``).

Dead starts: a unit behind a ReLU that is negative for the initial image has zero gradient and
would never move; reading after the ReLU makes this the rule for ``"center"``. As Lucid does,
every ReLU gets a "redirected" gradient while optimising (``relu_redirect=True``): ``nn.ReLU``
modules through a forward hook, ``F.relu``/``torch.relu``/``Tensor.relu`` (and their in-place
forms) called outside an ``nn.ReLU`` through a :class:`~torch.overrides.TorchFunctionMode`
(entered only when the model makes such calls). For an image whose ReLU gradient is zero
everywhere, the gradient passes wherever it pushes a negative input up. Forward values are
unchanged.

A plain pixel parametrisation (``param="pixel"``: a logit per pixel, then a sigmoid) is
available for comparison: it optimises the same objective but tends towards high-frequency
patterns.

The image lives in ``[0, 1]`` pixel space. When the model was trained on normalised data, pass
the data's per-channel ``mean`` and ``std`` (``ShapesDataModule.mean``/``.std``): the model
then sees ``(image - mean) / std``, exactly as it saw its training data.
:attr:`FeatVisResult.images` are in ``[0, 1]``; :meth:`FeatVisResult.normalized` gives what the
model saw (without the random transforms). The image is optimised in float32 whatever the
model's precision: each forward casts it to the dtype (bf16, fp16, fp64) and memory format
(``channels_last``) of the model's parameters; results are float32.

Layers that would get the same image as another selected layer are not optimised twice by
:func:`visualize_layers` (:func:`duplicate_layers`): a pooling layer whose input is exactly
the tensor read for another selected layer (nothing in between) and that passes it on unchanged
(kernel 1 and stride 1, or an adaptive pool to the same size), or, with ``objective="mean"``,
pools it globally (an adaptive pool to 1x1, or a pool whose single window covers the whole map:
the global pool after the last conv of most classifiers), or averages it in windows side by side
that cover exactly the layer's averaged units (LeNet-5's 2x2 average pools: the mean of the
means is the mean). Its result is the other layer's images, with :attr:`FeatVisResult.same_as`
naming that layer and the activations measured on the pooling layer itself. (A global *max*
pool, or a global pool of a padded conv whose border units the conv's objective leaves out, is
not exactly the same objective; its image is still the conv's "what the unit fires for", and
optimising it separately would only exploit one unit or the padding.)

Defaults and why:

* ``steps=256``, ``lr=0.15`` (Adam with the relative ``eps`` above). Lucid uses ``lr=0.05``
  with 512 steps at 128 px and Adam's usual ``eps``; with the relative ``eps`` typical steps are
  about half as large, and on a trained LeNet-5 (Shapes, 32 px, 256 steps) ``lr=0.15`` reaches
  a higher objective in every layer than 0.05 or 0.1. At the 28–64 px of the small case-study
  models the objective of conv and pooling channels levels off within 128–256 steps; unbounded
  deep units and logits still creep up from 256 to 512 steps (see ``history``). For 224 px
  ImageNet-size models use ``steps=512`` as Lucid does (and a GPU). ``scripts/bench_featvis.py``
  times LeNet-5: about 17 CPU-seconds for all 164 channels on one thread.
* Image size: ``input_shape`` defaults to the model's ``expected_input_shape`` (every cnnviz
  model has one), i.e. the full input the model was built for, so the optimised image and
  dataset patches are judged with the same receptive field.
* Transform magnitudes: Lucid's values at 128 px and above (pad 12 with grey, random crops of 8
  then 4 pixels, i.e. shifts of up to ±4 then ±2 pixels, scale 0.9–1.1, rotation ±10°; drawn
  uniformly here rather than from Lucid's short lists). Below 128 px the pixel magnitudes (pad,
  shifts) scale with ``min(H, W) / 128``, at least one pixel: a 32 px image is padded by 3 and
  shifted by up to ±1 then ±1 pixels. Scale and rotation are dimensionless and stay as they
  are.
* Interior units: where no unit's (local) receptive field fits inside the image along an axis,
  the centre unit along that axis is used; where the receptive fields cannot be computed (the
  model cannot be traced by ``torch.fx``), every unit is, and
  :attr:`FeatVisResult.units_reason` says so.

Long runs can be followed and stopped: ``progress(steps_done)`` is called after every step and
``should_stop()`` is checked before every step; when it returns ``True`` the images optimised so
far are returned (:attr:`FeatVisResult.stopped_at`), with every guarantee of a normal return.

Caveats: a conv with no activation after it is read before any (its readout's
``pre_activation`` is set; the linear-filter degeneracy above then applies). When a module is
called several times in one forward, the call the readout names counts (the first, for pooling
layers). Results are deterministic for a fixed ``seed``, ``batch_size`` and device, but depend
on how channels are grouped into batches (one generator per call, drawn batch after batch).
Bounded activations cap what any image can reach: a pooled ``tanh`` unit cannot exceed 1, so for
saturating channels the optimised image and the best dataset patches tie (up to rounding)
instead of the image winning clearly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnviz._checks import check_int
from cnnviz.analysis.guard import HookSet, model_devices, observe
from cnnviz.analysis.readout import Readout, ReadoutHooks, find_readouts

__all__ = [
    "COLOR_CORRELATION_SQRT",
    "FeatVisResult",
    "duplicate_layers",
    "visualize_channels",
    "visualize_layers",
]

Objective = Literal["mean", "center"]
Param = Literal["fourier", "pixel"]
Units = tuple[int, int, int, int]  # (top, bottom, left, right), half-open

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
_ADAM_EPS = 1.0  # relative to each image's gradient RMS: see _unit_rms


def _unit_rms(grad: torch.Tensor) -> torch.Tensor:
    """Scale each image's gradient to unit root-mean-square over its parameters.

    Adam is invariant to the gradient's scale except through its ``eps``; with unit-RMS
    gradients, ``eps`` is relative: a parameter whose gradient is far below the image's RMS
    moves in proportion to it instead of by a full step (see the module docstring).
    """
    dims = tuple(range(1, grad.dim()))
    rms = grad.pow(2).mean(dim=dims, keepdim=True).sqrt()
    return grad / rms.clamp(min=torch.finfo(grad.dtype).tiny)


@dataclass
class FeatVisResult:
    """Optimised images for a set of channels of one layer (or for class logits).

    Attributes:
        images: ``[K, C, H, W]`` float32 on the CPU, in ``[0, 1]`` pixel space: row ``k`` is the
            image for ``channels[k]``. Apply :meth:`normalized` for the model's input space.
        activations: ``[K]`` float32: the objective of each channel for its final image,
            measured without random transforms (for a copied result, on this layer).
        channels: The channel (or class) indices, in the order of ``images``. Shorter than
            requested when the run was stopped before some batches began.
        layer: Qualified name of the layer, or ``None`` for the model's logits.
        objective: ``"mean"``, ``"center"`` or ``"logit"``.
        param: ``"fourier"`` or ``"pixel"``.
        mean: ``[C]`` per-channel mean used to normalise the image before the model.
        std: ``[C]`` per-channel standard deviation used likewise.
        history: ``[T, K]`` objective of each channel during optimisation (with transforms);
            ``NaN`` where a batch stopped before that step. For a copied result, the history of
            the :attr:`same_as` layer's objective.
        history_steps: The ``T`` step indices at which ``history`` was recorded.
        seconds: Wall-clock time of the optimisation (of the copy, for a copied result).
        steps: Optimisation steps per image (requested; see :attr:`stopped_at`).
        lr: Adam learning rate (see the module docstring for the relative ``eps``).
        seed: Seed of the generator for initialisation and transforms.
        readout: Where the layer's maps were read (:class:`~cnnviz.analysis.readout.Readout`:
            ``readout.describe()`` says it in words, ``readout.pre_activation`` marks a conv read
            before any activation, ``readout.as_dict()`` is JSON-friendly); ``None`` for logits.
        units: ``(top, bottom, left, right)``, half-open: the output positions of the read map
            that the objective averages (interior units, or the centre unit); ``None`` for
            logits.
        units_reason: Why those units, in words (``"interior units: receptive field inside the
            image"``, ``"centre unit: ..."``, ``"all units: receptive fields unknown ..."``).
        same_as: The layer whose images these are, when this layer was not optimised itself
            because its image would be the same (:func:`duplicate_layers`); else ``None``.
        stopped_at: ``None`` when every returned image got all ``steps``; otherwise the steps
            done by the last returned batch when ``should_stop`` asked to stop (earlier batches
            completed; later ones were left out of :attr:`channels`).
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
    readout: Readout | None = None
    units: Units | None = None
    units_reason: str = ""
    same_as: str | None = None
    stopped_at: int | None = None

    @property
    def stopped(self) -> bool:
        """``True`` when ``should_stop`` ended the optimisation early."""
        return self.stopped_at is not None

    @property
    def pre_activation(self) -> bool:
        """``True`` for a conv layer whose maps were read before any activation."""
        return self.readout is not None and self.readout.pre_activation

    def normalized(self) -> torch.Tensor:
        """Return ``(images - mean) / std``: the images in the model's input space."""
        shape = (1, -1, 1, 1)
        return (self.images - self.mean.view(shape)) / self.std.view(shape)


class _Stop(Exception):
    """Raised by the read hook to end the forward pass once the target tensor was read."""


# --------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------- ReLU redirect


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


def _wants_redirect(x: object) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and torch.is_grad_enabled()
        and x.requires_grad
        and x.is_floating_point()
    )


def _redirect_relu(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> object:
    """Forward hook: recompute an ``nn.ReLU``'s output with :class:`_RedirectedReLU`."""
    x = inputs[0] if inputs else None
    if not _wants_redirect(x):
        return None
    return _RedirectedReLU.apply(x)


_RELU_NAMES = frozenset({"relu", "relu_"})


def _relu_call(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool | None:
    """``None`` if ``func`` is not a ReLU call, else whether it is in place."""
    name = getattr(func, "__name__", None)
    if name not in _RELU_NAMES or not args:
        return None
    if name == "relu_":
        return True
    flag = kwargs.get("inplace", args[1] if len(args) > 1 else False)
    return flag is True


class _ReLUMode(TorchFunctionMode):
    """Redirects (or, with ``count_only``, counts) functional ReLUs outside ``nn.ReLU`` modules.

    ``F.relu``, ``torch.relu``, ``Tensor.relu`` and the in-place ``relu_`` forms are recomputed
    with :class:`_RedirectedReLU`; in-place calls write the result back into their input, as
    the original would. Calls made by an ``nn.ReLU`` module (``depth > 0``, kept by the module
    hooks of :meth:`track`) are left to that module's forward hook.
    """

    def __init__(self, count_only: bool) -> None:
        super().__init__()
        self.count_only = count_only
        self.depth = 0
        self.calls = 0

    def track(self, model: nn.Module, hooks: HookSet) -> None:
        """Count how deep inside ``nn.ReLU`` modules the forward is (reset per model call)."""
        hooks.add(model.register_forward_pre_hook(self._reset, prepend=True))
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                hooks.add(module.register_forward_pre_hook(self._enter))
                hooks.add(module.register_forward_hook(self._leave, always_call=True))

    def _reset(self, *_: object) -> None:
        self.depth = 0

    def _enter(self, *_: object) -> None:
        self.depth += 1

    def _leave(self, *_: object) -> None:
        self.depth = max(0, self.depth - 1)

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        inplace = _relu_call(func, args, kwargs)
        if inplace is None or self.depth > 0:
            return func(*args, **kwargs)
        self.calls += 1
        x = args[0]
        if self.count_only or not _wants_redirect(x):
            return func(*args, **kwargs)
        if inplace:
            return x.copy_(_RedirectedReLU.apply(x.clone()))
        return _RedirectedReLU.apply(x)


# --------------------------------------------------------------------------- reading


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


@dataclass
class _Plan:
    """What is read for one layer and which units of it the objective averages."""

    layer: str | None
    readout: Readout | None
    count: int
    units: Units | None
    reason: str
    functional_relu: bool


class _Reader:
    """Runs the model and returns the tensor read for one layer (or the logits).

    Hooks are installed on ``__enter__`` and removed on ``__exit__``; each run stops the
    forward pass as soon as the tensor was read.
    """

    def __init__(self, model: nn.Module, readout: Readout | None) -> None:
        self.model = model
        self.readout = readout
        self._box: list[torch.Tensor] = []
        self._hooks: ReadoutHooks | None = None

    def __enter__(self) -> _Reader:
        if self.readout is not None:
            hooks = ReadoutHooks(self.model, [self.readout], self._on_output)
            self._hooks = hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.remove()

    def _on_output(self, _layer: str, tensor: torch.Tensor) -> None:
        if not self._box:
            self._box.append(tensor)
            raise _Stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.readout is None:
            out = self.model(x)
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
            self.model(x)
        if not self._box:
            raise ValueError(
                f"{_OWNER}: layer {self.readout.layer!r} (read at {self.readout.source}) was not "
                "called in the model's forward pass; choose a layer that the forward uses."
            )
        out = self._box.pop()
        if out.dim() != 4:
            raise ValueError(
                f"{_OWNER}: the tensor read for layer {self.readout.layer!r} "
                f"({self.readout.source}) is not a [N, C, H, W] map (shape {tuple(out.shape)}); "
                "choose a 2-D conv or pooling layer."
            )
        return out


def _objective(out: torch.Tensor, channels: torch.Tensor, units: Units | None) -> torch.Tensor:
    """Per row ``k``: the mean of channel ``channels[k]`` over ``units`` (the logit if ``None``)."""
    rows = torch.arange(out.shape[0], device=out.device)
    if units is None:
        return out[rows, channels].float()
    top, bottom, left, right = units
    return out[rows, channels, top:bottom, left:right].float().mean(dim=(1, 2))


def _discover(
    model: nn.Module, x: torch.Tensor, layers: list[str]
) -> tuple[dict[str, Readout], Exception | None]:
    """Readouts of ``layers``; a forward failing after them does not stop the discovery."""
    failures: list[Exception] = []

    def run() -> None:
        try:
            model(x)
        except Exception as err:  # kept: re-raised if the layer's tensor is not reached
            failures.append(err)

    return find_readouts(model, run, layers), (failures[0] if failures else None)


def _fields(model: nn.Module, shape: tuple[int, int, int]) -> tuple[dict[str, Any], str]:
    """Receptive fields of every layer, or ``{}`` and why they could not be computed."""
    from cnnviz.analysis.receptive_field import receptive_fields

    try:
        return receptive_fields(model, shape), ""
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as err:
        return {}, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _units(
    objective: str, rf: Any, out_hw: tuple[int, int], in_hw: tuple[int, ...], error: str
) -> tuple[Units, str]:
    """The units of a read map that the objective averages, and why (see the module docs)."""
    if objective == "center":
        return _centre(out_hw), "centre unit (objective='center')"
    if rf is None or rf.ndim != 2 or tuple(rf.output_spatial) != out_hw:
        why = error or "the layer has no receptive-field record for this read"
        return _all(out_hw), f"all units: receptive fields unknown ({why})"
    axes: list[tuple[int, int]] = []
    centred: list[str] = []
    for axis, (count, size) in enumerate(zip(out_hw, in_hw, strict=True)):
        inside = []
        for i in range(count):
            index = [0, 0]
            index[axis] = i
            box = rf.region(*index, clip=False, local=True)
            if box[2 * axis] >= 0 and box[2 * axis + 1] <= size:
                inside.append(i)
        if not inside:
            axes.append((count // 2, count // 2 + 1))
            centred.append(("rows", "columns")[axis])
            continue
        axes.append((inside[0], inside[-1] + 1))
    units: Units = (*axes[0], *axes[1])
    if len(centred) == 2:
        return units, "centre unit: no unit's receptive field lies inside the image"
    if centred:
        return units, (
            f"centre of the {centred[0]}: no unit's receptive field lies inside the image along "
            f"the {centred[0]}"
        )
    if units == _all(out_hw):
        return units, "all units: every receptive field lies inside the image"
    return units, "interior units: receptive field inside the image"


def _centre(out_hw: tuple[int, int]) -> Units:
    h, w = out_hw[0] // 2, out_hw[1] // 2
    return h, h + 1, w, w + 1


def _all(out_hw: tuple[int, int]) -> Units:
    return 0, out_hw[0], 0, out_hw[1]


def _uses_channels_last(model: nn.Module) -> bool:
    return any(
        p.dim() == 4
        and p.is_contiguous(memory_format=torch.channels_last)
        and not p.is_contiguous()
        for p in model.parameters()
    )


def _plans(model: nn.Module, cfg: _Settings, layers: Sequence[str | None]) -> dict[Any, _Plan]:
    """Find each layer's readout, the read map's size and the units to average (guarded)."""
    x0 = cfg.grey()
    names = [layer for layer in layers if layer is not None]
    readouts, failure = _discover(model, x0, names) if names else ({}, None)
    fields, error = ({}, "")
    if names and cfg.objective != "center":
        fields, error = _fields(model, cfg.shape)
    plans: dict[Any, _Plan] = {}
    for layer in layers:
        readout = readouts.get(layer) if layer is not None else None
        counter = _ReLUMode(count_only=True)
        with HookSet() as hooks, torch.no_grad():
            counter.track(model, hooks)
            try:
                with counter, _Reader(model, readout) as read:
                    out = read(x0)
            except (RuntimeError, ValueError, TypeError) as err:
                if str(err).startswith(_OWNER) and failure is None:
                    raise
                cause = failure if failure is not None else err
                raise ValueError(
                    f"{_OWNER}: the model does not accept an input of shape {cfg.shape} "
                    f"(`input_shape`): {cause}"
                ) from cause
        if readout is None:
            plans[layer] = _Plan(None, None, int(out.shape[1]), None, "", counter.calls > 0)
            continue
        out_hw = (int(out.shape[2]), int(out.shape[3]))
        units, reason = _units(cfg.objective, fields.get(layer), out_hw, cfg.shape[1:], error)
        plans[layer] = _Plan(layer, readout, int(out.shape[1]), units, reason, counter.calls > 0)
    return plans


# --------------------------------------------------------------------------- duplicates


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _pool_window(module: nn.Module, in_hw: tuple[int, ...]) -> tuple[Any, Any, Any] | None:
    """``(kernel, stride, padding)`` of a 2-D max/avg pool, adaptive ones where exact."""
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = module.output_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        out = tuple(n if o is None else int(o) for o, n in zip(size, in_hw, strict=True))
        if any(n % o for n, o in zip(in_hw, out, strict=True)):
            return None  # bins of unequal width
        kernel = tuple(n // o for n, o in zip(in_hw, out, strict=True))
        return kernel, kernel, (0, 0)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        if _pair(getattr(module, "dilation", 1)) != (1, 1):
            return None
        kernel = _pair(module.kernel_size)
        return kernel, _pair(module.stride or module.kernel_size), _pair(module.padding)
    return None


def _repeats(
    module: nn.Module,
    in_hw: tuple[int, ...],
    out_hw: tuple[int, ...],
    units: Units | None,
    source_units: Units | None,
    objective: str,
) -> bool:
    """Whether a pool of a layer's read map has that layer's image (see :func:`duplicate_layers`).

    ``units`` are the pool's averaged units, ``source_units`` the layer's.
    """
    window = _pool_window(module, in_hw)
    if window is None or units is None or source_units is None:
        return False
    kernel, stride, padding = window
    if kernel == stride == (1, 1) and padding == (0, 0) and out_hw == in_hw:
        return True  # the map itself
    if objective == "center":
        return False
    covers = all(k - p >= n for k, p, n in zip(kernel, padding, in_hw, strict=True))
    if out_hw == (1, 1) and covers:
        return True  # a global pool of the layer's whole map
    if not isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return False
    if kernel != stride or padding != (0, 0):
        return False
    # Windows side by side: the pool's mean over its units is the layer's mean over theirs.
    top, bottom, left, right = units
    covered = (top * kernel[0], bottom * kernel[0], left * kernel[1], right * kernel[1])
    return covered == source_units


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.device == b.device
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.data_ptr() == b.data_ptr()
    )


def _find_duplicates(model: nn.Module, cfg: _Settings, plans: dict[Any, _Plan]) -> dict[str, str]:
    """One forward pass: which selected pools pass another selected layer's read tensor on."""
    modules = dict(model.named_modules())
    readouts = [p.readout for p in plans.values() if p.readout is not None]
    pools = {
        p.layer: modules[p.layer]
        for p in plans.values()
        if p.readout is not None and p.readout.kind == "pool" and p.layer in modules
    }
    if not pools or len(readouts) < 2:
        return {}
    reads: list[tuple[str, torch.Tensor]] = []  # strong references: addresses stay unique
    seen: dict[str, tuple[torch.Tensor, tuple[int, ...]]] = {}
    outputs: dict[str, tuple[int, ...]] = {}

    def before(name: str, args: tuple[Any, ...]) -> None:
        if name not in seen and args and isinstance(args[0], torch.Tensor):
            seen[name] = (args[0], tuple(args[0].shape[2:]))

    def after(name: str, output: Any) -> None:
        output = output[0] if isinstance(output, (tuple, list)) and output else output
        if name not in outputs and isinstance(output, torch.Tensor):
            outputs[name] = tuple(output.shape[2:])

    with contextlib.ExitStack() as stack:
        hooks = stack.enter_context(HookSet())
        for name, module in pools.items():
            hooks.add(module.register_forward_pre_hook(lambda _m, a, n=name: before(n, a)))
            hooks.add(module.register_forward_hook(lambda _m, _a, o, n=name: after(n, o)))
        stack.enter_context(ReadoutHooks(model, readouts, lambda n, t: reads.append((n, t))))
        stack.enter_context(torch.no_grad())
        with contextlib.suppress(Exception):  # what ran before a failure is enough
            model(cfg.grey())
    found: dict[str, str] = {}
    for name, (tensor, in_hw) in seen.items():
        source = next((n for n, t in reads if n != name and _same_tensor(t, tensor)), None)
        if source is None:
            continue
        units, source_units = plans[name].units, plans[source].units
        if _repeats(pools[name], in_hw, outputs.get(name, ()), units, source_units, cfg.objective):
            found[name] = source
    for name in list(found):  # a chain (conv -> identity pool -> global pool): the first
        source, hops = found[name], 0
        while source in found and hops < len(found):
            source, hops = found[source], hops + 1
        found[name] = source
    return found


# --------------------------------------------------------------------------- optimisation


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
    lr: float = 0.15,
    transforms: bool = True,
    relu_redirect: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    history_every: int = 16,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> FeatVisResult:
    """Optimise one input image per channel so that it maximally activates that channel.

    The model is run under :func:`cnnviz.analysis.guard.observe` (eval mode, parameters frozen,
    autograd on even inside ``torch.inference_mode``, RNG forked); only the image parameters
    are updated (Adam). The layer's maps are read where
    :func:`~cnnviz.analysis.readout.find_readouts` says (after a conv's normalisation and
    activation); hooks exist for the call only, and each forward pass stops as soon as the
    tensor was read. See the module docstring for the method and its defaults.

    Args:
        model: Any ``nn.Module`` taking ``[N, C, H, W]`` images, in any floating dtype and
            memory format (the image is optimised in float32 and cast for each forward).
        layer: Qualified name of a 2-D conv or pooling layer (see
            :func:`cnnviz.analysis.layers.list_layers`), or ``None`` to maximise class logits.
        channels: Channel indices of ``layer`` (class indices when ``layer`` is ``None``);
            ``None`` for all of them. One image per entry.
        input_shape: ``(C, H, W)`` of the image; default: ``model.expected_input_shape``.
        objective: ``"mean"``: the mean of the channel's read map over the units whose
            receptive field lies inside the image (the centre unit where none does);
            ``"center"``: its centre unit. Ignored for logits.
        mean: Per-channel mean of the data normalisation (a number or ``C`` numbers); default 0.
        std: Per-channel standard deviation of the normalisation; default 1.
        param: ``"fourier"`` (decorrelated, 1/f-scaled spectrum) or ``"pixel"``.
        decorrelate: Mix colour planes by the fixed colour-correlation matrix (3-channel inputs).
        steps: Adam steps per image.
        lr: Adam learning rate (see the module docstring for the relative ``eps``).
        transforms: Apply random pad/jitter/scale/rotation each step.
        relu_redirect: While optimising, give every ReLU of the model (``nn.ReLU`` modules and
            functional ``relu`` calls) Lucid's "redirected" gradient, so an image whose target
            units all start negative (zero gradient) still moves towards activating them.
            The forward values are unchanged; in-place ReLU modules are made out-of-place
            inside the window (and restored).
        seed: Seed of the dedicated generator for the initial image and the transforms.
        batch_size: Images optimised together; ``None`` for all channels in one batch.
        device: Where to optimise; default: the device of the model's parameters (CPU if none).
        history_every: Record the objective every this many steps (and at the last step).
        should_stop: Called before every step; when it returns ``True`` the optimisation ends
            and the images optimised so far are returned (see
            :attr:`FeatVisResult.stopped_at`). E.g. ``lambda: trainer.should_stop``.
        progress: Called after every step with the number of steps done so far in this call
            (all batches together: ``ceil(len(channels) / batch_size) * steps`` in the end).

    Returns:
        A :class:`FeatVisResult` (images in ``[0, 1]`` on the CPU, final activations, history,
        the readout and the units the objective averaged).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``layer`` is not a 2-D conv/pooling layer (the message lists the valid
            names), a channel is out of range, ``input_shape`` does not fit the model, or an
            option is not one of its choices.

    Example:
        >>> res = visualize_channels(model, "features.c3", [0, 1, 2], mean=dm.mean, std=dm.std)
        >>> res.images.shape, res.activations.shape, res.readout.describe()
        (torch.Size([3, 3, 32, 32]), torch.Size([3]), 'read after act3')
    """
    cfg = _settings(
        model,
        input_shape=input_shape,
        objective=objective,
        mean=mean,
        std=std,
        param=param,
        decorrelate=decorrelate,
        steps=steps,
        lr=lr,
        transforms=transforms,
        relu_redirect=relu_redirect,
        seed=seed,
        batch_size=batch_size,
        device=device,
        history_every=history_every,
        should_stop=should_stop,
        progress=progress,
    )
    _check_layers(model, [layer])
    with _guarded(model, cfg):
        cfg.enter()
        plan = _plans(model, cfg, [layer])[layer]
        what = "classes" if layer is None else "channels"
        chosen = _resolve_channels(channels, plan.count, what)
        return _optimise(model, cfg, plan, chosen)[0]


def visualize_layers(
    model: nn.Module,
    layers: Sequence[str],
    channels: Sequence[int] | Mapping[str, Sequence[int] | None] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    objective: Objective = "mean",
    mean: Sequence[float] | torch.Tensor | float | None = None,
    std: Sequence[float] | torch.Tensor | float | None = None,
    param: Param = "fourier",
    decorrelate: bool = True,
    steps: int = 256,
    lr: float = 0.15,
    transforms: bool = True,
    relu_redirect: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    history_every: int = 16,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int], None] | None = None,
    skip_duplicates: bool = True,
) -> dict[str, FeatVisResult]:
    """:func:`visualize_channels` for several layers, each distinct image optimised once.

    Readouts and receptive fields are found once for all layers. A layer whose image would equal
    another selected layer's (:func:`duplicate_layers`: a global or identity pool of that
    layer's read tensor) is not optimised: its result holds the other layer's images for its
    channels, its own activations (one forward pass) and :attr:`FeatVisResult.same_as`.

    Args:
        model: As for :func:`visualize_channels`.
        layers: Qualified names of 2-D conv or pooling layers.
        channels: Channel indices for every layer, a mapping ``{layer: indices or None}``
            (missing layers: all channels), or ``None`` for all channels of every layer.
        input_shape: As for :func:`visualize_channels`; likewise ``objective``, ``mean``,
            ``std``, ``param``, ``decorrelate``, ``steps``, ``lr``, ``transforms``,
            ``relu_redirect``, ``seed`` (each layer starts from the same seed), ``batch_size``,
            ``device`` and ``history_every``.
        objective: See :func:`visualize_channels`.
        mean: See :func:`visualize_channels`.
        std: See :func:`visualize_channels`.
        param: See :func:`visualize_channels`.
        decorrelate: See :func:`visualize_channels`.
        steps: See :func:`visualize_channels`.
        lr: See :func:`visualize_channels`.
        transforms: See :func:`visualize_channels`.
        relu_redirect: See :func:`visualize_channels`.
        seed: See :func:`visualize_channels`.
        batch_size: See :func:`visualize_channels`.
        device: See :func:`visualize_channels`.
        history_every: See :func:`visualize_channels`.
        should_stop: Checked before every step; when it returns ``True`` the layer being
            optimised is returned as far as it got and later layers are left out.
        progress: Called after every step with the steps done so far over all layers.
        skip_duplicates: Copy instead of optimising layers whose image would be another's.

    Returns:
        ``{layer: FeatVisResult}`` in the order of ``layers`` (only the layers reached when
        stopped).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: As for :func:`visualize_channels`, or if ``layers`` is empty or repeats
            a name.

    Example:
        >>> out = visualize_layers(resnet, ["layer4.1.conv2", "avgpool"], [0, 1])
        >>> out["avgpool"].same_as
        'layer4.1.conv2'
    """
    cfg = _settings(
        model,
        input_shape=input_shape,
        objective=objective,
        mean=mean,
        std=std,
        param=param,
        decorrelate=decorrelate,
        steps=steps,
        lr=lr,
        transforms=transforms,
        relu_redirect=relu_redirect,
        seed=seed,
        batch_size=batch_size,
        device=device,
        history_every=history_every,
        should_stop=should_stop,
        progress=progress,
    )
    names = _layer_list(layers)
    _check_layers(model, names)
    with _guarded(model, cfg):
        cfg.enter()
        plans = _plans(model, cfg, names)
        chosen = {
            n: _resolve_channels(_channels_for(channels, n), plans[n].count, "channels")
            for n in names
        }
        same = _find_duplicates(model, cfg, plans) if skip_duplicates else {}
        same = {n: s for n, s in same.items() if set(chosen[n]) <= set(chosen[s])}
        results: dict[str, FeatVisResult] = {}
        done, stopped = 0, False
        for name in names:
            if name in same:
                continue
            if results and should_stop is not None and should_stop():
                stopped = True
                break
            result, done = _optimise(model, cfg, plans[name], chosen[name], done)
            results[name] = result
            if result.stopped:
                stopped = True
                break
        if not stopped:  # copies cost one forward pass each; none after a stop
            for name, source in same.items():
                results[name] = _copy(model, cfg, plans[name], results[source], chosen[name])
        return {n: results[n] for n in names if n in results}


def duplicate_layers(
    model: nn.Module,
    layers: Sequence[str],
    *,
    input_shape: Sequence[int] | None = None,
    objective: Objective = "mean",
) -> dict[str, str]:
    """Which of ``layers`` would get the same feature-visualisation image as another.

    A selected pooling layer is a duplicate of another selected layer when its input is exactly
    the tensor read for that layer (no parameter or operation between: the read tensor itself,
    e.g. a conv's ReLU output) and it passes that tensor on unchanged (kernel 1 and stride 1, or
    an adaptive pool to the same size), or — with ``objective="mean"`` — pools it globally (an
    adaptive pool to 1x1, or one window covering the whole map). Chains resolve to the first
    layer. Found in one guarded forward pass of a grey image.

    Args:
        model: As for :func:`visualize_channels`.
        layers: Qualified names of 2-D conv or pooling layers.
        input_shape: ``(C, H, W)``; default: ``model.expected_input_shape``.
        objective: The objective the images are for (``"mean"`` or ``"center"``).

    Returns:
        ``{duplicate layer: layer whose image it gets}``; empty when there is none.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a layer is not a 2-D conv/pooling layer (the message lists the valid
            names) or ``input_shape`` does not fit the model.

    Example:
        >>> duplicate_layers(resnet, ["layer4.1.conv2", "avgpool"])
        {'avgpool': 'layer4.1.conv2'}
    """
    cfg = _settings(model, input_shape=input_shape, objective=objective, relu_redirect=False)
    names = _layer_list(layers)
    _check_layers(model, names)
    with _guarded(model, cfg):
        cfg.enter()
        return _find_duplicates(model, cfg, _plans(model, cfg, names))


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
