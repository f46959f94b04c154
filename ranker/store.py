"""The SQLite store, the embedded default: the source of truth for candidates, postings, outcomes,
vectors and decisions in one file (`SqliteStore`; the logic it shares with PostgreSQL is
`ranker.store_sql.SqlStore`)."""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ranker.errors import InvalidInput, StorageFull, StorageUnavailable
from ranker.permissions import private_dir, private_file, tighten_if_present
from ranker.schema import MIGRATABLE, SCHEMA, SCHEMA_VERSION, migrate
from ranker.store_erasure import receipt_key
from ranker.store_sql import BeforeCommit, SqlStore
from ranker.wal import checkpoint_wal

log = logging.getLogger(__name__)


def storage_error(e: BaseException, path: Path) -> BaseException:
    """A disk-full or I/O failure as the domain error the caller can act on; others unchanged."""
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or (isinstance(e, OSError) and e.errno == errno.ENOSPC):
        return StorageFull(
            f"the disk holding {path} is full; nothing of this call was stored. Free space on "
            "it, then retry"
        )
    if code is not None and (code & 0xFF) in (
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
    ):
        return StorageUnavailable(
            f"{path} could not be written ({e}); nothing of this call was stored. Check the "
            "disk and the file's permissions, then retry"
        )
    return e


class SqliteStore(SqlStore):
    """SQLite in WAL mode, one connection guarded by a lock, every write one transaction.

    `synchronous=FULL` so an acknowledged write survives power loss, not only a crash: the
    service acknowledges upserts only once they are durable.
    """

    def __init__(
        self,
        path: Path,
        dim: int = 384,
        checkpoint_seconds: float = 2.0,
        receipt_key_file: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.dim = dim
        self.checkpoint_seconds = checkpoint_seconds
        """How long an erasure retries a blocked WAL checkpoint before reporting it pending."""
        self._checkpoint_pending = False
        # CVs and protected attributes: owner-only. SQLite creates the -wal and -shm files with
        # the database file's permissions, so creating it 0600 first covers all three.
        private_dir(self.path.parent)
        private_file(self.path)
        for side in ("-wal", "-shm"):
            tighten_if_present(self.path.with_name(self.path.name + side))
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # Erased rows are overwritten with zeros, not left readable in free pages.
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._refuse_other_schema()
            # executescript commits implicitly, so it runs outside our BEGIN/COMMIT helper.
            self._conn.executescript(SCHEMA)
            with self._tx() as tx:
                self._init_meta(tx)
                key_file = receipt_key_file or self.path.with_name(self.path.name + ".receipt-key")
                self._receipt_key = receipt_key(tx, key_file)

    def _refuse_other_schema(self) -> None:
        """Bring a store of a migratable older schema up to date (`ranker.schema.MIGRATABLE`);
        refuse one of any other schema, before creating any table in it.

        Refused stores are rebuilt from the ATS's files by `ranker ingest`, and the message
        says so.
        """
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        found = self._meta_in(self._conn, "schema_version") if has_meta else None
        if found in MIGRATABLE:
            with self._tx() as tx:
                migrate(tx, found, postgres=False)
            log.info("migrated %s from store schema %s to %d", self.path, found, SCHEMA_VERSION)
            return
        if found is not None and found != str(SCHEMA_VERSION):
            self._conn.close()
            raise InvalidInput(
                f"{self.path} was written with store schema {found}; this version of the ranker "
                f"reads schema {SCHEMA_VERSION} and does not migrate stores. Move it aside or "
                f"delete it (with its -wal and -shm files), then load the data again: "
                f"`ranker ingest` (for the demo: `rm {self.path}*` and `make run`)"
            )

    # -- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _tx(self, before_commit: BeforeCommit | None = None) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: all of it is stored, or none of it.

        A full disk or an I/O error comes out as StorageFull / StorageUnavailable (the caller's
        RESOURCE_EXHAUSTED / UNAVAILABLE), not as a bare sqlite3 error.
        """
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    if before_commit is not None:
                        before_commit()
                    self._conn.execute("COMMIT")
                except BaseException:
                    # Also when COMMIT itself fails (disk full, I/O error): never leave the
                    # connection inside a transaction that would block every later write.
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as e:
                mapped = storage_error(e, self.path)
                if mapped is e:
                    raise
                raise mapped from e

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The one connection, under the lock (reads see every committed write)."""
        with self._lock:
            yield self._conn

    def _meta(self, key: str) -> str | None:
        with self._read() as c:
            return self._meta_in(c, key)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- the erasure's residue: the write-ahead log ---------------------------------------
    def _residue_left(self, marker: object, tables: set[str]) -> None:
        # Erased rows also sit in the write-ahead log until a checkpoint copies the
        # (secure-deleted) pages into the database and the log is truncated.
        self._checkpoint_pending = True

    @property
    def residue_pending(self) -> bool:
        """True while erased rows may still sit in the -wal file (a checkpoint was blocked)."""
        return self._checkpoint_pending

    def clear_residue(self, budget_seconds: float = 0.0) -> bool:
        """`ranker.wal.checkpoint_wal` on this store; clears `residue_pending` when verified."""
        done = checkpoint_wal(
            self._conn, self._lock, self.path, budget_seconds, report=self._checkpoint_pending
        )
        if done and self._checkpoint_pending:
            log.info("write-ahead log checkpointed: no erased rows remain in %s-wal", self.path)
        if done:
            self._checkpoint_pending = False
        return done
