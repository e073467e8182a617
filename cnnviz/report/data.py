"""Finding a run's store and reading what the report needs from it."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnviz.store import MANIFEST, RUN_FILE, Record, RunStore

__all__ = ["ReportError", "RunData", "find_store", "load_run", "pick_events", "read_metrics_csv"]


class ReportError(ValueError):
    """The report cannot be built from the given path (no store, several stores...)."""


def _is_store(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / RUN_FILE).is_file()


def find_store(path: str | os.PathLike[str], *, depth: int = 3) -> Path:
    """Find the run store for ``path``.

    ``path`` may be the store itself, a run directory holding ``cnnviz/``, or a parent
    directory that holds exactly one run (searched ``depth`` levels down).

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
    if p.is_file():
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
                    c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")
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


@dataclass
class RunData:
    """The records of one run, grouped for the report.

    Attributes:
        store: The run store.
        run_dir: The run directory (parent of the store).
        info: ``run.json``.
        records: Every manifest record, in the order written.
    """

    store: RunStore
    run_dir: Path
    info: dict[str, Any]
    records: list[Record]
    _cache: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def of(self, kind: str, layer: str | None = None, *, any_layer: bool = False) -> list[Record]:
        """Records of ``kind`` (for ``layer``; all layers with ``any_layer``), one source."""
        recs = [r for r in self.records if r.kind == kind and (any_layer or r.layer == layer)]
        sources = {r.source for r in recs}
        if len(sources) > 1:  # two writers of one kind: keep the one with the most records
            best = max(sources, key=lambda s: (sum(r.source == s for r in recs), str(s)))
            recs = [r for r in recs if r.source == best]
        return recs

    def latest(self, kind: str, layer: str | None = None) -> Record | None:
        """The newest record of ``kind`` (for ``layer``), or ``None``."""
        recs = self.of(kind, layer)
        return recs[-1] if recs else None

    def arrays(self, record: Record) -> dict[str, np.ndarray]:
        """The record's arrays (cached; ``{}`` when its file is missing or unreadable)."""
        if record.id not in self._cache:
            try:
                self._cache[record.id] = self.store.load(record)
            except (OSError, ValueError) as err:
                self._cache[record.id] = {"__error__": np.asarray(str(err))}
        return self._cache[record.id]

    def layers(self) -> list[str]:
        """Layer names with records, in the model's order (``run.json`` ``layers``) when known."""
        seen = [r.layer for r in self.records if r.layer]
        order = [str(s).split("  ")[0].strip() for s in self.info.get("layers") or []]
        rank = {name: i for i, name in enumerate(order)}
        uniq = list(dict.fromkeys(seen))
        return sorted(uniq, key=lambda n: (rank.get(n, len(rank)), uniq.index(n)))

    def describe(self, layer: str) -> str | None:
        """The ``run.json`` description line of ``layer`` (without its name), if any."""
        for s in self.info.get("layers") or []:
            name, _, rest = str(s).partition("  ")
            if name.strip() == layer:
                return rest.strip()
        return None

    @property
    def has_content(self) -> bool:
        """Whether anything worth a report was recorded."""
        return bool(self.records)

    def class_names(self) -> list[str] | None:
        """Class names from the probe, predictions or run facts."""
        for kind in ("probe", "predictions"):
            rec = self.latest(kind)
            if rec is not None and rec.meta.get("class_names"):
                return [str(c) for c in rec.meta["class_names"]]
        names = self.info.get("class_names")
        return [str(c) for c in names] if names else None


def load_run(store_root: str | os.PathLike[str]) -> RunData:
    """Read the manifest and run facts of the store at ``store_root``."""
    store = RunStore(store_root)
    return RunData(
        store=store,
        run_dir=Path(store_root).parent,
        info=store.run_info() if (Path(store_root) / RUN_FILE).exists() else {},
        records=list(store),
    )


def pick_events(records: list[Record], limit: int) -> list[Record]:
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
    path: str | os.PathLike[str],
) -> tuple[list[int], dict[str, list[float | None]]]:
    """Per-epoch metrics from a CSVLogger ``metrics.csv``.

    The last value of each column in each epoch is kept. Returns ``([], {})`` when the file
    is missing or has no epoch column.

    Returns:
        ``(epochs (1-based), {metric: one value per epoch})``.
    """
    p = Path(path)
    if not p.is_file():
        return [], {}
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "epoch" not in rows[0]:
        return [], {}
    per_epoch: dict[int, dict[str, float]] = {}
    names: list[str] = []
    for row in rows:
        epoch = _number(row.get("epoch", ""))
        if epoch is None:
            continue
        slot = per_epoch.setdefault(int(epoch), {})
        for key, text in row.items():
            if key in ("epoch", "step") or key is None:
                continue
            v = _number(text)
            if v is not None:
                slot[key] = v
                if key not in names:
                    names.append(key)
    epochs = sorted(per_epoch)
    return [e + 1 for e in epochs], {n: [per_epoch[e].get(n) for e in epochs] for n in names}


def metrics_from_records(
    records: Iterable[Record],
) -> tuple[list[int], dict[str, list[float | None]]]:
    """Per-epoch metrics from ``metrics`` records (the last record of each epoch wins)."""
    per_epoch: dict[int, dict[str, float]] = {}
    names: list[str] = []
    for r in records:
        if r.epoch is None:
            continue
        values = r.meta.get("values") or {}
        slot = per_epoch.setdefault(int(r.epoch), {})
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(float(v)):
                slot[k] = float(v)
                if k not in names:
                    names.append(k)
    epochs = sorted(per_epoch)
    return [e + 1 for e in epochs], {n: [per_epoch[e].get(n) for e in epochs] for n in names}
