"""Network Dissection: known answers, exactness against brute force, merging, guards, errors.

The conftest helpers (``cnnviz_test_helpers``, ``observer_state``) are imported inside the tests
that use them: the DDP test's worker processes import this module, and the helpers exist only
in the pytest process.
"""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate

from cnnviz.analysis.concepts import (
    DEFAULT_HUES,
    Concept,
    ConceptBatch,
    LabelMapConcepts,
    MaskConcepts,
    ShapesConcepts,
    concept_batch,
    with_masks,
)
from cnnviz.analysis.dissect import (
    CachedConcepts,
    Dissection,
    DissectionCounts,
    cache_concepts,
    dissect,
    dissect_layers,
    randomised_control,
    randomised_copy,
    upsample,
)
from cnnviz.analysis.guard import hook_count
from cnnviz.analysis.readout import ReadoutHooks, find_readouts
from cnnviz.data.shapes import ShapesDataset

SIZE = 32


@pytest.fixture(scope="module")
def shapes() -> ShapesDataset:
    return ShapesDataset(90, image_size=SIZE, split="val", seed=3)


@pytest.fixture(scope="module")
def source(shapes: ShapesDataset) -> ShapesConcepts:
    return ShapesConcepts.for_dataset(shapes)


def _net(seed: int = 0) -> nn.Sequential:
    """A small conv net for 32 px Shapes images (conv-relu-pool twice, then a linear head)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 5),  # 0: 32 -> 28
        nn.ReLU(),  # 1
        nn.MaxPool2d(2),  # 2: 28 -> 14
        nn.Conv2d(6, 8, 3),  # 3: 14 -> 12
        nn.ReLU(),  # 4
        nn.AdaptiveAvgPool2d(2),  # 5
        nn.Flatten(),  # 6
        nn.Linear(32, 9),  # 7
    )


def _batches(ds: ShapesDataset, size: int) -> list[tuple[torch.Tensor, ...]]:
    return [
        default_collate([ds.sample(i) for i in range(s, min(len(ds), s + size))])
        for s in range(0, len(ds), size)
    ]


class _Extra:
    """Concept source whose model input is the image plus channels derived from the batch."""

    def __init__(self, inner: ShapesConcepts, extra) -> None:
        self.inner = inner
        self.concepts = inner.concepts
        self.extra = extra

    def __call__(self, batch):
        images, coded = self.inner(batch)
        return torch.cat([images, self.extra(batch).float()], dim=1), coded


def _brute_force(model: nn.Module, layer: str, images: torch.Tensor, masks: torch.Tensor):
    """Every upsampled map of ``layer`` at once, read where ``dissect`` reads it."""
    readouts = find_readouts(model, images, [layer])
    maps: dict[str, torch.Tensor] = {}
    with torch.no_grad(), ReadoutHooks(model, readouts, lambda n, t: maps.setdefault(n, t.clone())):
        model.eval()(images)
    return upsample(maps[layer], tuple(masks.shape[2:]))


# ----------------------------------------------------------------------------- known answers
def test_unit_firing_on_ring_pixels_is_labelled_ring_with_iou_one(shapes, source) -> None:
    ring = shapes.class_names.index("ring")
    data = _Extra(source, lambda b: (b[2] & (b[1] == ring).view(-1, 1, 1))[:, None])
    conv = nn.Conv2d(4, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 3] = 1.0  # unit 0: the ring pixels, exactly
        conv.weight[1, 0] = 1.0  # unit 1: the red channel
    model = nn.Sequential(conv)
    result = dissect(model, "0", shapes, data, batch_size=32)
    unit = result.units()[0]
    assert (unit.concept, unit.category, unit.iou) == ("ring", "object", 1.0)
    assert unit.threshold == 1.0 and unit.runner_up != "ring"
    # upsampled from half resolution, the region still is the ring's best match
    pooled = dissect(nn.Sequential(conv, nn.AvgPool2d(2)), "1", shapes, data, batch_size=32)
    assert pooled.map_size == (SIZE // 2, SIZE // 2) and pooled.units()[0].concept == "ring"
    assert pooled.units()[0].iou > 0.25


def test_edge_detector_is_labelled_edge(shapes, source) -> None:
    data = _Extra(source, lambda b: b[2][:, None])  # the object mask as a 4th channel
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])

    class Edges(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 2, 3, padding=1, bias=False)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[0, 3], self.conv.weight[1, 3] = sobel, sobel.T
            self.magnitude = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.magnitude(self.conv(x).pow(2).sum(1, keepdim=True).sqrt())

    model = Edges()
    paper = dissect(model, "magnitude", shapes, data, batch_size=32)
    assert paper.units()[0].concept == "edge"
    wide = dissect(model, "magnitude", shapes, data, batch_size=32, quantile=0.2)
    assert wide.units()[0].concept == "edge" and wide.units()[0].iou > 0.95


def test_red_unit_gets_the_red_colour_bin(shapes) -> None:
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1)  # R - (G + B) / 2
        conv.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU())
    result = dissect(model, "0", shapes, batch_size=32, quantile=0.05)  # default concepts
    unit = result.units()[0]
    assert (unit.concept, unit.category) == ("red", "colour") and unit.iou > 0.2
    assert result.readout["stage"] == "activation"  # read after the ReLU
    assert dissect(model, "0", shapes, batch_size=32).units()[0].best == "red"  # q = 0.005


# ------------------------------------------------------------------------ exactness, streaming
def test_counts_match_brute_force_on_every_layer_kind(shapes, source) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 5),  # 28 x 28
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 14 x 14
        nn.Conv2d(5, 4, 3),  # 12 x 12, no activation after it
        nn.AdaptiveAvgPool2d(1),  # 1 x 1: constant upsampled maps
    )
    layers = ["0", "3", "4", "5"]
    results = dissect_layers(model, layers, shapes, batch_size=25)
    images, labels, fg = default_collate([shapes.sample(i) for i in range(len(shapes))])
    masks = source.masks(images, labels, fg)
    for layer in layers:
        result = results[layer]
        maps = _brute_force(model, layer, images, masks)
        n = maps.shape[0] * SIZE * SIZE
        rank = math.ceil(result.quantile * n)
        assert result.pixels == n and result.images == len(shapes)
        for k in range(maps.shape[1]):
            values = maps[:, k]
            region = values >= result.threshold[k]
            assert int(region.sum()) == result.region[k], (layer, k)
            inter = (region[:, None] & masks).sum(dim=(0, 2, 3))
            assert torch.equal(inter, torch.as_tensor(result.intersection[k])), (layer, k)
            top = values.reshape(-1).topk(rank).values[-1].item()  # T_k of the paper
            assert result.threshold[k] <= top, (layer, k)
            assert result.top_fraction[k] >= result.quantile
        union = result.region[:, None] + result.concept_area[None, :] - result.intersection
        np.testing.assert_allclose(result.iou, result.intersection / np.maximum(union, 1))
    assert torch.equal(torch.as_tensor(results["0"].concept_area), masks.sum(dim=(0, 2, 3)))
    assert results["0"].readout["stage"] == "activation"
    assert results["4"].readout["stage"] == "raw" and results["5"].map_size == (1, 1)


def test_threshold_is_within_one_bin_of_the_quantile() -> None:
    """Continuous values: the region exceeds the top ``q`` by the pixels of one bin only."""
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(40, 3, 16, 16, generator=gen).exp()  # skewed, like activations
    masks = torch.rand(40, 2, 16, 16, generator=gen) < 0.3
    counts = DissectionCounts(3, 2, quantile=0.01, bins=256, expected_images=40)
    counts.update(acts, masks)
    result = counts.result([Concept("a", "object"), Concept("b", "scene")])
    flat = acts.permute(1, 0, 2, 3).reshape(3, -1)
    rank = math.ceil(0.01 * flat.shape[1])
    for k in range(3):
        top = flat[k].topk(rank).values[-1].item()
        width = 2.0 * (flat[k].max() - flat[k].min()).item() / (256 - 2)
        assert result.threshold[k] <= top < result.threshold[k] + width
        assert result.region[k] == int((flat[k] >= result.threshold[k]).sum())


def test_non_square_maps_and_masks_match_brute_force() -> None:
    gen = torch.Generator().manual_seed(7)
    maps = torch.randn(30, 3, 3, 5, generator=gen)
    masks = torch.rand(30, 2, 9, 14, generator=gen) < 0.4
    counts = DissectionCounts(3, 2, quantile=0.03, bins=128, expected_images=30)
    for start in range(0, 30, 7):
        counts.update(maps[start : start + 7], masks[start : start + 7])
    result = counts.result([Concept("a", "object"), Concept("b", "part")])
    up = upsample(maps, (9, 14))
    for k in range(3):
        region = up[:, k] >= result.threshold[k]
        assert int(region.sum()) == result.region[k]
        inter = (region[:, None] & masks).sum(dim=(0, 2, 3))
        assert torch.equal(inter, torch.as_tensor(result.intersection[k]))


def test_unit_at_its_minimum_never_fires_there() -> None:
    """A ReLU unit that is 0 on more than ``1 - q`` of the pixels: its region excludes zeros."""
    maps = torch.zeros(10, 2, 8, 8)
    maps[0, 0, :2, :2] = 1.0  # unit 0 fires on 4 of 640 pixels (< q = 2 %)
    masks = torch.zeros(10, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, :2, :2] = True
    counts = DissectionCounts(2, 1, quantile=0.02, bins=64, expected_images=10)
    counts.update(maps, masks)
    result = counts.result([Concept("spot", "object")])
    assert result.region.tolist() == [4, 0]  # not all 640 pixels; unit 1 (all zeros) none
    assert result.iou[:, 0].tolist() == [1.0, 0.0] and result.labelled.tolist() == [True, False]
    assert result.threshold[0] > 0.0


def _counts_result(chunks, *, expected, bins=64, quantile=0.02):
    """Run DissectionCounts over ``chunks`` of (maps, masks), with its second pass if needed."""
    counts = DissectionCounts(
        chunks[0][0].shape[1], chunks[0][1].shape[1], quantile=quantile, bins=bins,
        expected_images=expected,
    )  # fmt: skip
    for maps, masks in chunks:
        counts.update(maps, masks)
    second = counts.refinement()
    if second is not None:
        for maps, masks in chunks:
            second.update(maps, masks)
        counts.absorb(second)
    return counts, counts.result([Concept(f"c{i}", "object") for i in range(masks.shape[1])])


def _same(a: Dissection, b: Dissection) -> None:
    for name, value in a.as_arrays().items():
        np.testing.assert_array_equal(value, b.as_arrays()[name], err_msg=name)
    assert (a.pixels, a.images) == (b.pixels, b.images)


@pytest.fixture(scope="module")
def random_maps() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    maps = torch.randn(24, 4, 6, 6, generator=gen)
    maps[:, :2] = maps[:, :2].relu()  # two ReLU-like units, two signed ones
    maps[12:] *= 50.0  # the second half widens the range 50x: bins merge mid-stream
    masks = torch.rand(24, 3, 12, 12, generator=gen) < 0.25
    return maps, masks


@pytest.mark.parametrize("sizes", [[24], [1] * 24, [5, 7, 12], [12, 12]])
def test_streaming_in_any_batches_equals_one_pass(random_maps, sizes) -> None:
    maps, masks = random_maps
    _, whole = _counts_result([(maps, masks)], expected=24)
    chunks, start = [], 0
    for size in sizes:
        chunks.append((maps[start : start + size], masks[start : start + size]))
        start += size
    _, streamed = _counts_result(chunks, expected=24)
    _same(streamed, whole)


def test_merging_two_halves_equals_one_pass(random_maps) -> None:
    maps, masks = random_maps
    _, whole = _counts_result([(maps, masks)], expected=24)
    first = DissectionCounts(4, 3, quantile=0.02, bins=64, expected_images=24)
    second = DissectionCounts(4, 3, quantile=0.02, bins=64, expected_images=24)
    first.update(maps[:12], masks[:12])  # small values
    second.update(maps[12:], masks[12:])  # 50x larger: different grids
    merged = DissectionCounts.from_state(first.state())
    merged.merge(second)
    assert merged.refinement() is None
    _same(merged.result([Concept(f"c{i}", "object") for i in range(3)]), whole)
    other_order = DissectionCounts.from_state(second.state())
    other_order.merge(first.state())
    _same(other_order.result(whole.concepts), whole)


def test_merging_with_floors_above_the_threshold_recounts(random_maps) -> None:
    """Each half expects 2 images in all: floors end above the merged threshold."""
    maps, masks = random_maps
    _, whole = _counts_result([(maps, masks)], expected=24)
    halves = []
    for part in (slice(0, 12), slice(12, 24)):
        counts = DissectionCounts(4, 3, quantile=0.02, bins=64, expected_images=2)
        counts.update(maps[part], masks[part])
        halves.append(counts)
    halves[0].merge(halves[1])
    second = halves[0].refinement()
    assert second is not None
    second.update(maps, masks)
    halves[0].absorb(second)
    _same(halves[0].result(whole.concepts), whole)


def test_rebinning_is_exact_and_marks_incomplete_bins() -> None:
    from cnnviz.analysis.dissect import _grid, _rebin

    gen = torch.Generator().manual_seed(2)
    bins = 32
    for _ in range(20):
        values = torch.randn(3, 200, generator=gen) * torch.rand(3, 1, generator=gen) * 10
        small = values[:, :100] * 0.05  # the first data: a narrow range
        old = _grid(small.amin(1), small.amax(1), bins)
        new = _grid(values.amin(1), values.amax(1), bins)

        def index(v, grid):
            e, o = grid
            return torch.floor(torch.ldexp(v.double(), -e[:, None])).long() - o[:, None]

        hist = F.one_hot(index(small, old), bins).sum(1)
        joint = hist[:, :, None].clone()
        floor = torch.randint(0, bins, (3,), generator=gen)
        moved, moved_joint, new_floor = _rebin(hist, joint, floor, old, new, bins)
        assert torch.equal(moved, F.one_hot(index(small, new), bins).sum(1))  # exact
        assert torch.equal(moved_joint[:, :, 0], moved)
        # old bin j starts at (o + j)·2^e: no old bin below the floor lands at or above the
        # new floor, and the last of them lands just below it (the floor is as low as it can be)
        edges = torch.ldexp((old[1][:, None] + torch.arange(bins)).double(), old[0][:, None])
        target = index(edges, new)
        for c in range(3):
            assert bool((target[c, : floor[c]] < new_floor[c]).all())
            if floor[c] > 0:
                assert int(target[c, floor[c] - 1]) == int(new_floor[c]) - 1


def test_underestimated_data_size_costs_a_second_pass_not_accuracy(random_maps) -> None:
    maps, masks = random_maps
    _, exact = _counts_result([(maps, masks)], expected=24)
    counts, result = _counts_result(
        [(m[None], k[None]) for m, k in zip(*random_maps, strict=True)], expected=2
    )
    assert bool(counts.refined.any())  # floors rose too high for some units: recounted
    _same(result, exact)


def test_unknown_data_size_counts_then_recounts(random_maps) -> None:
    maps, masks = random_maps
    _, exact = _counts_result([(maps, masks)], expected=24)
    counts, result = _counts_result(
        [(maps[:10], masks[:10]), (maps[10:], masks[10:])], expected=None
    )
    assert bool(counts.refined.all())
    _same(result, exact)


def test_data_without_length_takes_two_passes_with_the_same_result(shapes, source) -> None:
    class Reiterable:
        def __init__(self, batches) -> None:
            self.batches = batches

        def __iter__(self):
            return iter(self.batches)

    model = _net(2)
    sized = dissect(model, "3", _batches(shapes, 30), source)
    unsized = dissect(model, "3", Reiterable(_batches(shapes, 30)), source)
    assert (sized.passes, unsized.passes) == (1, 2)
    _same(unsized, sized)


def test_loader_over_shapes_needs_no_concepts(shapes) -> None:
    model = _net(2)
    loader = DataLoader(with_masks(shapes), batch_size=30)
    from_loader = dissect(model, "0", loader)  # ShapesConcepts found through the loader
    _same(from_loader, dissect(model, "0", shapes, batch_size=30))


def test_cached_concepts_give_the_same_result(shapes) -> None:
    from observer_state import RngState

    rng = RngState()
    cached = cache_concepts(DataLoader(with_masks(shapes), batch_size=30, shuffle=True))
    rng.verify()  # reading a shuffling loader inside cache_concepts draws nothing outside
    assert isinstance(cached, CachedConcepts) and cached.images == len(shapes)
    model = _net(6)
    ordered = cache_concepts(shapes, batch_size=30)
    _same(dissect(model, "3", ordered), dissect(model, "3", shapes, batch_size=30))
    _same(dissect(model, "3", cached), dissect(model, "3", ordered))  # order does not matter


def test_state_is_fixed_shape_and_round_trips(random_maps) -> None:
    maps, masks = random_maps
    counts = DissectionCounts(4, 3, quantile=0.02, bins=64, expected_images=24)
    empty = counts.state()
    counts.update(maps, masks)
    full = counts.state()
    for name in full:
        assert full[name].shape == empty[name].shape, name
    again = DissectionCounts.from_state(full)
    concepts = [Concept(f"c{i}", "object") for i in range(3)]
    _same(again.result(concepts), counts.result(concepts))


# ------------------------------------------------------------------------------------ DDP sync
def test_sync_merges_every_rank(monkeypatch, random_maps) -> None:
    """``sync`` with a simulated 3-rank ``all_gather``: every rank ends with the global counts."""
    maps, masks = random_maps
    world = 3
    ranks = [DissectionCounts(4, 3, quantile=0.02, bins=64, expected_images=24) for _ in range(3)]
    for r, counts in enumerate(ranks):
        counts.update(maps[r::world], masks[r::world])
    states = [c.state() for c in ranks]
    names = list(states[0])
    current = {"rank": 0, "calls": 0}

    def all_gather(parts, tensor, group=None) -> None:
        name = names[current["calls"] % len(names)]
        current["calls"] += 1
        for r in range(world):
            parts[r].copy_(states[r][name])

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: current["rank"])
    monkeypatch.setattr(dist, "all_gather", all_gather)
    _, whole = _counts_result([(maps, masks)], expected=24)
    for r, counts in enumerate(ranks):
        current["rank"] = r
        counts.sync()
        assert counts.refinement() is None
        _same(counts.result(whole.concepts), whole)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        ds = ShapesDataset(60, image_size=SIZE, split="val", seed=3)
        mine = _batches(ds, 15)[rank::world]  # same batches as one process, split by rank
        result = dissect(_net(4), "3", mine, ShapesConcepts.for_dataset(ds), sync=True)
        out[rank] = result.as_arrays()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_dissect_over_two_processes_equals_one_process() -> None:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        arrays = dict(out)
    ds = ShapesDataset(60, image_size=SIZE, split="val", seed=3)
    whole = dissect(_net(4), "3", _batches(ds, 15), ShapesConcepts.for_dataset(ds))
    for rank in (0, 1):
        for name, value in whole.as_arrays().items():
            np.testing.assert_array_equal(arrays[rank][name], value, err_msg=f"{rank} {name}")


# ------------------------------------------------------------------------------ observer effect
def test_observer_effect_is_zero(shapes, leak_check) -> None:
    from cnnviz_test_helpers import make_bn_net
    from observer_state import ModelState, RngState

    model = make_bn_net(seed=1).train()  # BatchNorm + dropout, in training mode
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    check = leak_check(model)
    state, rng = ModelState(model), RngState()
    data = DataLoader(with_masks(shapes), batch_size=30, shuffle=True)  # draws from the RNG
    dissect_layers(model, ["0", "4"], data)
    state.verify()
    rng.verify()
    check.verify()


def test_nothing_leaks_when_the_model_raises_mid_pass(shapes, leak_check) -> None:
    from cnnviz_test_helpers import modes
    from observer_state import RngState

    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls == 3:  # discovery, first batch... then the second batch fails
                raise RuntimeError("boom")
            return x

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Flaky(), nn.Conv2d(4, 2, 3))
    model.train()
    check = leak_check(model)
    before = modes(model)
    rng = RngState()
    with pytest.raises(RuntimeError, match="boom"):
        dissect(model, "3", shapes, batch_size=30)
    assert hook_count(model) == 0 and modes(model) == before
    rng.verify()
    check.verify()


def test_runs_inside_inference_mode(shapes) -> None:
    """Lightning runs validation hooks under ``torch.inference_mode()``."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    outside = dissect(model, "0", shapes, batch_size=45)
    with torch.inference_mode():
        inside = dissect(model, "0", shapes, batch_size=45)
        control = randomised_control(model, "0", shapes, batch_size=45)
    _same(inside, outside)
    assert control.control == "reinit"


def test_stop_early_skips_the_rest_of_the_forward(shapes) -> None:
    class Counting(nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Counting.calls += 1
            return x

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Counting())
    early = dissect(model, "0", shapes, batch_size=30)
    assert Counting.calls == 1  # only the discovery pass ran past the layer
    late = dissect(model, "0", shapes, batch_size=30, stop_early=False)
    assert Counting.calls > 1
    _same(early, late)


# ------------------------------------------------------------------------ randomised control
def test_randomised_control_leaves_the_model_alone(shapes, leak_check) -> None:
    from observer_state import ModelState, RngState

    model = _net(5)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(1))
    check = leak_check(model)
    state, rng = ModelState(model), RngState()
    control = randomised_control(model, "3", shapes, batch_size=45, seed=1)
    state.verify()
    rng.verify()
    check.verify()
    assert not seen  # the copy carries no hook of the model
    assert control.control == "reinit" and "reinit control" in control.summary()
    again = randomised_control(model, "3", shapes, batch_size=45, seed=1)
    _same(again, control)
    trained = dissect(model, "3", shapes, batch_size=45)
    assert not np.array_equal(trained.threshold, control.threshold)


def test_randomised_copy_modes() -> None:
    from cnnviz_test_helpers import make_bn_net

    model = make_bn_net(seed=0)
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)
    reinit = randomised_copy(model, mode="reinit", seed=1)  # seed 0 built the model
    permuted = randomised_copy(model, mode="permute", seed=1)
    w, r, p = model[0].weight, reinit[0].weight, permuted[0].weight
    assert not torch.equal(r, w) and not torch.equal(p, w)
    assert torch.equal(p.flatten().sort().values, w.detach().flatten().sort().values)
    assert torch.equal(reinit[1].running_mean, torch.zeros(8))  # BatchNorm re-initialised
    assert not reinit.training and not any(q.requires_grad for q in reinit.parameters())
    assert torch.equal(randomised_copy(model, seed=1)[0].weight, r)  # seeded
    with pytest.raises(ValueError, match="reinit"):
        randomised_copy(model, mode="shuffle")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ results
def _result() -> Dissection:
    concepts = (
        Concept("ring", "object"),
        Concept("star", "object"),
        Concept("edge", "part"),
        Concept("red", "colour"),
    )
    iou = np.array(
        [[0.5, 0.1, 0.0, 0.0], [0.3, 0.0, 0.02, 0.0], [0.0, 0.0, 0.2, 0.1], [0.01, 0.0, 0.0, 0.02]]
    )
    return Dissection(
        layer="conv",
        concepts=concepts,
        threshold=np.array([1.0, 2.0, 3.0, 4.0]),
        top_fraction=np.full(4, 0.005),
        iou=iou,
        intersection=np.zeros((4, 4), dtype=np.int64),
        region=np.ones(4, dtype=np.int64),
        concept_area=np.ones(4, dtype=np.int64),
        pixels=100,
        images=1,
        quantile=0.005,
        iou_threshold=0.04,
        mask_size=(10, 10),
        map_size=(5, 5),
    )


def test_labels_runner_up_and_unique_detectors() -> None:
    result = _result()
    units = result.units()
    assert [u.concept for u in units] == ["ring", "ring", "edge", None]
    assert (units[0].runner_up, units[0].runner_up_iou) == ("star", 0.1)
    assert units[3].best == "red" and units[3].category is None
    assert result.detectors() == {"object": ["ring"], "part": ["edge"], "colour": []}
    assert result.detector_counts() == {"object": 1, "part": 1, "colour": 0}
    assert result.unit_counts() == {"object": 2, "part": 1, "colour": 0}
    assert result.with_threshold(0.01).units()[3].concept == "red"


def test_result_serialises_to_arrays_and_json() -> None:
    result = _result()
    arrays = result.as_arrays()
    meta = json.loads(json.dumps(result.meta()))
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert arrays["iou"].shape == (4, 4) and arrays["labelled"].tolist() == [
        True,
        True,
        True,
        False,
    ]
    _same(Dissection.from_record(arrays, meta), result)
    assert meta["detectors"]["object"] == ["ring"] and meta["labelled_units"] == 3


# ----------------------------------------------------------------------------------- concepts
def test_shapes_concepts_are_consistent(shapes, source) -> None:
    images, labels, fg = default_collate([shapes.sample(i) for i in range(18)])
    masks = source.masks(images, labels, fg)
    names = [c.name for c in source.concepts]
    k = len(shapes.class_names)
    assert names[:k] == shapes.class_names and names[k : k + 3] == [
        "edge",
        "interior",
        "background",
    ]
    assert names[k + 3 :] == list(DEFAULT_HUES)
    objects = masks[:, :k]
    assert torch.equal(objects.any(dim=1), fg) and int(objects.sum(dim=1).max()) == 1
    for i in range(18):  # an image's object pixels belong to its own class only
        assert torch.equal(objects[i, int(labels[i])], fg[i])
    edge, interior, background = masks[:, k], masks[:, k + 1], masks[:, k + 2]
    assert torch.equal(background, ~fg) and not bool((edge & interior).any())
    assert not bool((interior & ~fg).any()) and bool((edge & fg).any()) and bool((edge & ~fg).any())
    assert int(masks[:, k + 3 :].sum(dim=1).max()) <= 1  # one hue per pixel at most
    assert [c.category for c in source.concepts][k : k + 4] == ["part", "part", "scene", "colour"]


def test_pure_colours_land_in_their_hue_bins(source) -> None:
    rgb = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0.5, 0.5, 0.5]]
    ).float()
    images = ((rgb - 0.5) / 0.28).view(7, 3, 1, 1).expand(7, 3, 4, 4)
    masks = source.masks(
        images, torch.zeros(7, dtype=torch.long), torch.zeros(7, 4, 4, dtype=torch.bool)
    )
    colours = masks[:, -6:, 0, 0]
    assert torch.equal(colours[:6], torch.eye(6, dtype=torch.bool))
    assert not bool(colours[6].any())  # grey has no hue


def test_overlapping_hues_and_coded_batches_round_trip() -> None:
    overlapping = ShapesConcepts(["a", "b"], hues={"warm": (0, 90), "orange": (20, 60)})
    images = torch.randn(3, 3, 8, 8)
    fg = torch.rand(3, 8, 8) > 0.5
    coded = overlapping.batch(images, torch.tensor([0, 1, 0]), fg)
    masks = coded.masks()
    assert len(coded.groups) == 5  # objects, parts, background, then one group per hue
    again = ConceptBatch.from_masks(masks)
    assert torch.equal(again.masks(), masks) and torch.equal(again.area, masks.sum(dim=(0, 2, 3)))
    assert torch.equal(again.image_areas(), masks.sum(dim=(2, 3)))


def test_label_map_and_named_mask_sources() -> None:
    seg = torch.tensor([[[0, 1], [2, 255]]])
    source = LabelMapConcepts({1: "person", 2: ("road", "scene")})
    _, coded = concept_batch(source, (torch.zeros(1, 3, 2, 2), seg))
    assert [c.category for c in source.concepts] == ["object", "scene"]
    assert coded.masks()[0, :, :, :].tolist() == [
        [[False, True], [False, False]],
        [[False, False], [True, False]],
    ]
    named = MaskConcepts(
        ["sky", ("wheel", "part")], lambda b: (b["x"], {"sky": b["s"], "wheel": b["w"]})
    )
    batch = {"x": torch.zeros(1, 3, 2, 2), "s": seg == 0, "w": seg == 1}
    _, coded = concept_batch(named, batch)
    assert torch.equal(coded.masks()[0, 1], seg[0] == 1)
    missing = MaskConcepts(["sky", "wheel"], lambda b: (b["x"], {"sky": b["s"]}))
    with pytest.raises(ValueError, match="no mask for \\['wheel'\\]"):
        concept_batch(missing, batch)


def test_dissect_user_data_with_label_maps() -> None:
    gen = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(3):
        seg = torch.randint(0, 3, (8, 1, 4, 4), generator=gen)
        seg = seg.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[:, 0]  # 16 x 16 blobs
        images = torch.stack([(seg == 1).float(), (seg == 2).float(), torch.rand(8, 16, 16)], 1)
        batches.append((images, seg))
    source = LabelMapConcepts({1: "person", 2: ("road", "scene")})
    model = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(2, 3, 1, 1))
    result = dissect(model, "0", batches, source, quantile=0.01)
    assert [(u.concept, u.iou) for u in result.units()] == [("person", 1.0), ("road", 1.0)]
    assert result.detector_counts() == {"object": 1, "scene": 1}


def test_upsample_is_bilinear_and_per_map() -> None:
    x = torch.randn(6, 2, 5, 7)
    up = upsample(x, (16, 20))
    torch.testing.assert_close(
        up, F.interpolate(x, size=(16, 20), mode="bilinear", align_corners=False)
    )
    single = torch.cat([upsample(x[i : i + 1], (16, 20)) for i in range(6)])
    assert torch.equal(single, up)  # a map's values do not depend on the others
    assert torch.equal(upsample(x, (5, 7)), x)


# ------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"quantile": 0.0}, ValueError, "`quantile`"),
        ({"quantile": 1.0}, ValueError, "`quantile` must be below 1"),
        ({"iou_threshold": 2}, ValueError, "`iou_threshold`"),
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"bins": 4}, ValueError, "`bins`"),
        ({"layer": "nope"}, ValueError, "valid names|nope"),
        ({"layer": 3}, TypeError, "dissect_layers"),
    ],
)
def test_invalid_arguments(shapes, kwargs, error, match) -> None:
    args = {"layer": "0", **kwargs}
    layer = args.pop("layer")
    with pytest.raises(error, match=match):
        dissect(_net(), layer, shapes, **args)


def test_invalid_data_and_layers(shapes, source) -> None:
    from cnnviz_test_helpers import make_conv1d_net

    model = _net()
    with pytest.raises(TypeError, match="iterator"):
        dissect(model, "0", iter(_batches(shapes, 30)), source)
    with pytest.raises(TypeError, match="`concepts` is required"):
        dissect(model, "0", [(torch.zeros(2, 3, 16, 16),)])
    with pytest.raises(ValueError, match="with_masks"):
        dissect(model, "0", DataLoader(shapes, batch_size=30))  # (image, label): no masks
    with pytest.raises(ValueError, match="2-D maps"):
        conv1d = make_conv1d_net()
        data = MaskConcepts(["a"], lambda b: (b, torch.ones(b.shape[0], 1, 4, 4, dtype=torch.bool)))
        dissect(conv1d, "0", [torch.randn(2, 4, 20)], data)
    with pytest.raises(ValueError, match="one mask per input"):
        bad = MaskConcepts(["a"], lambda b: (b, torch.ones(3, 1, 4, 4, dtype=torch.bool)))
        dissect(model, "0", [torch.randn(2, 3, 16, 16)], bad)
    counts = DissectionCounts(2, 1, expected_images=4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        counts.update(
            torch.full((1, 2, 3, 3), float("nan")), torch.ones(1, 1, 3, 3, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="channels"):
        counts.update(torch.ones(1, 3, 3, 3), torch.ones(1, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="second pass"):
        pending = DissectionCounts(2, 1)  # unknown size: concepts counted in a second pass
        pending.update(torch.rand(1, 2, 3, 3), torch.ones(1, 1, 3, 3, dtype=torch.bool))
        pending.result([Concept("a", "object")])
