"""One process per data folder: an exclusive advisory lock held by `ranker serve` and `ranker ingest`."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from ranker.permissions import PRIVATE_FILE, private_dir

LOCK_FILE = ".lock"


class DataDirBusy(RuntimeError):
    """Another process holds the data folder's lock; the message names its pid."""


def _write_pid(fd: int) -> None:
    # Only so a refused process can name the holder; the lock itself is the kernel's flock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)


class DataDirLock:
    """`flock` on `<data_dir>/.lock` (through `filelock`), released when closed or when the process ends.

    An advisory lock rather than a pid file alone: the kernel drops it when its holder dies,
    so a crashed server never leaves the folder locked. The file holds the holder's pid only
    so the error can name it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        # timeout=0: refuse at once instead of queueing behind a server that runs for days.
        # preserve_lock_file keeps one inode for every holder and rules out filelock's soft
        # (marker file) fallback, which a crashed holder would leave behind.
        # thread_local=False: `ranker serve` may release from another thread than it acquired.
        self._lock = FileLock(
            self.path,
            timeout=0,
            mode=PRIVATE_FILE,
            preserve_lock_file=True,
            thread_local=False,
            on_acquired=_write_pid,
        )

    def acquire(self) -> DataDirLock:
        """Take the lock or raise DataDirBusy at once (never waits)."""
        private_dir(self.data_dir)
        try:
            self._lock.acquire()
        except Timeout:
            try:
                holder = self.path.read_text("ascii", "replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise DataDirBusy(
                f"another ranker process (pid {holder}) is using {self.data_dir}; stop it, or "
                "point this one at another folder with RANKER_DATA_DIR"
            ) from None
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            # Clear the pid while still holding the lock, so a later reader never names a
            # process that has gone.
            self.path.write_bytes(b"")
            self._lock.release()

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
