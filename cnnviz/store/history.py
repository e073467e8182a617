"""``copy_history``: an earlier run's records, up to a resume step, in another store."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path

from cnnviz.store.files import StoreDataError, append_line, resolve_array_path
from cnnviz.store.reader import MANIFEST, StoreReader, StoreWarning
from cnnviz.store.schema import to_json
from cnnviz.store.writer import RunStore

__all__ = ["copy_history"]


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(f".{dst.name}.copy")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


_NOT_COPIED = {"status", "error", "heartbeat", "writer", "run"}


def copy_history(
    src: RunStore | str | os.PathLike[str],
    dst: RunStore | str | os.PathLike[str],
    up_to_step: int,
) -> int:
    """Bring the records of an earlier run's store, up to ``up_to_step``, into another store.

    Used when a fit resumes into a new log directory, so that each run directory stays
    self-contained: records keep their ids, run, segment and header; array files are hard
    links where possible (else copies). Records already in ``dst`` are skipped. Run facts that
    ``dst`` lacks (model, layers...) are copied too. Call it before the resumed fit writes.

    Args:
        src: The earlier run's store (read like a report does: damage is skipped with a
            warning, records a resume replaced are left out).
        dst: The new store.
        up_to_step: The resume step: records with a later step are not copied.

    Returns:
        The number of records copied.

    Raises:
        ValueError: For a negative step, or ``src`` and ``dst`` being one store.
        StoreWriteError: When ``dst`` cannot be written.
    """
    if not isinstance(up_to_step, int) or isinstance(up_to_step, bool) or up_to_step < 0:
        raise ValueError(f"`up_to_step` must be an int >= 0; got {up_to_step!r}")
    s = src if isinstance(src, RunStore) else RunStore(src)
    d = dst if isinstance(dst, RunStore) else RunStore(dst)
    if s.root.resolve() == d.root.resolve():
        raise ValueError(f"`src` and `dst` are the same store ({s.root}); pass another `dst`")
    s.flush(raise_errors=False)
    d.flush()
    reader = StoreReader(s.root)
    existing = {r.id for r in d._all_records()}
    copied = 0
    for rec in reader.records:
        h = rec._h()
        if h.id in existing or (h.step is not None and h.step > up_to_step):
            continue
        try:
            if h.file is not None:
                _link_or_copy(resolve_array_path(s.root, h.file), d.root / h.file)
        except StoreDataError as err:  # pragma: no cover - the reader checked the file
            warnings.warn(f"cnnviz store {s.root}: {err}; not copied", StoreWarning, stacklevel=2)
            continue
        except OSError as err:
            from cnnviz.store.files import write_error

            raise write_error(d.root / h.file, err) from err  # type: ignore[operator]
        line = {**dataclasses.asdict(h), "meta": to_json(rec)}
        data = (json.dumps(line, allow_nan=False, sort_keys=True) + "\n").encode()
        with d._lock:
            append_line(d.root / MANIFEST, data)
        copied += 1
    facts = {k: v for k, v in reader.info.items() if k not in _NOT_COPIED}
    have = d._read_run_info(warn=False)
    missing = {k: v for k, v in facts.items() if k not in have}
    if missing:
        d.update_run(**missing)
    return copied
