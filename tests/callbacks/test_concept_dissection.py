"""``ConceptDissection`` in a real fit: units labelled per event, and the randomised control."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cnnviz_test_helpers import make_trainer

from cnnviz.analysis.dissect import Dissection
from cnnviz.callbacks import ConceptDissection
from cnnviz.data import ShapesDataModule
from cnnviz.module import CaseStudyModule
from cnnviz.store import RunStore


def _module(dm: ShapesDataModule) -> CaseStudyModule:
    torch.manual_seed(0)
    return CaseStudyModule(
        "lenet5",
        model_kwargs={"activation": "relu", "pooling": "max"},
        data_info=dm.model_kwargs,
        optimizer="adam",
        lr=3e-3,
        weight_decay=0.0,
        scheduler="none",
    )


def test_dissection_per_event_and_a_randomised_control(tmp_path) -> None:
    dm = ShapesDataModule(image_size=32, num_train=512, num_val=128, batch_size=64)
    cb = ConceptDissection(layers=["net.features.c3", "net.features.c5"], num_images=96)
    make_trainer(tmp_path, [cb], max_epochs=2).fit(_module(dm), datamodule=dm)
    store = RunStore(tmp_path / "cnnviz")
    for layer in ("net.features.c3", "net.features.c5"):
        records = store.records("dissection", layer=layer)
        labels = [r.meta["label"] for r in records]
        assert labels == ["start", "epoch 1", "epoch 2", "epoch 2"]
        assert [r.meta["control"] for r in records] == ["", "", "", "reinit"]
        arrays = store.load(records[-2])
        c, k = arrays["iou"].shape
        assert k == len(records[-2].meta["concepts"]) and c == len(arrays["best"])
        names = [x["name"] for x in records[-2].meta["concepts"]]
        assert {"edge", "interior", "background", "red"} <= set(names)
        # the record rebuilds the analysis result, and its summaries agree
        result = Dissection.from_record(arrays, {**records[-2].meta, "layer": layer})
        assert result.labelled.sum() == records[-2].meta["labelled_units"]
        np.testing.assert_allclose(result.best_iou, arrays["best_iou"])
    assert store.records("error") == []


def test_data_without_concept_masks_turns_it_off(tmp_path) -> None:
    from cnnviz_test_helpers import case_module, make_lenet, make_loaders

    train, val = make_loaders()
    cb = ConceptDissection(strict=False)
    with pytest.warns(UserWarning, match=r"ConceptDissection is off for this fit: .*concepts="):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(case_module(make_lenet()), train, val)
    assert RunStore(tmp_path / "cnnviz").records("dissection") == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`quantile` must be a number > 0"):
        ConceptDissection(quantile=0)
    with pytest.raises(ValueError, match=r"`control` must be one of 'reinit', 'permute'"):
        ConceptDissection(control="shuffle")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`concepts` must be a ConceptSource"):
        ConceptDissection(concepts=[1, 2])
