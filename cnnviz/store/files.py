"""File operations of the run store: atomic writes, whole-line appends and reads that trust nothing.

Writing: a file is written to a temporary file and renamed into place; a manifest line is
appended whole or not at all (on a short write or an error the file is cut back to its previous
length). Failures raise :class:`StoreWriteError`, which names the path.

Reading: a path from a manifest line must be relative, inside the store's ``arrays/`` folder
after resolving symbolic links, and a regular file no larger than a cap. Files are opened with
``O_NONBLOCK`` (a FIFO can never block the reader) and ``O_NOFOLLOW``, then checked with
``fstat``. ``.npz`` files are read with ``allow_pickle=False``; member names, dtypes and shapes are
checked from the ``.npy`` headers before any data is decompressed.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cnnviz.store.schema import valid_array_name

__all__ = [
    "Limits",
    "StoreDataError",
    "StoreWriteError",
    "UnsafePathError",
    "append_line",
    "atomic_write_bytes",
    "npz_bytes",
    "npz_index",
    "npz_load",
    "open_regular",
    "read_regular",
    "resolve_array_path",
]

_WRITE_FIX = {
    errno.ENOSPC: "free some space or pass another `store_dir`",
    errno.EDQUOT: "free some space or pass another `store_dir`",
    errno.EROFS: "the file system is read-only: pass a writable `store_dir`",
    errno.EACCES: "the directory is not writable: pass a writable `store_dir`",
    errno.EPERM: "the directory is not writable: pass a writable `store_dir`",
}


class StoreWriteError(OSError):
    """A store file could not be written (disk full, read-only...); the message names the path."""


class StoreDataError(ValueError):
    """A record's data on disk is missing, unsafe or does not fit its kind."""


class UnsafePathError(StoreDataError):
    """A path read from the store points outside it, or at something that is not a plain file."""


@dataclass(frozen=True)
class Limits:
    """Caps on what the reader loads from an untrusted store.

    Attributes:
        max_array_file: Bytes of one ``.npz`` file.
        max_array_bytes: Uncompressed bytes of one array.
        max_manifest: Bytes of ``manifest.jsonl`` read (the rest is skipped with a note).
        max_line: Bytes of one manifest line.
        max_run_file: Bytes of ``run.json``.
    """

    max_array_file: int = 1 << 30
    max_array_bytes: int = 2 << 30
    max_manifest: int = 1 << 30
    max_line: int = 64 << 20
    max_run_file: int = 16 << 20


def write_error(path: Path, err: OSError) -> StoreWriteError:
    """A :class:`StoreWriteError` for ``err`` that names ``path`` and the fix."""
    fix = _WRITE_FIX.get(err.errno or 0, "check the directory and the disk")
    reason = err.strerror or str(err)
    out = StoreWriteError(
        err.errno or errno.EIO,
        f"cnnviz store: could not write {path}: {reason}; {fix}",
    )
    out.filename = str(path)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename: readers see the old file or the whole new one.

    No ``fsync``: it made each write ~5 ms slower and only matters after a power loss, when a
    visualisation record may as well be lost.

    Raises:
        StoreWriteError: When the directory or the file cannot be written.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        tmp = None
    except StoreWriteError:
        raise
    except OSError as err:
        raise write_error(path, err) from err
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _ends_line(fd: int) -> bool:
    """Whether the file ``fd`` is empty or ends with a newline."""
    if os.lseek(fd, 0, os.SEEK_END) == 0:
        return True
    os.lseek(fd, -1, os.SEEK_END)
    return os.read(fd, 1) == b"\n"


def append_line(path: Path, line: bytes) -> None:
    """Append one manifest line, whole or not at all.

    A line torn by a writer that crashed is first ended (readers skip it). On a short write or
    an error the file is cut back to its previous length, so the manifest never ends in a
    partial line this writer started.

    Raises:
        StoreWriteError: When the line could not be written (the manifest is unchanged).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise write_error(path, err) from err
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise write_error(path, OSError(errno.EINVAL, "not a regular file"))
        before = os.lseek(fd, 0, os.SEEK_END)
        data = line if _ends_line(fd) else b"\n" + line
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise write_error(path, err) from err
    except StoreWriteError:
        raise
    except OSError as err:
        raise write_error(path, err) from err
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------------------
def open_regular(path: Path, limit: int, *, what: str) -> BinaryIO:
    """Open the regular file ``path`` for reading (at most ``limit`` bytes), never blocking.

    Raises:
        UnsafePathError: For a symbolic link, a FIFO, a device or a directory.
        StoreDataError: For a missing file or one larger than ``limit``.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise StoreDataError(f"{what} is missing") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafePathError(f"{what} is a symbolic link; not read") from None
        raise StoreDataError(f"{what} cannot be opened ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(f"{what} is not a regular file; not read")
        if st.st_size > limit:
            raise StoreDataError(f"{what} is larger than the limit of {limit:,} bytes; not read")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int, *, what: str) -> bytes:
    """All bytes of the regular file ``path`` (at most ``limit``), never blocking.

    Raises:
        UnsafePathError: For a symbolic link, a FIFO, a device or a directory.
        StoreDataError: For a missing file or one larger than ``limit``.
    """
    with open_regular(path, limit, what=what) as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as err:
            raise StoreDataError(f"{what} cannot be read ({err.strerror or err})") from None
    if len(data) > limit:
        raise StoreDataError(f"{what} is larger than the limit of {limit:,} bytes; not read")
    return data


def resolve_array_path(root: Path, rel: object) -> Path:
    """The absolute path of an array file named in a manifest line, if it is inside the store.

    Raises:
        UnsafePathError: For a path that is not a string, is absolute, holds ``..``, or leads
            (through symbolic links) outside ``<root>/arrays/``.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise UnsafePathError(f"array path {rel!r} is not a file name")
    pure = Path(rel)
    if pure.is_absolute() or rel.startswith(("/", "\\")) or ":" in pure.parts[0]:
        raise UnsafePathError(f"array path {rel!r} is absolute; only arrays/... is read")
    if ".." in pure.parts or pure.parts[0] != "arrays" or len(pure.parts) < 2:
        raise UnsafePathError(f"array path {rel!r} is outside the store's arrays/ folder")
    if pure.suffix != ".npz":
        raise UnsafePathError(f"array path {rel!r} is not an .npz file")
    base = (root / "arrays").resolve()
    target = (root / pure).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(
            f"array path {rel!r} leads outside the store (a symbolic link to {target})"
        )
    return target


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive (deflate level 1: nearly the size of level 6 at half the time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def npz_index(
    source: bytes | BinaryIO, *, what: str, limit: int
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Name to ``(dtype, shape)`` of every array of an ``.npz`` archive, from the headers only.

    Only the archive's directory and the first bytes of each member are read.

    Raises:
        StoreDataError: For an archive that is not a plain ``.npz`` of numeric arrays.
    """
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        fh.seek(0)
        zf = zipfile.ZipFile(fh)
    except Exception as err:  # untrusted bytes: any failure to parse means "not an .npz"
        raise StoreDataError(f"{what} is not an .npz file ({err})") from None
    out: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
    with zf:
        names = zf.namelist()
        if len(set(names)) != len(names):
            raise StoreDataError(f"{what} holds two arrays of the same name")
        for member in names:
            name = member[:-4] if member.endswith(".npy") else ""
            if not valid_array_name(name):
                raise StoreDataError(f"{what} holds an unexpected member {member!r}")
            try:
                with zf.open(member) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version in ((2, 0), (3, 0)):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unknown .npy version {version}")
            except Exception as err:  # untrusted bytes (zlib.error, struct.error...)
                raise StoreDataError(f"{what}: array {name!r} is damaged ({err})") from None
            if dtype.hasobject or dtype.kind not in "biuf":
                raise StoreDataError(f"{what}: array {name!r} has dtype {dtype}; not read")
            if any(int(d) < 0 for d in shape):
                raise StoreDataError(f"{what}: array {name!r} has a negative dimension")
            nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if nbytes > limit:
                raise StoreDataError(
                    f"{what}: array {name!r} would take {nbytes:,} bytes (limit {limit:,}); "
                    "not read"
                )
            out[name] = (dtype, tuple(int(d) for d in shape))
    return out


def npz_load(source: bytes | BinaryIO, name: str, *, what: str) -> np.ndarray:
    """One array of an ``.npz`` archive (``allow_pickle=False``; only that member is read).

    Raises:
        StoreDataError: When it cannot be read.
    """
    fh = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        fh.seek(0)
        with np.load(fh, allow_pickle=False) as npz:
            return np.asarray(npz[name])
    except Exception as err:  # untrusted bytes (zlib.error, a truncated member...)
        raise StoreDataError(f"{what}: array {name!r} cannot be read ({err})") from None
