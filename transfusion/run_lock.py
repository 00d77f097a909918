"""One writer per run folder: an OS file lock on ``<run>/.lock``.

Two identical commands on one ``--runs`` folder used to interleave their metrics (rows doubled
and out of order). ``RunLock(run_dir)`` takes an exclusive, non-blocking ``flock`` on the folder's
``.lock`` file and writes its pid, host and start time into it; a second process gets a one-line
``RunInUseError`` naming the first. The OS releases the lock when the process ends, however it
ends (a SIGKILL included), so a leftover ``.lock`` file never blocks a later run. Where ``fcntl``
does not exist (Windows) no lock is taken.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from transfusion.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunInUseError(ConfigError):
    """Another process is writing this run folder."""


class RunLock:
    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None or self._fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise RunInUseError(
                f"run folder {str(self.run_dir)!r} is in use by {holder}; wait for it to finish "
                f"(or stop it) and run the command again: it resumes where the other stopped") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    return f"process {info['pid']} on {info.get('host', '?')} (since {info.get('since', '?')})"
