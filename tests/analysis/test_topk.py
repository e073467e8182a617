"""Top-k dataset patches: exact streaming top-k, deterministic merges, patch cropping."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cnnviz.analysis.receptive_field import receptive_fields
from cnnviz.analysis.topk import TopKActivations, TopKEntry, crop_patch


def _brute_force(
    acts: torch.Tensor, samples: torch.Tensor, k: int, one_per_sample: bool
) -> list[list[tuple[float, int, int]]]:
    """Reference: sort every candidate by (value desc, sample asc, position asc)."""
    n, c = acts.shape[:2]
    flat = acts.reshape(n, c, -1)
    out = []
    for ch in range(c):
        cands = []
        for i in range(n):
            row = flat[i, ch]
            if one_per_sample:
                best = max(range(row.numel()), key=lambda p, row=row: (float(row[p]), -p))
                cands.append((-float(row[best]), int(samples[i]), best))
            else:
                cands += [(-float(row[p]), int(samples[i]), p) for p in range(row.numel())]
        cands.sort()
        out.append([(-v, s, p) for v, s, p in cands[:k]])
    return out


def _as_lists(top: TopKActivations) -> list[list[tuple[float, int, int]]]:
    result = []
    for ch in range(top.num_channels):
        width = top.spatial_shape[-1]
        result.append(
            [
                (e.value, e.sample, e.position[0] * width + e.position[1])
                if len(e.position) == 2
                else (e.value, e.sample, e.position[0])
                for e in top.entries(ch)
            ]
        )
    return result


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(0, 4, (37, 5, 3, 4), generator=g).float()  # many ties
    acts[3, 1] = 7.0  # a whole map of equal maxima
    acts[5, 2, 0, 0] = -0.0
    samples = torch.randperm(37, generator=g) + 1000
    return acts, samples


@pytest.mark.parametrize("one_per_sample", [True, False])
def test_single_pass_matches_brute_force(data, one_per_sample: bool) -> None:
    acts, samples = data
    top = TopKActivations(5, k=7, one_per_sample=one_per_sample)
    for start in range(0, 37, 10):
        top.update(acts[start : start + 10], samples[start : start + 10])
    assert _as_lists(top) == _brute_force(acts, samples, 7, one_per_sample)
    assert top.values.shape == (5, 7) and top.samples.shape == (5, 7)  # O(C·k) state
    assert top.count.tolist() == [7] * 5


@pytest.mark.parametrize("one_per_sample", [True, False])
def test_split_and_merge_equals_one_pass(data, one_per_sample: bool) -> None:
    acts, samples = data
    whole = TopKActivations(5, k=6, one_per_sample=one_per_sample)
    whole.update(acts, samples)
    first = TopKActivations(5, k=6, one_per_sample=one_per_sample)
    second = TopKActivations(5, k=6, one_per_sample=one_per_sample)
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(1))
    half_a, half_b = perm[:18], perm[18:]
    first.update(acts[half_a[:9]], samples[half_a[:9]])
    first.update(acts[half_a[9:]], samples[half_a[9:]])
    second.update(acts[half_b], samples[half_b])
    first.merge(second.state())  # as after an all_gather
    for name in ("values", "samples", "positions"):
        assert torch.equal(getattr(first, name), getattr(whole, name)), name
    other = TopKActivations(5, k=6, one_per_sample=one_per_sample)
    other.update(acts[half_b], samples[half_b])
    other.merge(TopKActivations.from_state(first.state(), one_per_sample=one_per_sample))
    assert torch.equal(other.samples, whole.samples)  # merging twice is harmless


def test_fewer_candidates_than_k_and_nan() -> None:
    top = TopKActivations(2, k=4)
    acts = torch.tensor([[[1.0, float("nan")], [float("nan"), float("nan")]]])  # [1, 2, 2]
    top.update(acts, torch.tensor([9]))
    assert top.count.tolist() == [1, 1]
    assert top.entries(0) == [TopKEntry(1.0, 9, (0,))]
    assert top.samples[0].tolist() == [9, -1, -1, -1]
    assert top.values[0, 1:].tolist() == [float("-inf")] * 3
    top.update(torch.full((1, 2, 2), 0.5), torch.tensor([3]))
    assert [e.sample for e in top.entries(1)] == [3, 9]  # NaN ranks below every number


def test_one_d_activations_and_reset() -> None:
    top = TopKActivations(3, k=2, one_per_sample=False)
    acts = torch.arange(24.0).reshape(2, 3, 4)
    top.update(acts, torch.tensor([5, 6]))
    assert top.entries(2) == [TopKEntry(23.0, 6, (3,)), TopKEntry(22.0, 6, (2,))]
    assert top.spatial_shape == (4,)
    top.reset()
    assert top.count.tolist() == [0, 0, 0] and top.spatial_shape is None


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t: t.update(torch.zeros(2, 4, 3, 3), torch.tensor([0, 1])), ValueError, "4 chan"),
        (lambda t: t.update(torch.zeros(2, 3, 3, 3), torch.tensor([1, 1])), ValueError, "unique"),
        (lambda t: t.update(torch.zeros(2, 3, 3, 3), torch.tensor([0, -1])), ValueError, ">= 0"),
        (lambda t: t.update(torch.zeros(2, 3, 3, 3), torch.tensor([0])), ValueError, "one per"),
        (lambda t: t.update(torch.zeros(2, 3, 3, 3), torch.tensor([0.0, 1.0])), TypeError, "int"),
        (lambda t: t.update(torch.zeros(2, 3), torch.tensor([0, 1])), TypeError, "activations"),
        (lambda t: t.update(torch.zeros(1, 3, 5, 5), torch.tensor([2])), ValueError, "differs"),
        (lambda t: t.entries(3), ValueError, "`channel`"),
        (lambda t: t.merge(TopKActivations(4).state()), ValueError, "4 channels"),
    ],
)
def test_errors(call, error, match) -> None:
    top = TopKActivations(3, k=2)
    top.update(torch.zeros(1, 3, 3, 3), torch.tensor([7]))
    with pytest.raises(error, match=match):
        call(top)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"num_channels": 0}, ValueError), ({"num_channels": 2, "k": 0}, ValueError),
     ({"num_channels": 2.0}, TypeError), ({"num_channels": 2, "one_per_sample": 1}, TypeError)],
)  # fmt: skip
def test_constructor_validation(kwargs, error) -> None:
    with pytest.raises(error):
        TopKActivations(**kwargs)


def test_state_is_plain_fixed_shape_tensors() -> None:
    empty = TopKActivations(3, k=2).state()
    top = TopKActivations(3, k=2)
    top.update(torch.randn(4, 3, 5, 6), torch.arange(4))
    full = top.state()
    assert set(full) == {"values", "samples", "positions", "spatial_shape"}
    for name in full:  # equal shapes on every rank, so all_gather works before any update
        assert full[name].shape == empty[name].shape and isinstance(full[name], torch.Tensor)
    assert full["spatial_shape"].tolist() == [2, 5, 6]
    assert TopKActivations.from_state(full).spatial_shape == (5, 6)


# ------------------------------------------------------------------------------ DDP all-gather
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, acts: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        samples = torch.arange(acts.shape[0])
        mine = samples[rank::world]
        top = TopKActivations(acts.shape[1], k=5, one_per_sample=False)
        top.update(acts[mine], mine)
        top.sync()
        out[rank] = {k: v.clone() for k, v in top.state().items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("one_per_sample", [True, False])
def test_sync_merges_every_rank(monkeypatch, data, one_per_sample: bool) -> None:
    """``sync`` with a simulated 3-rank ``all_gather``: every rank ends with the global top-k."""
    acts, samples = data
    world = 3
    ranks = [TopKActivations(5, k=6, one_per_sample=one_per_sample) for _ in range(world)]
    for r, top in enumerate(ranks):
        if r != 2:  # rank 2 saw no data at all
            top.update(acts[r::2], samples[r::2])
    states = [top.state() for top in ranks]
    current = {"rank": 0, "calls": 0}
    names = list(states[0])  # sync gathers the state's tensors in this order

    def all_gather(parts: list[torch.Tensor], tensor: torch.Tensor, group=None) -> None:
        name = names[current["calls"] % len(names)]
        current["calls"] += 1
        assert torch.equal(tensor, states[current["rank"]][name])
        for r in range(world):
            parts[r].copy_(states[r][name])

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: current["rank"])
    monkeypatch.setattr(dist, "all_gather", all_gather)
    whole = TopKActivations(5, k=6, one_per_sample=one_per_sample)
    whole.update(acts, samples)
    for r, top in enumerate(ranks):
        current["rank"] = r
        top.sync()
        for name in ("values", "samples", "positions"):
            assert torch.equal(getattr(top, name), getattr(whole, name)), (r, name)
        assert top.spatial_shape == (3, 4)


@pytest.mark.slow
def test_sync_over_two_processes() -> None:
    acts = torch.randint(0, 3, (12, 2, 3, 3)).float()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), acts, out), nprocs=2, join=True)
        states = dict(out)
    whole = TopKActivations(2, k=5, one_per_sample=False)
    whole.update(acts, torch.arange(12))
    for rank in (0, 1):
        for name in ("values", "samples", "positions"):
            assert torch.equal(states[rank][name], getattr(whole, name)), (rank, name)


def test_sync_without_process_group_is_a_no_op() -> None:
    top = TopKActivations(1, k=1)
    top.update(torch.ones(1, 1, 2, 2), torch.tensor([0]))
    top.sync()
    assert top.entries(0) == [TopKEntry(1.0, 0, (0, 0))]


# -------------------------------------------------------------------------------- patches
def test_crop_patch_pads_outside_the_image() -> None:
    image = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5)
    inside = crop_patch(image, (1, 3, 2, 5))
    assert torch.equal(inside, image[:, 1:3, 2:5])
    corner = crop_patch(image, (-2, 2, 3, 7), pad_value=-1.0)
    assert corner.shape == (2, 4, 4)
    assert torch.equal(corner[:, 2:, :2], image[:, 0:2, 3:5])
    assert bool((corner[:, :2] == -1).all()) and bool((corner[:, :, 2:] == -1).all())
    outside = crop_patch(image, (10, 12, 0, 3))
    assert outside.shape == (2, 2, 3) and not bool(outside.any())
    seq = crop_patch(torch.arange(6.0).reshape(1, 6), (-1, 3))
    assert seq.tolist() == [[0.0, 0.0, 1.0, 2.0]]


@pytest.mark.parametrize(
    ("region", "error"),
    [((0, 0, 0, 2), ValueError), ((0, 2, 0), ValueError), ((0.0, 2, 0, 2), TypeError)],
)
def test_crop_patch_validation(region, error) -> None:
    with pytest.raises(error, match="`region`"):
        crop_patch(torch.zeros(1, 4, 4), region)


def test_patches_of_top_units_have_the_field_size() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.MaxPool2d(2), nn.Conv2d(2, 3, 3))
    images = torch.rand(6, 1, 12, 12)
    rf = receptive_fields(model, (1, 12, 12))["2"]
    with torch.no_grad():
        acts = model(images)
    top = TopKActivations(3, k=4)
    top.update(acts, torch.arange(6))
    patches = top.patches(1, rf, lambda i: images[i], pad_value=-1.0)
    assert patches.shape == (4, 1, 10, 10) and rf.size == (10, 10)
    for patch, entry in zip(patches, top.entries(1), strict=True):
        top_, _, left, _ = rf.region(*entry.position, clip=False)
        clipped = rf.region(*entry.position)
        inner = patch[
            :, clipped[0] - top_ : clipped[1] - top_, clipped[2] - left : clipped[3] - left
        ]
        assert torch.equal(
            inner, images[entry.sample][:, clipped[0] : clipped[1], clipped[2] : clipped[3]]
        )
    with pytest.raises(ValueError, match="`receptive_field`"):
        top.patches(0, receptive_fields(model, (1, 12, 12))["0"], lambda i: images[i])
