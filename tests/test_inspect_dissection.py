"""``cnnviz inspect`` dissects the conv layers: on Shapes, or on a user's images and label maps."""

from __future__ import annotations

import numpy as np
import torch

from cnnviz.inspect import inspect_model
from cnnviz.store import RunStore


def test_inspect_dissects_shapes_with_a_randomised_control(tmp_path) -> None:
    inspect_model("lenet5", run_dir=tmp_path / "run", methods=[], dissect=64, progress=False)
    store = RunStore(tmp_path / "run" / "cnnviz")
    records = store.records("dissection")
    layers = {r.layer for r in records}
    assert layers == {"features.c1", "features.c3", "features.c5"}
    for layer in layers:
        mine = store.records("dissection", layer=layer)
        assert [r.meta["control"] for r in mine] == ["", "reinit"]
        assert mine[0].meta["images"] == 64
    assert (tmp_path / "run" / "report.html").is_file()


def test_inspect_dissects_on_label_maps(tmp_path) -> None:
    from PIL import Image

    images, maps = [], []
    for i in range(3):
        rgb = np.zeros((32, 32, 3), np.uint8)
        label = np.zeros((32, 32), np.uint8)
        rgb[8:24, 4 + i : 20 + i] = (220, 30, 30)  # a red square: label 1
        label[8:24, 4 + i : 20 + i] = 1
        Image.fromarray(rgb).save(tmp_path / f"im{i}.png")
        Image.fromarray(label).save(tmp_path / f"lab{i}.png")
        images.append(tmp_path / f"im{i}.png")
        maps.append(tmp_path / f"lab{i}.png")
    torch.manual_seed(0)
    inspect_model(
        "lenet5",
        images=images,
        label_maps=maps,
        concept_names=["background", "square"],
        run_dir=tmp_path / "run",
        methods=[],
        progress=False,
    )
    store = RunStore(tmp_path / "run" / "cnnviz")
    rec = store.records("dissection", layer="features.c1")[0]
    assert [c["name"] for c in rec.meta["concepts"]] == ["background", "square"]
    assert rec.meta["images"] == 3
    iou = store.load(rec)["iou"]
    assert iou.shape[1] == 2 and np.isfinite(iou).all()
