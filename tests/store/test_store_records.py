"""Typed records: every kind through the writer and the reader, lazy checked arrays, old lines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cnnviz.store import (
    KINDS,
    MANIFEST,
    ActivationsRecord,
    AttributionChecksRecord,
    AttributionsRecord,
    BudgetRecord,
    ConceptInfo,
    DissectionRecord,
    ErfRecord,
    ErrorRecord,
    FeatvisRecord,
    FiltersRecord,
    LayerTableRecord,
    MetricsRecord,
    PredictionsRecord,
    ProbeRecord,
    Randomisation,
    ReceptiveFieldRecord,
    ResumeRecord,
    RunStore,
    StoreDataError,
    StoreReader,
    StoreWarning,
    TableRow,
    TopkRecord,
)
from cnnviz.store.records import meta_fields
from cnnviz.store.schema import array_specs

rng = np.random.default_rng(0)

EXAMPLES: dict[str, tuple[Any, str | None]] = {
    "metrics": (MetricsRecord(values={"loss": 0.5, "acc": float("nan")}), None),
    "filters": (
        FiltersRecord(
            weight=torch.randn(4, 3, 3, 3, dtype=torch.bfloat16),
            norms=rng.random(8),
            grad=rng.random((4, 3, 3, 3)).astype(np.float16),
            grad_norms=rng.random(8),
            full_shape=(8, 3, 3, 3),
            channels=(0, 1, 2, 3),
            rgb=True,
            dead=(1,),
            unchanged=(2, 3),
            nonfinite=0,
            layer_type="Conv2d",
            bias=False,
        ),
        "features.0",
    ),
    "probe": (
        ProbeRecord(
            x=np.arange(12).reshape(2, 6),  # token ids: ints stay ints
            y=np.array([1, 0]),
            masks=np.ones((2, 3, 3), bool),
            class_names=("a", "b"),
            shape=(2, 6),
        ),
        None,
    ),
    "predictions": (PredictionsRecord(probs=rng.random((2, 3)), class_names=None), None),
    "activations": (
        ActivationsRecord(
            maps=rng.random((2, 3, 4)).astype(np.float16),  # 1-D maps [N, K, L]
            channels=np.array([0, 2, 5]),
            mean=rng.random(6),
            shape=(2, 6, 9),
            read_from="features.1",
            nonfinite=0,
            layer_type="Conv1d",
        ),
        "features.0",
    ),
    "layer_table": (
        LayerTableRecord(
            rows=(
                TableRow(
                    name="c1",
                    type="Conv2d",
                    kind="conv",
                    input_shape=(3, 32, 32),
                    output_shape=(6, 28, 28),
                    kernel=(5, 5),
                    stride=(1, 1),
                    padding=(0, (1, 2)),
                    dilation=(1, 1),
                    output_arithmetic="(32 − 5 + 2·0)/1 + 1 = 28",
                    weights_arithmetic="5·5·3·6 + 6 = 456",
                    params=456,
                    fits=True,
                    rf_size=(5, 5),
                    rf_jump=(1, 1),
                    rf_start=(0, 0),
                ),
            )
        ),
        None,
    ),
    "receptive_field": (
        ReceptiveFieldRecord(
            region_image=rng.random((8, 8, 3)),
            size=(5, 5),
            jump=(1, 1),
            start=(0, 0),
            padding=(0, 0),
            unit=(2, 2),
            region=(0, 5, 0, 5),
            region_unclipped=(0, 5, 0, 5),
            misaligned=True,
            misaligned_at=("layer1.0:add",),
            exact=False,
            layer_type="Conv2d",
            output_shape=(6, 4, 4),
        ),
        "c1",
    ),
    "erf": (
        ErfRecord(
            map=rng.random((8, 8)),
            radius=2.5,
            sigma=(1.0, float("nan")),
            ratio=None,
            centroid=(3.5, 3.5),
            unit=(1, 1),
            num_images=4,
            note="no theoretical field",
        ),
        "c1",
    ),
    "topk": (
        TopkRecord(
            values=rng.random((2, 3)),
            samples=np.array([[0, 1, -1], [2, 3, 4]]),
            positions=np.zeros((2, 3, 2), np.int64),
            patches=rng.random((2, 3, 5, 5, 3)),
            channels=(0, 7),
            k=3,
            num_channels=16,
            patch_scale=0.5,
        ),
        "c1",
    ),
    "attributions": (
        AttributionsRecord(
            maps={"saliency": rng.random((2, 4, 4)), "grad_cam": rng.random((2, 4, 4))},
            methods=("saliency", "grad_cam"),
            targets=(1, 0),
            notes={"saliency": "absolute values"},
            unavailable={"deeplift": "reused module"},
            layers={"grad_cam": "c1"},
        ),
        None,
    ),
    "attribution_checks": (
        AttributionChecksRecord(
            randomisation=Randomisation(
                method="saliency", layers=("fc", "c1"), spearman=(0.9, 0.1), spearman_signed=None
            ),
            mask_share={"saliency": (0.7, 0.3)},
        ),
        None,
    ),
    "featvis": (
        FeatvisRecord(
            images=rng.random((2, 8, 8, 3)),
            activations=rng.random(2),
            channels=(3, 4),
            objective="mean",
            param="fft",
            steps=64,
            seconds=1.5,
        ),
        "c1",
    ),
    "dissection": (
        DissectionRecord(
            threshold=rng.random(3),
            top_fraction=np.full(3, 0.005),
            iou=rng.random((3, 2)),
            intersection=np.arange(6).reshape(3, 2),
            region=np.array([10, 12, 9]),
            concept_area=np.array([40, 60]),
            best=np.array([0, 1, 1]),
            best_iou=rng.random(3),
            runner_up=np.array([1, 0, 0]),
            runner_up_iou=rng.random(3),
            labelled=np.array([True, False, True]),
            concepts=(ConceptInfo("ring", "object"), ConceptInfo("edge", "part")),
            pixels=1024,
            images=4,
            mask_size=(16, 16),
            map_size=(4, 4),
            bins=1024,
            passes=1,
            stage="activation",
            read_path=("bn", "relu"),
            labelled_units=2,
            detectors={"object": ("ring",)},
            detector_counts={"object": 1, "part": 0},
        ),
        "c1",
    ),
    "error": (
        ErrorRecord(
            callback="Attributions",
            exception="RuntimeError",
            message="CUDA out of memory",
            at="epoch 3",
            traceback="Traceback ...",
        ),
        "c1",
    ),
    "budget": (
        BudgetRecord(
            callback="ActivationMaps",
            decisions=("every 2nd epoch", "8 of 64 channels"),
            settings={"every_n_epochs": 1, "max_channels": None},
        ),
        None,
    ),
    "resume": (ResumeRecord(previous_run=None, checkpoint="epoch=1.ckpt"), None),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (np.isnan(a) and np.isnan(b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def test_every_kind_has_an_example() -> None:
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_round_trips(kind: str, tmp_path: Path) -> None:
    record, layer = EXAMPLES[kind]
    store = RunStore(tmp_path).open_writer("run-1")
    written = store.put(record, writer="w", layer=layer, epoch=2, step=30, event="epoch")
    store.close()
    assert written.id and written.run == "run-1" and written.label == "epoch 3"
    reader = StoreReader(tmp_path)
    assert reader.notes == []
    (back,) = reader.read(type(record))
    assert back.id == written.id and back.layer == layer and back.step == 30
    for f in meta_fields(type(record)):
        assert _same(getattr(back, f.name), getattr(written, f.name)), f.name
    for fname, spec in array_specs(type(record)):
        want, got = getattr(record, fname), getattr(back, fname)
        if spec.name == "*":
            assert set(got) == set(want)
            pairs = [(np.asarray(want[k]), got[k]) for k in want]
        else:
            pairs = [] if want is None else [(want, got)]
            assert (want is None) == (got is None), fname
        for w, g in pairs:
            w = w.float().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
            assert g.shape == w.shape
            if w.dtype.kind == "f":
                assert g.dtype == np.float32  # every floating array is stored as float32
                np.testing.assert_allclose(g, w.astype(np.float32))
            else:
                np.testing.assert_array_equal(g, w)


def test_arrays_load_when_used_and_are_checked_then(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.put(EXAMPLES["erf"][0], layer="c1")
    reader = StoreReader(tmp_path, check_arrays=False)
    (rec,) = reader.read(ErfRecord)
    assert rec.array_names() == ["map"]
    (tmp_path / rec._h().file).write_bytes(b"garbage")
    with pytest.warns(StoreWarning, match=r"is not an \.npz file"), pytest.raises(StoreDataError):
        rec.map  # noqa: B018
    assert any("not an .npz file" in n.text for n in reader.notes)


def test_lines_of_the_first_format_are_read(tmp_path: Path) -> None:
    """Stores written before typed records: ``source``, and event/label inside ``meta``."""
    np.savez(tmp_path / "w.npz", weight=np.ones((2, 1, 3, 3)), norms=np.ones(2))
    (tmp_path / "arrays" / "filters").mkdir(parents=True)
    (tmp_path / "w.npz").rename(tmp_path / "arrays" / "filters" / "old.npz")
    line = {
        "id": "old",
        "kind": "filters",
        "source": "FilterWeights{}",
        "layer": "features.0",
        "epoch": 1,
        "step": 20,
        "file": "arrays/filters/old.npz",
        "meta": {"event": "epoch", "label": "epoch 2", "full_shape": [2, 1, 3, 3], "old": 1},
        "time": 1.0,
    }
    (tmp_path / MANIFEST).write_text(json.dumps(line) + "\n")
    (rec,) = StoreReader(tmp_path).read(FiltersRecord)
    assert (rec.writer, rec.label, rec.run, rec._h().segment) == (
        "FilterWeights{}",
        "epoch 2",
        None,
        0,
    )
    assert rec.full_shape == (2, 1, 3, 3) and rec.weight.dtype == np.float32
    assert RunStore(tmp_path).records()[0].meta["label"] == "epoch 2"


def test_put_checks_the_record_and_its_header(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match=r"`record` must be a record of cnnviz\.store\.records"):
        store.put({"kind": "filters"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ErfRecord: `layer` is required"):
        store.put(EXAMPLES["erf"][0])
    with pytest.raises(ValueError, match=r"`event` must be one of start, epoch, step"):
        store.put(EXAMPLES["resume"][0], event="resume")
    bad = dataclasses.replace(EXAMPLES["topk"][0], channels=("a",))
    with pytest.raises(ValueError, match=r"TopkRecord: `channels\[0\]` must be an int"):
        store.put(bad, layer="c1")
    with pytest.raises(ValueError, match=r"`rows\[0\].fits` must be true or false"):
        store.put(
            LayerTableRecord(rows=({"name": "c", "fits": "yes"},))  # type: ignore[arg-type]
        )
    assert store.records() == []


def test_put_async_validates_now_and_writes_in_order(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    t = torch.ones(2, 2)
    futures = [store.put_async(ErfRecord(map=t * i), layer=f"l{i}", step=i) for i in range(3)]
    t.zero_()  # the tensor was copied when submitted
    with pytest.raises(ValueError, match="`map` must have 2 dimensions"):
        store.put_async(ErfRecord(map=torch.ones(3)), layer="x")
    with pytest.raises(TypeError, match="unexpected header fields"):
        store.put_async(ErfRecord(map=t), layer="x", source="y")
    records = store.read(ErfRecord)
    assert [r.layer for r in records] == ["l0", "l1", "l2"]
    assert [f.result().id for f in futures] == [r.id for r in records]
    assert float(records[2].map[0, 0]) == 2.0
