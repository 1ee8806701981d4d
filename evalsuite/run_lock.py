"""One process per output folder (per rank): a lock file naming its holder, so a second ``evalsuite run``
on the same folder is refused instead of silently doing all the work again.

Under ``accelerate launch`` each rank takes its own ``run.rank<r>.lock``: ranks of one run never block
each other, while a second run with the same ranks is refused on every rank before any work starts. A
lock left by a dead process on this host (pid gone, or reused by a process started later) is taken over
with a warning; one from another host cannot be checked, so it is refused with the holder named.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evalsuite.errors import ConfigError

log = logging.getLogger(__name__)


def lock_path(out: Path, rank: int) -> Path:
    return out / f"run.rank{rank}.lock"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), which tells a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder (same host) still runs; a pid since reused by a newer process does not count."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    started = holder.get("started")
    return started is None or _start_time(pid) in (None, started)


def _describe(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}"


def _read(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        holder = None
    return holder if isinstance(holder, dict) else {"pid": None, "host": "?"}


def _try_create(path: Path, body: bytes) -> bool:
    """Create ``path`` with ``body`` in one step (link of a finished temp file); False if it exists."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def acquire(out: Path, rank: int = 0) -> Path:
    """Take the output folder's lock for ``rank`` or raise ConfigError naming the folder and holder."""
    out.mkdir(parents=True, exist_ok=True)
    path = lock_path(out, rank)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}
    body = json.dumps(me).encode()
    for _ in range(3):  # a racing process may take over the same stale lock: look again
        if _try_create(path, body):
            return path
        holder = _read(path)
        if not holder:
            continue  # released meanwhile
        if holder.get("host") != me["host"] or _alive(holder):
            raise ConfigError(
                f"{out} is in use by another run ({_describe(holder)}, lock {path}); wait for it to finish "
                "or use another output directory (delete the lock only if that process is gone)")
        log.warning("%s: taking over a stale lock of %s (no such process)", path, _describe(holder))
        path.unlink(missing_ok=True)
    raise ConfigError(f"{out}: could not take the lock {path}; another run keeps taking it")


def release(path: Path) -> None:
    """Remove the lock if it is still ours (a lock taken over from us stays with its new holder)."""
    if _read(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(out: Path, rank: int = 0) -> Iterator[Path]:
    """Hold the lock for the body, released on exit and on exceptions."""
    path = acquire(out, rank)
    try:
        yield path
    finally:
        release(path)
