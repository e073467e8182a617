"""Fault injection: a run directory is untrusted input.

Each fault damages a healthy run (or its writer) one way. For every one: the report is built
without hanging, nothing outside the run directory is opened, every epoch the store still holds
is drawn, and the page says what was damaged.
"""

from __future__ import annotations

import errno
import html as html_mod
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from store_helpers import (
    LABELS,
    LAYERS,
    append_line,
    build_guarded,
    labels_of,
    manifest_lines,
    outside,
    slider_labels,
    write_event,
    write_run,
)

from cnnviz.store import (
    MANIFEST,
    RUN_FILE,
    FiltersRecord,
    RunStore,
    StoreBusyError,
    StoreReader,
    StoreWriteError,
)
from cnnviz.store.files import npz_bytes


@dataclass
class Fault:
    """One way a run can be damaged.

    Attributes:
        damage: Damages the run (``run_dir``, ``store_root``).
        mention: Text the page must show.
        lost: ``(layer, label)`` filter events the damage may take (the damaged record itself).
        lost_acts: The same for activation maps.
    """

    damage: Callable[[Path, Path], None]
    mention: list[str]
    lost: set[tuple[str, str]] = field(default_factory=set)
    lost_acts: set[tuple[str, str]] = field(default_factory=set)


def _filters_line(store: Path, label: str = "epoch 2") -> dict:
    return next(
        line
        for line in manifest_lines(store)
        if line["kind"] == "filters" and line["layer"] == "features.0" and line["label"] == label
    )


def _evil_npz(path: Path) -> None:
    """A valid-looking filters archive outside the run: 7 filters, never to be drawn."""
    path.write_bytes(npz_bytes({"weight": np.full((7, 3, 3, 3), 9.0), "norms": np.ones(7)}))


def _line_with_file(store: Path, file: str) -> dict:
    line = dict(_filters_line(store))
    line.update(id="evil", file=file, label="epoch 99", step=990)
    return line


def _absolute(run: Path, store: Path) -> None:
    append_line(store, _line_with_file(store, "/etc/passwd"))


def _dotdot(run: Path, store: Path) -> None:
    _evil_npz(run.parent / "outside.npz")
    append_line(store, _line_with_file(store, "arrays/../../../outside.npz"))


def _symlink_out(run: Path, store: Path) -> None:
    _evil_npz(run.parent / "outside.npz")
    os.symlink(run.parent / "outside.npz", store / "arrays" / "filters" / "link.npz")
    append_line(store, _line_with_file(store, "arrays/filters/link.npz"))


def _fifo(run: Path, store: Path) -> None:
    target = store / _filters_line(store)["file"]
    target.unlink()
    os.mkfifo(target)


def _oversized(run: Path, store: Path) -> None:
    target = store / _filters_line(store)["file"]
    with target.open("r+b") as fh:  # sparse: no disk space, but 2 GiB to fstat
        fh.truncate(2 << 30)


def _truncated_array(run: Path, store: Path) -> None:
    target = store / _filters_line(store)["file"]
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])


def _corrupted_array(run: Path, store: Path) -> None:
    """Bytes flipped inside the weights' compressed data: the headers still read fine."""
    target = store / _filters_line(store)["file"]
    data = bytearray(target.read_bytes())
    start = data.index(b"weight.npy") + 200
    for i in range(start, start + 64):
        data[i] ^= 0x5A
    target.write_bytes(bytes(data))


def _list_line(run: Path, store: Path) -> None:
    append_line(store, [1, 2, 3])


def _extra_key(run: Path, store: Path) -> None:
    line = dict(_filters_line(store))
    line.update(id="extra", x=1)
    append_line(store, line)


def _unknown_kind(run: Path, store: Path) -> None:
    line = dict(_filters_line(store))
    line.update(id="histo", kind="histogram")
    append_line(store, line)


def _torn_last_line(run: Path, store: Path) -> None:
    append_line(store, b'{"id": "cut", "kind": "filters", "la')


def _bad_run_json(run: Path, store: Path) -> None:
    (store / RUN_FILE).write_text('{"status": "finished", "model": ')


def _deleted_array(run: Path, store: Path) -> None:
    (store / _filters_line(store)["file"]).unlink()


def _meta_of_wrong_type(run: Path, store: Path) -> None:
    line = dict(_filters_line(store, "epoch 3"))
    line["meta"] = {**line["meta"], "channels": "all of them"}
    lines = [json.dumps(x) for x in manifest_lines(store) if x["id"] != line["id"]]
    (store / MANIFEST).write_text("\n".join([*lines, json.dumps(line)]) + "\n")


def _two_runs_interleaved(run: Path, store: Path) -> None:
    """Another fit (run-b, a 12-filter model) wrote into the same store without a lease."""
    other = RunStore(store)
    other._run = "run-b"  # what a writer without the lease protocol would have done
    rng = np.random.default_rng(5)
    for i in range(len(LABELS)):
        write_event(other, i, rng=rng, filters=12)


def _nan_weights(run: Path, store: Path) -> None:
    """One conv weight becomes NaN at epoch 3: filters, maps and ERF of two epochs hold NaN."""
    lines = [x for x in manifest_lines(store) if x["label"] not in ("epoch 3", "epoch 4")]
    (store / MANIFEST).write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = RunStore(store)
    s._run = "run-a"
    rng = np.random.default_rng(9)
    write_event(s, 3, rng=rng, nan=True)
    write_event(s, 4, rng=rng, nan=True)


FAULTS = {
    "absolute path": Fault(_absolute, ["array path '/etc/passwd' is absolute"]),
    "dot-dot path": Fault(_dotdot, ["is outside the store's arrays/ folder"]),
    "symlink out of the run": Fault(_symlink_out, ["leads outside the store"]),
    "FIFO for an array file": Fault(
        _fifo,
        ["is not a regular file", "epoch 2 of features.0 filters not shown"],
        lost={("features.0", "epoch 2")},
    ),
    "oversized array file": Fault(
        _oversized, ["is larger than the limit"], lost={("features.0", "epoch 2")}
    ),
    "a truncated array file": Fault(
        _truncated_array, ["is not an .npz file"], lost={("features.0", "epoch 2")}
    ),
    "a corrupted array file": Fault(
        _corrupted_array,
        ["is damaged", "epoch 2 of features.0 filters not shown"],
        lost={("features.0", "epoch 2")},
    ),
    "a JSON list line": Fault(_list_line, ["is not a record (a JSON list)"]),
    "an extra key": Fault(_extra_key, ["has an unknown key 'x'"]),
    "an unknown kind": Fault(_unknown_kind, ["has an unknown kind 'histogram'"]),
    "a torn last line": Fault(_torn_last_line, ["the last line of manifest.jsonl is cut short"]),
    "run.json not JSON": Fault(_bad_run_json, ["run.json is damaged"]),
    "a deleted array file": Fault(
        _deleted_array,
        ["is missing: epoch 2 of features.0 filters not shown"],
        lost={("features.0", "epoch 2")},
    ),
    "meta of the wrong type": Fault(
        _meta_of_wrong_type,
        ["`channels` must be list of int"],
        lost={("features.0", "epoch 3")},
    ),
    "two runs in one store": Fault(
        _two_runs_interleaved, ["of 1 other run(s) (run-b) written to the same store"]
    ),
    "NaN weights from epoch 3": Fault(_nan_weights, ["NaN values at epoch 3", "(drawn blank)"]),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_damaged_run_still_gets_a_full_report(name: str, tmp_path: Path, monkeypatch) -> None:
    fault = FAULTS[name]
    run = tmp_path / "run"
    write_run(run)
    store = run / "cnnviz"
    fault.damage(run, store)
    built = build_guarded(run, monkeypatch)
    html = built.html
    assert outside(built.opened, run) == []  # nothing outside the run directory was opened
    drawn = [label for labels in slider_labels(html).values() for label in labels]
    assert "epoch 99" not in drawn  # nothing from outside the run is drawn
    text = html_mod.unescape(html)
    for needle in fault.mention:
        assert needle in text, needle
    if name not in ("NaN weights from epoch 3", "two runs in one store"):
        assert "problems in the run store" in text
    for layer in LAYERS:  # every epoch the store still holds is drawn
        want = [x for x in LABELS if (layer, x) not in fault.lost]
        assert labels_of(html, layer, "filters") == want, layer
        want = [x for x in LABELS if (layer, x) not in fault.lost_acts]
        assert labels_of(html, layer, "activations") == want, layer


def test_a_fifo_manifest_never_blocks(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    write_run(run)
    (run / "cnnviz" / MANIFEST).unlink()
    os.mkfifo(run / "cnnviz" / MANIFEST)
    built = build_guarded(run, monkeypatch)
    assert "This run has no cnnviz data" in built.html
    assert "manifest.jsonl is not a regular file" in built.html


def test_a_symlinked_manifest_is_not_followed(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    write_run(run)
    elsewhere = tmp_path / "elsewhere.jsonl"
    shutil.move(run / "cnnviz" / MANIFEST, elsewhere)
    os.symlink(elsewhere, run / "cnnviz" / MANIFEST)
    built = build_guarded(run, monkeypatch)
    assert "manifest.jsonl is a symbolic link; not read" in built.html


# -- the writer's faults ------------------------------------------------------------------------
def test_resume_supersedes_the_records_after_the_resume_step(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    write_run(run)  # start, epochs 1-4 (steps 0..40)
    store = RunStore(run / "cnnviz").open_writer("run-a")
    store.begin_segment(20, epoch=1, checkpoint="epoch=1.ckpt")  # resumed from epoch 2 of 4
    rng = np.random.default_rng(3)
    for i in (3, 4):
        write_event(store, i, rng=rng)
    store.close(status="finished")
    html = build_guarded(run, monkeypatch).html
    for layer in LAYERS:
        assert labels_of(html, layer, "filters") == LABELS  # not ...|epoch 4|epoch 3|epoch 4
        assert labels_of(html, layer, "activations") == LABELS
    assert "a resumed fit replaced" in html
    reader = StoreReader(run / "cnnviz")
    epoch3 = [r for r in reader.read(FiltersRecord, layer="features.0") if r.label == "epoch 3"]
    assert len(epoch3) == 1 and epoch3[0]._h().segment == 1  # the resumed fit's


def test_a_resume_in_an_old_store_without_resume_records(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    write_run(run)
    store = RunStore(run / "cnnviz")
    store._run = "run-a"  # an older writer: no lease, no segment, no resume record
    rng = np.random.default_rng(3)
    for i in (3, 4):
        write_event(store, i, rng=rng)
    html = build_guarded(run, monkeypatch).html
    for layer in LAYERS:
        assert labels_of(html, layer, "filters") == LABELS


def test_a_second_live_writer_is_refused(tmp_path: Path) -> None:
    first = RunStore(tmp_path / "cnnviz").open_writer("run-a")
    with pytest.raises(StoreBusyError, match=r"being written by another fit .*pass another"):
        RunStore(tmp_path / "cnnviz").open_writer("run-b")
    first.close(status="finished")
    second = RunStore(tmp_path / "cnnviz").open_writer("run-b")  # free once the first closed
    second.close()


def test_manifest_lines_are_whole_or_absent_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    write_run(run, events=3)
    root = run / "cnnviz"
    store = RunStore(root).open_writer("run-a")
    before = (root / MANIFEST).read_bytes()
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        if len(data) > 100:  # the manifest line: half of it reaches the disk, then ENOSPC
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", short_write)
    rng = np.random.default_rng(1)
    with pytest.raises(StoreWriteError, match=r"could not write .*manifest\.jsonl: No space") as e:
        write_event(store, 3, rng=rng)
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC and e.value.filename.endswith(MANIFEST)
    assert (root / MANIFEST).read_bytes() == before  # cut back: no partial line
    info = json.loads((root / RUN_FILE).read_text())
    assert info["status"] == "failed" and "No space left" in info["error"]
    store.close()
    html = build_guarded(run, monkeypatch).html
    assert "The run failed" in html and "No space left" in html
    assert labels_of(html, "features.0", "filters") == LABELS[:3]


def test_a_read_only_store_raises_an_error_naming_the_path(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    store = RunStore(tmp_path / "cnnviz")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(StoreWriteError, match=r"could not write .*run\.json: .*read-only"):
        store.update_run(status="running")
    with pytest.raises(StoreWriteError, match=r"could not write .*erf.*\.npz: .*read-only"):
        store.write("erf", {"map": np.ones((2, 2))}, layer="a")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_a_read_only_directory(tmp_path: Path) -> None:  # pragma: no cover - not run as root
    root = tmp_path / "cnnviz"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(StoreWriteError, match=r"not writable: pass a writable `store_dir`"):
            RunStore(root).write("erf", {"map": np.ones((2, 2))}, layer="a")
    finally:
        root.chmod(0o755)


def test_a_stale_heartbeat_stops_the_live_page(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    store = write_run(run, events=2)
    store.update_run(status="running", heartbeat=time.time() - 3600)  # kill -9 an hour ago
    from cnnviz.report import build_report

    html = build_report(run, run / "live.html", live=True, progress=False).read_text()
    assert '<div class="banner failed">The run says it is training, but the writer' in html
    assert "stopped responding (last heartbeat" in html
    assert 'id="live-pause"' not in html  # no reloading
    assert "running — the writer stopped responding" in html
    cfg = json.loads(html.split('id="cnnviz-config">')[1].split("</script>")[0])
    assert cfg["status"] == "running" and cfg["stale_s"] == 60.0
    assert time.time() - cfg["heartbeat"] > cfg["stale_s"]  # what the page's script checks
    store.update_run(heartbeat=time.time())  # alive: the page reloads
    html = build_report(run, run / "live.html", live=True, progress=False).read_text()
    assert 'id="live-pause"' in html and '<div class="banner failed">' not in html
