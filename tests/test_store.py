"""The run store: records, arrays, atomic writes, torn manifest lines, run.json."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from cnnviz import store as store_mod
from cnnviz.store import MANIFEST, RUN_FILE, Record, RunStore


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_record_roundtrip(tmp_path) -> None:
    store = RunStore(tmp_path / "cnnviz")
    assert not store.exists() and list(store) == [] and store.run_info() == {}
    w = np.random.default_rng(0).normal(size=(6, 3, 5, 5)).astype(np.float32)
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    rec = store.write(
        "filters",
        {"weight": w, "grad": t, "half": t.to(torch.bfloat16), "idx": np.arange(3)},
        source="FilterWeights{}",
        layer="features.0",
        epoch=1,
        step=20,
        meta={"dead": np.array([1, 4]), "rgb": np.bool_(True), "n": np.int64(3), "shape": (6, 3)},
    )
    other = store.write("filters", {"weight": w[:2]}, layer="features.3", epoch=1, step=20)
    plain = store.write("metrics", None, epoch=1, step=20, meta={"values": {"loss": 0.5}})
    assert store.exists()
    assert [r.id for r in store] == [rec.id, other.id, plain.id]
    assert len({rec.id, other.id, plain.id}) == 3
    (back,) = store.records("filters", layer="features.0")
    assert back == rec
    assert back.file is not None and back.file.startswith("arrays/filters/")
    assert back.meta == {"dead": [1, 4], "rgb": True, "n": 3, "shape": [6, 3]}
    assert (back.source, back.epoch, back.step, back.kind) == ("FilterWeights{}", 1, 20, "filters")
    arrays = store.load(back)
    np.testing.assert_array_equal(arrays["weight"], w)
    np.testing.assert_array_equal(arrays["grad"], t.numpy())
    assert arrays["half"].dtype == np.float32  # bfloat16 has no numpy type
    np.testing.assert_array_equal(arrays["idx"], np.arange(3))
    assert store.records(source="FilterWeights{}") == [rec]
    assert store.records("filters", layer="nope") == []
    assert plain.file is None and store.load(plain) == {}
    # a second store object on the same directory reads the same records
    assert list(RunStore(tmp_path / "cnnviz")) == [rec, other, plain]


def test_nan_and_inf_meta_become_null(tmp_path) -> None:
    store = RunStore(tmp_path)
    store.write(
        "activations",
        meta={"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32("-inf"), "d": 2.5},
    )
    raw = (tmp_path / MANIFEST).read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    (rec,) = store.records()
    assert rec.meta == {"a": None, "b": [1.0, None], "c": None, "d": 2.5}
    info = store.update_run(ratio=math.inf, ok=1.0)
    assert info == {"ratio": None, "ok": 1.0}
    assert json.loads((tmp_path / RUN_FILE).read_text()) == info


def test_array_writes_are_atomic(tmp_path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    first = store.write("filters", {"w": np.ones(3)}, layer="a")
    before = _files(tmp_path)
    manifest = (tmp_path / MANIFEST).read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        store.write("filters", {"w": np.zeros(3)}, layer="b")
    monkeypatch.undo()
    # no half-written array, no temporary file, no manifest line for the failed record
    assert _files(tmp_path) == before
    assert (tmp_path / MANIFEST).read_bytes() == manifest
    assert store.records() == [first]
    store.write("filters", {"w": np.zeros(3)}, layer="b")
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert [r.layer for r in store] == ["a", "b"]


def test_manifest_line_is_appended_after_its_arrays_exist(tmp_path, monkeypatch) -> None:
    store = RunStore(tmp_path)
    seen: list[bool] = []
    real_write = os.write

    def spy_write(fd: int, data: bytes) -> int:
        rec = json.loads(data.decode().strip().splitlines()[-1])
        seen.append((tmp_path / rec["file"]).exists())
        return real_write(fd, data)

    monkeypatch.setattr(store_mod.os, "write", spy_write)
    store.write("filters", {"w": np.ones(2)})
    assert seen == [True]


def test_partial_trailing_line_is_ignored_and_later_writes_stay_readable(tmp_path) -> None:
    store = RunStore(tmp_path)
    a = store.write("filters", {"w": np.ones(2)}, layer="a")
    with open(tmp_path / MANIFEST, "ab") as fh:  # a writer that is still writing (or crashed)
        fh.write(b'{"id": "half-written", "kind": "fil')
    assert store.records() == [a]
    b = store.write("filters", {"w": np.ones(2)}, layer="b")
    with pytest.warns(UserWarning, match="damaged line"):
        records = store.records()
    assert records == [a, b]
    np.testing.assert_array_equal(store.load(records[1])["w"], np.ones(2))


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


def test_invalid_kind(tmp_path) -> None:
    store = RunStore(tmp_path)
    for kind in ("", None, 3):
        with pytest.raises(ValueError, match="`kind` must be a non-empty string"):
            store.write(kind)  # type: ignore[arg-type]
    assert not (tmp_path / MANIFEST).exists()


def test_record_is_plain_json(tmp_path) -> None:
    store = RunStore(tmp_path)
    rec = store.write("probe", {"x": np.zeros((2, 3))}, layer="x/y z", epoch=0, step=0)
    line = json.loads((tmp_path / MANIFEST).read_text().splitlines()[0])
    assert Record(**line) == rec
    assert "/" not in os.path.basename(rec.file or "") and " " not in (rec.file or "")


# ------------------------------------------------------------------------ background writes
def test_write_async_records_in_order_and_reads_wait_for_them(tmp_path) -> None:
    store = RunStore(tmp_path, max_pending=2)
    t = torch.arange(6.0)
    futures = [
        store.write_async("filters", {"w": t + i}, layer=f"l{i}", step=i, meta={"x": float("nan")})
        for i in range(5)
    ]
    t.zero_()  # tensors were copied to the host when submitted
    records = store.records("filters")  # waits for the background writes
    assert [r.layer for r in records] == [f"l{i}" for i in range(5)]
    assert [f.result() for f in futures] == records
    assert records[0].meta == {"x": None}
    np.testing.assert_array_equal(store.load(records[3])["w"], np.arange(6.0) + 3)
    store.flush()
    assert store._executor is None  # no thread left behind after a flush


def test_update_run_while_background_writes_are_pending(tmp_path) -> None:
    import threading

    store = RunStore(tmp_path)
    gate = threading.Event()
    store.submit(gate.wait, 5)
    store.write_async("filters", {"w": np.ones(2)})
    threading.Timer(0.2, gate.set).start()
    assert store.update_run(status="running") == {"status": "running"}  # no deadlock
    assert len(store.records()) == 1


def test_background_errors_surface_on_the_next_call(tmp_path) -> None:
    store = RunStore(tmp_path)

    def fail() -> None:
        raise OSError("disk full")

    store.submit(fail).exception()  # wait until it failed
    with pytest.raises(OSError, match="disk full"):  # raised on the training thread's next call
        store.write_async("filters", {"w": np.zeros(2)})
    store.flush()  # reported once
    store.write_async("filters", {"w": np.ones(2)})
    store.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        store.flush()
    store.submit(fail)
    error = store.flush(raise_errors=False)
    assert isinstance(error, OSError)
    assert [r.kind for r in store.records()] == ["filters"]
    with pytest.raises(ValueError, match="`kind`"):
        store.write_async("")
