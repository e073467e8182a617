"""Shared fixtures: tiny seeded models and loaders, a Trainer factory and a hook-leak checker.

Test modules import the helpers with ``from cnnviz_test_helpers import ...``: this module
registers itself under that unique name, because pytest replaces ``sys.modules["conftest"]``
whenever it loads another ``conftest.py`` (``tests/report/conftest.py``), so
``from conftest import ...`` depends on collection order.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnviz.analysis.guard import hook_count

# Fits in tests do not write report.html unless a test asks (building it costs ~1 s a fit).
os.environ.setdefault("CNNVIZ_AUTO_REPORT", "0")
# Callbacks raise instead of warning and going on, unless a test asks for `strict=False`.
os.environ.setdefault("CNNVIZ_STRICT", "1")
# No time budget: tests check what callbacks record; the budget has tests of its own.
os.environ.setdefault("CNNVIZ_BUDGET", "off")

# One intra-op thread: tiny models gain nothing from more, and on a shared 2-core machine
# thread hand-offs make every op 10x slower (measured: 4 ms vs 56 ms for a LeNet step).
torch.set_num_threads(1)

# Lightning's chatter (tips, "the number of training batches is smaller than the logging
# interval"...) is noise in these tests.
warnings.filterwarnings("ignore", message=".*(LeafSpec|log_every_n_steps|num_workers).*")


# ------------------------------------------------------------------------------------- models
def make_lenet(seed: int = 0, in_channels: int = 3, num_classes: int = 4) -> nn.Sequential:
    """A LeNet-5-like Sequential for 16x16 inputs (conv-relu-pool twice, then a linear head)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5),  # 0: 16 -> 12
        nn.ReLU(),  # 1
        nn.MaxPool2d(2),  # 2: 12 -> 6
        nn.Conv2d(6, 16, 3),  # 3: 6 -> 4
        nn.ReLU(),  # 4
        nn.AvgPool2d(2),  # 5: 4 -> 2
        nn.Flatten(),  # 6
        nn.Linear(16 * 2 * 2, num_classes),  # 7
    )


def make_bn_net(seed: int = 0, in_channels: int = 3, num_classes: int = 4) -> nn.Sequential:
    """Conv + BatchNorm + in-place ReLU + dropout, for 16x16 inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),  # 0
        nn.BatchNorm2d(8),  # 1
        nn.ReLU(inplace=True),  # 2
        nn.MaxPool2d(2),  # 3: 16 -> 8
        nn.Conv2d(8, 8, 3, padding=1),  # 4
        nn.BatchNorm2d(8),  # 5
        nn.ReLU(inplace=True),  # 6
        nn.Dropout2d(0.25),  # 7
        nn.AdaptiveAvgPool2d(2),  # 8
        nn.Flatten(),  # 9
        nn.Dropout(0.5),  # 10
        nn.Linear(8 * 2 * 2, num_classes),  # 11
    )


def make_conv1d_net(seed: int = 0, channels: int = 4, num_classes: int = 3) -> nn.Sequential:
    """A sentence-CNN-like model on ``[N, channels, 20]`` sequences."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(channels, 8, 3),  # 0: 20 -> 18
        nn.ReLU(),  # 1
        nn.MaxPool1d(2),  # 2: 18 -> 9
        nn.Conv1d(8, 6, 3),  # 3: 9 -> 7
        nn.ReLU(),  # 4
        nn.AdaptiveMaxPool1d(1),  # 5
        nn.Flatten(),  # 6
        nn.Linear(6, num_classes),  # 7
    )


class CallOrderNet(nn.Module):
    """Defines ``late`` before ``early`` but calls ``early`` first: definition != call order."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.late = nn.Conv2d(4, 4, 3)
        self.pool = nn.MaxPool2d(2)
        self.early = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.early(x))
        x = self.pool(x)
        x = F.relu(self.late(x))
        return self.head(x.mean(dim=(2, 3)))


class PlainModule(pl.LightningModule):
    """A LightningModule that is not a CaseStudyModule: features + head, plain SGD."""

    def __init__(self, seed: int = 0, lr: float = 0.05) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.ReLU()
        )
        self.head = nn.Linear(6, 4)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def case_module(net: nn.Module, **kwargs: Any) -> pl.LightningModule:
    """``CaseStudyModule`` around ``net`` (no schedule unless asked)."""
    from cnnviz.module import CaseStudyModule

    kwargs.setdefault("scheduler", "none")
    return CaseStudyModule(model=net, **kwargs)


# --------------------------------------------------------------------------------------- data
def make_loaders(
    shape: tuple[int, ...] = (3, 16, 16),
    *,
    n_train: int = 48,
    n_val: int = 16,
    batch_size: int = 16,
    num_classes: int = 4,
    seed: int = 0,
    shuffle: bool = True,
) -> tuple[DataLoader, DataLoader]:
    """Seeded random train/val ``TensorDataset`` loaders (the val set differs from train)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, *shape, generator=g)
    y = torch.randint(0, num_classes, (n_train + n_val,), generator=g)
    train = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size, shuffle=shuffle)
    val = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size)
    return train, val


def make_trainer(
    root: Any, callbacks: list[pl.Callback] | None = None, **kwargs: Any
) -> pl.Trainer:
    """A quiet CPU Trainer: no logger or checkpoints unless asked, 2 epochs."""
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": str(root),
    }
    opts.update(kwargs)
    return pl.Trainer(callbacks=callbacks or [], **opts)


# -------------------------------------------------------------------------------- leak checks
def modes(model: nn.Module) -> dict[str, bool]:
    """Every module's ``.training`` flag by qualified name."""
    return {name: m.training for name, m in model.named_modules()}


def hooks_by_module(model: nn.Module) -> dict[str, int]:
    """Module hook count per qualified name (0 everywhere after any cnnviz window)."""
    return {name: hook_count_shallow(m) for name, m in model.named_modules()}


def hook_count_shallow(module: nn.Module) -> int:
    """Hooks registered on ``module`` itself (not its children)."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(module, n, {}) or {}) for n in names)


class LeakCheck:
    """Snapshot of a model's hooks and modes; :meth:`verify` asserts nothing changed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.hooks = hooks_by_module(model)
        self.total = hook_count(model)
        self.modes = modes(model)

    def verify(self) -> None:
        """Assert no hook was added (on any module) and every module's mode is as before."""
        assert hook_count(self.model) == self.total
        assert hooks_by_module(self.model) == self.hooks
        assert modes(self.model) == self.modes


@pytest.fixture
def leak_check() -> Iterator[Callable[[nn.Module], LeakCheck]]:
    """``check = leak_check(model)`` snapshots now; every snapshot is verified at teardown too."""
    checks: list[LeakCheck] = []

    def snapshot(model: nn.Module) -> LeakCheck:
        check = LeakCheck(model)
        checks.append(check)
        return check

    yield snapshot
    for check in checks:
        check.verify()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


sys.modules.setdefault("cnnviz_test_helpers", sys.modules[__name__])
