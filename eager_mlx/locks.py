"""Advisory file locks (flock): one process at a time on a run directory or on a cache entry.

A cache entry (a fetched package, a converted model) is written by one process at a time (`cache_entry`), in
temporary folders renamed into place; what a holder killed mid-way left behind is removed by the next one.

The kernel drops a lock when its process dies (kill -9 included), so a lock never outlives a crash. The
lock file holds its holder ("pid N on HOST since TIME") for the refusal message, and is removed on release.
A process may take a lock it already holds again (the inner hold is a no-op), so a command can lock a run
directory before the model loads and the library lock it again when the run starts.
"""
from __future__ import annotations

import fcntl
import glob
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["LockHeld", "hold", "cache_entry"]

_HELD: dict[str, int] = {}  # lock file -> times this process holds it
_GUARD = threading.Lock()


class LockHeld(Exception):
    """Another process holds the lock; `holder` says which ("pid N on HOST since TIME"), when it could be read."""

    def __init__(self, path: Path, holder: str):
        super().__init__(f"{path} is held by {holder or 'another process'}")
        self.path, self.holder = path, holder or "another process"


def _acquire(path: Path, wait: bool) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise LockHeld(path, holder) from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
    return fd


@contextmanager
def hold(path: Path, wait: bool = False) -> Iterator[None]:
    """Hold the lock file `path` (its folder must exist) for the block; LockHeld at once when another process holds
    it, unless `wait`. Re-entrant within a process."""
    key = os.path.realpath(path)
    with _GUARD:
        if key in _HELD:
            _HELD[key] += 1
            fd = None
        else:
            fd = _acquire(Path(path), wait)
            _HELD[key] = 1
    try:
        yield
    finally:
        with _GUARD:
            _HELD[key] -= 1
            if fd is not None:
                del _HELD[key]
                try:
                    os.unlink(path)  # while still locked: a waiter re-opens the new file (see _acquire)
                except FileNotFoundError:
                    pass
                os.close(fd)


@contextmanager
def cache_entry(folder: Path, name: str) -> Iterator[str]:
    """Hold the cache entry `name` of `folder` (waiting while another process fetches or converts it) and remove
    the temporary folders a killed holder left (``.NAME.tmp-*``); yields the prefix for this holder's own."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with hold(folder / f".{name}.lock", wait=True):
        for leftover in glob.glob(os.path.join(glob.escape(str(folder)), f".{glob.escape(name)}.tmp-*")):
            shutil.rmtree(leftover, ignore_errors=True)  # nobody else may hold it: whoever wrote it is gone
        yield f".{name}.tmp-"
