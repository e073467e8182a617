"""The run store: a run's raw results on disk, the single source of truth for the report.

Layout under the store's root (``<trainer.log_dir>/cnnviz`` by default)::

    manifest.jsonl            one JSON record per line, appended
    run.json                  run-level facts (model, data, settings), rewritten atomically
    arrays/<kind>/<id>.npz    the arrays of one record, written atomically

Each record says what it is (``kind``: ``filters``, ``activations``, ``attributions``...), for
which ``layer``, at which ``epoch`` and ``step``, plus small JSON ``meta``. Arrays are written to a
temporary file and renamed, and the manifest line is appended with a single ``write`` after the
arrays exist, so a reader (the live report) never sees a record whose arrays are missing; a
partial last line is ignored.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Record", "RunStore"]

MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _jsonable(value: Any) -> Any:
    """Convert numpy/torch scalars and tuples to plain JSON values (NaN/Inf to None)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass(frozen=True)
class Record:
    """One manifest entry.

    Attributes:
        id: Unique id within the store (also the arrays' file name).
        kind: What was recorded (``filters``, ``activations``, ``metrics``...).
        source: Which callback (its ``state_key``) wrote it.
        layer: Qualified layer name, if the record is about one layer.
        epoch: Trainer epoch at the event.
        step: Trainer global step at the event.
        file: Path of the ``.npz`` file relative to the store root, or ``None``.
        meta: Small JSON-able facts (shapes, channel indices, warnings...).
        time: Wall-clock time of the write.
    """

    id: str
    kind: str
    source: str | None = None
    layer: str | None = None
    epoch: int | None = None
    step: int | None = None
    file: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RunStore:
    """Reads and writes a run's cnnviz results.

    Several callbacks of one run share one store (same root); writes are serialised by a lock.

    Args:
        root: The store directory; created on the first write.

    Example:
        >>> store = RunStore(tmp_path / "cnnviz")
        >>> rec = store.write("filters", {"weight": w}, layer="features.0", epoch=0, step=10)
        >>> store.load(rec)["weight"].shape
        (6, 3, 5, 5)
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._counter = 0

    # -- writing -------------------------------------------------------------------------------
    def _new_id(self, kind: str, layer: str | None, epoch: int | None, step: int | None) -> str:
        self._counter += 1
        parts = [kind, layer or "run", f"e{epoch if epoch is not None else 'x'}"]
        parts.append(f"s{step if step is not None else 'x'}")
        stem = _SAFE.sub("_", "-".join(parts))
        return f"{stem}-{os.getpid()}-{time.time_ns() % 10**12}-{self._counter}"

    def write(
        self,
        kind: str,
        arrays: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        layer: str | None = None,
        epoch: int | None = None,
        step: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Record:
        """Write arrays (optional) and append a manifest record.

        Args:
            kind: Record kind.
            arrays: Name to array (numpy arrays or tensors; tensors are moved to the CPU).
            source: The writer's ``state_key``.
            layer: Layer name, if any.
            epoch: Epoch of the event.
            step: Global step of the event.
            meta: JSON-able facts; NaN/Inf become ``null``.

        Returns:
            The record written.
        """
        if not kind or not isinstance(kind, str):
            raise ValueError(f"`kind` must be a non-empty string; got {kind!r}")
        with self._lock:
            rid = self._new_id(kind, layer, epoch, step)
            rel = None
            if arrays:
                rel = f"arrays/{_SAFE.sub('_', kind)}/{rid}.npz"
                payload = {k: _to_numpy(v) for k, v in arrays.items()}
                buf = io.BytesIO()
                np.savez_compressed(buf, **payload)
                _atomic_write_bytes(self.root / rel, buf.getvalue())
            record = Record(
                id=rid,
                kind=kind,
                source=source,
                layer=layer,
                epoch=epoch,
                step=step,
                file=rel,
                meta=_jsonable(dict(meta or {})),
                time=time.time(),
            )
            line = json.dumps(record.__dict__, allow_nan=False, sort_keys=True) + "\n"
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            return record

    def update_run(self, **facts: Any) -> dict[str, Any]:
        """Merge ``facts`` into ``run.json`` (atomically) and return the merged mapping."""
        with self._lock:
            current = self.run_info()
            current.update(_jsonable(facts))
            data = json.dumps(current, indent=1, sort_keys=True, allow_nan=False).encode()
            _atomic_write_bytes(self.root / RUN_FILE, data)
            return current

    # -- reading -------------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the store has a manifest or run file."""
        return (self.root / MANIFEST).exists() or (self.root / RUN_FILE).exists()

    def run_info(self) -> dict[str, Any]:
        """The run-level facts (``{}`` if none were written)."""
        path = self.root / RUN_FILE
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    def __iter__(self) -> Iterator[Record]:
        path = self.root / MANIFEST
        if not path.exists():
            return
        with path.open("rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                yield Record(**json.loads(raw))

    def records(
        self,
        kind: str | None = None,
        *,
        layer: str | None = None,
        source: str | None = None,
    ) -> list[Record]:
        """Records filtered by kind, layer and source, in the order written."""
        return [
            r
            for r in self
            if (kind is None or r.kind == kind)
            and (layer is None or r.layer == layer)
            and (source is None or r.source == source)
        ]

    def load(self, record: Record) -> dict[str, np.ndarray]:
        """The arrays of ``record`` (``{}`` for a record without arrays)."""
        if record.file is None:
            return {}
        with np.load(self.root / record.file, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)
