"""Every callback on users' own models, batches, outputs, precisions and compiled modules.

Written the way users write training code: their own ``LightningModule`` (not
``CaseStudyModule``), dict and tuple batches, a ``forward`` that takes the batch, outputs that are
dicts or ``(logits, extras)`` tuples, timm and torchvision backbones, ``precision=``,
``channels_last`` and ``torch.compile``. The fit must always finish; what a callback cannot do on
such a model is a warning and a record, never an exception in ``fit`` (``strict=False``, the
default for users; the test suite otherwise runs with ``CNNVIZ_STRICT=1``).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import make_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cnnviz.analysis.guard import hook_count
from cnnviz.callbacks import (
    ActivationMaps,
    Attributions,
    FeatureVisualization,
    FilterWeights,
    ReceptiveFields,
    TopActivations,
)
from cnnviz.store import RunStore

NUM_CLASSES = 4


# ---------------------------------------------------------------------------------- the data
class DictImages(Dataset):
    """Random images as ``{"image": x, "label": y}`` samples (a common user format)."""

    def __init__(self, n: int = 24, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, NUM_CLASSES, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class TupleImages(DictImages):
    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.x[i], self.y[i]


def loaders(kind: type[Dataset] = DictImages, size: int = 32) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(kind(24, size, seed=0), batch_size=8, shuffle=True),
        DataLoader(kind(16, size, seed=1), batch_size=8),
    )


# -------------------------------------------------------------------------------- the models
class Block(nn.Module):
    """conv → bn → F.relu in ``forward`` (not one Sequential), as torchvision/timm blocks do."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def backbone() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Block(3, 8), nn.MaxPool2d(2), Block(8, 12, 2), Block(12, 16))


class BatchDictModule(pl.LightningModule):
    """``forward`` takes the batch dict and returns ``{"logits": ..., "features": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = backbone()
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        features = self.backbone(batch["image"])
        return {"features": features, "logits": self.head(features.mean(dim=(2, 3)))}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch)["logits"], batch["label"])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch)["logits"], batch["label"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class TupleOutModule(pl.LightningModule):
    """A tuple batch, a backbone from outside, and ``forward`` returning ``(logits, features)``."""

    def __init__(self, net: nn.Module, features: int, compile_net: bool = False) -> None:
        super().__init__()
        self.backbone = torch.compile(net) if compile_net else net
        self.head = nn.Linear(features, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        f = f.mean(dim=(2, 3)) if f.dim() == 4 else f
        return self.head(f), f

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x)[0], y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x)[0], y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def every_callback(**kw: Any) -> list[pl.Callback]:
    """Every watching callback, cheap settings, not strict (as a user gets them)."""
    kw.setdefault("strict", False)
    return [
        FilterWeights(**kw),
        ActivationMaps(num_probe=4, **kw),
        ReceptiveFields(num_probe=2, **kw),
        TopActivations(k=3, **kw),
        Attributions(methods=["saliency", "grad_cam"], num_probe=2, check_method=None, **kw),
        FeatureVisualization(steps=2, max_channels=2, **kw),
    ]


def fit(tmp_path: Any, module: pl.LightningModule, callbacks: list, data: Any, **kw: Any) -> Any:
    train, val = data
    opts = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 2, **kw}
    trainer = make_trainer(tmp_path, callbacks, **opts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train, val)
    assert trainer.state.finished, "the fit must finish"
    return trainer, [str(w.message) for w in caught], RunStore(tmp_path / "cnnviz")


def errors(store: RunStore) -> list[str]:
    """Failures recorded by callbacks (not the ones that turned themselves off at set-up)."""
    return [
        f"{r.meta['callback']}: {r.meta['message']}"
        for r in store.records("error")
        if r.meta.get("exception") != "Disabled"
    ]


def off(store: RunStore) -> dict[str, str]:
    return {
        r.meta["callback"]: r.meta["message"]
        for r in store.records("error")
        if r.meta.get("exception") == "Disabled"
    }


# -------------------------------------------------------------------------------------- tests
def test_forward_that_takes_the_batch_dict(tmp_path) -> None:
    module = BatchDictModule()
    _, said, store = fit(tmp_path, module, every_callback(), loaders(DictImages))
    assert errors(store) == []
    assert hook_count(module) == 0
    # Found: the input under "image", the class scores under "logits", forward(batch).
    layers = {r.layer for r in store.records("activations")}
    assert {"backbone.0.conv", "backbone.1", "backbone.2.conv", "backbone.3.conv"} <= layers
    probs = store.load(store.records("predictions")[-1])["probs"]
    assert probs.shape == (4, NUM_CLASSES)
    attributions = store.records("attributions")
    assert attributions and set(attributions[-1].meta["methods"]) == {"saliency", "grad_cam"}
    assert store.load(attributions[-1])["saliency"].shape == (2, 32, 32)
    assert store.records("topk") and store.records("filters")
    # Feature visualisation optimises an input tensor: this forward takes a dict.
    assert list(off(store)) == ["FeatureVisualization"]
    assert "takes the whole batch" in off(store)["FeatureVisualization"]
    assert any("FeatureVisualization is off for this fit" in s for s in said)


def test_conv_maps_are_read_after_bn_and_functional_relu(tmp_path) -> None:
    module = BatchDictModule()
    cb = ActivationMaps(num_probe=4, layers="backbone.*.conv")
    make_trainer(tmp_path, [cb], max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(
        module, *loaders(DictImages)
    )
    store = RunStore(tmp_path / "cnnviz")
    for record in store.records("activations"):
        assert record.meta["read_from"] != record.layer
        assert (store.load(record)["maps"] >= 0).all()  # after the ReLU


def test_watching_a_backbone_keeps_full_names_and_turns_attributions_off(tmp_path) -> None:
    module = BatchDictModule()
    cbs = every_callback(module="backbone", probe_input="image")
    _, said, store = fit(tmp_path, module, cbs, loaders(DictImages))
    assert errors(store) == []
    # Layer names as in the user's module, not relative to the backbone.
    assert {r.layer for r in store.records("filters")} == {
        "backbone.0.conv",
        "backbone.2.conv",
        "backbone.3.conv",
    }
    # The backbone returns feature maps, not class scores: Attributions says so and stays off.
    assert "Attributions" in off(store)
    assert "no class scores" in off(store)["Attributions"]
    assert any("Attributions is off for this fit" in s and "scores=" in s for s in said)
    assert store.records("activations") and not store.records("attributions")


def test_scores_and_probe_input_can_be_given(tmp_path) -> None:
    module = BatchDictModule()
    cbs = [
        ActivationMaps(num_probe=2, probe_input="image", scores=lambda out: out["logits"]),
        Attributions(methods=["saliency"], num_probe=2, check_method=None),
    ]
    fit(tmp_path, module, cbs, loaders(DictImages))
    store = RunStore(tmp_path / "cnnviz")
    assert store.records("attributions") and store.records("predictions")


def test_conflicting_adapters_are_a_clear_error(tmp_path) -> None:
    cbs = [ActivationMaps(scores="logits"), Attributions(scores="out")]
    with pytest.raises(ValueError, match=r"`scores`='out' differs from 'logits'.*set it once"):
        fit(tmp_path, BatchDictModule(), cbs, loaders(DictImages))


def test_bad_layer_name_still_raises_at_setup(tmp_path) -> None:
    cbs = [ActivationMaps(layers="backbone.9", strict=False)]
    with pytest.raises(ValueError, match=r"unknown layer 'backbone.9'.*backbone\.0\.conv"):
        fit(tmp_path, BatchDictModule(), cbs, loaders(DictImages))


def test_a_failing_event_is_a_warning_and_an_error_record(tmp_path) -> None:
    class Broken(ActivationMaps):
        def log_event(self, trainer: Any, pl_module: Any, event: Any) -> None:
            raise RuntimeError("boom")

    cbs = [Broken(num_probe=2, strict=False), FilterWeights(strict=False)]
    _, said, store = fit(tmp_path, BatchDictModule(), cbs, loaders(DictImages), max_epochs=4)
    failures = [r for r in store.records("error") if r.meta["exception"] == "RuntimeError"]
    assert len(failures) == 3  # then it turned itself off
    assert "Broken" in off(store) and "3 times in a row" in off(store)["Broken"]
    assert len([s for s in said if "Broken failed in" in s]) == 1  # said once
    assert len(store.records("filters")) == 3 * 5  # start + 4 epochs, the other went on
    assert store.run_info()["status"] == "finished"


@pytest.mark.parametrize(
    "precision", ["bf16-true", "16-true", "bf16-mixed", "64-true"], ids=lambda p: p
)
def test_precision(tmp_path, precision) -> None:
    import numpy as np

    module = TupleOutModule(backbone(), 16)
    _, _, store = fit(tmp_path, module, every_callback(), loaders(TupleImages), precision=precision)
    assert errors(store) == []
    assert not off(store), off(store)
    for kind in ("filters", "activations", "attributions", "featvis", "topk", "erf"):
        records = store.records(kind)
        assert records, kind
        for name, array in store.load(records[-1]).items():
            if array.dtype.kind == "f":
                assert array.dtype == np.float32, (kind, name, array.dtype)


def test_channels_last(tmp_path) -> None:
    module = TupleOutModule(backbone(), 16).to(memory_format=torch.channels_last)
    _, _, store = fit(tmp_path, module, every_callback(), loaders(TupleImages))
    assert errors(store) == [] and not off(store)


def _graphs() -> int:
    import torch._dynamo.utils as dynamo_utils

    return int(dynamo_utils.counters["stats"]["unique_graphs"])


@pytest.mark.parametrize("form", ["fit(torch.compile(module))", "self.net = torch.compile(net)"])
def test_compiled_models_build_no_extra_graphs(tmp_path, form) -> None:
    import torch._dynamo

    def run(root: Any, callbacks: list) -> tuple[int, RunStore]:
        torch._dynamo.reset()
        torch.manual_seed(0)
        compile_net = form.startswith("self")
        module: Any = TupleOutModule(backbone(), 16, compile_net=compile_net)
        if not compile_net:
            module = torch.compile(module)
        before = _graphs()
        train, val = loaders(TupleImages)
        trainer = make_trainer(
            root, callbacks, max_epochs=2, limit_train_batches=2, limit_val_batches=1
        )
        trainer.fit(module, train, val)
        return _graphs() - before, RunStore(root / "cnnviz")

    plain, _ = run(tmp_path / "plain", [])
    watched, store = run(tmp_path / "watched", every_callback(strict=True))
    assert watched == plain, f"{watched} dynamo graphs with cnnviz, {plain} without"
    assert all("_orig_mod" not in (r.layer or "") for r in store.records())
    assert store.records("activations") and store.records("topk") and store.records("featvis")


def test_kim_cnn_on_token_ids_gets_per_token_attributions(tmp_path) -> None:
    """The lecture's sentence CNN: token ids in, attributions per token through the embedding."""
    import numpy as np

    from cnnviz.data import SentenceDataModule
    from cnnviz.module import CaseStudyModule

    dm = SentenceDataModule(vocab_size=200, seq_len=32, num_train=64, num_val=16, batch_size=16)
    module = CaseStudyModule(
        "kim_cnn", model_kwargs={"embed_dim": 16}, data_info=dm.model_kwargs, scheduler="none"
    )
    cbs = [
        ActivationMaps(num_probe=4),
        Attributions(
            methods=["saliency", "integrated_gradients", "input_x_gradient"],
            num_probe=4,
            check_method=None,
        ),
    ]
    trainer = make_trainer(tmp_path, cbs, max_epochs=1)
    trainer.fit(module, datamodule=dm)
    store = RunStore(tmp_path / "cnnviz")
    (probe,) = store.records("probe")
    assert probe.meta["vocabulary"][:2] == ["<pad>", "k0"]
    ids = store.load(probe)["x"]
    assert ids.shape == (4, 32) and ids.dtype.kind == "i"
    rec = store.records("attributions")[-1]
    assert rec.meta["input_kind"] == "tokens"
    maps = store.load(rec)
    assert set(rec.meta["methods"]) == {"saliency", "integrated_gradients", "input_x_gradient"}
    for name, a in maps.items():
        assert a.shape == (4, 32) and np.isfinite(a).all(), name
    # padding (id 0) carries no evidence for gradient x input: its embedding is the zero vector
    pad = ids == 0
    if pad.any():
        assert np.allclose(maps["input_x_gradient"][pad], 0, atol=1e-6)
