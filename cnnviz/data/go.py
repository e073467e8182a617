"""Synthetic Go positions for the AlphaGo policy network: find the capturing move.

Each sample is a 19 x 19 position seen from the player to move, encoded as AlphaGo's 48 input
feature planes (:data:`GO_PLANES`), and the label is the move (``row * 19 + col``, 0..360) that
captures the position's single opponent stone in atari.

How a position is made (deterministic in ``(seed, split, index)``):

1. Random stones: each point is own / opponent / empty with probabilities
   ``density / 2``, ``density / 2``, ``1 - density``.
2. A target point ``t`` is drawn uniformly; one of its on-board neighbours ``p`` gets an opponent
   stone whose other neighbours all become own stones, and ``t`` is emptied. The stone at ``p``
   is now a single-stone group with exactly one liberty, ``t``: playing ``t`` captures it.
3. Every other single opponent stone (no opponent neighbour) with at most one liberty is
   removed, so the capture is unique and the label is a function of the stones alone.

Multi-stone groups are not considered. The planes a real engine would compute from search or
rules that the task does not need (capture size, self-atari, liberties after the move, ladders)
are all zeros, so the network has to find the capture from the stone planes; "turns since" holds
random stone ages (a distractor), "liberties" counts each stone's empty 4-neighbours (a local
stand-in for group liberties) and "sensibleness" marks the empty points.
"""

from __future__ import annotations

import operator
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnviz.data._rng import sample_generator, single_thread
from cnnviz.data.base import CnnvizDataModule, check_float, check_int, check_seed, check_split

__all__ = ["BOARD_SIZE", "GO_PLANES", "GoDataModule", "GoDataset", "go_move_names"]

BOARD_SIZE = 19
EMPTY, OWN, OPPONENT = 0, 1, 2
_N = BOARD_SIZE
_DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _one_hot_names(prefix: str) -> list[str]:
    return [f"{prefix}: {k}" for k in range(1, 8)] + [f"{prefix}: 8+"]


#: Names of the 48 feature planes, in channel order (AlphaGo, Silver et al. 2016, table 2).
GO_PLANES: tuple[str, ...] = (
    "own stones",
    "opponent stones",
    "empty",
    "ones",
    *_one_hot_names("turns since"),
    *_one_hot_names("liberties"),
    *_one_hot_names("capture size"),
    *_one_hot_names("self-atari size"),
    *_one_hot_names("liberties after move"),
    "ladder capture",
    "ladder escape",
    "sensibleness",
    "zeros",
)
_P_OWN, _P_OPP, _P_EMPTY, _P_ONES, _P_AGE, _P_LIB, _P_SENSIBLE = 0, 1, 2, 3, 4, 12, 46


def go_move_names() -> list[str]:
    """Names of the 361 moves in label order: ``A19`` (top left) .. ``T1`` (no letter I)."""
    letters = "ABCDEFGHJKLMNOPQRST"
    return [f"{letters[c]}{_N - r}" for r in range(_N) for c in range(_N)]


def _shift(x: Tensor, dy: int, dx: int, fill: int = 0) -> Tensor:
    """``out[..., r, c] = x[..., r + dy, c + dx]`` (``fill`` off the board)."""
    out = torch.full_like(x, fill)
    rs, re = max(0, -dy), _N - max(0, dy)
    cs, ce = max(0, -dx), _N - max(0, dx)
    out[..., rs:re, cs:ce] = x[..., rs + dy : re + dy, cs + dx : ce + dx]
    return out


def _neighbour_count(mask: Tensor) -> Tensor:
    """Number of 4-neighbours where ``mask`` holds (off-board counts as not)."""
    m = mask.to(torch.int8)
    return sum(_shift(m, dy, dx) for dy, dx in _DIRS)  # type: ignore[return-value]


def _make_positions(uniforms: Tensor, density: float) -> tuple[Tensor, Tensor]:
    """Boards ``int8 (n, 19, 19)`` and labels ``int64 (n,)`` from per-sample uniforms."""
    n = uniforms.shape[0]
    u = uniforms[:, : _N * _N].view(n, _N, _N)
    board = torch.full((n, _N, _N), EMPTY, dtype=torch.int8)
    board[u < density] = OPPONENT
    board[u < density / 2.0] = OWN

    # Plant the capture: opponent stone at p next to target t, own stones on p's other sides.
    t = (uniforms[:, 2 * _N * _N] * _N * _N).long().clamp_(max=_N * _N - 1)
    ty, tx = t // _N, t % _N
    valid = torch.stack(
        [(ty + dy >= 0) & (ty + dy < _N) & (tx + dx >= 0) & (tx + dx < _N) for dy, dx in _DIRS],
        dim=1,
    )
    k = (uniforms[:, 2 * _N * _N + 1] * valid.sum(1)).long().clamp_(max=3)
    pick = torch.argmax(((valid.cumsum(1) == (k + 1).unsqueeze(1)) & valid).to(torch.int8), dim=1)
    dirs = torch.tensor(_DIRS)
    py, px = ty + dirs[pick, 0], tx + dirs[pick, 1]
    rows = torch.arange(n)
    for dy, dx in _DIRS:
        qy, qx = py + dy, px + dx
        ok = (qy >= 0) & (qy < _N) & (qx >= 0) & (qx < _N) & ~((qy == ty) & (qx == tx))
        board[rows[ok], qy[ok], qx[ok]] = OWN
    board[rows, py, px] = OPPONENT
    board[rows, ty, tx] = EMPTY

    # Remove every other single opponent stone with at most one liberty (removing such a stone
    # only frees points next to own stones or empty points, so no new one appears).
    planted = torch.zeros((n, _N, _N), dtype=torch.bool)
    planted[rows, py, px] = True
    opp = board == OPPONENT
    single = _neighbour_count(opp) == 0
    libs = _neighbour_count(board == EMPTY)
    board[opp & single & (libs <= 1) & ~planted] = EMPTY
    return board, t


def go_planes(board: Tensor, ages: Tensor) -> Tensor:
    """Encode boards as the 48 AlphaGo feature planes.

    Args:
        board: ``int8 (n, 19, 19)`` with 0 empty, 1 own stone (player to move), 2 opponent.
        ages: ``(n, 19, 19)`` integers 1..8, the "turns since" a stone was played.

    Returns:
        ``float32 (n, 48, 19, 19)`` planes in the order of :data:`GO_PLANES`.
    """
    n = board.shape[0]
    planes = torch.zeros((n, len(GO_PLANES), _N, _N), dtype=torch.float32)
    own, opp, empty = board == OWN, board == OPPONENT, board == EMPTY
    stones = own | opp
    planes[:, _P_OWN] = own
    planes[:, _P_OPP] = opp
    planes[:, _P_EMPTY] = empty
    planes[:, _P_ONES] = 1.0
    age = ages.long().clamp(1, 8)
    libs = _neighbour_count(empty).long().clamp(max=8)
    for k in range(1, 9):
        planes[:, _P_AGE + k - 1] = stones & (age == k)
        planes[:, _P_LIB + k - 1] = stones & (libs == k)
    planes[:, _P_SENSIBLE] = empty
    return planes


class GoDataset(Dataset):
    """Synthetic capture-the-stone Go positions (see the module docstring).

    Args:
        num_samples: Number of positions.
        seed: Seed; the same seed gives the same positions.
        split: ``"train"`` or ``"val"`` (disjoint random streams).
        density: Expected fraction of occupied points before planting, in ``[0, 0.8]``.

    Example:
        >>> ds = GoDataset(100)
        >>> planes, move = ds[0]
        >>> planes.shape
        torch.Size([48, 19, 19])
        >>> ds.move_names[int(move)]  # the point that captures, e.g. 'C10'
        'C10'
    """

    def __init__(
        self, num_samples: int, *, seed: int = 0, split: str = "train", density: float = 0.4
    ) -> None:
        owner = "GoDataset"
        self.num_samples = check_int(owner, "num_samples", num_samples, 1)
        self.split = check_split(owner, split)
        self.density = check_float(owner, "density", density, 0.0, 0.8)
        self.seed = check_seed(owner, seed)
        n_uniform = 2 * _N * _N + 2
        uniforms = torch.empty((self.num_samples, n_uniform))
        with single_thread():
            for i in range(self.num_samples):
                gen = sample_generator(seed, f"go/{self.split}", i)
                torch.rand(n_uniform, generator=gen, out=uniforms[i])
            boards, labels = _make_positions(uniforms, self.density)
        #: ``int8 (num_samples, 19, 19)``: 0 empty, 1 own stone, 2 opponent stone.
        self.boards = boards
        #: ``int64 (num_samples,)``: the capturing move, ``row * 19 + col``.
        self.labels = labels
        #: ``uint8 (num_samples, 19, 19)``: random "turns since" ages 1..8 of the stones.
        self.ages = (1 + uniforms[:, _N * _N : 2 * _N * _N] * 8).long().clamp(max=8)
        self.ages = self.ages.view(-1, _N, _N).to(torch.uint8)

    @property
    def move_names(self) -> list[str]:
        """Board coordinate of every label."""
        return go_move_names()

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        """Return ``(planes float32 (48, 19, 19), move int64)``."""
        i = operator.index(index)
        if i < 0:
            i += self.num_samples
        if not 0 <= i < self.num_samples:
            raise IndexError(f"GoDataset: index {index} out of range for {self.num_samples}.")
        planes = go_planes(self.boards[i : i + 1], self.ages[i : i + 1])[0]
        return planes, self.labels[i].clone()


class GoDataModule(CnnvizDataModule):
    """Synthetic Go positions for the AlphaGo policy network (48 x 19 x 19 -> 361 moves).

    The target is the unique move that captures a single opponent stone in atari; a fully
    convolutional policy network learns it from the stone planes (see :mod:`cnnviz.data.go`).

    Args:
        num_train: Training positions.
        num_val: Validation positions.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the positions.
        density: Expected fraction of occupied points before the capture is planted.

    Example:
        >>> dm = GoDataModule(num_train=2000)
        >>> dm.model_kwargs
        {'num_classes': 361, 'in_channels': 48, 'input_size': 19}
    """

    name: ClassVar[str] = "go"
    task: ClassVar[str] = "go"

    def __init__(
        self,
        num_train: int = 5000,
        num_val: int = 1000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        density: float = 0.4,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        owner = "GoDataModule"
        self.num_train = check_int(owner, "num_train", num_train, 1)
        self.num_val = check_int(owner, "num_val", num_val, 1)
        self.seed = check_seed(owner, seed)
        self.density = check_float(owner, "density", density, 0.0, 0.8)
        self.save_hyperparameters()

    @property
    def num_classes(self) -> int:
        """361: one class per board point."""
        return _N * _N

    @property
    def class_names(self) -> list[str]:
        """Board coordinates ``A19`` .. ``T1`` in label order (``row * 19 + col``)."""
        return go_move_names()

    @property
    def plane_names(self) -> list[str]:
        """Names of the 48 input planes (:data:`GO_PLANES`)."""
        return list(GO_PLANES)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(48, 19, 19)``."""
        return (len(GO_PLANES), _N, _N)

    @property
    def model_kwargs(self) -> dict[str, int]:
        """``{"num_classes": 361, "in_channels": 48, "input_size": 19}``."""
        return {"num_classes": _N * _N, "in_channels": len(GO_PLANES), "input_size": _N}

    def _build_dataset(self, split: str) -> GoDataset:
        n = self.num_train if split == "train" else self.num_val
        return GoDataset(n, seed=self.seed, split=split, density=self.density)
