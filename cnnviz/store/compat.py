"""The untyped API of the first store format, kept for writers and readers that use it.

``RunStore.write(kind, arrays, meta=...)`` maps ``kind`` + ``meta`` onto the typed record
classes of :mod:`cnnviz.store.records` (validated like :meth:`RunStore.put`), and
``records()``/iteration give :class:`Record` objects with a ``meta`` dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cnnviz.store.reader import EVENTS, supersede
from cnnviz.store.records import Header, StoreRecord, meta_fields, record_class
from cnnviz.store.schema import RecordError, array_specs, to_json

__all__ = ["Record", "UntypedAPI"]


@dataclass(frozen=True)
class Record:
    """A record in the untyped form of the first store format (see :meth:`RunStore.write`).

    Attributes:
        id: Unique id within the store (also the arrays' file name).
        kind: What was recorded (``filters``, ``activations``, ``metrics``...).
        source: Which callback (its ``state_key``) wrote it (the typed header's ``writer``).
        layer: Qualified layer name, if the record is about one layer.
        epoch: Trainer epoch at the event.
        step: Trainer global step at the event.
        file: Path of the ``.npz`` file relative to the store root, or ``None``.
        meta: The record's meta fields, plus ``event`` and ``label`` when set.
        time: Wall-clock time of the write.
        run: The run id (``None`` without a run session).
        segment: The resume segment.
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
    run: str | None = None
    segment: int = 0

    @classmethod
    def from_typed(cls, record: StoreRecord) -> Record:
        """The untyped form of a typed record."""
        h = record._h()
        meta = to_json(record)
        if h.event is not None:
            meta["event"] = h.event
        if h.label is not None:
            meta["label"] = h.label
        return cls(
            id=h.id,
            kind=h.kind,
            source=h.writer,
            layer=h.layer,
            epoch=h.epoch,
            step=h.step,
            file=h.file,
            meta=meta,
            time=h.time,
            run=h.run,
            segment=h.segment,
        )

    def header(self) -> Header:
        """The typed header of this record."""
        meta = self.meta or {}
        event = meta.get("event")
        return Header(
            id=self.id,
            kind=self.kind,
            run=self.run,
            writer=self.source,
            segment=self.segment,
            layer=self.layer,
            epoch=self.epoch,
            step=self.step,
            event=event if event in EVENTS else None,
            label=meta.get("label") if isinstance(meta.get("label"), str) else None,
            time=self.time,
            file=self.file,
        )


class UntypedAPI:
    """The first format's ``write``, ``write_async``, ``records`` and iteration.

    A mixin of :class:`~cnnviz.store.RunStore`.
    """

    put: Callable[..., Any]
    submit: Callable[..., Future[Any]]
    _header_kw: Callable[..., dict[str, Any]]
    _commit: Callable[..., Any]
    _all_records: Callable[..., list[StoreRecord]]

    def _typed(
        self,
        kind: str,
        arrays: Mapping[str, Any] | None,
        meta: Mapping[str, Any] | None,
    ) -> tuple[StoreRecord, str | None, str | None]:
        cls = record_class(kind)
        values = dict(meta or {})
        event, label = values.pop("event", None), values.pop("label", None)
        for key in cls.IGNORED_META:
            values.pop(key, None)
        fields = {f.name for f in meta_fields(cls)}
        unknown = sorted(set(values) - fields, key=str)
        if unknown:
            raise RecordError(
                f"{cls.__name__}: meta `{unknown[0]}` is not a field of {kind} records; "
                f"fields are: {', '.join(sorted(fields)) or '(none)'}"
            )
        specs = array_specs(cls)
        named = {fname for fname, s in specs if s.name != "*"}
        wild = next((fname for fname, s in specs if s.name == "*"), None)
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in (arrays or {}).items():
            if key in named:
                kwargs[key] = value
            elif wild is not None:
                extra[key] = value
            else:
                raise RecordError(
                    f"{cls.__name__}: array `{key}` is not an array of {kind} records; arrays "
                    f"are: {', '.join(sorted(named))}"
                )
        if wild is not None:
            kwargs[wild] = extra
        for f in dataclasses.fields(cls):
            required = (
                f.init
                and f.name != "header"
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            )
            if required and f.name not in kwargs and f.name not in values:
                what = "array" if "array" in f.metadata else "meta"
                raise RecordError(f"{cls.__name__}: {what} `{f.name}` is required")
        # Meta is checked (and JSON-converted) in _prepare; values here are the caller's.
        return cls(**kwargs, **values), event, label

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
        """Write a record given as ``kind``, arrays and ``meta`` (the first format's API).

        ``meta["event"]`` and ``meta["label"]`` go to the header; the rest must be the fields
        of the kind's record class (:mod:`cnnviz.store.records`), and the arrays its arrays.

        Args:
            kind: Record kind (``filters``, ``activations``...).
            arrays: Name to array (numpy arrays or tensors).
            source: The writer's ``state_key``.
            layer: Layer name, if any.
            epoch: Epoch of the event.
            step: Global step of the event.
            meta: The record's fields, plus ``event`` and ``label``.

        Returns:
            The record written, in the untyped form.

        Raises:
            ValueError: For an unknown kind or a record that does not fit it (names the field).
            StoreWriteError: When the files cannot be written.
        """
        record, event, label = self._typed(kind, arrays, meta)
        written = self.put(
            record,
            writer=source,
            layer=layer,
            epoch=epoch,
            step=step,
            event=event,
            label=label,
        )
        return Record.from_typed(written)

    def write_async(
        self, kind: str, arrays: Mapping[str, Any] | None = None, **fields: Any
    ) -> Future[Record]:
        """Like :meth:`write`, but encode and write on the background thread.

        The record is validated now (a bad one raises here); tensors are copied to host memory
        now. Errors of the write surface on the next :meth:`submit`, :meth:`write_async` or
        :meth:`flush`.

        Args:
            kind: Record kind.
            arrays: Name to array.
            **fields: ``source``, ``layer``, ``epoch``, ``step``, ``meta`` as for :meth:`write`.

        Returns:
            A future of the record.
        """
        unknown = set(fields) - {"source", "layer", "epoch", "step", "meta"}
        if unknown:
            raise TypeError(f"write_async() got unexpected arguments {sorted(unknown)}")
        from cnnviz.store.writer import _prepare

        record, event, label = self._typed(kind, arrays, fields.get("meta"))
        prepared = _prepare(
            record,
            self._header_kw(
                writer=fields.get("source"),
                layer=fields.get("layer"),
                epoch=fields.get("epoch"),
                step=fields.get("step"),
                event=event,
                label=label,
            ),
        )
        return self.submit(lambda: Record.from_typed(self._commit(prepared)))

    def __iter__(self) -> Iterator[Record]:
        records, _ = supersede(self._all_records())
        for r in records:
            yield Record.from_typed(r)

    def records(
        self,
        kind: str | None = None,
        *,
        layer: str | None = None,
        source: str | None = None,
    ) -> list[Record]:
        """Records filtered by kind, layer and source (writer), in the order written.

        Damaged lines are skipped with a warning; records a resumed fit replaced are left out.
        """
        return [
            r
            for r in self
            if (kind is None or r.kind == kind)
            and (layer is None or r.layer == layer)
            and (source is None or r.source == source)
        ]
