"""Run identity in the store: the writer lease, heartbeats, resume segments, history copies."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from store_helpers import LABELS, LAYERS, write_event, write_run

from cnnviz.store import (
    LEASE_FILE,
    RUN_FILE,
    FiltersRecord,
    ResumeRecord,
    RunStore,
    StoreBusyError,
    StoreReader,
    copy_history,
    open_writer,
)


def _lease(root: Path) -> dict:
    return json.loads((root / LEASE_FILE).read_text())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # finished and reaped: no such process (unless reused at once)


def test_open_writer_stamps_every_record_with_the_run(tmp_path: Path) -> None:
    store = open_writer(tmp_path, "run-1")
    assert store.run == "run-1" and store.segment == 0
    lease = _lease(tmp_path)
    assert (lease["pid"], lease["host"], lease["run"]) == (
        os.getpid(),
        socket.gethostname(),
        "run-1",
    )
    info = store.run_info()
    assert info["run"] == "run-1" and info["status"] == "running"
    assert info["writer"] == {"pid": os.getpid(), "host": socket.gethostname()}
    rec = store.write("erf", {"map": np.ones((2, 2))}, layer="a", source="ReceptiveFields{}")
    assert (rec.run, rec.segment, rec.source) == ("run-1", 0, "ReceptiveFields{}")
    (typed,) = StoreReader(tmp_path).read("erf")
    assert (typed.run, typed.writer) == ("run-1", "ReceptiveFields{}")
    assert store.open_writer("run-1") is store  # the same run again: nothing to do
    with pytest.raises(ValueError, match="already open for run 'run-1'"):
        store.open_writer("run-2")
    store.close(status="finished")
    assert not (tmp_path / LEASE_FILE).exists() and store.run_info()["status"] == "finished"
    store.close()  # idempotent


@pytest.mark.parametrize("run_id", ["", "a b", "x" * 129, None, "../up"])
def test_bad_run_ids(tmp_path: Path, run_id: object) -> None:
    with pytest.raises(ValueError, match="`run_id` must be 1-128 letters"):
        RunStore(tmp_path).open_writer(run_id)  # type: ignore[arg-type]


def test_a_lease_of_a_dead_writer_is_taken_over(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    pid = _dead_pid()
    (tmp_path / LEASE_FILE).write_text(
        json.dumps(
            {
                "pid": pid,
                "host": socket.gethostname(),
                "run": "old",
                "token": "t",
                "started": time.time(),
                "heartbeat": time.time(),
            }
        )
    )
    with pytest.warns(RuntimeWarning, match=rf"taking over .*pid {pid}.*no longer running"):
        store = RunStore(tmp_path).open_writer("new")
    assert _lease(tmp_path)["run"] == "new"
    store.close()


def test_a_lease_with_an_old_heartbeat_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LEASE_FILE).write_text(
        json.dumps(
            {
                "pid": 1,
                "host": "another-machine",
                "run": "old",
                "token": "t",
                "started": 0.0,
                "heartbeat": time.time() - 1000,
            }
        )
    )
    with pytest.warns(RuntimeWarning, match=r"last heartbeat is 1000 s old \(timeout 300 s\)"):
        RunStore(tmp_path).open_writer("new").close()


def test_a_live_lease_on_another_host_is_respected(tmp_path: Path) -> None:
    (tmp_path / LEASE_FILE).write_text(
        json.dumps(
            {
                "pid": 1,
                "host": "another-machine",
                "run": "theirs",
                "token": "t",
                "started": 0.0,
                "heartbeat": time.time(),
            }
        )
    )
    with pytest.raises(StoreBusyError, match=r"host another-machine, run theirs") as err:
        RunStore(tmp_path).open_writer("mine")
    assert str(tmp_path) in str(err.value) and "pass another `store_dir`" in str(err.value)


def test_a_damaged_lease_file_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LEASE_FILE).write_text("{not json")
    with pytest.warns(RuntimeWarning, match="the lease file is damaged"):
        RunStore(tmp_path).open_writer("new").close()


def test_a_lease_left_behind_in_this_process_is_taken_over(tmp_path: Path) -> None:
    RunStore(tmp_path).open_writer("crashed")._lease = None  # forgotten, never released
    from cnnviz.store import lease as lease_mod

    lease_mod._HELD.clear()  # the object that held it is gone
    with pytest.warns(RuntimeWarning, match="left behind by an earlier writer in this process"):
        RunStore(tmp_path).open_writer("next").close()


def test_heartbeat_is_cheap_between_refreshes(tmp_path: Path) -> None:
    store = RunStore(tmp_path).open_writer("run-1")
    first = store.run_info()["heartbeat"]
    assert store.heartbeat() is False  # within min_interval: no file written
    time.sleep(0.01)
    assert store.heartbeat(force=True) is True
    assert store.run_info()["heartbeat"] > first
    assert _lease(tmp_path)["heartbeat"] == store.run_info()["heartbeat"]
    store.close()


def test_begin_segment_writes_a_resume_record_in_a_new_segment(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_run(run)
    store = RunStore(run / "cnnviz").open_writer("run-a")
    assert store.segment == 1  # the store already holds segment 0
    res = store.begin_segment(20, epoch=1, checkpoint="last.ckpt")
    assert isinstance(res, ResumeRecord) and res.step == 20 and res.checkpoint == "last.ckpt"
    assert store.segment == 1
    write_event(store, 3, rng=np.random.default_rng(0))
    store.close()
    reader = StoreReader(run / "cnnviz")
    labels = [r.label for r in reader.read(FiltersRecord, layer="features.0")]
    assert labels == ["start", "epoch 1", "epoch 2", "epoch 3"]  # epoch 4 of segment 0 is void
    with pytest.raises(ValueError, match="`step` must be an int >= 0"):
        store.begin_segment(-1)


def test_copy_history_makes_a_self_contained_run_directory(tmp_path: Path) -> None:
    old = tmp_path / "version_0"
    write_run(old)
    new_root = tmp_path / "version_1" / "cnnviz"
    copied = copy_history(old / "cnnviz", new_root, up_to_step=20)
    reader = StoreReader(new_root)
    assert copied == len(reader.records) > 0
    for layer in LAYERS:
        labels = [r.label for r in reader.read(FiltersRecord, layer=layer)]
        assert labels == LABELS[:3]  # steps 0, 10, 20
    assert reader.info["model"] == "tiny" and "status" not in reader.info
    files = [r._h().file for r in reader.records if r._h().file]
    assert all((new_root / f).is_file() for f in files)
    assert os.stat(new_root / files[0]).st_ino == os.stat(old / "cnnviz" / files[0]).st_ino
    assert copy_history(old / "cnnviz", new_root, up_to_step=20) == 0  # idempotent
    # the resumed fit continues in the new directory; the old one can go
    store = RunStore(new_root).open_writer("run-a")
    store.begin_segment(20)
    rng = np.random.default_rng(1)
    for i in (3, 4):
        write_event(store, i, rng=rng)
    store.close(status="finished")
    import shutil

    shutil.rmtree(old)
    reader = StoreReader(new_root)
    assert [r.label for r in reader.read(FiltersRecord, layer="features.0")] == LABELS
    assert reader.damage == []
    with pytest.raises(ValueError, match="the same store"):
        copy_history(new_root, new_root, 0)


def test_copy_history_follows_a_new_run_id(tmp_path: Path) -> None:
    old = tmp_path / "a"
    write_run(old, run="first")
    root = tmp_path / "b" / "cnnviz"
    copy_history(old / "cnnviz", root, up_to_step=40)
    store = RunStore(root).open_writer("second")
    store.begin_segment(40, previous_run="first")
    store.close(status="finished")
    reader = StoreReader(root)
    assert reader.current_run == "second"
    assert [r.label for r in reader.read(FiltersRecord, layer="features.0")] == LABELS
    assert reader.damage == []  # the earlier run is this run's history, not "another run"


def test_run_json_of_a_new_writer(tmp_path: Path) -> None:
    store = RunStore(tmp_path).open_writer("r")
    info = json.loads((tmp_path / RUN_FILE).read_text())
    assert set(info) == {"run", "status", "heartbeat", "writer"}
    store.close()
