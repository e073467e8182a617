"""``ActivationMaps`` with a real Trainer on CPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import case_module, make_bn_net, make_lenet, make_loaders, make_trainer

from cnnviz.callbacks import ActivationMaps, FilterWeights
from cnnviz.figures.activations import activation_stats_figure, activations_figure
from cnnviz.store import RunStore


def _expected(net: torch.nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the LeNet-like model's layers output (conv read after its ReLU), in eval mode."""
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        relu0 = F.relu(net[0](x))
        pool2 = net[2](relu0)
        relu3 = F.relu(net[3](pool2))
        pool5 = net[5](relu3)
        logits = net(x)
    return {"net.0": relu0, "net.2": pool2, "net.3": relu3, "net.5": pool5, "logits": logits}


def test_records_per_layer_per_event_match_a_manual_forward(tmp_path, leak_check) -> None:
    net = make_lenet()
    module = case_module(net)
    check = leak_check(module)
    train, val = make_loaders()
    probe_x, probe_y = val.dataset.tensors[0][:5], val.dataset.tensors[1][:5]
    at_start = _expected(net, probe_x)
    cb = ActivationMaps(num_probe=5)
    make_trainer(tmp_path, [cb]).fit(module, train, val)
    check.verify()
    at_end = _expected(net, probe_x)
    store = RunStore(tmp_path / "cnnviz")
    (probe,) = store.records("probe")
    arrays = store.load(probe)
    np.testing.assert_array_equal(arrays["x"], probe_x.numpy())  # the validation data
    np.testing.assert_array_equal(arrays["y"], probe_y.numpy())
    assert arrays["display"].shape == (5, 16, 16, 3)
    assert arrays["display"].min() >= 0 and arrays["display"].max() <= 1
    for name, source in (("net.0", "net.1"), ("net.2", "net.2"), ("net.3", "net.4")):
        records = store.records("activations", layer=name)
        assert [r.meta["label"] for r in records] == ["start", "epoch 1", "epoch 2"]
        assert [r.step for r in records] == [0, 3, 6]
        assert all(r.meta["read_from"] == source for r in records)
        first, last = store.load(records[0]), store.load(records[-1])
        for stored, expected in ((first, at_start[name]), (last, at_end[name])):
            assert stored["maps"].dtype == np.float32  # whatever the model's precision
            assert stored["maps"].shape == tuple(expected.shape)
            np.testing.assert_allclose(stored["maps"], expected.numpy(), rtol=1e-3, atol=1e-3)
            per_channel = expected.transpose(0, 1).flatten(1)
            np.testing.assert_allclose(stored["mean"], per_channel.mean(1), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(stored["max"], per_channel.amax(1).numpy())
            np.testing.assert_allclose(
                stored["zero_fraction"], (per_channel == 0).float().mean(1), rtol=1e-6
            )
        assert records[-1].meta["shape"] == list(at_end[name].shape)
        labels = [r.meta["label"] for r in records]
        history = [store.load(r) for r in records]
        fig = activations_figure([h["maps"] for h in history], labels, layer=name)
        assert len(fig.data) == 3
        assert [s["label"] for s in fig.layout.sliders[0].steps] == labels
        stats = activation_stats_figure(history, labels, layer=name)
        assert len(stats.data) == 9
    predictions = store.records("predictions")
    assert len(predictions) == 3
    probs = store.load(predictions[-1])["probs"]
    np.testing.assert_allclose(probs, torch.softmax(at_end["logits"], 1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_every_n_steps_cadence(tmp_path) -> None:
    train, val = make_loaders(n_train=80)
    cb = ActivationMaps(every_n_epochs=None, every_n_steps=2, layers="net.2", num_probe=2)
    make_trainer(tmp_path, [cb], limit_train_batches=3).fit(case_module(make_lenet()), train, val)
    records = RunStore(tmp_path / "cnnviz").records("activations")
    assert [r.layer for r in records] == ["net.2"] * 4
    assert [r.meta["label"] for r in records] == ["start", "step 2", "step 4", "step 6"]


@pytest.mark.parametrize(
    ("probe", "match"),
    [
        (torch.randn(4, 3, 10, 10), r"cannot run on the probe input Tensor\(4, 3, 10, 10\)"),
        (torch.randn(4, 1, 16, 16), r"cannot run on the probe input Tensor\(4, 1, 16, 16\)"),
    ],
)
def test_wrong_probe_shape_is_a_clear_error(tmp_path, leak_check, probe, match) -> None:
    module = case_module(make_lenet())
    module.net[2].eval()  # mixed modes
    check = leak_check(module)
    train, val = make_loaders()
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, [ActivationMaps(probe=probe)]).fit(module, train, val)
    check.verify()
    run = RunStore(tmp_path / "cnnviz").run_info()
    assert run["status"] == "failed" and "cannot run on the probe" in run["error"]


def test_wrong_probe_shape_turns_the_callback_off_and_training_goes_on(tmp_path) -> None:
    module = case_module(make_lenet())
    train, val = make_loaders()
    cb = ActivationMaps(probe=torch.randn(4, 3, 10, 10), strict=False)
    trainer = make_trainer(tmp_path, [cb, FilterWeights(strict=False)])
    with pytest.warns(UserWarning, match=r"ActivationMaps is off for this fit: .*probe input"):
        trainer.fit(module, train, val)
    assert trainer.state.finished and trainer.current_epoch == 2
    store = RunStore(tmp_path / "cnnviz")
    assert store.run_info()["status"] == "finished"
    assert not store.records("activations")
    assert len(store.records("filters")) == 2 * 3  # the other callback went on
    (error,) = store.records("error")
    assert error.meta["callback"] == "ActivationMaps" and "probe input" in error.meta["message"]


def test_probe_checked_against_the_declared_input_shape(tmp_path) -> None:
    from cnnviz import models

    module = case_module(models.create("lenet5", in_channels=3, num_classes=4, input_size=32))
    train, val = make_loaders((3, 32, 32))
    cb = ActivationMaps(probe=torch.randn(2, 3, 28, 28))
    with pytest.raises(
        ValueError,
        match=r"cannot run on the probe input.*expects input of shape \(N, 3, 32, 32\); "
        r"got \(2, 3, 28, 28\)",
    ):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(module, train, val)


def test_explicit_probe_and_strongest_channels(tmp_path) -> None:
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(6, 3, 16, 16, generator=g), torch.arange(6) % 4
    cb = ActivationMaps(probe=(x, y), channel_select="strongest", max_channels=3, layers="net.3")
    train, val = make_loaders()
    make_trainer(tmp_path, [cb]).fit(case_module(make_lenet()), train, val)
    store = RunStore(tmp_path / "cnnviz")
    np.testing.assert_array_equal(store.load(store.records("probe")[0])["x"], x.numpy())
    records = store.records("activations", layer="net.3")
    history = [store.load(r) for r in records]
    chosen = sorted(np.argsort(-history[0]["mean"], kind="stable")[:3].tolist())
    assert all(h["channels"].tolist() == chosen for h in history)  # fixed after the first event
    assert all(h["maps"].shape == (6, 3, 4, 4) for h in history)
    assert cb.state_dict()["channels"] == {"net.3": chosen}


def test_pre_activation_and_layer_selection(tmp_path) -> None:
    train, val = make_loaders()
    cb = ActivationMaps(layers=["net.[04]"], post_activation=False, num_probe=4, max_size=4)
    make_trainer(tmp_path, [cb], max_epochs=1).fit(case_module(make_bn_net()), train, val)
    store = RunStore(tmp_path / "cnnviz")
    assert {r.layer for r in store.records("activations")} == {"net.0", "net.4"}
    rec = store.records("activations", layer="net.0")[-1]
    assert rec.meta["read_from"] == "net.0"
    arrays = store.load(rec)
    assert arrays["maps"].shape == (4, 8, 4, 4)  # 16x16 area-downsampled to 4x4
    assert arrays["min"].min() < 0  # the raw conv output, before BatchNorm and ReLU


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"probe": [1, 2]}, TypeError, "`probe` must be a tensor"),
        ({"probe": ()}, TypeError, "`probe` must be a tensor"),
        ({"probe": (torch.zeros(2, 3), torch.zeros(2), 1)}, TypeError, "`probe`"),
        ({"probe": (torch.zeros(2, 3), [0, 1])}, TypeError, "`probe`"),
        ({"probe": torch.zeros(3)}, ValueError, r"`probe` must be .* N >= 1; got inputs \(3,\)"),
        ({"probe": torch.zeros(0, 3)}, ValueError, "N >= 1"),
        (
            {"probe": (torch.zeros(2, 3), torch.zeros(3))},
            ValueError,
            r"labels must have shape \(2,\)",
        ),
        ({"num_probe": 0}, ValueError, "`num_probe` must be a positive int"),
        ({"num_probe": 2.0}, TypeError, "`num_probe` must be a positive int"),
        ({"max_channels": 0}, ValueError, "`max_channels` must be a positive int or None"),
        ({"max_channels": "all"}, TypeError, "`max_channels`"),
        (
            {"channel_select": "random"},
            ValueError,
            "`channel_select` must be 'first' or 'strongest'",
        ),
        ({"max_size": 0}, ValueError, "`max_size` must be a positive int or None"),
        ({"max_size": False}, TypeError, "`max_size`"),
        ({"every_n_epochs": -1}, ValueError, "ActivationMaps: `every_n_epochs` must be >= 0"),
        ({"layers": {"net.0"}}, TypeError, "ActivationMaps: `layers` must be a name"),
    ],
)
def test_activation_maps_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ActivationMaps(**kwargs)


def test_a_fit_without_report_callback_still_writes_the_report(tmp_path, monkeypatch) -> None:
    """The last cnnviz callback builds report.html at fit end when no Report is attached."""
    monkeypatch.setenv("CNNVIZ_AUTO_REPORT", "1")
    train, val = make_loaders()
    fw, am = (
        FilterWeights(store_dir=tmp_path / "run" / "cnnviz"),
        ActivationMaps(store_dir=tmp_path / "run" / "cnnviz"),
    )
    make_trainer(tmp_path, [fw, am], max_epochs=1).fit(case_module(make_lenet()), train, val)
    report = tmp_path / "run" / "report.html"
    assert report.exists() and report.stat().st_size > 100_000
    assert "net.0" in report.read_text()
