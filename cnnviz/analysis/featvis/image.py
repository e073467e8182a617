"""The optimised image: Fourier or pixel parametrisation, colour decorrelation, transforms.

:class:`_Image` makes an image batch in ``[0, 1]`` from leaf parameters (a 1/f-scaled spectrum
or per-pixel logits, colour planes mixed by :data:`COLOR_CORRELATION_SQRT`, then a sigmoid);
:func:`_random_affines` and :func:`_transform` are Lucid's pad/jitter/scale/rotate
robustness transforms, drawn from a dedicated generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
