"""``ReceptiveFields`` with a real Trainer on CPU: the lecture's table, fields, ERF over time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cnnviz_test_helpers import case_module, make_conv1d_net, make_lenet, make_loaders, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnviz import models
from cnnviz.analysis.guard import hook_count
from cnnviz.analysis.receptive_field import (
    effective_receptive_field,
    measure_receptive_field,
    receptive_fields,
)
from cnnviz.callbacks.receptive_fields import ReceptiveFields
from cnnviz.data.shapes import ShapesDataModule
from cnnviz.store import RunStore

ROW_KEYS = {
    "name",
    "type",
    "input_shape",
    "output_shape",
    "kernel",
    "stride",
    "padding",
    "output_arithmetic",
    "weights_arithmetic",
    "params",
    "rf_size",
    "rf_jump",
}
RF_KEYS = {"size", "jump", "start", "unit", "region", "misaligned", "event", "label"}
ERF_KEYS = {"radius", "sigma", "ratio", "theoretical", "event", "label"}


def _lenet5() -> nn.Module:
    torch.manual_seed(0)
    return models.create("lenet5", in_channels=3, num_classes=9, activation="relu", pooling="max")


def test_lenet5_on_shapes_table_fields_and_erf_over_training(tmp_path, leak_check) -> None:
    net = _lenet5()
    module = case_module(net)
    check = leak_check(module)
    dm = ShapesDataModule(num_train=64, num_val=16, batch_size=16)
    cb = ReceptiveFields(num_probe=4)
    make_trainer(tmp_path, [cb]).fit(module, dm)
    check.verify()
    store = RunStore(tmp_path / "cnnviz")

    # the lecture's arithmetic, written out, for every conv and pooling layer
    (table,) = store.records("layer_table")
    assert table.meta["label"] == "start"
    rows = {r["name"]: r for r in table.meta["rows"]}
    assert list(rows) == [f"net.features.{n}" for n in ("c1", "s2", "c3", "s4", "c5")]
    assert all(set(r) >= ROW_KEYS for r in rows.values())
    expected = {  # output shape, output arithmetic, weights, params, RF size, RF jump
        "c1": ([6, 28, 28], "(32 − 5 + 2·0)/1 + 1 = 28", "5·5·3·6 + 6 = 456", 456, 5, 1),
        "s2": ([6, 14, 14], "(28 − 2 + 2·0)/2 + 1 = 14", "0", 0, 6, 2),
        "c3": ([16, 10, 10], "(14 − 5 + 2·0)/1 + 1 = 10", "5·5·6·16 + 16 = 2,416", 2416, 14, 2),
        "s4": ([16, 5, 5], "(10 − 2 + 2·0)/2 + 1 = 5", "0", 0, 16, 4),
        "c5": ([120, 1, 1], "(5 − 5 + 2·0)/1 + 1 = 1", "5·5·16·120 + 120 = 48,120", 48120, 32, 4),
    }
    for short, (shape, arithmetic, weights, params, size, jump) in expected.items():
        row = rows[f"net.features.{short}"]
        assert row["output_shape"] == shape
        assert row["output_arithmetic"] == arithmetic
        assert row["weights_arithmetic"] == weights and row["params"] == params
        assert row["rf_size"] == [size, size] and row["rf_jump"] == [jump, jump]
    assert rows["net.features.c1"]["kernel"] == [5, 5] and rows["net.features.c1"]["padding"] == [
        0,
        0,
    ]

    # one receptive_field record per layer: the centre unit's region, checked by measurement
    probe_x, _ = dm.probe(4)
    display = dm.denormalize(probe_x[:1])[0].permute(1, 2, 0).numpy()
    for short, unit in (("c1", (13, 13)), ("c3", (4, 4)), ("s4", (2, 2)), ("c5", (0, 0))):
        (rec,) = store.records("receptive_field", layer=f"net.features.{short}")
        assert set(rec.meta) >= RF_KEYS and rec.meta["misaligned"] is False
        assert tuple(rec.meta["unit"]) == unit
        measured = measure_receptive_field(net, f"features.{short}", (3, 32, 32), unit=unit)
        assert tuple(rec.meta["region"]) == measured.region  # clipped = what the unit reads
        assert rec.meta["size"] == [expected[short][4]] * 2
        np.testing.assert_allclose(store.load(rec)["region_image"], display, atol=1e-6)
    (c3,) = store.records("receptive_field", layer="net.features.c3")
    assert c3.meta["region_unclipped"] == [8, 22, 8, 22] and c3.meta["start"] == [0, 0]
    (c5,) = store.records("receptive_field", layer="net.features.c5")
    assert c5.meta["region"] == [0, 32, 0, 32]

    # the ERF at every event (<= 6 layers: all of them), the last one equals a fresh computation
    for short in expected:
        erfs = store.records("erf", layer=f"net.features.{short}")
        assert [r.meta["label"] for r in erfs] == ["start", "epoch 1", "epoch 2"]
        assert all(set(r.meta) >= ERF_KEYS for r in erfs)
    last = store.records("erf", layer="net.features.c3")[-1]
    fresh = effective_receptive_field(module, "net.features.c3", probe_x, unit=(4, 4))
    np.testing.assert_allclose(store.load(last)["map"], fresh.map.numpy(), rtol=1e-5, atol=1e-8)
    assert last.meta["theoretical"] == [8, 22, 8, 22] == last.meta["region"]
    assert last.meta["radius"] == pytest.approx(fresh.radius)
    assert last.meta["ratio"] == pytest.approx(fresh.effective_area / 14**2)  # share <= 1
    assert hook_count(module) == 0


def _setup(tmp_path, module: nn.Module, cb: ReceptiveFields) -> ReceptiveFields:
    trainer = make_trainer(tmp_path)
    try:
        cb.setup(trainer, module, "fit")
    finally:  # set up without a fit: give the store's writer lease back
        if cb.session is not None:
            cb.session.finish(trainer, cb, error=None)
    return cb


def test_erf_layers_default_to_six_evenly_spaced_and_can_be_chosen(tmp_path) -> None:
    deep = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(8)], nn.Flatten())
    module = case_module(deep)
    cb = _setup(tmp_path, module, ReceptiveFields())
    assert cb._erf_names == [f"net.{i}" for i in (0, 1, 3, 4, 6, 7)]  # last always included
    cb = _setup(tmp_path, module, ReceptiveFields(erf_layers=["net.2", "net.5"]))
    assert cb._erf_names == ["net.2", "net.5"]
    assert _setup(tmp_path, module, ReceptiveFields(erf=False))._erf_names == []
    with pytest.raises(ValueError, match=r"unknown layer 'net\.9'.*net\.0, net\.1"):
        _setup(tmp_path, module, ReceptiveFields(erf_layers="net.9"))
    with pytest.raises(ValueError, match=r"`unit` names layer.*net\.9"):
        _setup(tmp_path, module, ReceptiveFields(unit={"net.9": (0, 0)}))


def test_unit_argument_and_its_errors(tmp_path) -> None:
    module = case_module(make_lenet())
    train, val = make_loaders()
    cb = ReceptiveFields(layers="net.3", unit={"net.3": (1, 2)}, erf=False)
    make_trainer(tmp_path / "a", [cb], max_epochs=1).fit(module, train, val)
    (rec,) = RunStore(tmp_path / "a" / "cnnviz").records("receptive_field")
    rf = receptive_fields(module, (3, 16, 16))["net.3"]
    assert rec.meta["unit"] == [1, 2] and tuple(rec.meta["region"]) == rf.region(1, 2)
    bad = ReceptiveFields(layers="net.3", unit=(9, 9))
    with pytest.raises(ValueError, match=r"`unit` \(9, 9\) is outside layer 'net.3'"):
        make_trainer(tmp_path / "b", [bad], max_epochs=1).fit(case_module(make_lenet()), train, val)


class TokenNet(nn.Module):
    """A sentence CNN on token ids ``[N, 12]``: embedding, conv, global max pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(30, 8)
        self.conv = nn.Conv1d(8, 6, 3)
        self.pool = nn.AdaptiveMaxPool1d(1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(self.embed(x).transpose(1, 2)))
        return self.head(self.pool(h).flatten(1))


def _token_loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 30, (40, 12), generator=g), torch.randint(0, 3, (40,), generator=g)
    return (
        DataLoader(TensorDataset(x[:32], y[:32]), 8),
        DataLoader(TensorDataset(x[32:], y[32:]), 8),
    )


def test_one_dimensional_models_get_one_dimensional_fields(tmp_path) -> None:
    train, val = make_loaders(shape=(4, 20), num_classes=3)
    make_trainer(tmp_path / "seq", [ReceptiveFields(num_probe=3)], max_epochs=1).fit(
        case_module(make_conv1d_net()), train, val
    )
    store = RunStore(tmp_path / "seq" / "cnnviz")
    rec = store.records("receptive_field", layer="net.3")[0]
    assert rec.file is None  # no image to draw a 1-D region on
    assert rec.meta["size"] == [8] and rec.meta["jump"] == [2] and len(rec.meta["region"]) == 2
    erf = store.records("erf", layer="net.3")[-1]
    assert store.load(erf)["map"].shape == (1, 20)
    lo, hi = rec.meta["region"]
    assert erf.meta["theoretical"] == [0, 1, lo, hi]
    assert [r["output_arithmetic"] for r in store.records("layer_table")[0].meta["rows"]][:2] == [
        "(20 − 3 + 2·0)/1 + 1 = 18",
        "(18 − 2 + 2·0)/2 + 1 = 9",
    ]

    train, val = _token_loaders()
    make_trainer(tmp_path / "tok", [ReceptiveFields(num_probe=3)], max_epochs=1).fit(
        case_module(TokenNet()), train, val
    )
    store = RunStore(tmp_path / "tok" / "cnnviz")
    conv = store.records("receptive_field", layer="net.conv")[0]
    assert conv.meta["size"] == [3] and conv.meta["unit"] == [4]
    erf = store.load(store.records("erf", layer="net.conv")[-1])["map"]
    assert erf.shape == (1, 12)
    assert np.flatnonzero(erf[0]).tolist() == [4, 5, 6]  # exactly the 3 tokens unit 4 sees


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so no analytical fields."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_lenet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 100:  # never true; a Proxy cannot be a bool
            x = x * 0
        return self.net(x)


def test_untraceable_model_warns_once_and_records_what_it_can(tmp_path) -> None:
    train, val = make_loaders()
    module = case_module(Untraceable())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [ReceptiveFields(num_probe=2)], max_epochs=2).fit(module, train, val)
    mine = [w for w in caught if "no theoretical receptive fields" in str(w.message)]
    assert len(mine) == 1 and "could not trace" in str(mine[0].message)
    store = RunStore(tmp_path / "cnnviz")
    assert store.run_info()["status"] == "finished"
    rows = store.records("layer_table")[0].meta["rows"]
    assert [r["name"] for r in rows] == ["net.net.0", "net.net.2", "net.net.3", "net.net.5"]
    assert all(r["rf_size"] is None for r in rows) and rows[0]["params"] == 456
    assert store.records("receptive_field") == []
    erfs = store.records("erf", layer="net.net.3")
    assert len(erfs) == 3 and erfs[-1].meta["theoretical"] is None
    assert erfs[-1].meta["ratio"] is None and "no theoretical" in erfs[-1].meta["note"]
    assert hook_count(module) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_probe": 0}, ValueError, "`num_probe`"),
        ({"num_probe": 2.0}, TypeError, "`num_probe`"),
        ({"erf": "yes"}, TypeError, "`erf`"),
        ({"erf_layers": 3}, TypeError, "`erf_layers`"),
        ({"unit": 3}, TypeError, "`unit`"),
        ({"unit": (1, -1)}, TypeError, "`unit`"),
        ({"unit": {"net.0": "a"}}, TypeError, "`unit`"),
        ({"probe": [1, 2]}, TypeError, "`probe`"),
        ({"every_n_epochs": -1}, ValueError, "`every_n_epochs`"),
        ({"every_n_epochs": 0, "log_on_start": False}, ValueError, "nothing would ever"),
    ],
)
def test_receptive_fields_invalid_arguments(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ReceptiveFields(**kwargs)
