"""Record builders shared by the callbacks and ``cnnviz inspect``: one rule each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnviz import models
from cnnviz.analysis.capture import LayerCapture
from cnnviz.analysis.layer_table import layer_table
from cnnviz.analysis.receptive_field import effective_receptive_field, receptive_fields
from cnnviz.recording import (
    activations_record,
    attributions_record,
    centre_unit,
    erf_record,
    error_record,
    filters_record,
    layer_table_record,
    predictions_record,
    probe_record,
    receptive_field_record,
    table_row,
)
from cnnviz.store import RunStore, StoreReader


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("lenet5", num_classes=9, in_channels=3, input_size=32).eval()


def test_table_rows_read_as_the_lecture_writes_them(lenet: nn.Module) -> None:
    rows = layer_table(lenet, (3, 32, 32), receptive_field=False)
    fields = receptive_fields(lenet, (3, 32, 32))
    c1 = table_row(rows[0], fields[rows[0].name])
    assert c1.name == "features.c1" and c1.type == "Conv2d" and c1.kind == "conv"
    assert c1.input_shape == (3, 32, 32) and c1.output_shape == (6, 28, 28)
    assert c1.kernel == (5, 5) and c1.stride == (1, 1) and c1.padding == (0, 0)
    assert c1.params == 456 and "456" in (c1.weights_arithmetic or "")
    assert c1.rf_size == (5, 5) and c1.rf_jump == (1, 1) and c1.rf_start == (0, 0)
    rec = layer_table_record(rows, fields)
    assert [r.name for r in rec.rows] == [r.name for r in rows]


def test_one_centre_unit_for_fields_the_erf_and_inspect(lenet: nn.Module) -> None:
    fields = receptive_fields(lenet, (3, 32, 32))
    probe = torch.randn(2, 3, 32, 32)
    for name, rf in fields.items():
        unit = centre_unit(rf)
        assert unit == centre_unit(list(rf.output_spatial)), name  # no field: the same unit
        assert effective_receptive_field(lenet, name, probe).unit == unit, name
    assert centre_unit([28, 28]) == (13, 13)  # even sizes: the lower of the two middle units
    assert centre_unit([5]) == (2,)


def test_filters_record(lenet: nn.Module) -> None:
    conv = lenet.get_submodule("features.c1")
    rec = filters_record("features.c1", conv, max_channels=4, max_in_channels=2, rgb=True)
    assert rec.weight.shape == (4, 2, 5, 5) and rec.norms.shape == (6,)
    assert rec.full_shape == (6, 3, 5, 5) and rec.channels == (0, 1, 2, 3)
    assert rec.bias is True and rec.layer_type == "Conv2d" and rec.rgb
    rec.weight[0] = 99.0  # a copy, never the live parameter
    assert float(conv.weight.detach()[0, 0, 0, 0]) != 99.0
    again = filters_record(
        "features.c1",
        conv,
        max_channels=4,
        max_in_channels=2,
        previous=rec.weight.copy(),
        grad=(torch.zeros(4, 2, 5, 5), torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])),
    )
    assert again.dead == (0,)  # a zero gradient
    assert 1 in again.unchanged and 0 not in again.unchanged
    with pytest.raises(ValueError, match="has no conv weight"):
        filters_record("pool", nn.MaxPool2d(2))


def test_activations_predictions_and_probe(lenet: nn.Module, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 32, 32)
    names = ["features.c1", "features.s2"]
    cap = LayerCapture(lenet, names, max_channels=4, max_size=8)
    with cap:
        logits = lenet(x)
    store = RunStore(tmp_path)
    rec = activations_record(
        cap.results["features.c1"], read_from=cap.sources["features.c1"], channels=[3, 1]
    )
    assert rec.maps.shape[:2] == (2, 2) and rec.channels.tolist() == [3, 1]
    assert rec.shape == (2, 6, 28, 28) and rec.mean.shape == (6,)
    with pytest.raises(ValueError, match=r"`channels` \[5\] were not captured"):
        activations_record(cap.results["features.c1"], channels=[5])
    store.put(rec, layer="features.c1")
    pred = predictions_record(logits, class_names=list("abcdefghi"))
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, rtol=1e-5)
    store.put(pred)
    store.put(probe_record(x, y=torch.tensor([1, 2]), class_names=["a"] * 9))
    reader = StoreReader(tmp_path)
    assert [r.KIND for r in reader.records] == ["activations", "predictions", "probe"]
    assert reader.notes == []


def test_fields_erf_attributions_and_errors(lenet: nn.Module, tmp_path: Path) -> None:
    fields = receptive_fields(lenet, (3, 32, 32))
    store = RunStore(tmp_path)
    rf = receptive_field_record(fields["features.c1"], image=np.zeros((32, 32, 3)))
    assert rf.unit == (13, 13) and rf.region == (13, 18, 13, 18)
    store.put(rf, layer="features.c1")
    res = effective_receptive_field(lenet, "features.c1", torch.randn(2, 3, 32, 32))
    erf = erf_record(res)
    assert erf.map.shape == (32, 32) and erf.unit == (13, 13)
    store.put(erf, layer="features.c1")

    class Result:  # the fields of AttributionResult that the builder reads
        attributions = torch.ones(2, 3, 4, 4)
        targets = torch.tensor([1, 0])
        note = "all positive"
        layer = None

    att = attributions_record({"saliency": Result(), "deeplift": "reused module"})
    assert att.maps["saliency"].shape == (2, 4, 4) and float(att.maps["saliency"][0, 0, 0]) == 3
    assert att.unavailable == {"deeplift": "reused module"} and att.targets == (1, 0)
    store.put(att)
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as err:
        e = error_record("Attributions", err, at="epoch 2")
    assert e.exception == "RuntimeError" and "CUDA out of memory" in e.traceback
    store.put(e, layer="features.c1")
    assert StoreReader(tmp_path).notes == []
