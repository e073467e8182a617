"""Finding a run's store and reading what the report needs from it (as untrusted input)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cnnviz.store import MANIFEST, RUN_FILE, StoreReader
from cnnviz.store.files import StoreDataError
from cnnviz.store.reader import ANY, Note
from cnnviz.store.records import (
    BudgetRecord,
    ErrorRecord,
    MetricsRecord,
    PredictionsRecord,
    ProbeRecord,
    ResumeRecord,
    StoreRecord,
)

__all__ = [
    "LayerFacts",
    "ReportError",
    "RunData",
    "find_store",
    "load_run",
    "metrics_from_records",
    "pick_events",
    "read_metrics_csv",
]

R = TypeVar("R", bound=StoreRecord)
#: Kinds several writers legitimately share: read from all of them.
_EVERY_WRITER = (ErrorRecord, BudgetRecord, ResumeRecord, MetricsRecord, ProbeRecord)


class ReportError(ValueError):
    """The report cannot be built from the given path (no store, several stores...)."""


def _is_store(path: Path) -> bool:
    return os.path.lexists(path / MANIFEST) or os.path.lexists(path / RUN_FILE)


def find_store(path: str | os.PathLike[str], *, depth: int = 3) -> Path:
    """Find the run store for ``path``.

    ``path`` may be the store itself, a run directory holding ``cnnviz/``, or a parent
    directory that holds exactly one run (searched ``depth`` levels down, without following
    symbolic links).

    Args:
        path: A store, a run directory or a parent of one run.
        depth: How many directory levels to search below ``path``.

    Returns:
        The store's root directory.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ReportError: If no store, or more than one, is found.

    Example:
        >>> find_store("runs/lenet5-shapes32-20250101-120000")
        PosixPath('runs/lenet5-shapes32-20250101-120000/cnnviz')
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"`path` {str(p)!r} does not exist; pass a run directory")
    if not p.is_dir():
        if p.name in (MANIFEST, RUN_FILE):
            return p.parent
        raise ReportError(
            f"`path` {str(p)!r} is a file; pass the run directory (the one that holds cnnviz/)"
        )
    if _is_store(p):
        return p
    if _is_store(p / "cnnviz"):
        return p / "cnnviz"
    found: list[Path] = []
    frontier = [p]
    for _ in range(depth):
        nxt: list[Path] = []
        for d in frontier:
            try:
                children = sorted(
                    c
                    for c in d.iterdir()
                    if c.is_dir() and not c.is_symlink() and not c.name.startswith(".")
                )
            except OSError:
                continue
            for c in children:
                if _is_store(c):
                    found.append(c)
                else:
                    nxt.append(c)
        frontier = nxt
    if len(found) == 1:
        return found[0]
    if not found:
        raise ReportError(
            f"no cnnviz run store (a directory with {MANIFEST} or {RUN_FILE}) under "
            f"{str(p)!r}; pass a run directory written by a fit with cnnviz callbacks, "
            "e.g. runs/<name> (it holds cnnviz/)"
        )
    listing = "\n  ".join(str(f.parent) for f in found[:20])
    raise ReportError(f"{len(found)} runs under {str(p)!r}; pass one of them:\n  {listing}")


@dataclass(frozen=True)
class LayerFacts:
    """What ``run.json`` says about one layer.

    Attributes:
        name: Qualified module name.
        type: Module class name, if known.
        kind: ``conv`` or ``pool``, if known.
        describe: The one-line description (``Conv2d(3→6, k=5, s=1, p=0)``), if known.
    """

    name: str
    type: str | None = None
    kind: str | None = None
    describe: str | None = None


def _layer_facts(entries: Any) -> list[LayerFacts]:
    """The layers of ``run.json``.

    Objects ``{name, type, kind, describe}``, or the first format's lines
    ``"<name>  <description>"``; anything else is ignored.
    """
    out: list[LayerFacts] = []
    if not isinstance(entries, list):
        return out
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):

            def text(key: str, e: dict[str, Any] = entry) -> str | None:
                v = e.get(key)
                return v if isinstance(v, str) else None

            desc = text("describe")
            if desc and desc.startswith(entry["name"] + "  "):
                desc = desc[len(entry["name"]) + 2 :]
            out.append(LayerFacts(entry["name"], text("type"), text("kind"), desc))
        elif isinstance(entry, str):  # the first format: the name, two spaces, the description
            name, _, rest = entry.partition("  ")
            desc = rest.strip() or None
            typ = desc.split("(")[0] if desc else None
            out.append(LayerFacts(name.strip(), typ, None, desc))
    return out


@dataclass
class RunData:
    """The records of one run, for the report.

    Attributes:
        reader: The store reader (typed records, notes on what was skipped).
        run_dir: The run directory (parent of the store).
        notes: Notes the report adds while drawing (records left out, figures that failed).
    """

    reader: StoreReader
    run_dir: Path
    notes: list[Note] = field(default_factory=list)
    _layers: list[LayerFacts] | None = field(default=None, repr=False)

    # -- the store ------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The store directory."""
        return self.reader.root

    @property
    def info(self) -> dict[str, Any]:
        """``run.json`` (``{}`` when missing or damaged)."""
        return self.reader.info

    @property
    def records(self) -> list[StoreRecord]:
        """Every record shown, in the order written."""
        return self.reader.records

    def all_notes(self) -> list[Note]:
        """The reader's notes and the report's, in order."""
        return [*self.reader.notes, *self.notes]

    def note(self, text: str, level: str = "damage") -> None:
        """Add a note for the page (once)."""
        n = Note(text, "info" if level == "info" else "damage")
        if n not in self.notes:
            self.notes.append(n)

    def fact(self, key: str, kind: type | tuple[type, ...] = str) -> Any:
        """A ``run.json`` value of the expected type, else ``None``."""
        value = self.info.get(key)
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            return None
        return value if isinstance(value, kind) else None

    def shape_fact(self, key: str) -> list[int] | None:
        """A ``run.json`` list of ints (``input_shape``), else ``None``."""
        value = self.info.get(key)
        if (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            return value
        return None

    # -- records --------------------------------------------------------------------------------
    def read(self, kind: type[R], layer: str | None = ANY) -> list[R]:
        """Records of ``kind`` (for ``layer``; default all layers) from one writer.

        When two writers recorded the same kind (two callbacks of one type), the one with the
        most records is kept and a note says so (errors, budget cuts, resumes, metrics and the
        probe are kept from every writer).
        """
        recs = self.reader.read(kind, layer=layer)
        if kind in _EVERY_WRITER:
            return recs
        writers = {r.writer for r in recs}
        if len(writers) > 1:
            best = max(writers, key=lambda w: (sum(r.writer == w for r in recs), str(w)))
            dropped = len([r for r in recs if r.writer != best])
            where = f" of {layer}" if isinstance(layer, str) else ""
            self.note(
                f"{kind.KIND}{where}: {len(writers)} writers recorded it; showing {best} "
                f"({dropped} records of the others are not shown)",
                "info",
            )
            recs = [r for r in recs if r.writer == best]
        return recs

    def latest(self, kind: type[R], layer: str | None = ANY) -> R | None:
        """The newest record of ``kind`` (for ``layer``), or ``None``."""
        recs = self.read(kind, layer)
        return recs[-1] if recs else None

    def loadable(self, records: Sequence[R], attr: str) -> list[R]:
        """The records whose array ``attr`` loads (the others are noted and left out)."""
        out = []
        for r in records:
            try:
                value = getattr(r, attr)
            except StoreDataError:
                continue  # the reader noted it
            if value is not None:
                out.append(r)
        return out

    def same_shape(self, records: Sequence[R], attr: str, what: str) -> list[R]:
        """The loadable records whose ``attr`` has the shape of the newest one's.

        Records of another shape (e.g. two models written to one store) are noted.
        """
        recs = self.loadable(records, attr)
        if not recs:
            return []
        want = np.shape(getattr(recs[-1], attr))
        kept = [r for r in recs if np.shape(getattr(r, attr)) == want]
        if len(kept) < len(recs):
            other = sorted({str(np.shape(getattr(r, attr))) for r in recs} - {str(want)})
            self.note(
                f"{what}: {len(recs) - len(kept)} records of another shape ({', '.join(other)}; "
                f"the newest is {want}) are not shown — did two fits write to this store?"
            )
        return kept

    # -- layers ---------------------------------------------------------------------------------
    def layer_facts(self) -> list[LayerFacts]:
        """The layers ``run.json`` lists, in the model's order."""
        if self._layers is None:
            self._layers = _layer_facts(self.info.get("layers"))
        return self._layers

    def layers(self) -> list[str]:
        """Layer names with records, in the model's order (``run.json`` ``layers``) when known."""
        seen = [r.layer for r in self.records if r.layer]
        rank = {f.name: i for i, f in enumerate(self.layer_facts())}
        uniq = list(dict.fromkeys(seen))
        return sorted(uniq, key=lambda n: (rank.get(n, len(rank)), uniq.index(n)))

    def facts_of(self, layer: str) -> LayerFacts | None:
        """What ``run.json`` says about ``layer``."""
        return next((f for f in self.layer_facts() if f.name == layer), None)

    def describe(self, layer: str) -> str | None:
        """The ``run.json`` description of ``layer`` (without its name), if any."""
        f = self.facts_of(layer)
        return None if f is None else f.describe

    @property
    def has_content(self) -> bool:
        """Whether anything worth a report was recorded."""
        return bool(self.records)

    def class_names(self) -> list[str] | None:
        """Class names from the probe, predictions or run facts."""
        for kind in (ProbeRecord, PredictionsRecord):
            rec = self.latest(kind)
            if rec is not None and rec.class_names:
                return [str(c) for c in rec.class_names]
        names = self.info.get("class_names")
        if isinstance(names, list) and names:
            return [str(c) for c in names]
        return None


def load_run(store_root: str | os.PathLike[str], *, warn: bool = True) -> RunData:
    """Read the store at ``store_root`` (damage is skipped and noted, never raised)."""
    reader = StoreReader(store_root, warn=warn)
    return RunData(reader=reader, run_dir=Path(store_root).parent)


def pick_events(records: Sequence[R], limit: int) -> list[R]:
    """At most ``limit`` records, evenly spaced, always keeping the first and the last."""
    if limit < 1 or len(records) <= limit:
        return list(records)
    idx = sorted({round(i) for i in np.linspace(0, len(records) - 1, limit)})
    return [records[i] for i in idx]


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def read_metrics_csv(
    path: str | os.PathLike[str], *, limit: int = 64 << 20
) -> tuple[list[int], dict[str, list[float | None]]]:
    """Per-epoch metrics from a CSVLogger ``metrics.csv``.

    The last value of each column in each epoch is kept. Returns ``([], {})`` when the file
    is missing, not a regular file, larger than ``limit`` bytes, or has no epoch column.

    Returns:
        ``(epochs (1-based), {metric: one value per epoch})``.
    """
    from cnnviz.store.files import read_regular

    p = Path(path)
    if not os.path.lexists(p):
        return [], {}
    try:
        text = read_regular(p, limit, what=p.name).decode("utf-8", errors="replace")
    except StoreDataError:
        return [], {}
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or "epoch" not in rows[0]:
        return [], {}
    per_epoch: dict[int, dict[str, float]] = {}
    names: list[str] = []
    for row in rows:
        epoch = _number(row.get("epoch", ""))
        if epoch is None or epoch < 0:
            continue
        slot = per_epoch.setdefault(int(epoch), {})
        for key, value in row.items():
            if key in ("epoch", "step") or key is None or not isinstance(value, str):
                continue
            v = _number(value)
            if v is not None:
                slot[key] = v
                if key not in names:
                    names.append(key)
    epochs = sorted(per_epoch)
    return [e + 1 for e in epochs], {n: [per_epoch[e].get(n) for e in epochs] for n in names}


def metrics_from_records(
    records: Iterable[MetricsRecord],
) -> tuple[list[int], dict[str, list[float | None]]]:
    """Per-epoch metrics from ``metrics`` records (the last record of each epoch wins)."""
    per_epoch: dict[int, dict[str, float]] = {}
    names: list[str] = []
    for r in records:
        if r.epoch is None:
            continue
        slot = per_epoch.setdefault(int(r.epoch), {})
        for k, v in (r.values or {}).items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                slot[k] = float(v)
                if k not in names:
                    names.append(k)
    epochs = sorted(per_epoch)
    return [e + 1 for e in epochs], {n: [per_epoch[e].get(n) for e in epochs] for n in names}
