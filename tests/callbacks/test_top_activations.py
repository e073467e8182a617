"""``TopActivations`` with a real Trainer on CPU: exact top-k, patches, hooks only when due."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import case_module, make_bn_net, make_lenet, make_loaders, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnviz import models
from cnnviz.analysis.guard import hook_count
from cnnviz.callbacks.receptive_fields import ReceptiveFields
from cnnviz.callbacks.top_activations import TopActivations
from cnnviz.data.shapes import ShapesDataModule
from cnnviz.module import CaseStudyModule
from cnnviz.store import RunStore

LENET_SOURCES = {"net.0": "net.1", "net.2": "net.2", "net.3": "net.4", "net.5": "net.5"}


def brute_force(
    module: nn.Module, sources: dict[str, str], loader: DataLoader, k: int
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer ``(values, samples, flat positions)`` ``[C, k]`` from one full pass.

    Each sample counts once per channel, at its strongest position (the smallest position on
    ties); samples are ordered by value (descending), then by index.
    """
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in sources}
    handles = [
        module.get_submodule(src).register_forward_hook(
            lambda _m, _i, out, name=name: outputs[name].append(out.detach().clone())
        )
        for name, src in sources.items()
    ]
    module.eval()
    try:
        with torch.no_grad():
            for x, _ in loader:
                module(x)
    finally:
        for h in handles:
            h.remove()
        module.train()
    result = {}
    for name, parts in outputs.items():
        acts = torch.cat(parts).flatten(2)  # [N, C, P]
        n, c, _ = acts.shape
        values, samples, positions = np.zeros((c, k), np.float32), [], []
        best = acts.amax(dim=2)  # [N, C]
        first = (acts == best[:, :, None]).float().argmax(dim=2)  # smallest position on ties
        rows_s, rows_p = [], []
        for ch in range(c):
            order = sorted(range(n), key=lambda i, ch=ch: (-float(best[i, ch]), i))[:k]
            values[ch] = [float(best[i, ch]) for i in order]
            rows_s.append(order)
            rows_p.append([int(first[i, ch]) for i in order])
        samples, positions = np.array(rows_s), np.array(rows_p)
        result[name] = (values, samples, positions)
    return result


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min())


def test_topk_equals_brute_force_over_the_whole_validation_set(tmp_path, leak_check) -> None:
    module = case_module(make_lenet())
    check = leak_check(module)
    train, val = make_loaders(n_train=32, n_val=30, batch_size=8)  # last val batch: 6 samples
    cb = TopActivations(k=5, max_channels=None)
    make_trainer(tmp_path, [cb], num_sanity_val_steps=2).fit(module, train, val)
    check.verify()
    assert hook_count(module) == 0
    store = RunStore(tmp_path / "cnnviz")
    truth = brute_force(module, LENET_SOURCES, val, k=5)  # final weights = last validation's
    x_val = val.dataset.tensors[0]
    sizes = {"net.0": 5, "net.2": 6, "net.3": 10, "net.5": 12}
    for name, (values, samples, positions) in truth.items():
        records = store.records("topk", layer=name)
        assert [r.meta["label"] for r in records] == ["epoch 1", "epoch 2"]  # no sanity check
        rec = records[-1]
        a = store.load(rec)
        assert rec.meta["k"] == 5 and rec.meta["channels"] == list(range(len(values)))
        assert rec.meta["read_from"] == LENET_SOURCES[name]
        np.testing.assert_array_equal(a["values"], values)
        np.testing.assert_array_equal(a["samples"], samples)
        width = {"net.0": 12, "net.2": 6, "net.3": 4, "net.5": 2}[name]
        np.testing.assert_array_equal(
            a["positions"][..., 0] * width + a["positions"][..., 1], positions
        )
        s = sizes[name]
        assert a["patches"].shape == (len(values), 5, s, s, 3) and a["patches"].dtype == np.float32
        assert rec.meta["rf_size"] == [s, s]
    # the patches are the units' fields: the stored value is the filter applied to the crop
    a = store.load(store.records("topk", layer="net.0")[-1])
    w, b = module.net[0].weight.detach(), module.net[0].bias.detach()
    for ch in range(6):
        for j in range(5):
            i, (r, c) = int(a["samples"][ch, j]), a["positions"][ch, j]
            crop = x_val[i, :, r : r + 5, c : c + 5]
            assert a["values"][ch, j] == pytest.approx(
                float(F.relu((w[ch] * crop).sum() + b[ch])), abs=1e-5
            )
            shown = _minmax(x_val[i])[:, r : r + 5, c : c + 5].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(a["patches"][ch, j], shown, atol=1e-3)


class HookSpy(pl.Callback):
    """Counts the model's hooks during validation and training batches (placed after cnnviz)."""

    def __init__(self) -> None:
        self.val: dict[int, set[int]] = {}
        self.train: set[int] = set()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self.val.setdefault(trainer.current_epoch, set()).add(hook_count(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train.add(hook_count(pl_module))


def test_hooks_exist_only_during_logging_validation_epochs(tmp_path) -> None:
    module = case_module(make_lenet())
    train, val = make_loaders(n_train=32, n_val=16, batch_size=8)
    spy = HookSpy()
    cb = TopActivations(every_n_epochs=2, layers=["net.0", "net.3"], max_patch_size=4)
    make_trainer(tmp_path, [cb, spy], max_epochs=3).fit(module, train, val)
    assert spy.val == {0: {0}, 1: {2}, 2: {0}} and spy.train == {0}
    (rec,) = RunStore(tmp_path / "cnnviz").records("topk", layer="net.0")
    assert rec.meta["label"] == "epoch 2" and rec.step == 8
    patches = RunStore(tmp_path / "cnnviz").load(rec)["patches"]
    assert patches.shape == (6, 9, 4, 4, 3) and rec.meta["patch_scale"] == pytest.approx(0.8)


def test_log_on_start_records_the_sanity_check_validation(tmp_path) -> None:
    module = case_module(make_bn_net())
    train, val = make_loaders(n_train=32, n_val=24, batch_size=8)
    cb = TopActivations(every_n_epochs=None, log_on_start=True, k=3, max_channels=2)
    make_trainer(tmp_path, [cb], num_sanity_val_steps=1).fit(module, train, val)
    store = RunStore(tmp_path / "cnnviz")
    (rec,) = store.records("topk", layer="net.0")
    a = store.load(rec)
    assert rec.meta["label"] == "start" and rec.meta["read_from"] == "net.2"  # after BN + ReLU
    assert rec.meta["channels"] == [0, 1] and rec.meta["num_channels"] == 8
    assert a["samples"].shape == (2, 3) and a["samples"].max() < 8  # the one sanity batch
    assert a["patches"].shape == (2, 3, 3, 3, 3)
    assert hook_count(module) == 0


class FailingValidation(CaseStudyModule):
    """Raises inside the second validation epoch, after the forward pass ran with the hooks."""

    def __init__(self) -> None:
        super().__init__(model=make_lenet(), scheduler="none")
        self.hooks_when_failing = -1

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().validation_step(batch, batch_idx)
        if self.current_epoch == 1 and batch_idx == 1:
            self.hooks_when_failing = hook_count(self)
            raise RuntimeError("validation failed")
        return loss


def test_hooks_removed_when_validation_raises(tmp_path) -> None:
    module = FailingValidation()
    train, val = make_loaders(n_train=32, n_val=24, batch_size=8)
    cb = TopActivations()
    with pytest.raises(RuntimeError, match="validation failed"):
        make_trainer(tmp_path, [cb], max_epochs=3).fit(module, train, val)
    assert module.hooks_when_failing == 4  # the window was open when it raised
    # (Lightning leaves the module in eval mode after a failed validation: not cnnviz's doing)
    assert hook_count(module) == 0 and cb._hooks is None
    store = RunStore(tmp_path / "cnnviz")
    assert [r.meta["label"] for r in store.records("topk", layer="net.0")] == ["epoch 1"]
    assert store.run_info()["status"] == "failed"


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def _watched_fit(root, callbacks: list[pl.Callback]) -> dict[str, Any]:
    pl.seed_everything(1234)
    module = case_module(make_bn_net(), optimizer="adam", lr=1e-3)
    module.net[5].eval()  # mixed modes: a frozen BatchNorm
    train, val = make_loaders(n_train=48, n_val=20, batch_size=8, shuffle=True)
    rec = LossRecorder()
    trainer = make_trainer(
        root, [*callbacks, rec], max_epochs=2, deterministic=True, num_sanity_val_steps=1
    )
    trainer.fit(module, train, val)
    return {
        "params": {n: p.detach().clone() for n, p in module.named_parameters()},
        "buffers": {n: b.clone() for n, b in module.named_buffers()},
        "optimizer": trainer.optimizers[0].state_dict()["state"],
        "metrics": {k: v.clone() for k, v in trainer.callback_metrics.items()},
        "losses": rec.losses,
        "rng": torch.get_rng_state(),
        "modes": {n: m.training for n, m in module.named_modules()},
        "hooks": hook_count(module),
    }


def test_observer_effect_is_zero_with_both_callbacks(tmp_path) -> None:
    plain = _watched_fit(tmp_path / "plain", [])
    cbs = [ReceptiveFields(num_probe=4), TopActivations(log_on_start=True, k=4)]
    watched = _watched_fit(tmp_path / "watched", cbs)
    store = RunStore(tmp_path / "watched" / "cnnviz")
    assert len(store.records("topk", layer="net.0")) == 3  # start + 2 epochs: it did watch
    assert len(store.records("erf", layer="net.8")) == 3
    assert watched["hooks"] == plain["hooks"] == 0 and watched["modes"] == plain["modes"]
    for key in ("params", "buffers", "metrics"):
        assert plain[key].keys() == watched[key].keys() and plain[key]
        for name, value in plain[key].items():
            assert torch.equal(value, watched[key][name]), (key, name)
    for index, state in plain["optimizer"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(value), torch.as_tensor(watched["optimizer"][index][name])
            )
    assert len(plain["losses"]) == 12
    assert all(torch.equal(a, b) for a, b in zip(plain["losses"], watched["losses"], strict=True))
    assert torch.equal(plain["rng"], watched["rng"])


def test_shuffled_validation_gets_an_own_pass_by_index(tmp_path) -> None:
    train, val = make_loaders(n_train=32, n_val=16, batch_size=8)
    shuffled = DataLoader(val.dataset, batch_size=8, shuffle=True)
    module = case_module(make_lenet())
    cb = TopActivations(k=3, max_samples=12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [cb], max_epochs=2).fit(module, train, shuffled)
    mine = [w for w in caught if "RandomSampler" in str(w.message)]
    assert len(mine) == 1 and "runs its own pass" in str(mine[0].message)
    store = RunStore(tmp_path / "cnnviz")
    records = store.records("topk", layer="net.0")
    assert [r.meta["label"] for r in records] == ["epoch 1", "epoch 2"]
    # the own pass covers the first 12 validation samples, found by index: brute force agrees
    net = copy.deepcopy(module.net).eval()
    with torch.no_grad():
        acts = torch.relu(net[0](val.dataset.tensors[0][:12])).amax(dim=(2, 3))  # [12, C]
    arrays = store.load(records[-1])
    values, samples = arrays["values"], arrays["samples"]
    assert samples.max() < 12
    expected = torch.sort(acts, dim=0, descending=True).values[:3].T.numpy()
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    assert store.run_info()["status"] == "finished"
    assert hook_count(module) == 0


class TokenNet(nn.Module):
    """A sentence CNN on token ids ``[N, 12]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(30, 8)
        self.conv = nn.Conv1d(8, 6, 3)
        self.act = nn.ReLU()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(self.embed(x).transpose(1, 2)))
        return self.head(h.amax(dim=2))


def test_token_models_record_the_tokens_each_unit_sees(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 30, (40, 12), generator=g), torch.randint(0, 3, (40,), generator=g)
    train = DataLoader(TensorDataset(x[:24], y[:24]), 8)
    val = DataLoader(TensorDataset(x[24:], y[24:]), 8)
    make_trainer(tmp_path, [TopActivations(k=4)], max_epochs=1).fit(
        case_module(TokenNet()), train, val
    )
    store = RunStore(tmp_path / "cnnviz")
    rec = store.records("topk", layer="net.conv")[-1]
    a = store.load(rec)
    assert "tokens" in a and "patches" not in a
    assert a["tokens"].shape == (6, 4, 3) and a["positions"].shape == (6, 4, 1)
    for ch in range(6):
        for j in range(4):
            i, p = int(a["samples"][ch, j]), int(a["positions"][ch, j, 0])
            assert a["tokens"][ch, j].tolist() == x[24 + i, p : p + 3].tolist()


def test_lenet5_on_shapes_first_layer_patches_match_the_filters(tmp_path) -> None:
    """Zeiler & Fergus: a first-layer filter's top-9 patches show the pattern it prefers.

    Measured as the cosine between the filter weights and the (normalised) patch: it is the
    unit's input, so the patches that excite it most point along the weights, far more than
    random patches of the same images (about 0 on average).
    """
    pl.seed_everything(0)
    torch.manual_seed(0)
    net = models.create("lenet5", in_channels=3, num_classes=9, activation="relu", pooling="max")
    module = CaseStudyModule(model=net, optimizer="adam", lr=2e-3, scheduler="none")
    dm = ShapesDataModule(num_train=1500, num_val=300, batch_size=50)
    cb = TopActivations(layers="net.features.c1", every_n_epochs=3)
    trainer = make_trainer(tmp_path, [cb], max_epochs=3)
    trainer.fit(module, dm)
    assert float(trainer.callback_metrics["val/acc"]) > 0.5  # it learned something
    a = RunStore(tmp_path / "cnnviz").load(RunStore(tmp_path / "cnnviz").records("topk")[-1])
    assert a["patches"].shape == (6, 9, 5, 5, 3)
    weights = net.features.c1.weight.detach().permute(0, 2, 3, 1).numpy()  # [6, 5, 5, 3]
    ds = dm.dataset("val")
    rng = np.random.default_rng(0)

    def cosine(patch: np.ndarray, w: np.ndarray) -> float:
        return float((patch * w).sum() / (np.linalg.norm(patch) * np.linalg.norm(w)))

    top_means, random_means = [], []
    for ch in range(6):
        top = [
            cosine((a["patches"][ch, j].astype(np.float32) - 0.5) / 0.28, weights[ch])
            for j in range(9)
        ]
        rand = []
        for _ in range(200):
            i, r, c = rng.integers(len(ds)), *rng.integers(0, 28, 2)
            rand.append(
                cosine(ds[int(i)][0][:, r : r + 5, c : c + 5].permute(1, 2, 0).numpy(), weights[ch])
            )
        top_means.append(np.mean(top))
        random_means.append(np.mean(rand))
        assert np.mean(top) > np.mean(rand) + 1.2 * np.std(rand)
    assert min(top_means) > 0.4 and np.mean(top_means) > 0.5
    assert max(abs(m) for m in random_means) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "`k`"),
        ({"k": 2.5}, TypeError, "`k`"),
        ({"max_channels": 0}, ValueError, "`max_channels`"),
        ({"max_patch_size": -3}, ValueError, "`max_patch_size`"),
        ({"pad_value": 2.0}, ValueError, "`pad_value`"),
        ({"pad_value": "grey"}, TypeError, "`pad_value`"),
        ({"layers": 3}, TypeError, "`layers`"),
        ({"every_n_epochs": None}, ValueError, "nothing would ever"),
    ],
)
def test_top_activations_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        TopActivations(**kwargs)


@pytest.mark.parametrize("interior_only", [False, True])
def test_padding_share_of_each_patch_and_interior_only(tmp_path, interior_only) -> None:
    """A 3x3 conv with padding 1 on 16 px: units on the border see a row or column of padding."""
    module = case_module(make_bn_net())
    train, val = make_loaders(n_train=16, n_val=32, batch_size=8)
    cb = TopActivations(k=5, layers=["net.0", "net.4"], interior_only=interior_only)
    make_trainer(tmp_path, [cb], max_epochs=1).fit(module, train, val)
    store = RunStore(tmp_path / "cnnviz")
    first = store.load(store.records("topk", layer="net.0")[-1])
    padding, positions = first["padding"], first["positions"]
    assert padding.shape == first["values"].shape
    on_border = (positions == 0).any(-1) | (positions == 15).any(-1)
    # a corner unit of a 3x3 field sees 5 of 9 pixels in the padding, an edge unit 3 of 9
    corner = (positions == 0).all(-1) | (positions == 15).all(-1)
    np.testing.assert_allclose(padding[corner], 5 / 9, rtol=1e-6)
    np.testing.assert_allclose(padding[on_border & ~corner], 3 / 9, rtol=1e-6)
    np.testing.assert_array_equal(padding[~on_border], 0)
    if interior_only:
        assert not on_border.any() and (padding == 0).all()
        deeper = store.load(store.records("topk", layer="net.4")[-1])
        assert np.nanmax(deeper["padding"]) == 0
    else:
        assert on_border.any()  # the strongest units of random images include border ones
