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

Writers that must not wait (the callbacks, during training) use :meth:`RunStore.write_async` and
:meth:`RunStore.submit`: the arrays are taken to host memory at once, and the encoding and file
writes happen in order on one background thread. :meth:`RunStore.flush` waits for them and raises
the first error; reading the store waits for them too.
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
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
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
    """Write via a temporary file and a rename: readers see the old file or the whole new one.

    No ``fsync``: it made each write ~5 ms slower and only matters after a power loss, when a
    visualisation record may as well be lost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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
        max_pending: Background jobs allowed in flight before :meth:`submit` waits for the oldest
            (bounds the memory held by results not yet written).

    Example:
        >>> store = RunStore(tmp_path / "cnnviz")
        >>> rec = store.write("filters", {"weight": w}, layer="features.0", epoch=0, step=10)
        >>> store.load(rec)["weight"].shape
        (6, 3, 5, 5)
    """

    def __init__(self, root: str | os.PathLike[str], *, max_pending: int = 1024) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._counter = 0
        self._max_pending = max(1, int(max_pending))
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[Future[Any]] = deque()
        self._error: BaseException | None = None
        self._local = threading.local()

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
        if arrays:  # a file of its own: encoded and written outside the lock
            rel = f"arrays/{_SAFE.sub('_', kind)}/{rid}.npz"
            payload = {k: _to_numpy(v) for k, v in arrays.items()}
            _atomic_write_bytes(self.root / rel, _npz_bytes(payload))
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
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / MANIFEST, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if not _ends_line(fd):
                    line = "\n" + line  # end a line torn by a crashed writer; readers skip it
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            return record

    def write_async(
        self, kind: str, arrays: Mapping[str, Any] | None = None, **fields: Any
    ) -> Future[Record]:
        """Like :meth:`write`, but encode and write on the background thread.

        The arrays are copied to host memory now (tensors; numpy arrays are taken as they are
        and must not be changed afterwards). Errors surface on the next :meth:`submit`,
        :meth:`write_async` or :meth:`flush`.

        Args:
            kind: Record kind.
            arrays: Name to array.
            **fields: ``source``, ``layer``, ``epoch``, ``step``, ``meta`` as for :meth:`write`.

        Returns:
            A future of the record.
        """
        if not kind or not isinstance(kind, str):
            raise ValueError(f"`kind` must be a non-empty string; got {kind!r}")
        host = {k: _to_numpy(v) for k, v in (arrays or {}).items()}
        meta = _jsonable(dict(fields.pop("meta", None) or {}))
        return self.submit(self.write, kind, host, meta=meta, **fields)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the store's background thread, after earlier jobs.

        Raises:
            BaseException: The error of an earlier background job, if one failed.
        """
        self._collect(raise_errors=True)
        while len(self._pending) >= self._max_pending:
            self._settle(self._pending.popleft())
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnviz-store")
        future = self._executor.submit(self._job, fn, args, kwargs)
        self._pending.append(future)
        return future

    def flush(self, *, raise_errors: bool = True) -> BaseException | None:
        """Wait for every background job and stop the background thread (it restarts on demand).

        Args:
            raise_errors: Raise the first error of a background job since the last flush;
                with ``False`` it is returned instead. Either way it is then cleared.

        Returns:
            That error when not raised, else ``None``.
        """
        while self._pending:
            self._settle(self._pending.popleft())
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        error, self._error = self._error, None
        if error is not None and raise_errors:
            raise error
        return error

    def _settle(self, future: Future[Any]) -> None:
        error = future.exception()  # waits
        if error is not None and self._error is None:
            self._error = error

    def _collect(self, *, raise_errors: bool) -> None:
        while self._pending and self._pending[0].done():
            self._settle(self._pending.popleft())
        if raise_errors and self._error is not None:
            error, self._error = self._error, None
            raise error

    def update_run(self, **facts: Any) -> dict[str, Any]:
        """Merge ``facts`` into ``run.json`` (atomically) and return the merged mapping."""
        with self._lock:
            current = self._read_run_info()  # not run_info(): it would wait for the lock's owner
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
        self._drain()
        return self._read_run_info()

    def _read_run_info(self) -> dict[str, Any]:
        path = self.root / RUN_FILE
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    def __iter__(self) -> Iterator[Record]:
        self._drain()
        path = self.root / MANIFEST
        if not path.exists():
            return
        with path.open("rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # a line still being written
                try:
                    fields = json.loads(raw)
                except ValueError:  # a line torn by a writer that crashed, ended by the next write
                    warnings.warn(f"cnnviz: skipping a damaged line of {path}", stacklevel=2)
                    continue
                yield Record(**fields)

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
        self._drain()
        if record.file is None:
            return {}
        with np.load(self.root / record.file, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def _drain(self) -> None:
        """Wait for background writes before reading (their errors are kept for the writer)."""
        if getattr(self._local, "in_job", False):
            return  # a background job reading the store must not wait for itself
        while self._pending:
            self._settle(self._pending.popleft())

    def _job(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        self._local.in_job = True
        try:
            return fn(*args, **kwargs)
        finally:
            self._local.in_job = False

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive (deflate level 1: nearly the size of level 6 at half the time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def _ends_line(fd: int) -> bool:
    """Whether the file ``fd`` is empty or ends with a newline."""
    if os.lseek(fd, 0, os.SEEK_END) == 0:
        return True
    os.lseek(fd, -1, os.SEEK_END)
    return os.read(fd, 1) == b"\n"


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)
