from __future__ import annotations

import pytest
import torch

from cnnviz.data import GO_PLANES, GoDataModule, GoDataset

EMPTY, OWN, OPP = 0, 1, 2


def _capture_moves(board: list[list[int]]) -> set[tuple[int, int]]:
    """Independent rule, written with plain loops: every empty point whose play captures a
    single opponent stone (no opponent neighbour) that has that point as its only liberty."""
    n = len(board)

    def neighbours(r: int, c: int) -> list[tuple[int, int]]:
        cand = [(r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)]
        return [(a, b) for a, b in cand if 0 <= a < n and 0 <= b < n]

    moves = set()
    for r in range(n):
        for c in range(n):
            if board[r][c] != OPP:
                continue
            around = [board[a][b] for a, b in neighbours(r, c)]
            libs = [(a, b) for a, b in neighbours(r, c) if board[a][b] == EMPTY]
            if OPP not in around and len(libs) == 1:
                moves.add(libs[0])
    return moves


def test_label_is_the_unique_capturing_move() -> None:
    ds = GoDataset(300, seed=4)
    for i in range(len(ds)):
        moves = _capture_moves(ds.boards[i].tolist())
        label = int(ds.labels[i])
        assert moves == {(label // 19, label % 19)}, i


def test_planes_encode_the_board() -> None:
    ds = GoDataset(50, seed=1)
    for i in (0, 17, 49):
        planes, label = ds[i]
        board = ds.boards[i]
        assert planes.shape == (48, 19, 19) and planes.dtype == torch.float32
        assert label.dtype == torch.int64 and 0 <= int(label) < 361
        assert torch.equal(planes[0], (board == OWN).float())
        assert torch.equal(planes[1], (board == OPP).float())
        assert torch.equal(planes[2], (board == EMPTY).float())
        assert torch.all(planes[3] == 1) and torch.all(planes[47] == 0)
        stones = (board != EMPTY).float()
        assert torch.equal(planes[4:12].sum(0), stones)  # turns since: one-hot on stones
        assert torch.equal(planes[46], planes[2])  # sensibleness = empty points
        assert torch.all(planes[20:46] == 0)  # features the task does not model
    assert len(GO_PLANES) == 48


def test_determinism_and_splits() -> None:
    a, b = GoDataset(30, seed=2), GoDataset(30, seed=2)
    assert torch.equal(a.boards, b.boards) and torch.equal(a.labels, b.labels)
    assert torch.equal(a[5][0], b[5][0])
    assert not torch.equal(a.boards, GoDataset(30, seed=3).boards)
    assert not torch.equal(a.boards, GoDataset(30, seed=2, split="val").boards)
    assert torch.equal(GoDataset(10, seed=2).boards, a.boards[:10])


def test_targets_cover_the_board() -> None:
    labels = GoDataset(2000, seed=0).labels
    counts = torch.bincount(labels, minlength=361)
    assert (counts > 0).sum() > 340  # uniform over 361 points: ~5.5 per point
    rows, cols = labels // 19, labels % 19
    assert (rows == 0).any() and (cols == 18).any()  # edges included
    assert counts.max() < 20


def test_stone_density() -> None:
    boards = GoDataset(200, seed=0, density=0.4).boards
    own, opp = (boards == OWN).float().mean(), (boards == OPP).float().mean()
    assert 0.15 < own < 0.3 and 0.12 < opp < 0.25
    sparse = GoDataset(200, seed=0, density=0.1).boards
    assert (sparse != EMPTY).float().mean() < 0.15


def test_datamodule_surface() -> None:
    dm = GoDataModule(num_train=40, num_val=20, batch_size=8)
    assert dm.task == "go" and dm.num_classes == 361 == len(dm.class_names)
    assert dm.class_names[0] == "A19" and dm.class_names[-1] == "T1"
    assert not any("I" in name for name in dm.class_names)
    assert dm.input_shape == (48, 19, 19) and dm.plane_names == list(GO_PLANES)
    assert dm.model_kwargs == {"num_classes": 361, "in_channels": 48, "input_size": 19}
    assert dm.probe_masks(4) is None and not dm.has_masks
    torch.manual_seed(0)
    state = torch.get_rng_state()
    x, y = dm.probe(6)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (6, 48, 19, 19) and torch.equal(y, dm.dataset("val").labels[:6])
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 48, 19, 19) and yb.shape == (8,)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"density": 0.9}, ValueError, "`density`"),
        ({"num_train": 0}, ValueError, "`num_train`"),
        ({"seed": "0"}, TypeError, "`seed`"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        GoDataModule(**kwargs)
