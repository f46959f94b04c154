"""The write-ahead log after an erasure: checkpointed, truncated and verified empty, with retries.

Erased rows live on in the -wal file until a checkpoint copies the (secure-deleted) pages into
the database and the log is truncated. A connection reading an older snapshot (a backup, a
notebook, `sqlite3` in a shell) blocks that; so the result is checked, retried with backoff,
and reported while it stays blocked.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
"""The store connection's usual busy timeout, restored after each checkpoint attempt."""


def _attempt(
    conn: sqlite3.Connection, lock: threading.RLock, wal: Path
) -> tuple[int, int, int, int]:
    """(busy, frames in the log, frames copied, -wal bytes left) of one TRUNCATE checkpoint."""
    with lock:
        # Not the 30 s busy handler: a blocked attempt returns at once and is retried.
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError:
            busy, frames, copied = 1, -1, -1
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        size = wal.stat().st_size if wal.exists() else 0
    return int(busy), int(frames), int(copied), size


def checkpoint_wal(
    conn: sqlite3.Connection,
    lock: threading.RLock,
    db_path: Path,
    budget_seconds: float,
    report: bool,
) -> bool:
    """Checkpoint and truncate the log, retrying for up to `budget_seconds`; True when verified
    (no busy reader, every frame copied, the -wal file empty). The lock is released between
    attempts so the service keeps answering. `report` logs a blocked checkpoint."""
    wal = db_path.with_name(db_path.name + "-wal")
    end = time.monotonic() + budget_seconds
    pause = 0.01
    while True:
        busy, frames, copied, size = _attempt(conn, lock, wal)
        if busy == 0 and frames == copied and size == 0:
            return True
        if time.monotonic() + pause > end:
            if report:
                log.warning(
                    "erasure: the write-ahead log of %s could not be checkpointed (busy=%s, %s of "
                    "%s frames copied, %d bytes left): another connection is reading. Erased rows "
                    "may remain in the -wal file until it finishes; retrying",
                    db_path,
                    busy,
                    copied,
                    frames,
                    size,
                )
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
