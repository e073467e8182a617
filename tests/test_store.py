"""The run store's writer: records, arrays, atomic writes, torn manifest lines, run.json, and the
untyped API of the first format (RunStore.write / records / load) mapped onto typed records."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from cnnviz.store import (
    MANIFEST,
    RUN_FILE,
    ErfRecord,
    FiltersRecord,
    Record,
    RunStore,
    StoreReader,
    StoreWriteError,
)
from cnnviz.store.reader import HEADER_KEYS


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _erf(store: RunStore, layer: str = "a", value: float = 1.0, **kw) -> Record:
    return store.write("erf", {"map": np.full((2, 2), value)}, layer=layer, **kw)


def test_record_roundtrip(tmp_path) -> None:
    store = RunStore(tmp_path / "cnnviz")
    assert not store.exists() and list(store) == [] and store.run_info() == {}
    w = np.random.default_rng(0).normal(size=(6, 3, 5, 5))  # float64: stored as float32
    g = torch.arange(6 * 3 * 25, dtype=torch.float32).reshape(6, 3, 5, 5)
    rec = store.write(
        "filters",
        {
            "weight": w,
            "norms": np.arange(6),
            "grad": g.to(torch.bfloat16),
            "grad_norms": g[:, 0, 0, 0],
        },
        source="FilterWeights{}",
        layer="features.0",
        epoch=1,
        step=20,
        meta={
            "event": "epoch",
            "label": "epoch 2",
            "dead": np.array([1, 4]),
            "rgb": np.bool_(True),
            "nonfinite": np.int64(3),
            "full_shape": (6, 3, 5, 5),
        },
    )
    other = store.write(
        "filters", {"weight": w[:2], "norms": np.ones(2)}, layer="features.3", epoch=1, step=20
    )
    plain = store.write("metrics", None, epoch=1, step=20, meta={"values": {"loss": 0.5}})
    assert store.exists()
    assert [r.id for r in store] == [rec.id, other.id, plain.id]
    assert len({rec.id, other.id, plain.id}) == 3
    (back,) = store.records("filters", layer="features.0")
    assert back == rec
    assert back.file is not None and back.file.startswith("arrays/filters/")
    assert back.meta["dead"] == [1, 4] and back.meta["rgb"] is True
    assert back.meta["nonfinite"] == 3 and back.meta["full_shape"] == [6, 3, 5, 5]
    assert (back.meta["event"], back.meta["label"]) == ("epoch", "epoch 2")
    assert (back.source, back.epoch, back.step, back.kind) == ("FilterWeights{}", 1, 20, "filters")
    arrays = store.load(back)
    assert set(arrays) == {"weight", "norms", "grad", "grad_norms"}
    assert arrays["weight"].dtype == np.float32  # every floating array is stored as float32
    np.testing.assert_allclose(arrays["weight"], w.astype(np.float32))
    assert arrays["grad"].dtype == np.float32  # bfloat16 has no numpy type
    assert arrays["norms"].dtype == np.float32  # ints in a float array
    assert store.records(source="FilterWeights{}") == [rec]
    assert store.records("filters", layer="nope") == []
    assert plain.file is None and store.load(plain) == {}
    # a second store object on the same directory reads the same records
    assert list(RunStore(tmp_path / "cnnviz")) == [rec, other, plain]
    # the typed view of the same records
    (typed,) = store.read(FiltersRecord, layer="features.0")
    assert isinstance(typed, FiltersRecord) and typed.dead == (1, 4) and typed.label == "epoch 2"
    assert typed.weight.shape == (6, 3, 5, 5) and typed.grad.dtype == np.float32


def test_nan_and_inf_meta_become_null(tmp_path) -> None:
    store = RunStore(tmp_path)
    _erf(
        store,
        meta={
            "radius": float("nan"),
            "sigma": [1.0, float("inf")],
            "ratio": np.float32("-inf"),
            "effective_size": 2.5,
        },
    )
    raw = (tmp_path / MANIFEST).read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    (rec,) = store.records()
    assert rec.meta["radius"] is None and rec.meta["sigma"] == [1.0, None]
    assert rec.meta["ratio"] is None and rec.meta["effective_size"] == 2.5
    (typed,) = StoreReader(tmp_path).read(ErfRecord)
    assert typed.radius is None  # `float | None`: null is "unknown"
    assert typed.sigma[0] == 1.0 and math.isnan(typed.sigma[1])  # `float`: null reads as NaN
    info = store.update_run(ratio=math.inf, ok=1.0)
    assert info == {"ratio": None, "ok": 1.0}
    assert json.loads((tmp_path / RUN_FILE).read_text()) == info


def test_array_writes_are_atomic(tmp_path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    first = _erf(store, "a")
    before = _files(tmp_path)
    manifest = (tmp_path / MANIFEST).read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreWriteError, match=r"could not write .*erf.*\.npz: disk full") as err:
        _erf(store, "b", 0.0)
    assert isinstance(err.value, OSError)
    monkeypatch.undo()
    # no half-written array, no temporary file, no manifest line for the failed record
    assert _files(tmp_path) == before
    assert (tmp_path / MANIFEST).read_bytes() == manifest
    assert store.records() == [first]
    _erf(store, "b", 0.0)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert [r.layer for r in store] == ["a", "b"]


def test_manifest_line_is_appended_after_its_arrays_exist(tmp_path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    seen: list[bool] = []
    real_write = os.write

    def spy_write(fd: int, data: bytes) -> int:
        rec = json.loads(bytes(data).decode().strip().splitlines()[-1])
        seen.append((tmp_path / rec["file"]).exists())
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy_write)
    _erf(store)
    assert seen == [True]


def test_partial_trailing_line_is_ignored_and_later_writes_stay_readable(tmp_path) -> None:
    store = RunStore(tmp_path)
    a = _erf(store, "a")
    with open(tmp_path / MANIFEST, "ab") as fh:  # a writer that is still writing (or crashed)
        fh.write(b'{"id": "half-written", "kind": "fil')
    assert store.records() == [a]
    b = _erf(store, "b")
    with pytest.warns(UserWarning, match="damaged"):
        records = store.records()
    assert records == [a, b]
    np.testing.assert_array_equal(store.load(records[1])["map"], np.ones((2, 2)))


def test_run_json_merges_and_is_rewritten_atomically(tmp_path) -> None:
    store = RunStore(tmp_path / "deep" / "cnnviz")
    assert store.update_run(status="running", model="LeNet5", layers=["a", "b"]) == {
        "status": "running",
        "model": "LeNet5",
        "layers": ["a", "b"],
    }
    merged = store.update_run(status="finished", epochs=np.int64(3))
    assert merged == {"status": "finished", "model": "LeNet5", "layers": ["a", "b"], "epochs": 3}
    assert store.run_info() == merged
    assert store.exists()
    assert _files(store.root) == [RUN_FILE]  # no temporary file left behind


def test_a_damaged_run_json_is_replaced_not_fatal(tmp_path) -> None:
    store = RunStore(tmp_path)
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.warns(UserWarning, match="run.json is damaged"):
        assert store.run_info() == {}
    with pytest.warns(UserWarning, match="replaced by the next update"):
        assert store.update_run(status="running") == {"status": "running"}
    assert store.run_info() == {"status": "running"}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.write(""), "`kind` must be a non-empty string"),
        (lambda s: s.write(None), "`kind` must be a non-empty string"),
        (lambda s: s.write(3), "`kind` must be a non-empty string"),
        (lambda s: s.write("nope"), "unknown `kind` 'nope'; kinds are: metrics, filters"),
        (lambda s: s.write("erf", {"map": np.ones((2, 2))}), "`layer` is required"),
        (
            lambda s: s.write("metrics", None, layer="a", meta={"values": {}}),
            "metrics records are not about one layer",
        ),
        (lambda s: s.write("erf", {"map": np.ones(3)}, layer="a"), "`map` must have 2 dim"),
        (lambda s: s.write("erf", {"map": np.ones((2, 2), bool)}, layer="a"), None),
        (lambda s: s.write("erf", {"mp": np.ones((2, 2))}, layer="a"), "array `mp` is not an"),
        (lambda s: s.write("erf", None, layer="a"), "array `map` is required"),
        (
            lambda s: s.write("erf", {"map": np.ones((2, 2))}, layer="a", meta={"radius": "3"}),
            "`radius` must be float or null",
        ),
        (
            lambda s: s.write("erf", {"map": np.ones((2, 2))}, layer="a", meta={"x": 1}),
            "meta `x` is not a field of erf records",
        ),
        (
            lambda s: s.write("metrics", None, meta={"values": {"loss": "low"}}),
            r"`values.loss` must be a number",
        ),
        (lambda s: s.write("metrics", None), "meta `values` is required"),
        (
            lambda s: s.write("metrics", None, step=-1, meta={"values": {}}),
            "`step` must be an int >= 0",
        ),
        (
            lambda s: s.write("metrics", None, meta={"values": {}, "event": "later"}),
            "`event` must be one of start, epoch, step",
        ),
        (
            lambda s: s.write(
                "attributions", {"grad-cam": np.ones((1, 2, 2))}, meta={"methods": ["x"]}
            ),
            "array name 'grad-cam' must be letters",
        ),
    ],
)
def test_invalid_records_raise_at_the_writer(tmp_path, call, match) -> None:
    store = RunStore(tmp_path)
    if match is None:  # bools in a float array are numbers: accepted
        call(store)
        return
    with pytest.raises(ValueError, match=match):
        call(store)
    assert not (tmp_path / MANIFEST).exists()
    assert not (tmp_path / "arrays").exists()


def test_record_is_plain_json(tmp_path) -> None:
    store = RunStore(tmp_path)
    rec = store.write("probe", {"x": np.zeros((2, 3))}, epoch=0, step=0)
    line = json.loads((tmp_path / MANIFEST).read_text().splitlines()[0])
    assert set(line) == HEADER_KEYS
    assert (line["id"], line["kind"], line["file"]) == (rec.id, "probe", rec.file)
    assert line["meta"] == {"class_names": None, "shape": [], "vocabulary": None}
    layered = _erf(store, "x/y z")
    assert "/" not in os.path.basename(layered.file or "") and " " not in (layered.file or "")


# ------------------------------------------------------------------------ background writes
def test_write_async_records_in_order_and_reads_wait_for_them(tmp_path) -> None:
    store = RunStore(tmp_path, max_pending=2)
    t = torch.arange(6.0).reshape(2, 3)
    futures = [
        store.write_async(
            "erf", {"map": t + i}, layer=f"l{i}", step=i, meta={"radius": float("nan")}
        )
        for i in range(5)
    ]
    t.zero_()  # tensors were copied to the host when submitted
    records = store.records("erf")  # waits for the background writes
    assert [r.layer for r in records] == [f"l{i}" for i in range(5)]
    assert [f.result() for f in futures] == records
    assert records[0].meta["radius"] is None
    np.testing.assert_array_equal(store.load(records[3])["map"], np.arange(6.0).reshape(2, 3) + 3)
    store.flush()
    assert store._executor is None  # no thread left behind after a flush


def test_write_async_validates_on_the_calling_thread(tmp_path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match="`map` must have 2 dim"):
        store.write_async("erf", {"map": torch.ones(3)}, layer="a")
    with pytest.raises(TypeError, match="unexpected arguments"):
        store.write_async("erf", {"map": torch.ones(2, 2)}, layer="a", sorce="x")
    assert store.flush() is None and store.records() == []


def test_update_run_while_background_writes_are_pending(tmp_path) -> None:
    import threading

    store = RunStore(tmp_path)
    gate = threading.Event()
    store.submit(gate.wait, 5)
    store.write_async("erf", {"map": np.ones((2, 2))}, layer="a")
    threading.Timer(0.2, gate.set).start()
    assert store.update_run(status="running") == {"status": "running"}  # no deadlock
    assert len(store.records()) == 1


def test_background_errors_surface_on_the_next_call(tmp_path) -> None:
    store = RunStore(tmp_path)

    def fail() -> None:
        raise OSError("disk full")

    store.submit(fail).exception()  # wait until it failed
    with pytest.raises(OSError, match="disk full"):  # raised on the training thread's next call
        store.write_async("erf", {"map": np.zeros((2, 2))}, layer="a")
    store.flush()  # reported once
    store.write_async("erf", {"map": np.ones((2, 2))}, layer="a")
    store.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        store.flush()
    store.submit(fail)
    error = store.flush(raise_errors=False)
    assert isinstance(error, OSError)
    assert [r.kind for r in store.records()] == ["erf"]
    with pytest.raises(ValueError, match="`kind`"):
        store.write_async("")
