"""One embedded server per data directory: an exclusive lock that dies with its process.

The lock is ``flock`` on a file of its own (``DATA_DIR/serve.lock``), never on the database: SQLite's
POSIX locks must not be touched from outside SQLite. ``flock`` belongs to the open file, so the kernel
drops it when the holder exits, however it exits (SIGKILL included), and a second open in the same
process conflicts like another process's would. The file says who holds it, for the refusal's sentence.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = "serve.lock"


class DataDirInUse(RuntimeError):
    """Another live process serves this data directory; the message names it."""


class DataDirLock:
    def __init__(self, data_dir: Path | str):
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str = "soundry serve") -> DataDirLock:
        """Take the lock, or raise DataDirInUse naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise DataDirInUse(f"the data directory {self.path.parent} is in use by {holder}; stop it first, "
                               "or give this server another --data-dir (one embedded server per data "
                               "directory)") from None
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (pid {os.getpid()} on {socket.gethostname()}, since {started})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the flock
            self._fd = None

    def check_free(self) -> None:
        """Raise DataDirInUse if another process holds the lock (a probe: takes and drops it at once)."""
        self.acquire("a probe").release()
