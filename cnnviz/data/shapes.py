"""The built-in default data: procedural shapes on textured, noisy backgrounds.

Nothing is downloaded and nothing is read from disk. Each sample shows one filled shape of one
of nine classes (:data:`SHAPE_NAMES`) at a random position, size (60–84 % of the image side),
rotation and colour, over a background made of a random colour, smooth value-noise texture and
per-pixel Gaussian noise. Position, size, colours and texture are drawn independently of the
label, so only the shape's geometry identifies the class. The foreground is brighter than the
background in every channel (or darker in every channel, at random) by 0.3–0.6, so the shape is
always visible, also in grayscale.

Sample ``i`` is drawn from its own random stream seeded by ``(seed, split, i)`` (see
:mod:`cnnviz.data._rng`), and label ``i`` is ``i % num_classes`` (exactly balanced classes, and
the first ``num_classes`` samples of a split show one sample of each class). The same scene is
drawn at every ``image_size``. Every sample's foreground mask is kept (:meth:`ShapesDataset.mask`).

Images are normalized with :data:`SHAPES_MEAN` and :data:`SHAPES_STD` (measured over the default
settings: mean 0.5, std 0.28 in every channel); :meth:`ShapesDataset.denormalize` undoes it.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from cnnviz.data._rng import sample_generator, single_thread
from cnnviz.data.base import (
    ImageDataModule,
    check_channels,
    check_float,
    check_int,
    check_seed,
    check_split,
    denormalize,
)

__all__ = [
    "SHAPES_MEAN",
    "SHAPES_STD",
    "SHAPE_NAMES",
    "ShapesDataModule",
    "ShapesDataset",
]

#: The shape classes, in label order (when ``classes`` is not given).
SHAPE_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_bars",
    "vertical_bars",
    "diagonal_bars",
    "star",
)

#: Per-channel mean used to normalize shapes images (measured, rounded).
SHAPES_MEAN: float = 0.5
#: Per-channel standard deviation used to normalize shapes images (measured, rounded).
SHAPES_STD: float = 0.28

MIN_IMAGE_SIZE = 28
MAX_IMAGE_SIZE = 224

# Half-size of a shape as a fraction of the image side: diameters of 60 % to 84 %.
_SIZE_MIN, _SIZE_MAX = 0.30, 0.42
# Orientation jitter of the bar classes, so horizontal / vertical / diagonal stay distinct.
_BAR_JITTER = math.radians(12.0)
# Samples are generated eagerly when the uint8 images take at most this many bytes.
_PRECOMPUTE_BYTES = 256 * 2**20
# Pixels rendered per chunk (bounds peak memory of eager generation).
_CHUNK_PIXELS = 2**20

# Layout of the uniform parameters drawn for every sample (independent of image size/channels).
_P_CX, _P_CY, _P_SIZE, _P_ANGLE, _P_DIAG = 0, 1, 2, 3, 4
_P_SIGN, _P_BG, _P_FG = 5, 6, 9
_P_TEX4, _P_TEX8 = 12, 12 + 3 * 4 * 4
_N_PARAMS = _P_TEX8 + 3 * 8 * 8


# ------------------------------------------------------------------------------ shape functions
# Each maps local coordinates (u, v) -- centred on the shape, rotated, in units of the half-size
# -- to a boolean "inside" mask.


def _circle(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 1.0


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.5**2)


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.75


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    # Equilateral, circumradius 1.15, centroid at the origin; edge normals at 90, 210, 330 deg.
    inside = torch.ones_like(u, dtype=torch.bool)
    for deg in (90.0, 210.0, 330.0):
        a = math.radians(deg)
        inside &= u * math.cos(a) + v * math.sin(a) <= 0.575
    return inside


def _cross(u: Tensor, v: Tensor) -> Tensor:
    a, b = u.abs(), v.abs()
    return ((a <= 0.3) & (b <= 0.95)) | ((b <= 0.3) & (a <= 0.95))


def _bars(u: Tensor, v: Tensor) -> Tensor:
    # Three bars of width 0.36 with gaps of 0.31, parallel to the u axis.
    half, width, period = 0.85, 0.36, 0.67
    return (u.abs() <= half) & (v.abs() <= half) & (torch.remainder(v + half, period) < width)


def _star(u: Tensor, v: Tensor) -> Tensor:
    # Five-pointed star, outer radius 1.1, inner radius 0.55; fold the angle into one half-spike.
    outer, inner, sector = 1.1, 0.55, 2.0 * math.pi / 5.0
    r = torch.sqrt(u * u + v * v)
    phi = torch.remainder(torch.atan2(v, u) + math.pi / 2.0, sector)  # a tip points up
    b = (phi - sector / 2.0).abs()  # 0 at the notch, sector/2 at the tip
    b = sector / 2.0 - b  # 0 at the tip, pi/5 at the notch
    px, py = r * torch.cos(b), r * torch.sin(b)
    tx, ty = outer, 0.0
    ix, iy = inner * math.cos(sector / 2.0), inner * math.sin(sector / 2.0)
    # Inside when p is on the same side of the edge tip->notch as the origin.
    cross_p = (ix - tx) * (py - ty) - (iy - ty) * (px - tx)
    cross_o = (ix - tx) * (0.0 - ty) - (iy - ty) * (0.0 - tx)
    return (cross_p * cross_o >= 0) & (r <= outer)


_SHAPE_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
    "horizontal_bars": _bars,
    "vertical_bars": _bars,
    "diagonal_bars": _bars,
    "star": _star,
}


@functools.lru_cache(maxsize=32)
def _upsampler(grid: int, size: int) -> Tensor:
    """Matrix ``(size, grid)`` of 1-D linear interpolation (``align_corners=False``).

    ``A @ T @ A.T`` equals ``F.interpolate(T, size, mode="bilinear")`` for a ``grid x grid`` map
    ``T`` (bilinear interpolation is separable), and runs as two small matrix products.
    """
    eye = torch.eye(grid).unsqueeze(0)  # (1, grid, grid): one basis signal per channel
    return F.interpolate(eye, size=size, mode="linear", align_corners=False)[0].T.contiguous()


# ------------------------------------------------------------------------------------ validation


def _check_classes(owner: str, classes: Any) -> tuple[str, ...]:
    if classes is None:
        return SHAPE_NAMES
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise TypeError(
            f"{owner}: `classes` must be a list of shape names or None; got {classes!r}. "
            f"Valid names: {', '.join(SHAPE_NAMES)}."
        )
    names = tuple(classes)
    unknown = [c for c in names if c not in SHAPE_NAMES]
    if unknown:
        raise ValueError(
            f"{owner}: unknown shape name(s) {unknown} in `classes`; valid names: "
            f"{', '.join(SHAPE_NAMES)}."
        )
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(
            f"{owner}: `classes` must name at least 2 distinct shapes; got {list(names)}."
        )
    return names


def _check_common(
    owner: str, image_size: Any, channels: Any, noise: Any, texture: Any, seed: Any
) -> tuple[int, int, float, float, int]:
    image_size = check_int(owner, "image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    channels = check_channels(owner, channels)
    noise = check_float(owner, "noise", noise, 0.0, 1.0)
    texture = check_float(owner, "texture", texture, 0.0, 1.0)
    return image_size, channels, noise, texture, check_seed(owner, seed)


# --------------------------------------------------------------------------------------- dataset


class ShapesDataset(Dataset):
    """Procedural shapes: one shape per image, with its foreground mask.

    Args:
        num_samples: Number of samples in this split.
        image_size: Height and width in pixels, 28 to 224.
        channels: 3 for RGB, 1 for grayscale.
        seed: Seed of the whole data set; the same seed gives the same tensors.
        split: ``"train"`` or ``"val"``; the splits are disjoint random streams.
        noise: Standard deviation of the per-pixel Gaussian noise (image values in ``[0, 1]``).
        texture: Amplitude of the smooth background texture.
        classes: Shape names to use, in label order (default: all of :data:`SHAPE_NAMES`).
        precompute: Generate every sample at construction (``True``) or on access
            (``False``); ``None`` precomputes when the images take at most 256 MiB as ``uint8``.
            Both give identical samples.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range (``image_size`` outside 28..224, ``channels``
            not 1 or 3, unknown ``classes``...).

    Example:
        >>> ds = ShapesDataset(100, image_size=32)
        >>> image, label = ds[0]
        >>> image.shape, ds.class_names[int(label)]
        (torch.Size([3, 32, 32]), 'circle')
        >>> ds.mask(0).shape
        torch.Size([32, 32])
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 32,
        channels: int = 3,
        *,
        seed: int = 0,
        split: str = "train",
        noise: float = 0.05,
        texture: float = 0.2,
        classes: Sequence[str] | None = None,
        precompute: bool | None = None,
    ) -> None:
        owner = "ShapesDataset"
        self.num_samples = check_int(owner, "num_samples", num_samples, 1)
        self.image_size, self.channels, self.noise, self.texture, self.seed = _check_common(
            owner, image_size, channels, noise, texture, seed
        )
        self.split = check_split(owner, split)
        self.classes = _check_classes(owner, classes)
        if precompute is not None and not isinstance(precompute, bool):
            raise TypeError(
                f"{owner}: `precompute` must be True, False or None; got {precompute!r}."
            )
        self._stream = f"shapes/{self.split}"
        self._kinds = torch.tensor([SHAPE_NAMES.index(c) for c in self.classes])
        self._mean_t = torch.full((self.channels, 1, 1), SHAPES_MEAN)
        self._std_t = torch.full((self.channels, 1, 1), SHAPES_STD)
        n_bytes = self.num_samples * self.channels * self.image_size**2
        if precompute is None:
            precompute = n_bytes <= _PRECOMPUTE_BYTES
        self._images: Tensor | None = None
        self._masks: Tensor | None = None
        if precompute:
            self._generate_all()

    # -- public API -------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of shape classes."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Shape name of each label."""
        return list(self.classes)

    @property
    def labels(self) -> Tensor:
        """All labels, ``int64`` of shape ``(num_samples,)`` (``i % num_classes``)."""
        return torch.arange(self.num_samples) % self.num_classes

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel normalization mean (:data:`SHAPES_MEAN`)."""
        return (SHAPES_MEAN,) * self.channels

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel normalization standard deviation (:data:`SHAPES_STD`)."""
        return (SHAPES_STD,) * self.channels

    def denormalize(self, x: Tensor) -> Tensor:
        """Map normalized images ``(C, H, W)`` or ``(N, C, H, W)`` back to ``[0, 1]``."""
        return denormalize(x, self.mean, self.std)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(image, label)``: normalized ``float32 (C, H, W)`` and an ``int64`` scalar."""
        image, label, _ = self.sample(index)
        return image, label

    def sample(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(image, label, mask)`` of sample ``index``.

        Args:
            index: Sample index (negative counts from the end).

        Returns:
            The normalized ``float32 (C, H, W)`` image, the ``int64`` scalar label and the
            ``bool (H, W)`` foreground mask.

        Raises:
            IndexError: If ``index`` is out of range.
        """
        i = self._index(index)
        with single_thread():
            if self._images is not None and self._masks is not None:
                raw, mask = self._images[i], self._masks[i]
            else:
                images, masks = self._render_impl([i])
                raw, mask = images[0], masks[0]
            image = (raw.float() / 255.0 - self._mean_t) / self._std_t
        label = torch.tensor(i % self.num_classes, dtype=torch.int64)
        return image, label, mask.clone()

    def mask(self, index: int) -> Tensor:
        """Return the foreground mask of sample ``index``, ``bool (H, W)``."""
        return self.sample(index)[2]

    # -- generation -------------------------------------------------------------------------------

    def _index(self, index: int) -> int:
        i = operator.index(index)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(
                f"ShapesDataset: index {index} out of range for {self.num_samples} samples."
            )
        return i

    def _generate_all(self) -> None:
        n, c, s = self.num_samples, self.channels, self.image_size
        self._images = torch.empty((n, c, s, s), dtype=torch.uint8)
        self._masks = torch.empty((n, s, s), dtype=torch.bool)
        chunk = max(1, _CHUNK_PIXELS // (s * s))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            images, masks = self._render(list(range(start, stop)))
            self._images[start:stop] = images
            self._masks[start:stop] = masks

    def _render(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """Draw samples ``indices``: ``uint8 (n, C, H, W)`` images and ``bool (n, H, W)`` masks."""
        with single_thread():
            return self._render_impl(indices)

    def _render_impl(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        n, c, s = len(indices), self.channels, self.image_size
        params = torch.empty((n, _N_PARAMS))
        noise = torch.empty((n, c, s, s))
        for k, i in enumerate(indices):
            gen = sample_generator(self.seed, self._stream, i)
            torch.rand(_N_PARAMS, generator=gen, out=params[k])
            torch.randn((c, s, s), generator=gen, out=noise[k])
        kinds = self._kinds[torch.tensor(indices) % self.num_classes]

        # Geometry: centre, half-size and angle, in units of the image side.
        size = _SIZE_MIN + (_SIZE_MAX - _SIZE_MIN) * params[:, _P_SIZE]
        cx = size + (1.0 - 2.0 * size) * params[:, _P_CX]
        cy = size + (1.0 - 2.0 * size) * params[:, _P_CY]
        angle = 2.0 * math.pi * params[:, _P_ANGLE]
        jitter = (2.0 * params[:, _P_ANGLE] - 1.0) * _BAR_JITTER
        diagonal = torch.where(params[:, _P_DIAG] < 0.5, math.pi / 4.0, 3.0 * math.pi / 4.0)
        for name, base in (
            ("horizontal_bars", torch.zeros_like(angle)),
            ("vertical_bars", torch.full_like(angle, math.pi / 2.0)),
            ("diagonal_bars", diagonal),
        ):
            is_kind = kinds == SHAPE_NAMES.index(name)
            angle = torch.where(is_kind, base + jitter, angle)
        grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        dx = grid.view(1, 1, s) - cx.view(n, 1, 1)
        dy = grid.view(1, s, 1) - cy.view(n, 1, 1)
        cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
        inv = (1.0 / size).view(n, 1, 1)
        u = (dx * cos + dy * sin) * inv
        v = (dy * cos - dx * sin) * inv
        masks = torch.zeros((n, s, s), dtype=torch.bool)
        for kind in kinds.unique().tolist():
            sel = kinds == kind
            masks[sel] = _SHAPE_FNS[SHAPE_NAMES[kind]](u[sel], v[sel])

        # Appearance: background colour + texture, foreground colour, pixel noise.
        # Foreground brighter (or darker) than the background by 0.3-0.6 in every channel.
        contrast = 0.3 + 0.3 * params[:, _P_FG : _P_FG + c]
        low = params[:, _P_BG : _P_BG + c] * (1.0 - contrast)
        brighter = (params[:, _P_SIGN] < 0.5).view(n, 1)
        bg = torch.where(brighter, low, low + contrast)
        fg = torch.where(brighter, low + contrast, low)
        tex4 = params[:, _P_TEX4:_P_TEX8].view(n, 3, 4, 4)[:, :c] * 2.0 - 1.0
        tex8 = params[:, _P_TEX8:_N_PARAMS].view(n, 3, 8, 8)[:, :c] * 2.0 - 1.0
        a4, a8 = _upsampler(4, s), _upsampler(8, s)
        tex = a4 @ tex4 @ a4.T + 0.5 * (a8 @ tex8 @ a8.T)  # separable bilinear upsampling
        background = bg.view(n, c, 1, 1) + (self.texture / 1.5) * tex
        image = torch.where(masks.unsqueeze(1), fg.view(n, c, 1, 1), background)
        image += self.noise * noise
        image = (image.clamp_(0.0, 1.0) * 255.0).round_().to(torch.uint8)
        return image, masks


# ---------------------------------------------------------------------------------- data module


class ShapesDataModule(ImageDataModule):
    """The default data: procedural shapes, deterministic by ``seed``, no files, no download.

    Args:
        image_size: Height and width in pixels, 28 to 224 (32 suits LeNet-5, 224 AlexNet/VGG).
        channels: 3 for RGB, 1 for grayscale.
        num_train: Training samples.
        num_val: Validation samples.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the data (training order is governed by ``lightning.seed_everything``).
        noise: Standard deviation of per-pixel Gaussian noise.
        texture: Amplitude of the smooth background texture.
        classes: Shape names to use (default: all nine of :data:`SHAPE_NAMES`).

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is out of range.

    Example:
        >>> dm = ShapesDataModule(image_size=32, num_train=1000, num_val=200)
        >>> dm.model_kwargs
        {'num_classes': 9, 'in_channels': 3, 'input_size': 32}
        >>> images, labels = dm.probe(8)
        >>> masks = dm.probe_masks(8)  # bool (8, 32, 32)
    """

    name: ClassVar[str] = "shapes"

    def __init__(
        self,
        image_size: int = 32,
        channels: int = 3,
        num_train: int = 5000,
        num_val: int = 1000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        noise: float = 0.05,
        texture: float = 0.2,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        owner = "ShapesDataModule"
        self._image_size, self._channels, self.noise, self.texture, self.seed = _check_common(
            owner, image_size, channels, noise, texture, seed
        )
        self.num_train = check_int(owner, "num_train", num_train, 1)
        self.num_val = check_int(owner, "num_val", num_val, 1)
        self.classes = _check_classes(owner, classes)
        self._mean = (SHAPES_MEAN,) * self._channels
        self._std = (SHAPES_STD,) * self._channels
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """Number of shape classes (9 by default)."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Shape name of each label."""
        return list(self.classes)

    @property
    def has_masks(self) -> bool:
        """Always ``True``: every sample has a foreground mask."""
        return True

    def dataset(self, split: str = "train") -> ShapesDataset:
        """Return the :class:`ShapesDataset` of ``split``, generating it on first use."""
        return cast(ShapesDataset, super().dataset(split))

    def _build_dataset(self, split: str) -> ShapesDataset:
        return ShapesDataset(
            self.num_train if split == "train" else self.num_val,
            self._image_size,
            self._channels,
            seed=self.seed,
            split=split,
            noise=self.noise,
            texture=self.texture,
            classes=self.classes,
        )

    def probe_masks(self, n: int = 8, split: str = "val") -> Tensor:
        """Return the foreground masks of the samples :meth:`probe` returns.

        Args:
            n: Number of samples (at most the split's length).
            split: ``"train"`` or ``"val"``.

        Returns:
            ``bool`` tensor of shape ``(n, H, W)``, aligned with ``probe(n, split)``.
        """
        _, count = self._probe_count(n, split)
        ds = self.dataset(split)
        return torch.stack([ds.mask(i) for i in range(count)])
