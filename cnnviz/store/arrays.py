"""``ArrayFile``: one record's arrays, read lazily from its ``.npz`` file and checked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from cnnviz.store.files import (
    Limits,
    StoreDataError,
    npz_index,
    npz_load,
    open_regular,
    resolve_array_path,
)
from cnnviz.store.records import Header, StoreRecord
from cnnviz.store.schema import (
    ArraySpec,
    RecordError,
    array_specs,
    check_array,
    check_header_array,
)

__all__ = ["ArrayFile", "describe"]


def describe(header: Header) -> str:
    """``epoch 3 of features.0 filters`` — what a record is, for notes."""
    label = header.label or (f"epoch {header.epoch + 1}" if header.epoch is not None else "")
    parts = [label, "of" if label and header.layer else "", header.layer or "", header.kind]
    return " ".join(p for p in parts if p)


class ArrayFile:
    """The arrays of one record, loaded lazily from its ``.npz`` file and checked.

    Args:
        root: The store.
        header: The record's header (its ``file`` names the archive).
        cls: The record class (its array declarations).
        limits: Caps on sizes.
        index: Member name to ``(dtype, shape)`` when already read.
        on_error: Called with a note when a later load fails.
    """

    def __init__(
        self,
        root: Path,
        header: Header,
        cls: type[StoreRecord],
        limits: Limits,
        *,
        index: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root
        self.header = header
        self.cls = cls
        self.limits = limits
        self._index = index
        self._cache: dict[str, np.ndarray] = {}
        self._on_error = on_error
        self._specs = dict((s.name, s) for _, s in array_specs(cls))

    @property
    def what(self) -> str:
        """The file, for messages."""
        return str(self.header.file)

    def _open(self) -> BinaryIO:
        path = resolve_array_path(self.root, self.header.file)
        return open_regular(path, self.limits.max_array_file, what=self.what)

    @property
    def names(self) -> list[str]:
        """The archive's array names (reads and checks the headers once)."""
        if self._index is None:
            with self._open() as fh:
                self._index = self.check(fh)
        return list(self._index)

    def spec(self, name: str) -> ArraySpec | None:
        """The declaration that covers array ``name``, if any."""
        return self._specs.get(name) or self._specs.get("*")

    def check(self, source: bytes | BinaryIO) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Check an archive's members against the kind's declarations (headers only).

        Raises:
            StoreDataError: Naming the member and the problem.
        """
        index = npz_index(source, what=self.what, limit=self.limits.max_array_bytes)
        for name, (dtype, shape) in index.items():
            spec = self.spec(name)
            if spec is None:
                raise StoreDataError(f"{self.what} holds an unexpected array {name!r}")
            why = check_header_array(dtype, shape, spec)
            if why is not None:
                raise StoreDataError(f"{self.what}: array {name!r} has {why}")
        missing = [s.name for s in self._specs.values() if s.required and s.name != "*"]
        missing = [n for n in missing if n not in index]
        if missing:
            raise StoreDataError(f"{self.what} has no array {missing[0]!r}")
        wild = self._specs.get("*")
        if wild is not None and wild.required and not [n for n in index if n not in self._specs]:
            raise StoreDataError(f"{self.what} holds no arrays")
        return index

    def get(self, name: str) -> Any:
        """Array ``name`` (``None`` when absent), or for ``"*"`` a dict of the undeclared ones.

        Raises:
            StoreDataError: When the file became unreadable since it was listed.
        """
        if name == "*":
            return {n: self._load(n) for n in self.names if n not in self._specs}
        if name not in self.names:
            return None
        return self._load(name)

    def load_all(self) -> dict[str, np.ndarray]:
        """Every array of the archive, checked."""
        with self._open() as fh:
            self._index = self.check(fh)
            for name in self._index:
                if name not in self._cache:
                    self._cache[name] = self._decode(fh, name)
        return dict(self._cache)

    def _load(self, name: str) -> np.ndarray:
        if name not in self._cache:
            try:
                with self._open() as fh:
                    self._index = self.check(fh)  # the file may have changed since it was listed
                    if name not in self._index:
                        raise StoreDataError(f"{self.what} has no array {name!r}")
                    self._cache[name] = self._decode(fh, name)
            except StoreDataError as err:
                if self._on_error is not None:
                    self._on_error(f"{err}: {describe(self.header)} not shown")
                raise
        return self._cache[name]

    def _decode(self, source: bytes | BinaryIO, name: str) -> np.ndarray:
        arr = npz_load(source, name, what=self.what)
        spec = self.spec(name)
        if spec is None:  # pragma: no cover - check() ran first
            raise StoreDataError(f"{self.what} holds an unexpected array {name!r}")
        try:
            return check_array(arr, spec, name)
        except RecordError as err:
            raise StoreDataError(f"{self.what}: {err}") from None
