"""``RunStore``: writes typed records (and reads them back for the writers that need to).

Writers call :meth:`RunStore.put` (or :meth:`RunStore.put_async` during training) with a record
of :mod:`cnnviz.store.records`; the record is validated on the calling thread (a bad one raises
``ValueError`` naming the field), its arrays are taken to host memory, and the encoding and file
writes run in order on one background thread. The untyped :meth:`RunStore.write` of the first
store format maps ``kind`` + ``meta`` onto the typed records.

A fit opens the store with :meth:`RunStore.open_writer` (an exclusive writer lease, the run id on
every record), refreshes :meth:`RunStore.heartbeat`, and calls :meth:`RunStore.begin_segment`
when it resumes from a checkpoint. :func:`cnnviz.store.history.copy_history` brings an earlier
run's records into a new run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cnnviz.store.compat import Record, UntypedAPI
from cnnviz.store.files import (
    Limits,
    StoreDataError,
    StoreWriteError,
    append_line,
    atomic_write_bytes,
    npz_bytes,
    read_regular,
    resolve_array_path,
)
from cnnviz.store.lease import LEASE_TIMEOUT, Lease, acquire
from cnnviz.store.reader import (
    ANY,
    EVENTS,
    MANIFEST,
    RUN_FILE,
    ArrayFile,
    StoreReader,
    StoreWarning,
    check_meta,
    supersede,
)
from cnnviz.store.records import (
    KINDS,
    Header,
    ResumeRecord,
    StoreRecord,
    _Lazy,
    meta_fields,
    record_class,
)
from cnnviz.store.schema import (
    RecordError,
    array_specs,
    host_array,
    normalise_array,
    to_json,
    valid_array_name,
)

__all__ = ["Record", "RunStore", "open_writer"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_RUN_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")
R = TypeVar("R", bound=StoreRecord)


@dataclass
class _Prepared:
    cls: type[StoreRecord]
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    header: dict[str, Any]


def _check_header(cls: type[StoreRecord], header: Mapping[str, Any]) -> None:
    name = cls.__name__
    for key in ("writer", "layer", "label"):
        value = header.get(key)
        if value is not None and not isinstance(value, str):
            raise RecordError(f"{name}: `{key}` must be a string or None; got {value!r}")
    for key in ("epoch", "step"):
        value = header.get(key)
        if value is None:
            continue
        ok = hasattr(value, "__index__") and not isinstance(value, (bool, np.bool_))
        if not ok or int(value) < 0:
            raise RecordError(f"{name}: `{key}` must be an int >= 0 or None; got {value!r}")
    event = header.get("event")
    if event is not None and event not in EVENTS:
        raise RecordError(
            f"{name}: `event` must be one of {', '.join(EVENTS)} or None; got {event!r}"
        )
    layer = header.get("layer")
    if cls.LAYER == "required" and not layer:
        raise RecordError(f"{name}: `layer` is required (the qualified layer name)")
    if cls.LAYER == "none" and layer is not None:
        raise RecordError(
            f"{name}: {cls.KIND} records are not about one layer; pass `layer=None` (got {layer!r})"
        )


def _prepare(record: StoreRecord, header: dict[str, Any]) -> _Prepared:
    """Validate ``record`` and take its arrays to host memory (the calling thread)."""
    cls = type(record)
    if not isinstance(record, StoreRecord) or KINDS.get(cls.KIND) is not cls:
        raise ValueError(
            f"`record` must be a record of cnnviz.store.records (FiltersRecord, ...); "
            f"got {type(record).__name__}"
        )
    name = cls.__name__
    _check_header(cls, header)
    for key in ("epoch", "step"):
        if header.get(key) is not None:
            header[key] = int(header[key])
    values = {f.name: to_json(getattr(record, f.name)) for f in meta_fields(cls)}
    try:
        meta = check_meta(cls, values, strict=True)
    except RecordError as err:
        text = str(err)
        raise RecordError(text if text.startswith(name) else f"{name}: {text}") from None
    arrays: dict[str, np.ndarray] = {}
    declared = {fname for fname, _ in array_specs(cls)}
    for fname, spec in array_specs(cls):
        raw = object.__getattribute__(record, fname)
        if isinstance(raw, _Lazy):
            raw = raw.get()
        try:
            if spec.name == "*":
                raw = {} if raw is None else raw
                if not isinstance(raw, Mapping):
                    raise RecordError(f"`{fname}` must map array names to arrays")
                for key, value in raw.items():
                    if not isinstance(key, str) or not valid_array_name(key) or key in declared:
                        raise RecordError(
                            f"`{fname}`: array name {key!r} must be letters, digits and _ "
                            "(and not a field name)"
                        )
                    arrays[key] = host_array(value, spec, f"{fname}[{key!r}]")
                if spec.required and not raw:
                    raise RecordError(f"`{fname}` needs at least one array")
            elif raw is None:
                if spec.required:
                    raise RecordError(f"array `{fname}` is required")
            else:
                arrays[fname] = host_array(raw, spec, fname)
        except RecordError as err:
            raise RecordError(f"{name}: {err}") from None
    return _Prepared(cls, meta, arrays, header)


class RunStore(UntypedAPI):
    """Reads and writes a run's cnnviz results.

    Several callbacks of one run share one store object (same root); writes are serialised by a
    lock. Reading back through the store (:meth:`records`, :meth:`read`) waits for pending writes.

    Args:
        root: The store directory; created on the first write.
        max_pending: Background jobs allowed in flight before :meth:`submit` waits for the oldest
            (bounds the memory held by results not yet written).

    Example:
        >>> store = RunStore(tmp_path / "cnnviz").open_writer("run-1")
        >>> rec = store.put(FiltersRecord(weight=w, norms=n, full_shape=w.shape),
        ...                 writer="FilterWeights", layer="features.0", epoch=0, step=10)
        >>> store.read(FiltersRecord, layer="features.0")[-1].weight.shape
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
        #: CPU seconds the background thread spent on jobs (the time budget charges them: on a
        #: machine whose cores train, they are taken from training).
        self.background_seconds = 0.0
        self._local = threading.local()
        self._run: str | None = None
        self._segment = 0
        self._lease: Lease | None = None
        self._beat_at = 0.0
        self._parsed: list[StoreRecord] = []
        self._parsed_at: tuple[int, int, int] | None = None  # (device, inode, offset)
        self._parsed_lines = 0
        self._parser = StoreReader(self.root, load=False)
        self._read_lock = threading.Lock()

    # -- identity -------------------------------------------------------------------------------
    @property
    def run(self) -> str | None:
        """The run id records get (set by :meth:`open_writer`)."""
        return self._run

    @property
    def segment(self) -> int:
        """The resume segment records get."""
        return self._segment

    def open_writer(self, run_id: str, *, lease_timeout: float = LEASE_TIMEOUT) -> RunStore:
        """Open the store for writing as run ``run_id``: take the writer lease.

        Every record written afterwards carries ``run_id`` and the current segment; ``run.json``
        gets ``run``, ``status="running"`` and a ``heartbeat`` time.

        Args:
            run_id: The run's id (letters, digits and ``_.:@+-``; at most 128 characters). A
                resumed fit passes the id of the run it continues.
            lease_timeout: Seconds without a heartbeat after which another writer's lease counts
                as abandoned.

        Returns:
            The store itself.

        Raises:
            StoreBusyError: When another live fit writes to this store; pass another
                ``store_dir``, or wait until it ends.
            ValueError: For a bad ``run_id``, or when the store is already open for another run.
            StoreWriteError: When the store cannot be written.
        """
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            raise ValueError(f"`run_id` must be 1-128 letters, digits or _.:@+-; got {run_id!r}")
        if self._lease is not None:
            if self._lease.run == run_id:
                return self
            raise ValueError(
                f"the store {self.root} is already open for run {self._lease.run!r}; call "
                "close() before opening it for another run"
            )
        self._lease = acquire(self.root, run_id, timeout=lease_timeout)
        self._run = run_id
        segments = [r._h().segment for r in self._all_records(drain=True)]
        self._segment = max(segments) + 1 if segments else 0
        now = time.time()
        self._beat_at = now
        self.update_run(
            run=run_id,
            status="running",
            heartbeat=now,
            writer={"pid": os.getpid(), "host": socket.gethostname()},
        )
        return self

    def heartbeat(self, *, force: bool = False, min_interval: float = 5.0) -> bool:
        """Tell readers the writer is alive: refresh the lease and ``run.json``'s ``heartbeat``.

        Cheap between refreshes (a time comparison): files are written at most every
        ``min_interval`` seconds unless ``force``.

        Returns:
            Whether the files were written.

        Raises:
            StoreWriteError: When they cannot be written.
        """
        now = time.time()
        if not force and now - self._beat_at < min_interval:
            return False
        self._beat_at = now
        if self._lease is not None:
            self._lease.refresh(now)
        self.update_run(heartbeat=now)
        return True

    def begin_segment(
        self,
        step: int,
        *,
        epoch: int | None = None,
        previous_run: str | None = None,
        checkpoint: str | None = None,
    ) -> ResumeRecord:
        """Start a new segment for a fit resumed at global step ``step``.

        Records of earlier segments with a step after ``step`` are superseded: readers drop
        them, so the history continues as one line (``start|epoch 1|epoch 2|epoch 3``).

        Args:
            step: The global step the fit resumes at (the checkpoint's).
            epoch: The checkpoint's epoch, if known.
            previous_run: The run id this fit continues, when it differs from this run's.
            checkpoint: The checkpoint file resumed from.

        Returns:
            The ``resume`` record written.
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"`step` must be an int >= 0 (the resume step); got {step!r}")
        self.flush(raise_errors=False)
        segments = [r._h().segment for r in self._all_records(drain=True)]
        if segments and max(segments) >= self._segment:
            self._segment = max(segments) + 1
        return self.put(
            ResumeRecord(previous_run=previous_run, checkpoint=checkpoint),
            writer="cnnviz",
            epoch=epoch,
            step=step,
            label=f"resumed at step {step}",
        )

    def close(self, *, status: str | None = None, error: str | None = None) -> None:
        """Wait for pending writes, optionally set the run's status, and release the lease.

        Args:
            status: ``finished`` or ``failed`` to record in ``run.json``.
            error: The failure, with ``status="failed"``.
        """
        try:
            self.flush(raise_errors=False)
            if status is not None:
                facts: dict[str, Any] = {"status": status, "heartbeat": time.time()}
                if error is not None:
                    facts["error"] = error
                self.update_run(**facts)
        finally:
            if self._lease is not None:
                self._lease.release()
                self._lease = None

    # -- typed writing --------------------------------------------------------------------------
    def _new_id(self, kind: str, layer: str | None, epoch: int | None, step: int | None) -> str:
        self._counter += 1
        parts = [kind, layer or "run", f"e{epoch if epoch is not None else 'x'}"]
        parts.append(f"s{step if step is not None else 'x'}")
        stem = _SAFE.sub("_", "-".join(parts))[:120]
        return f"{stem}-{os.getpid()}-{time.time_ns() % 10**12}-{self._counter}"

    def _header_kw(self, **kw: Any) -> dict[str, Any]:
        return {**kw, "run": self._run, "segment": self._segment}

    def put(
        self,
        record: R,
        *,
        writer: str | None = None,
        layer: str | None = None,
        epoch: int | None = None,
        step: int | None = None,
        event: str | None = None,
        label: str | None = None,
    ) -> R:
        """Validate and write a typed record.

        Args:
            record: A record of :mod:`cnnviz.store.records` (its arrays: numpy or tensors).
            writer: The writing callback's ``state_key``.
            layer: The layer (required for per-layer kinds, ``None`` for the others).
            epoch: 0-based epoch of the event.
            step: Global step of the event.
            event: ``start``, ``epoch`` or ``step``.
            label: The slider label (``epoch 3``).

        Returns:
            The record as stored (header set; floating arrays as float32).

        Raises:
            ValueError: For a record that does not fit its kind (the message names the field).
            StoreWriteError: When the files cannot be written (the run is marked failed).
        """
        hdr = self._header_kw(
            writer=writer, layer=layer, epoch=epoch, step=step, event=event, label=label
        )
        return self._commit(_prepare(record, hdr))

    def put_async(self, record: R, **header: Any) -> Future[R]:
        """Like :meth:`put`, but encode and write on the background thread.

        The record is validated and its tensors copied to host memory now (numpy arrays are
        taken as they are and must not be changed afterwards). Write errors surface on the next
        :meth:`put_async`, :meth:`submit` or :meth:`flush`.
        """
        unknown = set(header) - {"writer", "layer", "epoch", "step", "event", "label"}
        if unknown:
            raise TypeError(f"put_async() got unexpected header fields {sorted(unknown)}")
        prepared = _prepare(record, self._header_kw(**header))
        return self.submit(self._commit, prepared)

    def _commit(self, p: _Prepared) -> Any:
        h = p.header
        with self._lock:
            rid = self._new_id(p.cls.KIND, h.get("layer"), h.get("epoch"), h.get("step"))
        specs = dict(array_specs(p.cls))
        wildcard = next((s for s in specs.values() if s.name == "*"), None)
        stored = {
            k: normalise_array(v, specs.get(k, wildcard))  # type: ignore[arg-type]
            for k, v in p.arrays.items()
        }
        rel = None
        try:
            if stored:
                rel = f"arrays/{_SAFE.sub('_', p.cls.KIND)}/{rid}.npz"
                atomic_write_bytes(self.root / rel, npz_bytes(stored))
            header = Header(
                id=rid,
                kind=p.cls.KIND,
                run=h.get("run"),
                writer=h.get("writer"),
                segment=int(h.get("segment") or 0),
                layer=h.get("layer"),
                epoch=h.get("epoch"),
                step=h.get("step"),
                event=h.get("event"),
                label=h.get("label"),
                time=time.time(),
                file=rel,
            )
            line = {**dataclasses.asdict(header), "meta": to_json(p.meta)}
            data = (json.dumps(line, allow_nan=False, sort_keys=True) + "\n").encode()
            with self._lock:
                append_line(self.root / MANIFEST, data)
        except StoreWriteError as err:
            self._mark_failed(err)
            raise
        kwargs = dict(p.meta)
        for fname, spec in specs.items():
            if spec.name == "*":
                kwargs[fname] = {k: v for k, v in stored.items() if k not in specs}
            else:
                kwargs[fname] = stored.get(fname)
        return p.cls(**kwargs, header=header)

    def _mark_failed(self, err: StoreWriteError) -> None:
        """Record a write failure in ``run.json`` where that is still possible."""
        with contextlib.suppress(OSError):
            self.update_run(status="failed", error=str(err))

    # -- the first format's API (callbacks during the transition) -------------------------------
    # -- background jobs ------------------------------------------------------------------------
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

    def _drain(self) -> None:
        """Wait for background writes before reading (their errors are kept for the writer)."""
        if getattr(self._local, "in_job", False):
            return  # a background job reading the store must not wait for itself
        while self._pending:
            self._settle(self._pending.popleft())

    def _job(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        self._local.in_job = True
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            self._local.in_job = False
            self.background_seconds += time.thread_time() - start  # one writer thread

    # -- run.json -------------------------------------------------------------------------------
    def update_run(self, **facts: Any) -> dict[str, Any]:
        """Merge ``facts`` into ``run.json`` (atomically) and return the merged mapping.

        A damaged ``run.json`` is replaced (with a warning).

        Raises:
            StoreWriteError: When it cannot be written.
        """
        with self._lock:
            current = self._read_run_info(warn=True)
            current.update(to_json(facts))
            data = json.dumps(current, indent=1, sort_keys=True, allow_nan=False).encode()
            atomic_write_bytes(self.root / RUN_FILE, data)
            return current

    def run_info(self) -> dict[str, Any]:
        """The run-level facts (``{}`` if none were written, or if ``run.json`` is damaged)."""
        self._drain()
        return self._read_run_info(warn=True)

    def _read_run_info(self, *, warn: bool) -> dict[str, Any]:
        path = self.root / RUN_FILE
        if not os.path.lexists(path):
            return {}
        try:
            data = json.loads(read_regular(path, Limits().max_run_file, what=RUN_FILE))
        except (StoreDataError, ValueError, RecursionError) as err:
            data = err
        if not isinstance(data, dict):
            if warn:
                warnings.warn(
                    f"cnnviz store {self.root}: {RUN_FILE} is damaged ({data}); it is replaced "
                    "by the next update",
                    StoreWarning,
                    stacklevel=3,
                )
            return {}
        return data

    # -- reading back ---------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the store has a manifest or run file."""
        return os.path.lexists(self.root / MANIFEST) or os.path.lexists(self.root / RUN_FILE)

    def _all_records(self, *, drain: bool = True) -> list[StoreRecord]:
        """Every valid record of the manifest (parsed incrementally), superseded ones included."""
        if drain:
            self._drain()
        with self._read_lock:
            return self._parse_new()

    def _parse_new(self) -> list[StoreRecord]:
        path = self.root / MANIFEST
        try:
            st = os.stat(path)
        except OSError:
            self._parsed, self._parsed_at, self._parsed_lines = [], None, 0
            return []
        at = self._parsed_at
        if at is None or at[:2] != (st.st_dev, st.st_ino) or st.st_size < at[2]:
            self._parsed, self._parsed_lines, offset = [], 0, 0
            self._parser.reset_ids()
        else:
            offset = at[2]
        if st.st_size > offset:
            try:
                data = self._parser.read_tail(path, offset)
            except StoreDataError as err:
                warnings.warn(f"cnnviz store {self.root}: {err}", StoreWarning, stacklevel=3)
                return list(self._parsed)
            end = data.rfind(b"\n") + 1  # complete lines only: the rest is still being written
            lines = data[:end].split(b"\n")[:-1]
            numbered = enumerate(lines, start=self._parsed_lines + 1)
            self._parsed += self._parser.parse_lines(numbered, check_arrays=False)
            self._parsed_lines += len(lines)
            self._parsed_at = (st.st_dev, st.st_ino, offset + end)
        return list(self._parsed)

    def read(
        self,
        kind: type[R] | str,
        *,
        layer: str | None = ANY,
        writer: str | None = ANY,
    ) -> list[R]:
        """Typed records of ``kind`` (every run), in the order written; arrays load lazily."""
        cls = record_class(kind)
        records, _ = supersede(self._all_records())
        return [
            r  # type: ignore[misc]
            for r in records
            if type(r) is cls
            and (layer is ANY or r.layer == layer)
            and (writer is ANY or r.writer == writer)
        ]

    def load(self, record: Record | StoreRecord) -> dict[str, np.ndarray]:
        """The arrays of ``record`` (``{}`` for a record without arrays), checked.

        Raises:
            StoreDataError: When its file is missing, outside the store or does not fit.
        """
        self._drain()
        header = record.header() if isinstance(record, Record) else record._h()
        if header.file is None:
            return {}
        resolve_array_path(self.root, header.file)
        cls = record_class(header.kind)
        return ArrayFile(self.root, header, cls, Limits()).load_all()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"


def open_writer(store: RunStore | str | os.PathLike[str], run_id: str, **kwargs: Any) -> RunStore:
    """Open ``store`` (a :class:`RunStore` or its directory) for writing as run ``run_id``.

    See :meth:`RunStore.open_writer`.
    """
    target = store if isinstance(store, RunStore) else RunStore(store)
    return target.open_writer(run_id, **kwargs)
