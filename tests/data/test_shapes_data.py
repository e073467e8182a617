from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import RandomSampler, SequentialSampler

from cnnviz.data import SHAPE_NAMES, ShapesDataModule, ShapesDataset
from cnnviz.data.shapes import SHAPES_MEAN, SHAPES_STD


def _all(ds: ShapesDataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    items = [ds.sample(i) for i in range(len(ds))]
    return (
        torch.stack([x for x, _, _ in items]),
        torch.stack([y for _, y, _ in items]),
        torch.stack([m for _, _, m in items]),
    )


# ------------------------------------------------------------------------------- determinism


def test_same_seed_same_tensors_and_other_seed_or_split_differs() -> None:
    a = _all(ShapesDataset(20, 32, seed=3))
    b = _all(ShapesDataset(20, 32, seed=3))
    for ta, tb in zip(a, b, strict=True):
        assert torch.equal(ta, tb)
    other_seed = _all(ShapesDataset(20, 32, seed=4))
    other_split = _all(ShapesDataset(20, 32, seed=3, split="val"))
    assert not torch.equal(a[0], other_seed[0])
    assert not torch.equal(a[2], other_seed[2])
    assert not torch.equal(a[0], other_split[0])


def test_sample_depends_only_on_seed_split_index() -> None:
    eager = ShapesDataset(40, 32, seed=1, precompute=True)
    lazy = ShapesDataset(40, 32, seed=1, precompute=False)
    short = ShapesDataset(7, 32, seed=1)
    # Lazy access in reverse order, a shorter data set and eager chunked generation all agree.
    for i in reversed(range(40)):
        x, y, m = lazy.sample(i)
        xe, ye, me = eager.sample(i)
        assert torch.equal(x, xe) and torch.equal(y, ye) and torch.equal(m, me)
        if i < 7:
            assert torch.equal(short[i][0], x)


def test_global_rng_is_not_used_by_generation() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    ShapesDataset(10, 32, precompute=True)[3]
    ShapesDataset(10, 32, precompute=False)[3]
    assert torch.equal(torch.get_rng_state(), before)


# ------------------------------------------------------------------------------------- items


def test_item_types_shapes_and_normalization() -> None:
    ds = ShapesDataset(9, 32)
    image, label = ds[4]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert label.dtype == torch.int64 and label.dim() == 0 and int(label) == 4
    assert ds.mean == (SHAPES_MEAN,) * 3 and ds.std == (SHAPES_STD,) * 3
    raw = ds.denormalize(image)
    assert raw.min() >= 0 and raw.max() <= 1
    # Stored as uint8: denormalized values are multiples of 1/255.
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)
    assert torch.equal(ds[-1][0], ds[8][0])
    with pytest.raises(IndexError):
        ds[9]


def test_normalization_statistics_match_the_data() -> None:
    x, _, _ = _all(ShapesDataset(180, 32, seed=5))
    raw = x * SHAPES_STD + SHAPES_MEAN
    assert abs(raw.mean().item() - SHAPES_MEAN) < 0.05
    assert abs(raw.std().item() - SHAPES_STD) < 0.05


@pytest.mark.parametrize(("size", "n"), [(28, 18), (32, 18), (64, 9), (224, 2)])
def test_supported_sizes(size: int, n: int) -> None:
    ds = ShapesDataset(n, size, seed=2)
    image, _, mask = ds.sample(n - 1)
    assert image.shape == (3, size, size)
    assert mask.shape == (size, size) and mask.dtype == torch.bool
    assert 0.05 < mask.float().mean() < 0.8


def test_same_scene_at_every_size() -> None:
    small = torch.stack([ShapesDataset(9, 32).mask(i) for i in range(9)]).float()
    large = torch.stack([ShapesDataset(9, 64).mask(i) for i in range(9)]).float()
    down = F.avg_pool2d(large.unsqueeze(1), 2).squeeze(1) > 0.5
    inter = (down & small.bool()).sum((1, 2)).float()
    union = (down | small.bool()).sum((1, 2)).float()
    assert (inter / union).min() > 0.8


def test_grayscale_channel() -> None:
    ds = ShapesDataset(9, 32, channels=1)
    image, _ = ds[0]
    assert image.shape == (1, 32, 32)
    assert ds.mean == (SHAPES_MEAN,) and ds.denormalize(image).shape == (1, 32, 32)


# ------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("channels", [3, 1])
def test_masks_are_aligned_with_the_drawn_shape(channels: int) -> None:
    ds = ShapesDataset(45, 32, channels=channels, seed=7)
    for i in range(len(ds)):
        image, _, mask = ds.sample(i)
        raw = ds.denormalize(image)
        assert mask.any() and not mask.all()
        inside, outside = raw[:, mask], raw[:, ~mask]
        fg, bg = inside.mean(1), outside.mean(1)
        # The foreground differs from the background in every channel ...
        assert ((fg - bg).abs() > 0.2).all(), (i, fg, bg)
        # ... and the mask is exactly where the foreground colour is: classify every pixel by
        # the nearer of the two mean colours.
        d_fg = (raw - fg.view(-1, 1, 1)).norm(dim=0)
        d_bg = (raw - bg.view(-1, 1, 1)).norm(dim=0)
        agree = ((d_fg < d_bg) == mask).float().mean()
        assert agree > 0.98, (i, agree)  # a mask shifted by one pixel scores about 0.95


def test_mask_matches_sample_and_is_a_copy() -> None:
    ds = ShapesDataset(5, 32)
    m = ds.mask(2)
    assert torch.equal(m, ds.sample(2)[2])
    m.fill_(True)
    assert not ds.mask(2).all()


# ----------------------------------------------------------------------------- labels/classes


def test_class_balance_and_names() -> None:
    ds = ShapesDataset(90, 32)
    labels = torch.stack([ds[i][1] for i in range(len(ds))])
    assert torch.equal(labels, ds.labels)
    assert torch.bincount(labels).tolist() == [10] * 9
    assert ds.class_names == list(SHAPE_NAMES) and ds.num_classes == 9 >= 8


def test_colour_and_position_do_not_leak_the_label() -> None:
    ds = ShapesDataset(540, 32, seed=11)
    x, y, m = _all(ds)
    raw = ds.denormalize(x)
    bg = (raw * (~m).unsqueeze(1)).sum((2, 3)) / (~m).sum((1, 2)).unsqueeze(1)
    ys = torch.arange(32.0).view(1, 32, 1)
    cy = (m * ys).sum((1, 2)) / m.sum((1, 2))
    for c in range(9):
        sel = y == c
        assert (bg[sel].mean(0) - bg.mean(0)).abs().max() < 0.1
        assert abs(cy[sel].mean() - cy.mean()) < 2.0


def test_class_subset() -> None:
    ds = ShapesDataset(6, 32, classes=["star", "circle"])
    assert ds.class_names == ["star", "circle"] and ds.num_classes == 2
    assert [int(ds[i][1]) for i in range(4)] == [0, 1, 0, 1]


# ---------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_size": 27}, ValueError, "`image_size` must be an int >= 28 and <= 224; got 27"),
        ({"image_size": 225}, ValueError, "`image_size`"),
        ({"image_size": 32.0}, TypeError, "`image_size`"),
        ({"channels": 2}, ValueError, "`channels`"),
        ({"noise": -0.1}, ValueError, "`noise`"),
        ({"texture": "a"}, TypeError, "`texture`"),
        ({"classes": ["circle", "hexagon"]}, ValueError, "hexagon.*valid names: circle"),
        ({"classes": ["circle"]}, ValueError, "at least 2"),
        ({"classes": "circle"}, TypeError, "`classes`"),
        ({"num_samples": 0}, ValueError, "`num_samples`"),
        ({"split": "test"}, ValueError, "`split`.*'train', 'val'"),
        ({"precompute": "yes"}, TypeError, "`precompute`"),
        ({"seed": 1.5}, TypeError, "`seed`"),
        ({"seed": True}, TypeError, "`seed`"),
    ],
)
def test_dataset_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    args = {"num_samples": 4, **kwargs}
    with pytest.raises(error, match=match):
        ShapesDataset(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image_size": 16}, ValueError, "`image_size`"),
        ({"num_train": 0}, ValueError, "`num_train`"),
        ({"num_val": -1}, ValueError, "`num_val`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"num_workers": -1}, ValueError, "`num_workers`"),
        ({"classes": ["square", "blob"]}, ValueError, "blob"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ShapesDataModule(**kwargs)


# ------------------------------------------------------------------------------- data module


def test_datamodule_surface_before_setup() -> None:
    dm = ShapesDataModule(image_size=64, channels=1, num_train=20, num_val=10)
    assert dm.num_classes == 9 and dm.class_names == list(SHAPE_NAMES)
    assert dm.task == "image" and dm.has_masks
    assert dm.input_shape == (1, 64, 64)
    assert dm.model_kwargs == {"num_classes": 9, "in_channels": 1, "input_size": 64}
    assert dm.mean == (SHAPES_MEAN,) and dm.std == (SHAPES_STD,)
    assert dm._datasets == {}  # nothing generated yet


def test_probe_is_first_samples_with_aligned_masks() -> None:
    dm = ShapesDataModule(num_train=20, num_val=12, seed=3)
    x, y = dm.probe(5)
    masks = dm.probe_masks(5)
    val = ShapesDataset(12, 32, seed=3, split="val")
    assert torch.equal(x, torch.stack([val[i][0] for i in range(5)]))
    assert y.tolist() == [0, 1, 2, 3, 4] and y.dtype == torch.int64
    assert masks.shape == (5, 32, 32) and torch.equal(masks[3], val.mask(3))
    assert dm.probe(50, split="train")[0].shape[0] == 20  # at most the split's length
    with pytest.raises(ValueError, match="`n`"):
        dm.probe(0)
    with pytest.raises(ValueError, match="`split`"):
        dm.probe_masks(3, split="test")


def test_probe_leaves_the_global_rng_untouched_but_a_loader_iterator_does_not() -> None:
    dm = ShapesDataModule(num_train=16, num_val=16)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    dm.probe(8)
    dm.probe_masks(8)
    dm.probe(4, split="train")
    assert torch.equal(torch.get_rng_state(), state)
    next(iter(dm.val_dataloader()))  # the trap the probe avoids
    assert not torch.equal(torch.get_rng_state(), state)


def test_loaders() -> None:
    dm = ShapesDataModule(num_train=40, num_val=20, batch_size=16)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, RandomSampler)
    assert isinstance(val.sampler, SequentialSampler)
    assert not train.persistent_workers
    x, y = next(iter(val))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(y, torch.arange(16) % 9)
    torch.manual_seed(0)
    first = next(iter(dm.train_dataloader()))[1]
    torch.manual_seed(0)
    assert torch.equal(next(iter(dm.train_dataloader()))[1], first)
    assert ShapesDataModule(num_train=8, num_workers=2).train_dataloader().persistent_workers
