"""``FilterWeights`` (and the shared callback machinery) with a real Trainer on CPU."""

from __future__ import annotations

import glob

import lightning.pytorch as pl
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from cnnviz_test_helpers import (
    PlainModule,
    case_module,
    make_conv1d_net,
    make_lenet,
    make_loaders,
    make_trainer,
)
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from cnnviz.analysis.guard import hook_count
from cnnviz.callbacks import ActivationMaps, FilterWeights
from cnnviz.figures.activations import activations_figure
from cnnviz.figures.filters import filter_norms_figure, filters_figure
from cnnviz.store import RunStore


def _history(store: RunStore, layer: str, kind: str = "filters", source: str | None = None):
    records = store.records(kind, layer=layer, source=source)
    return records, [store.load(r) for r in records]


def test_records_per_layer_per_event_and_slider_figures(tmp_path, leak_check) -> None:
    module = case_module(make_lenet())
    check = leak_check(module)
    initial = {n: module.get_submodule(n).weight.detach().clone() for n in ("net.0", "net.3")}
    train, val = make_loaders()
    cb = FilterWeights()
    make_trainer(tmp_path, [cb]).fit(module, train, val)
    check.verify()
    store = RunStore(tmp_path / "cnnviz")
    assert cb.store is not None and cb.store.root == store.root.resolve()
    assert cb.events == 3
    for name, rgb, shape in (("net.0", True, (6, 3, 5, 5)), ("net.3", False, (16, 6, 3, 3))):
        records, arrays = _history(store, name)
        assert [r.meta["label"] for r in records] == ["start", "epoch 1", "epoch 2"]
        assert [(r.epoch, r.step) for r in records] == [(0, 0), (0, 3), (1, 6)]
        assert {r.source for r in records} == {cb.state_key}
        assert all(r.meta["rgb"] is rgb and r.meta["full_shape"] == list(shape) for r in records)
        assert all(a["weight"].shape == shape and a["norms"].shape == (shape[0],) for a in arrays)
        assert "grad" not in arrays[0] and all("grad" in a for a in arrays[1:])
        final = module.get_submodule(name).weight.detach()
        np.testing.assert_array_equal(arrays[0]["weight"], initial[name].numpy())
        np.testing.assert_array_equal(arrays[-1]["weight"], final.numpy())
        np.testing.assert_allclose(arrays[-1]["norms"], final.flatten(1).norm(dim=1), rtol=1e-6)
        assert not np.array_equal(arrays[0]["weight"], arrays[1]["weight"])  # it trained
        labels = [r.meta["label"] for r in records]
        fig = filters_figure([a["weight"] for a in arrays], labels, layer=name, rgb=rgb)
        assert isinstance(fig, go.Figure) and len(fig.data) == 3
        assert isinstance(fig.data[0], go.Image if rgb else go.Heatmap)
        assert [s["label"] for s in fig.layout.sliders[0].steps] == labels
        assert [bool(t.visible) for t in fig.data] == [False, False, True]
        norms = filter_norms_figure(np.stack([a["norms"] for a in arrays]), labels, layer=name)
        assert norms.data[0].z.shape == (shape[0], 3)
    run = store.run_info()
    assert run["status"] == "finished" and run["module"] == "CaseStudyModule"
    assert run["layers"][0]["describe"].startswith("net.0  Conv2d(3→6")
    metrics = store.records("metrics")
    assert [r.epoch for r in metrics] == [0, 1]
    assert "val/loss" in metrics[-1].meta["values"]


def test_every_n_steps_cadence(tmp_path) -> None:
    train, val = make_loaders(n_train=80)  # 5 batches, 3 used per epoch
    cb = FilterWeights(every_n_epochs=None, every_n_steps=2, layers="net.3")
    make_trainer(tmp_path, [cb], limit_train_batches=3).fit(case_module(make_lenet()), train, val)
    records = RunStore(tmp_path / "cnnviz").records("filters")
    assert [r.layer for r in records] == ["net.3"] * 4
    assert [r.step for r in records] == [0, 2, 4, 6]
    assert [r.meta["label"] for r in records] == ["start", "step 2", "step 4", "step 6"]


class GradRecorder(pl.Callback):
    """Copies the weight gradients Lightning is about to apply, keyed by the step they make."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.grads: dict[int, dict[str, torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads[trainer.global_step + 1] = {
            n: pl_module.get_submodule(n).weight.grad.detach().clone() for n in self.names
        }


def test_gradients_recorded_at_the_logged_step(tmp_path) -> None:
    train, val = make_loaders(n_train=80)
    cb = FilterWeights(every_n_steps=2, every_n_epochs=1, max_channels=4, max_in_channels=2)
    spy = GradRecorder(["net.0", "net.3"])
    module = case_module(make_lenet())
    make_trainer(tmp_path, [cb, spy], limit_train_batches=3).fit(module, train, val)
    store = RunStore(tmp_path / "cnnviz")
    for name in ("net.0", "net.3"):
        records, arrays = _history(store, name)
        # step events 2, 4, 6; epoch 1 ends at step 3; epoch 2 ends at 6, already logged
        assert [r.meta["label"] for r in records] == [
            "start",
            "step 2",
            "epoch 1",
            "step 4",
            "step 6",
        ]
        for rec, arr in zip(records[1:], arrays[1:], strict=True):
            grad = spy.grads[rec.step][name]
            np.testing.assert_array_equal(arr["grad"], grad[:4, :2].numpy())
            np.testing.assert_allclose(arr["grad_norms"], grad.flatten(1).norm(dim=1), rtol=1e-6)
            assert arr["weight"].shape[:2] == (4, 2)
    assert not cb._grads  # nothing held between events


def test_dead_and_unchanged_filters_are_flagged(tmp_path) -> None:
    net = make_lenet()
    net[0].requires_grad_(False)  # a frozen layer: every filter unchanged
    with torch.no_grad():
        net[3].weight[2].zero_()  # a zero filter that stays zero: dead and unchanged
        net[3].bias[2] = 0.0
    mask = torch.ones_like(net[3].weight)
    mask[2] = 0
    net[3].weight.register_hook(lambda g: g * mask)
    train, val = make_loaders()
    make_trainer(tmp_path, [FilterWeights()]).fit(case_module(net), train, val)
    store = RunStore(tmp_path / "cnnviz")
    frozen, frozen_arrays = _history(store, "net.0")
    assert [r.meta["unchanged"] for r in frozen] == [[], list(range(6)), list(range(6))]
    assert all(r.meta["dead"] == [] for r in frozen)
    assert all("grad" not in a for a in frozen_arrays)  # no gradient for a frozen layer
    conv, conv_arrays = _history(store, "net.3")
    assert conv[0].meta["dead"] == [2]  # at the start only the norm speaks
    for rec, arr in zip(conv[1:], conv_arrays[1:], strict=True):
        assert 2 in rec.meta["dead"]
        # any other filter flagged dead got no gradient at that step (a silent ReLU unit)
        assert all(arr["grad_norms"][k] == 0 for k in rec.meta["dead"])
        assert rec.meta["unchanged"] == [2]
    assert conv_arrays[-1]["grad_norms"][2] == 0 and conv_arrays[-1]["norms"][2] == 0


def test_nan_and_inf_weights_warn_and_figures_are_still_drawn(tmp_path) -> None:
    net = make_lenet()
    with torch.no_grad():
        net[3].weight[1, 0, 0, 0] = float("nan")
        net[3].weight[4, 0, 0, 0] = float("inf")
    train, val = make_loaders()
    cbs = [FilterWeights(), ActivationMaps()]
    module = case_module(net)
    with pytest.warns(UserWarning) as warned:
        make_trainer(tmp_path, cbs, max_epochs=1).fit(module, train, val)
    messages = [str(w.message) for w in warned]
    assert any("FilterWeights: net.3 has" in m and "NaN/Inf weight" in m for m in messages)
    assert any("ActivationMaps: net.3 produced" in m and "NaN/Inf" in m for m in messages)
    assert hook_count(module) == 0
    store = RunStore(tmp_path / "cnnviz")
    records, arrays = _history(store, "net.3")
    assert records[0].meta["nonfinite"] >= 2
    fig = filters_figure([a["weight"] for a in arrays], ["a", "b"], layer="net.3")
    assert len(fig.data) == 2
    first = filters_figure(
        [a["weight"] for a in _history(store, "net.0")[1]], ["a", "b"], layer="net.0", rgb=True
    )
    assert len(first.data) == 2 and first.data[1].z.dtype == np.uint8
    act_records, act_arrays = _history(store, "net.3", "activations")
    assert act_records[0].meta["nonfinite"] > 0
    fig = activations_figure([a["maps"] for a in act_arrays], ["a", "b"], layer="net.3")
    assert len(fig.data) == 2


def test_filters_figure_colour_range_ignores_inf() -> None:
    w = np.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(np.float32)
    w[1, 0, 0, 0], w[2, 1, 1, 1] = np.inf, np.nan
    fig = filters_figure([w], ["start"], layer="conv")
    assert np.isfinite(fig.data[0].zmax) and np.isfinite(fig.data[0].zmin)
    assert not np.isinf(np.asarray(fig.data[0].z, dtype=float)).any()


def test_wide_layers_are_capped(tmp_path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 2048, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 4)
    )
    train, val = make_loaders((3, 6, 6), n_train=16, n_val=8)
    fw, am = FilterWeights(), ActivationMaps(num_probe=4)
    make_trainer(tmp_path, [fw, am], max_epochs=1).fit(case_module(net), train, val)
    store = RunStore(tmp_path / "cnnviz")
    filt = store.load(store.records("filters", layer="net.0")[-1])
    assert filt["weight"].shape == (64, 3, 3, 3) and filt["norms"].shape == (2048,)
    act = store.load(store.records("activations", layer="net.0")[-1])
    assert act["maps"].shape == (4, 16, 4, 4) and act["mean"].shape == (2048,)
    assert act["channels"].tolist() == list(range(16))
    pooled = store.load(store.records("activations", layer="net.2")[-1])
    assert pooled["maps"].shape == (4, 16, 1, 1)


def test_unknown_layer_and_bad_module_fail_at_setup(tmp_path, leak_check) -> None:
    train, val = make_loaders()
    module = case_module(make_lenet())
    leak_check(module)
    with pytest.raises(ValueError, match=r"FilterWeights: unknown layer 'conv9'.*net\.0, net\.3"):
        make_trainer(tmp_path, [FilterWeights(layers="conv9")]).fit(module, train, val)
    with pytest.raises(ValueError, match=r"`module`: CaseStudyModule has no submodule 'body'.*net"):
        make_trainer(tmp_path, [FilterWeights(module="body")]).fit(module, train, val)
    no_conv = case_module(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)))
    with pytest.raises(ValueError, match="has no conv layer"):
        make_trainer(tmp_path, [FilterWeights()]).fit(no_conv, train, val)


def test_module_argument_watches_a_submodule(tmp_path) -> None:
    train, val = make_loaders()
    cb = FilterWeights(module="net", layers="[03]")  # names inside the module work too
    make_trainer(tmp_path, [cb], max_epochs=1).fit(case_module(make_lenet()), train, val)
    # layers keep their names in the LightningModule, as in `cnnviz.list_layers(module)`
    assert [i.name for i in cb.selected] == ["net.0", "net.3"]
    records = RunStore(tmp_path / "cnnviz").records("filters")
    assert {r.layer for r in records} == {"net.0", "net.3"}
    same = FilterWeights(module="net", layers=["net.0", "net.3"], store_dir=tmp_path / "q")
    make_trainer(tmp_path, [same], max_epochs=1).fit(case_module(make_lenet()), train, val)
    assert [i.name for i in same.selected] == ["net.0", "net.3"]


def test_two_instances_coexist(tmp_path) -> None:
    train, val = make_loaders()
    first, second = FilterWeights(layers="net.0"), FilterWeights(layers=["net.3"], max_channels=2)
    assert first.state_key != second.state_key
    trainer = make_trainer(tmp_path, [first, second], max_epochs=1)
    trainer.fit(case_module(make_lenet()), train, val)
    store = RunStore(tmp_path / "cnnviz")
    assert {r.layer for r in store.records(source=first.state_key)} == {"net.0"}
    assert {r.layer for r in store.records(source=second.state_key)} == {"net.3"}
    assert store.load(store.records("filters", layer="net.3")[-1])["weight"].shape[0] == 2
    trainer.save_checkpoint(tmp_path / "both.ckpt")
    states = torch.load(tmp_path / "both.ckpt", weights_only=False)["callbacks"]
    assert states[first.state_key]["events"] == 2 and states[second.state_key]["events"] == 2


def test_resume_into_a_new_log_dir_copies_the_history_there(tmp_path) -> None:
    train, val = make_loaders()

    def fit(epochs: int, ckpt: str | None = None) -> tuple[FilterWeights, ActivationMaps]:
        fw, am = FilterWeights(), ActivationMaps(num_probe=4)
        trainer = make_trainer(
            tmp_path,
            [fw, am],
            max_epochs=epochs,
            logger=CSVLogger(tmp_path),  # version_0 then version_1
            enable_checkpointing=True,
        )
        trainer.fit(case_module(make_lenet()), train, val, ckpt_path=ckpt)
        return fw, am

    fit(2)
    (ckpt,) = glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True)
    assert "version_0" in ckpt
    fw, am = fit(3, ckpt)
    assert fw.events == 4 and am.events == 4  # start + 3 epochs, counted across the runs
    old = RunStore(tmp_path / "lightning_logs" / "version_0" / "cnnviz")
    new = RunStore(tmp_path / "lightning_logs" / "version_1" / "cnnviz")
    # the first run's directory is left as it was
    assert [r.meta["label"] for r in old.records("filters", layer="net.0")] == [
        "start",
        "epoch 1",
        "epoch 2",
    ]
    assert old.run_info()["status"] == "finished" and old.run_info()["epochs"] == 2
    # the new run directory holds the whole history: copied up to the checkpoint, then its own
    for kind, layer in (("filters", "net.0"), ("activations", "net.2")):
        records = new.records(kind, layer=layer)
        assert [r.meta["label"] for r in records] == ["start", "epoch 1", "epoch 2", "epoch 3"]
    assert len(new.records("probe")) == 1
    assert [r.epoch for r in new.records("metrics")] == [0, 1, 2]
    assert len(new.records("resume")) == 1 and new.records("resume")[0].step == 6
    # "unchanged" compares epoch 3 with epoch 2, read back from the store after the restart
    assert new.records("filters", layer="net.0")[-1].meta["unchanged"] == []
    assert new.run_info()["status"] == "finished" and new.run_info()["epochs"] == 3


def test_resume_from_an_earlier_checkpoint_continues_the_history_as_one_line(tmp_path) -> None:
    """Epoch 2 of 4 resumed into the same store: no `epoch 3|epoch 4` twice on the slider."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    train, val = make_loaders()
    store_dir = tmp_path / "store"

    def fit(epochs: int, ckpt: str | None = None) -> None:
        saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
        trainer = make_trainer(
            tmp_path,
            [FilterWeights(store_dir=store_dir), saver],
            max_epochs=epochs,
            enable_checkpointing=True,
        )
        trainer.fit(case_module(make_lenet()), train, val, ckpt_path=ckpt)

    fit(4)
    (second,) = glob.glob(str(tmp_path / "ckpt" / "epoch=1-*.ckpt"))
    fit(4, second)
    from cnnviz.report.data import load_run
    from cnnviz.store import FiltersRecord

    labels = [r.label for r in load_run(store_dir).read(FiltersRecord, "net.0")]
    assert labels == ["start", "epoch 1", "epoch 2", "epoch 3", "epoch 4"]
    store = RunStore(store_dir)
    assert [r.meta["label"] for r in store.records("filters", layer="net.0")] == labels


def test_works_on_a_plain_lightning_module(tmp_path, leak_check) -> None:
    module = PlainModule()
    check = leak_check(module)
    train, val = make_loaders()
    fw, am = FilterWeights(), ActivationMaps(num_probe=3)
    make_trainer(tmp_path, [fw, am]).fit(module, train, val)
    check.verify()
    store = RunStore(tmp_path / "cnnviz")
    assert {r.layer for r in store.records("filters")} == {"features.0", "features.3"}
    assert {r.layer for r in store.records("activations")} == {
        "features.0",
        "features.2",
        "features.3",
    }
    assert store.run_info()["model"] == "PlainModule"
    assert store.load(store.records("activations", layer="features.3")[-1])["maps"].shape == (
        3,
        6,
        5,
        5,
    )


def test_one_dimensional_convolutions(tmp_path) -> None:
    train, val = make_loaders((4, 20), num_classes=3)
    fw, am = FilterWeights(), ActivationMaps(num_probe=5, max_size=8)
    make_trainer(tmp_path, [fw, am], max_epochs=1).fit(case_module(make_conv1d_net()), train, val)
    store = RunStore(tmp_path / "cnnviz")
    filt = store.load(store.records("filters", layer="net.0")[-1])
    assert filt["weight"].shape == (8, 4, 3)
    assert store.records("filters", layer="net.0")[-1].meta["rgb"] is False
    _, arrays = _history(store, "net.0", "activations")
    assert [a["maps"].shape for a in arrays] == [(5, 8, 8), (5, 8, 8)]  # [N, K, L], L 18 -> 8
    assert store.load(store.records("activations", layer="net.5")[-1])["maps"].shape == (5, 6, 1)
    fig = activations_figure([a["maps"] for a in arrays], ["start", "epoch 1"], layer="net.0")
    assert len(fig.data) == 2
    assert filters_figure([filt["weight"]], ["epoch 1"], layer="net.0").data


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_epochs": -1}, ValueError, "`every_n_epochs` must be >= 0"),
        ({"every_n_epochs": 1.5}, TypeError, "`every_n_epochs` must be an int or None"),
        ({"every_n_steps": True}, TypeError, "`every_n_steps` must be an int or None"),
        ({"every_n_steps": -2}, ValueError, "`every_n_steps` must be >= 0"),
        (
            {"every_n_epochs": 0, "every_n_steps": None, "log_on_start": False},
            ValueError,
            "nothing would ever be logged",
        ),
        ({"layers": 3}, TypeError, "`layers` must be a name"),
        ({"module": 1}, TypeError, "`module` must be a submodule name"),
        ({"max_channels": 0}, ValueError, "`max_channels` must be a positive int or None"),
        ({"max_channels": "8"}, TypeError, "`max_channels` must be a positive int or None"),
        ({"max_channels": True}, TypeError, "`max_channels`"),
        ({"max_in_channels": 0}, ValueError, "`max_in_channels` must be a positive int"),
        ({"max_in_channels": None}, TypeError, "`max_in_channels`"),
        ({"dead_tol": -1.0}, ValueError, "`dead_tol` must be a number >= 0"),
        ({"unchanged_tol": -1e-3}, ValueError, "`unchanged_tol`"),
        ({"dead_tol": "small"}, TypeError, "`dead_tol`"),
    ],
)
def test_filter_weights_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        FilterWeights(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": 3}, TypeError, "`model` must be a cnnviz model name or an nn.Module"),
        ({"model": "no-such-model"}, ValueError, "no-such-model"),
        (
            {"model": nn.Linear(2, 2), "model_kwargs": {"a": 1}},
            ValueError,
            "`model_kwargs` only applies",
        ),
        ({"optimizer": "rmsprop"}, ValueError, "`optimizer` must be 'sgd', 'adam' or 'adamw'"),
        ({"scheduler": "linear"}, ValueError, "`scheduler` must be"),
        ({"lr": 0.0}, ValueError, "`lr` must be > 0"),
        ({"momentum": 1.0}, ValueError, r"`momentum` must be in \[0, 1\)"),
        ({"weight_decay": -1.0}, ValueError, "`weight_decay` must be >= 0"),
        ({"label_smoothing": 1.0}, ValueError, "`label_smoothing`"),
    ],
)
def test_case_study_module_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    from cnnviz.module import CaseStudyModule

    with pytest.raises(error, match=match):
        CaseStudyModule(**kwargs)
