"""One process per data folder: an exclusive advisory lock held by `ranker serve` and `ranker ingest`."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".lock"


class DataDirBusy(RuntimeError):
    """Another process holds the data folder's lock; the message names its pid."""


class DataDirLock:
    """`flock` on `<data_dir>/.lock`, released when closed or when the process ends.

    An advisory lock rather than a pid file alone: the kernel drops it when its holder dies,
    so a crashed server never leaves the folder locked. The file holds the holder's pid only
    so the error can name it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        """Take the lock or raise DataDirBusy at once (never waits)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"another ranker process (pid {holder}) is using {self.data_dir}; stop it, or "
                "point this one at another folder with RANKER_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
