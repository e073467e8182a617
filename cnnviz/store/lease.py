"""The writer lease: one live writer per store.

A fit takes the lease when it opens the store for writing: ``writer.lock`` in the store holds
the writer's pid, host, run id, a random token and a heartbeat time. A second writer while the
first is alive gets :class:`StoreBusyError`. A lease whose writer is gone (a dead pid on this
host, or a heartbeat older than the timeout) is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnviz.store.files import StoreDataError, atomic_write_bytes, read_regular

__all__ = ["LEASE_FILE", "LEASE_TIMEOUT", "Lease", "StoreBusyError", "acquire", "read_lease"]

LEASE_FILE = "writer.lock"
#: Seconds without a heartbeat after which a lease counts as abandoned.
LEASE_TIMEOUT = 300.0

_HELD: dict[str, str] = {}  # resolved store root -> token of the lease this process holds
_HELD_LOCK = threading.Lock()


class StoreBusyError(RuntimeError):
    """Another live fit holds the store's writer lease."""


@dataclass
class Lease:
    """A held writer lease (see :func:`acquire`)."""

    root: Path
    token: str
    run: str
    pid: int
    host: str
    started: float
    heartbeat: float

    def _payload(self) -> bytes:
        return json.dumps(
            {
                "pid": self.pid,
                "host": self.host,
                "run": self.run,
                "token": self.token,
                "started": self.started,
                "heartbeat": self.heartbeat,
            },
            sort_keys=True,
        ).encode()

    def refresh(self, now: float | None = None) -> None:
        """Write a new heartbeat time to the lease file."""
        self.heartbeat = time.time() if now is None else now
        atomic_write_bytes(self.root / LEASE_FILE, self._payload())

    def release(self) -> None:
        """Remove the lease file if it is still this lease's (idempotent)."""
        key = str(self.root.resolve())
        with _HELD_LOCK:
            if _HELD.get(key) == self.token:
                del _HELD[key]
        current = read_lease(self.root)
        if current is not None and current.get("token") == self.token:
            with contextlib.suppress(OSError):
                os.unlink(self.root / LEASE_FILE)


def read_lease(root: Path) -> dict[str, Any] | None:
    """The lease file's content, ``None`` without one, ``{}`` for a damaged one."""
    path = root / LEASE_FILE
    if not os.path.lexists(path):
        return None
    try:
        data = json.loads(read_regular(path, 1 << 16, what=LEASE_FILE))
    except (StoreDataError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def _stale_reason(info: dict[str, Any], key: str, timeout: float, now: float) -> str | None:
    """Why the lease ``info`` may be taken over, or ``None`` while its writer is alive."""
    pid, host, beat = info.get("pid"), info.get("host"), info.get("heartbeat")
    if not isinstance(pid, int) or not isinstance(host, str) or not isinstance(beat, (int, float)):
        return "the lease file is damaged"
    age = now - float(beat)
    if host == socket.gethostname():
        if pid == os.getpid():
            with _HELD_LOCK:
                held = _HELD.get(key) == info.get("token")
            if not held:
                return "it was left behind by an earlier writer in this process"
        elif not _pid_alive(pid):
            return f"its writer (pid {pid}) is no longer running"
    if age > timeout:
        return f"its last heartbeat is {age:.0f} s old (timeout {timeout:.0f} s)"
    return None


def _describe(info: dict[str, Any], now: float) -> str:
    beat = info.get("heartbeat")
    age = (
        f", last heartbeat {now - float(beat):.0f} s ago" if isinstance(beat, (int, float)) else ""
    )
    return f"pid {info.get('pid')} on host {info.get('host')!s}, run {info.get('run')!s}{age}"


def acquire(root: Path, run: str, *, timeout: float = LEASE_TIMEOUT) -> Lease:
    """Take the writer lease of the store at ``root``.

    Args:
        root: The store directory (created if needed).
        run: The run id of the writer.
        timeout: Seconds without a heartbeat after which another writer's lease is abandoned.

    Returns:
        The lease; refresh it with :meth:`Lease.refresh`, give it back with :meth:`Lease.release`.

    Raises:
        StoreBusyError: When another live writer holds it.
        StoreWriteError: When the lease file cannot be written.
    """
    root.mkdir(parents=True, exist_ok=True)
    key = str(root.resolve())
    now = time.time()
    lease = Lease(
        root=root,
        token=secrets.token_hex(8),
        run=run,
        pid=os.getpid(),
        host=socket.gethostname(),
        started=now,
        heartbeat=now,
    )
    path = root / LEASE_FILE
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(lease._payload())
            break
        info = read_lease(root)
        if info is None:  # released meanwhile
            continue
        why = _stale_reason(info, key, timeout, time.time())
        if why is None:
            raise StoreBusyError(
                f"the cnnviz store {root} is being written by another fit "
                f"({_describe(info, time.time())}); pass another `store_dir` (or log "
                "directory) for this fit, or wait until that fit ends"
            )
        warnings.warn(
            f"cnnviz store {root}: taking over the writer lease of {_describe(info, now)}: {why}",
            RuntimeWarning,
            stacklevel=3,
        )
        atomic_write_bytes(path, lease._payload())
        break
    else:  # pragma: no cover - five writers racing for one store
        raise StoreBusyError(f"the cnnviz store {root} is contended; pass another `store_dir`")
    current = read_lease(root)
    if not current or current.get("token") != lease.token:
        raise StoreBusyError(
            f"the cnnviz store {root} was taken by another fit at the same time "
            f"({_describe(current or {}, time.time())}); pass another `store_dir`"
        )
    with _HELD_LOCK:
        _HELD[key] = lease.token
    return lease
