"""Reading a run store that may be damaged, truncated or hostile.

A run directory is something people copy, share and open later, so the reader trusts nothing:

- each manifest line must be a JSON object with exactly the keys of a record (this format or
  the first one), a known kind, header values of the right types and meta fields that fit the
  kind's declaration; anything else is skipped with one warning and kept as a :class:`Note`;
- array files must be inside the store's ``arrays/`` folder (no absolute paths, no ``..``, no
  symbolic links out), regular files under a size cap, opened without blocking, ``.npz``
  archives whose member names, dtypes and shapes fit the kind (checked from the headers);
  arrays load lazily, with ``allow_pickle=False``;
- a damaged ``run.json`` is a note, not an error;
- records of earlier segments after a resume's step are superseded (a resumed fit's history
  continues as one line), and records of other runs written to the same store are left out
  (with a note).

Example:
    >>> reader = StoreReader("runs/x/cnnviz")
    >>> [r.label for r in reader.read(FiltersRecord, layer="features.0")]
    ['start', 'epoch 1', 'epoch 2']
    >>> [n.text for n in reader.notes]
    []
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cnnviz.store.arrays import ArrayFile, describe
from cnnviz.store.files import (
    Limits,
    StoreDataError,
    read_regular,
    resolve_array_path,
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
    check_value,
    type_hints,
)

__all__ = [
    "ANY",
    "HEARTBEAT_STALE",
    "MANIFEST",
    "RUN_FILE",
    "Note",
    "StoreReader",
    "StoreWarning",
    "parse_line",
    "supersede",
]

MANIFEST = "manifest.jsonl"
RUN_FILE = "run.json"
#: Seconds without a heartbeat after which a running writer counts as stopped.
HEARTBEAT_STALE = 60.0

HEADER_KEYS = frozenset(
    ("id", "kind", "run", "writer", "segment", "layer", "epoch", "step", "event", "label")
) | {"time", "file", "meta"}
LEGACY_KEYS = frozenset(("id", "kind", "source", "layer", "epoch", "step", "file", "meta", "time"))
EVENTS = ("start", "epoch", "step")
_MAX_WARNINGS = 20

R = TypeVar("R", bound=StoreRecord)


class _AnyType:
    """The default of query filters: match any value (``None`` matches records without one)."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _AnyType()


class StoreWarning(UserWarning):
    """Part of a run store was skipped (damaged, unsafe or missing)."""


@dataclass(frozen=True)
class Note:
    """Something the reader skipped or changed, for the report to show.

    Attributes:
        text: One sentence, e.g. ``"line 17 is not a record (a JSON list)"``.
        level: ``"damage"`` (data skipped) or ``"info"`` (e.g. records a resumed fit replaced).
    """

    text: str
    level: Literal["damage", "info"] = "damage"


def _json_type(value: Any) -> str:
    return {
        list: "a JSON list",
        str: "a JSON string",
        int: "a JSON number",
        float: "a JSON number",
        bool: "a JSON boolean",
        type(None): "JSON null",
    }.get(type(value), "not an object")


def _opt(obj: dict[str, Any], key: str, tp: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (tp if isinstance(tp, tuple) else (tp,)):
        raise RecordError(f"`{key}` must be {what}; got {value!r}")
    if not isinstance(value, tp):
        raise RecordError(f"`{key}` must be {what}; got {str(value)[:40]!r}")
    return value


def _count(obj: dict[str, Any], key: str) -> int | None:
    value = _opt(obj, key, int, "an int >= 0 or null")
    if value is not None and value < 0:
        raise RecordError(f"`{key}` must be an int >= 0 or null; got {value}")
    return value


def parse_line(obj: Any) -> tuple[Header, dict[str, Any]]:
    """The header and raw meta of one manifest line (either format), checked.

    Args:
        obj: The line's decoded JSON.

    Returns:
        ``(header, meta)``; ``meta`` still has to be checked against the kind.

    Raises:
        RecordError: With a short reason (``is not a record (a JSON list)``...).
    """
    if not isinstance(obj, dict):
        raise RecordError(f"is not a record ({_json_type(obj)})")
    legacy = "source" in obj or not ({"run", "writer", "segment"} & set(obj))
    allowed = LEGACY_KEYS if legacy else HEADER_KEYS
    extra = sorted(set(obj) - allowed, key=str)
    if extra:
        raise RecordError(f"has an unknown key {str(extra[0])[:40]!r}")
    for key in ("id", "kind"):
        if not isinstance(obj.get(key), str) or not obj[key] or len(obj[key]) > 512:
            raise RecordError(f"has no valid `{key}`")
    kind = obj["kind"]
    if kind not in KINDS:
        raise RecordError(f"has an unknown kind {kind[:40]!r}")
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RecordError(f"has a `meta` that is {_json_type(meta)}")
    meta = dict(meta)
    t = obj.get("time", 0.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise RecordError("has a `time` that is not a number")
    if legacy:
        event, label = meta.pop("event", None), meta.pop("label", None)
        writer = _opt(obj, "source", str, "a string or null")
        run, segment = None, 0
        if event not in EVENTS:
            event = None
        if not isinstance(label, str):
            label = None
    else:
        event, label = obj.get("event"), _opt(obj, "label", str, "a string or null")
        if event is not None and event not in EVENTS:
            raise RecordError(f"has an unknown `event` {str(event)[:20]!r}")
        writer = _opt(obj, "writer", str, "a string or null")
        run = _opt(obj, "run", str, "a string or null")
        segment = _count(obj, "segment") or 0
    header = Header(
        id=obj["id"],
        kind=kind,
        run=run,
        writer=writer,
        segment=segment,
        layer=_opt(obj, "layer", str, "a string or null"),
        epoch=_count(obj, "epoch"),
        step=_count(obj, "step"),
        event=event,
        label=label,
        time=float(t),
        file=_opt(obj, "file", str, "a string or null"),
    )
    cls = KINDS[kind]
    if cls.LAYER == "required" and header.layer is None:
        raise RecordError(f"is a {kind} record without a `layer`")
    return header, meta


def check_meta(cls: type[StoreRecord], meta: dict[str, Any], *, strict: bool) -> dict[str, Any]:
    """The meta fields of ``cls`` from raw ``meta``, checked (unknown keys: error if ``strict``).

    Raises:
        RecordError: Naming the field.
    """
    hints = type_hints(cls)
    fields = {f.name: f for f in meta_fields(cls)}
    if strict:
        unknown = sorted(set(meta) - set(fields) - cls.IGNORED_META)
        if unknown:
            raise RecordError(
                f"{cls.__name__}: `{unknown[0]}` is not a field of {cls.KIND} records; fields "
                f"are: {', '.join(fields) or '(none)'}"
            )
    out: dict[str, Any] = {}
    for name, f in fields.items():
        if name in meta:
            out[name] = check_value(meta[name], hints[name], name, strict=strict)
        elif _required(f):
            raise RecordError(f"{cls.__name__}: `{name}` is required")
    return out


def _required(f: Any) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def build_record(cls: type[R], header: Header, meta: dict[str, Any], arrays: ArrayFile | None) -> R:
    """A record of ``cls`` with checked meta values and lazy arrays."""
    kwargs = dict(meta)
    for fname, spec in array_specs(cls):
        if arrays is None:
            if spec.required:
                raise RecordError(f"is a {cls.KIND} record without an array file")
            kwargs[fname] = {} if spec.name == "*" else None
        else:
            kwargs[fname] = _Lazy(arrays, spec.name if spec.name == "*" else fname)
    return cls(**kwargs, header=header)


def supersede(records: list[StoreRecord]) -> tuple[list[StoreRecord], tuple[int, int]]:
    """Drop the records a resumed fit replaced.

    A ``resume`` record of segment ``s`` at step ``S`` voids every record of an earlier segment
    with a step after ``S``. A series of one writer, kind and layer whose step goes back without
    a resume record (stores of older versions) keeps the later records from that step on.

    Returns:
        The records kept, in order, and ``(voided by resume records, replaced in series)``.
    """
    void: set[str] = set()
    for res in records:
        if not isinstance(res, ResumeRecord) or res.step is None:
            continue
        seg = res._h().segment
        for r in records:
            h = r._h()
            if h.segment < seg and h.step is not None and h.step > res.step and h.kind != "resume":
                void.add(h.id)
    series: dict[tuple[Any, ...], list[StoreRecord]] = {}
    tops: dict[tuple[Any, ...], int] = {}
    legacy: set[str] = set()
    for r in records:
        h = r._h()
        if h.id in void or h.step is None or h.kind == "resume":
            continue
        key = (h.run, h.writer, h.kind, h.layer)
        kept = series.setdefault(key, [])
        if h.step < tops.get(key, -1):  # back in time: a resumed fit rewrites from here
            for k in kept:
                if (k.step or 0) >= h.step:
                    legacy.add(k.id)
            kept[:] = [k for k in kept if k.id not in legacy]
            tops[key] = h.step
        kept.append(r)
        tops[key] = max(h.step, tops.get(key, -1))
    kept_all = [r for r in records if r.id not in void and r.id not in legacy]
    return kept_all, (len(void), len(legacy))


class StoreReader:
    """Every readable record of a store, with notes on what was skipped.

    Args:
        root: The store directory (the one holding ``manifest.jsonl``).
        check_arrays: Check every record's array file now (a record whose file is missing or
            does not fit is skipped with a note); ``False`` checks each when it is loaded.
        limits: Caps on file and array sizes.
        warn: Emit one :class:`StoreWarning` per problem (at most 20, then a summary).

    Attributes:
        notes: What was skipped or changed, in order.
        info: ``run.json`` (``{}`` when missing or damaged).
        everything: Valid, not superseded records of every run, in the order written.
        records: Those of the run shown: ``run.json``'s run (and the runs it continues).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        check_arrays: bool = True,
        limits: Limits | None = None,
        warn: bool = True,
        load: bool = True,
    ) -> None:
        self.root = Path(root)
        self.limits = limits or Limits()
        self.notes: list[Note] = []
        self._warn = warn
        self._warned = 0
        self._seen: set[str] = set()
        self.info: dict[str, Any] = {}
        self.everything: list[StoreRecord] = []
        self.records: list[StoreRecord] = []
        self.current_run: str | None = None
        if not load:
            return
        self.info = self._read_info()
        records = self._read_manifest(check_arrays)
        self.everything, (void, legacy) = supersede(records)
        if void:
            self.note(
                f"a resumed fit replaced {void} records written after its resume step", "info"
            )
        if legacy:
            self.note(
                f"{legacy} records were replaced by later ones of an earlier step (a fit "
                "resumed without a resume record)",
                "info",
            )
        self.current_run, self.records = self._select_run(self.everything)

    # -- notes ----------------------------------------------------------------------------------
    def note(self, text: str, level: Literal["damage", "info"] = "damage") -> None:
        """Record a note (and warn for damage)."""
        self.notes.append(Note(text, level))
        if level == "damage" and self._warn:
            self._warned += 1
            if self._warned <= _MAX_WARNINGS:
                warnings.warn(f"cnnviz store {self.root}: {text}", StoreWarning, stacklevel=3)
            elif self._warned == _MAX_WARNINGS + 1:
                warnings.warn(
                    f"cnnviz store {self.root}: more problems; the report lists them all",
                    StoreWarning,
                    stacklevel=3,
                )

    @property
    def damage(self) -> list[Note]:
        """The notes about skipped data."""
        return [n for n in self.notes if n.level == "damage"]

    # -- run.json -------------------------------------------------------------------------------
    def _read_info(self) -> dict[str, Any]:
        path = self.root / RUN_FILE
        if not path.exists() and not path.is_symlink():
            return {}
        try:
            data = json.loads(read_regular(path, self.limits.max_run_file, what=RUN_FILE))
        except StoreDataError as err:
            self.note(f"{err}; the run's facts are not shown")
            return {}
        except (ValueError, RecursionError) as err:
            self.note(f"{RUN_FILE} is damaged (not JSON: {err}); the run's facts are not shown")
            return {}
        if not isinstance(data, dict):
            self.note(f"{RUN_FILE} is {_json_type(data)}, not an object; not shown")
            return {}
        return data

    # -- manifest -------------------------------------------------------------------------------
    def _read_manifest(self, check_arrays: bool) -> list[StoreRecord]:
        path = self.root / MANIFEST
        if not path.exists() and not path.is_symlink():
            return []
        try:
            data = read_regular(path, self.limits.max_manifest, what=MANIFEST)
        except StoreDataError as err:
            if "larger than" not in str(err):
                self.note(f"{err}; no records shown")
                return []
            data = self._head(path)
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: a line still being written, or torn
        if tail.strip() and self.info.get("status") != "running":
            self.note(
                f"the last line of {MANIFEST} is cut short ({len(tail):,} bytes; the writer "
                "stopped while writing it); skipped"
            )
        return self.parse_lines(enumerate(lines, start=1), check_arrays=check_arrays)

    def _head(self, path: Path) -> bytes:
        """The first ``max_manifest`` bytes of an oversized manifest (noted)."""
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags)
        try:
            data = os.read(fd, self.limits.max_manifest)
        finally:
            os.close(fd)
        self.note(
            f"{MANIFEST} is larger than {self.limits.max_manifest:,} bytes; only its beginning "
            "is read"
        )
        return data[: data.rfind(b"\n") + 1]  # the cut line is dropped

    def parse_lines(
        self, lines: Iterable[tuple[int, bytes]], *, check_arrays: bool
    ) -> list[StoreRecord]:
        """Records from numbered manifest lines; each bad one becomes a note."""
        out: list[StoreRecord] = []
        seen = self._seen
        for n, raw in lines:
            if not raw.strip():
                continue
            rec = self._parse(n, raw, check_arrays=check_arrays)
            if rec is None:
                continue
            if rec.id in seen:
                self.note(f"line {n} repeats the id of an earlier record; skipped")
                continue
            seen.add(rec.id)
            out.append(rec)
        return out

    def _parse(self, n: int, raw: bytes, *, check_arrays: bool) -> StoreRecord | None:
        where = f"line {n} of {MANIFEST}"
        if len(raw) > self.limits.max_line:
            self.note(f"{where} is longer than {self.limits.max_line:,} bytes; skipped")
            return None
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            self.note(f"{where} is damaged (not JSON); skipped")
            return None
        try:
            header, meta = parse_line(obj)
            cls = KINDS[header.kind]
            values = check_meta(cls, meta, strict=False)
        except RecordError as err:
            sep = " " if str(err).startswith(("is ", "has ")) else ": "
            self.note(f"{where}{sep}{err}; skipped")
            return None
        arrays = None
        if header.file is not None:
            try:
                resolve_array_path(self.root, header.file)
            except StoreDataError as err:
                self.note(f"{where}: {err}; {describe(header)} not shown")
                return None
            if not array_specs(cls):
                self.note(f"{where}: a {cls.KIND} record has no arrays but names a file; skipped")
                return None
            index = None
            if check_arrays:
                try:
                    probe = ArrayFile(self.root, header, cls, self.limits)
                    with probe._open() as fh:
                        index = probe.check(fh)
                except StoreDataError as err:
                    self.note(f"{err}: {describe(header)} not shown")
                    return None
            arrays = ArrayFile(
                self.root, header, cls, self.limits, index=index, on_error=self._late_error
            )
        try:
            return build_record(cls, header, values, arrays)
        except RecordError as err:
            self.note(f"{where} {err}; skipped")
            return None

    def _late_error(self, text: str) -> None:
        if Note(text) not in self.notes:
            self.note(text)

    def reset_ids(self) -> None:
        """Forget the ids seen (before parsing a manifest again from its start)."""
        self._seen.clear()

    def read_tail(self, path: Path, offset: int) -> bytes:
        """The bytes of the manifest ``path`` from ``offset`` on (regular file, never blocking).

        Raises:
            StoreDataError: When it is not a regular file, or what is left is over the cap.
        """
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags)
        except OSError as err:
            raise StoreDataError(f"{MANIFEST} cannot be opened ({err.strerror or err})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StoreDataError(f"{MANIFEST} is not a regular file; not read")
            if st.st_size - offset > self.limits.max_manifest:
                raise StoreDataError(f"{MANIFEST} is larger than the limit; not read")
            os.lseek(fd, offset, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 1 << 22)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _select_run(self, records: list[StoreRecord]) -> tuple[str | None, list[StoreRecord]]:
        runs = [r.run for r in records if r.run is not None]
        current = self.info.get("run")
        if not isinstance(current, str) or (runs and current not in runs):
            current = runs[-1] if runs else (current if isinstance(current, str) else None)
        if current is None:
            return None, records
        chain = {current}
        grew = True
        while grew:
            grew = False
            for r in records:
                prev = r.previous_run if isinstance(r, ResumeRecord) and r.run in chain else None
                if prev and prev not in chain:
                    chain.add(prev)
                    grew = True
        shown = [r for r in records if r.run is None or r.run in chain]
        others = sorted({str(r.run) for r in records if r.run is not None and r.run not in chain})
        if others:
            count = len(records) - len(shown)
            self.note(
                f"{count} records of {len(others)} other run(s) ({', '.join(others[:3])}) "
                f"written to the same store are not shown; this report shows run {current}"
            )
        return current, shown

    # -- queries --------------------------------------------------------------------------------
    def read(
        self,
        kind: type[R] | str,
        *,
        layer: str | None = ANY,
        writer: str | None = ANY,
        all_runs: bool = False,
    ) -> list[R]:
        """The records of ``kind`` (for ``layer``, by ``writer``), in the order written.

        Args:
            kind: A record class (``FiltersRecord``) or kind name.
            layer: Only this layer (``None``: records without a layer); default any.
            writer: Only this writer; default any.
            all_runs: Include records of other runs written to the same store.

        Returns:
            Typed records; their arrays load when first used.
        """
        cls = record_class(kind)
        pool = self.everything if all_runs else self.records
        return [
            r
            for r in pool
            if type(r) is cls
            and (layer is ANY or r.layer == layer)
            and (writer is ANY or r.writer == writer)
        ]

    def latest(self, kind: type[R] | str, *, layer: str | None = ANY) -> R | None:
        """The newest record of ``kind`` (for ``layer``), or ``None``."""
        recs = self.read(kind, layer=layer)
        return recs[-1] if recs else None

    def heartbeat_age(self, now: float | None = None) -> float | None:
        """Seconds since the writer's last heartbeat (``run.json``), or ``None`` if unknown."""
        beat = self.info.get("heartbeat")
        if isinstance(beat, bool) or not isinstance(beat, (int, float)):
            return None
        return (time.time() if now is None else now) - float(beat)

    def writer_stopped(self, now: float | None = None) -> bool:
        """Whether ``run.json`` says running but the heartbeat is older than the limit."""
        age = self.heartbeat_age(now)
        return self.info.get("status") == "running" and age is not None and age > HEARTBEAT_STALE
