"""Finding the store, reading metrics, choosing events."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnviz.report.data import (
    ReportError,
    find_store,
    load_run,
    metrics_from_records,
    pick_events,
    read_metrics_csv,
)
from cnnviz.store import Header, MetricsRecord, RunStore


def _store(path: Path) -> Path:
    RunStore(path).update_run(status="finished")
    return path


def test_find_store_accepts_store_run_dir_and_parent(tmp_path: Path) -> None:
    store = _store(tmp_path / "runs" / "a" / "cnnviz")
    assert find_store(store) == store
    assert find_store(store / "run.json") == store
    assert find_store(tmp_path / "runs" / "a") == store
    assert find_store(tmp_path / "runs") == store
    assert find_store(tmp_path) == store


def test_find_store_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"`path` .* does not exist"):
        find_store(tmp_path / "nope")
    with pytest.raises(ReportError, match="no cnnviz run store"):
        find_store(tmp_path)
    _store(tmp_path / "a" / "cnnviz")
    _store(tmp_path / "b" / "cnnviz")
    with pytest.raises(ReportError, match=r"2 runs under .*pass one of them") as err:
        find_store(tmp_path)
    assert str(tmp_path / "a") in str(err.value) and str(tmp_path / "b") in str(err.value)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ReportError, match="is a file"):
        find_store(tmp_path / "file.txt")


@pytest.mark.parametrize(
    "layers",
    [
        ["b  Conv2d(3→6, k=5, s=1, p=0)", "a  MaxPool2d(k=2, s=2, p=0)"],  # the first format
        [
            {"name": "b", "type": "Conv2d", "kind": "conv", "describe": "b  Conv2d(3→6, k=5)"},
            {"name": "a", "type": "MaxPool2d", "kind": "pool", "describe": "MaxPool2d(k=2)"},
            "  ",
            {"describe": "no name"},
            7,
        ],
    ],
)
def test_layers_follow_the_model_order(tmp_path: Path, layers: list) -> None:
    store = RunStore(tmp_path / "cnnviz")
    store.update_run(layers=layers)
    for layer in ("a", "z", "b"):
        store.write("erf", {"map": [[1.0]]}, layer=layer)
    data = load_run(store.root)
    assert data.layers() == ["b", "a", "z"]
    assert data.facts_of("b").type == "Conv2d" and data.describe("b").startswith("Conv2d(3→6")
    assert data.facts_of("a").type == "MaxPool2d" and data.facts_of("z") is None


def test_pick_events_keeps_first_and_last() -> None:
    recs = [MetricsRecord(values={}, header=Header(id=str(i), kind="metrics")) for i in range(10)]
    assert pick_events(recs, 20) == recs
    picked = [r.id for r in pick_events(recs, 4)]
    assert picked[0] == "0" and picked[-1] == "9" and len(picked) == 4
    assert [r.id for r in pick_events(recs, 1)] == ["0"]


def test_metrics_csv(tmp_path: Path) -> None:
    f = tmp_path / "metrics.csv"
    f.write_text("epoch,step,loss,acc\n0,1,2.0,\n0,2,1.5,0.4\n2,5,0.5,0.9\n,9,7,\n")
    epochs, values = read_metrics_csv(f)
    assert epochs == [1, 3]
    assert values == {"loss": [1.5, 0.5], "acc": [0.4, 0.9]}
    assert read_metrics_csv(tmp_path / "none.csv") == ([], {})


def test_metrics_records_last_value_per_epoch_wins() -> None:
    def rec(i: int, epoch: int, values: dict[str, float]) -> MetricsRecord:
        return MetricsRecord(values=values, header=Header(id=str(i), kind="metrics", epoch=epoch))

    recs = [
        rec(1, 0, {"loss": 1.0}),
        rec(2, 0, {"loss": 0.9, "acc": 0.5}),
        rec(3, 1, {"loss": 0.7, "acc": float("nan")}),  # a NaN is no value
    ]
    assert metrics_from_records(recs) == ([1, 2], {"loss": [0.9, 0.7], "acc": [0.5, None]})
