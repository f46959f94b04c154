"""The PostgreSQL store: the same tables, SQL and guarantees as the SQLite one, in a database
several services share (`PostgresStore`, psycopg 3 with a connection pool), and its read-only
decision reader."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from ranker.decision_reader import DecisionReader
from ranker.errors import InvalidInput, StorageFull, StorageUnavailable
from ranker.permissions import private_dir
from ranker.schema import MIGRATABLE, POSTGRES_SCHEMA, SCHEMA_VERSION, migrate
from ranker.sql import Cursor, Sql
from ranker.store_erasure import receipt_key
from ranker.store_sql import BeforeCommit, SqlStore, last_seq_query

log = logging.getLogger(__name__)

CHANGES_CHANNEL = "ranker_changes"
"""NOTIFY channel of the change feed; the payload is the newest entry's seq."""

WRITE_LOCK = 0x72616E6B6572  # "ranker"
"""Transaction-level advisory lock every write takes first: one writer at a time across every
service on the database, as SQLite's BEGIN IMMEDIATE gives within one file. It keeps the
read-then-write steps of a write (an earlier version kept, a tombstone checked) free of races
with another service's write, and it makes the change feed's seq order the commit order: a
sequence value taken by a transaction that commits later could otherwise be passed over by a
follower that has already read past it."""


FRESHNESS_TIMEOUT = 2.0
"""Seconds `last_change_seq` waits for a pooled connection before reporting the database gone."""


class ChangeListener:
    """A connection of its own, LISTENing on `CHANGES_CHANNEL`: `wait` returns as soon as a
    write commits (any service's), or at its timeout. Reconnects on the next `wait` after a
    loss; not thread-safe (one follower thread owns it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = safe_url(url)
        self._conn: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> int | None:
        """Block up to `timeout` seconds; the newest seq announced meanwhile, or None.

        Raises StorageUnavailable when the database cannot be reached (then call again later).
        """
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                self._conn.execute(f"LISTEN {CHANGES_CHANNEL}")
            newest: int | None = None
            for note in self._conn.notifies(timeout=timeout, stop_after=1):
                newest = _seq_of(note.payload, newest)
            if newest is not None:  # and whatever else is queued, without waiting
                for note in self._conn.notifies(timeout=0.0):
                    newest = _seq_of(note.payload, newest)
            return newest
        except psycopg.Error as e:
            self.close()
            raise storage_error(e, self.where) from e

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _seq_of(payload: str, newest: int | None) -> int | None:
    try:
        seq = int(payload)
    except ValueError:  # not ours: a payload we do not send
        return newest
    return seq if newest is None else max(newest, seq)


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """The store's `?` placeholders as psycopg's `%s` (its SQL holds no other `?` or `%`)."""
    if "%" in sql:
        raise ValueError(f"store SQL must not contain '%': {sql[:80]}")
    return sql.replace("?", "%s")


class PgSql:
    """A psycopg connection taking the store's shared SQL (`ranker.sql.Sql`)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Any = None, /) -> Cursor:
        if not parameters:
            return self.conn.execute(sql)  # may hold several statements (the schema)
        return self.conn.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor:
        cur = self.conn.cursor()
        cur.executemany(_placeholders(sql), list(parameters))
        return cur


def storage_error(e: BaseException, where: str) -> BaseException:
    """A full disk or a lost database as the domain error the caller can act on; others unchanged."""
    if isinstance(e, pg_errors.DiskFull):
        return StorageFull(
            f"the disk of the PostgreSQL server at {where} is full; nothing of this call was "
            "stored. Free space on it, then retry"
        )
    if isinstance(e, psycopg.OperationalError | PoolTimeout):
        return StorageUnavailable(
            f"the PostgreSQL database at {where} could not be reached ({e}); nothing of this "
            "call was stored. Check that the server is up and RANKER_DATABASE_URL, then retry"
        )
    return e


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Times come back in UTC, as SQLite's ISO text holds them.
    conn.execute("SET TIME ZONE 'UTC'")


def has_store(url: str) -> bool:
    """Whether the database at `url` holds the store's tables."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            return bool(row and row[0])
    except psycopg.OperationalError as e:
        raise storage_error(e, safe_url(url)) from e


# Whether another transaction (a snapshot, a running writer, a replication slot's standby, a
# prepared transaction) is as old as the erasure's, so could still see the erased rows: then
# VACUUM must keep their dead tuples ("recently dead"; VACUUM FULL copies them into the new
# file), and the clean-up waits for it to end.
_OLDER_SNAPSHOTS = """
SELECT count(*) FROM (
    SELECT backend_xmin AS x FROM pg_stat_activity WHERE pid <> pg_backend_pid()
    UNION ALL SELECT backend_xid FROM pg_stat_activity WHERE pid <> pg_backend_pid()
    UNION ALL SELECT xmin FROM pg_replication_slots
    UNION ALL SELECT transaction FROM pg_prepared_xacts
) h WHERE x IS NOT NULL AND age(x) >= age(CAST(%s AS xid))
"""


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database, for services on several machines.

    A pool of connections (threads read in parallel), every write one transaction under
    `WRITE_LOCK`, reads in REPEATABLE READ read-only transactions (a consistent snapshot per
    call). Durability is the server's (`synchronous_commit`): an acknowledged write has been
    committed. The receipt key is a file, as with SQLite, so the database alone never reveals
    which id an erasure receipt or tombstone is about.
    """

    def __init__(
        self,
        url: str,
        dim: int = 384,
        *,
        receipt_key_file: Path,
        checkpoint_seconds: float = 2.0,
        pool_size: int = 8,
        vacuum: Literal["full", "plain"] = "full",
    ) -> None:
        self.url = url
        self.where = safe_url(url)
        private_dir(receipt_key_file.parent)  # the key file's folder: owner-only, as with SQLite
        self.dim = dim
        self.checkpoint_seconds = checkpoint_seconds
        self.vacuum = vacuum
        self._residue_lock = threading.Lock()
        self._pending_tables: set[str] = set()
        self._pending_xid: str | None = None
        try:  # once, plainly, so a wrong URL fails at once with the server's own reason
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.OperationalError as e:
            raise StorageUnavailable(
                f"could not connect to the PostgreSQL database at {self.where} ({e}); check "
                "RANKER_DATABASE_URL and that the server is up and accepts this user"
            ) from e
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            configure=_configure,
            open=False,
            name="ranker-store",
        )
        try:
            self._pool.open(wait=True, timeout=30.0)
        except PoolTimeout as e:
            self._pool.close()
            raise StorageUnavailable(
                f"could not connect to the PostgreSQL database at {self.where} within 30 s; "
                "check RANKER_DATABASE_URL and that the server is up and accepts this user"
            ) from e
        try:
            with self._tx() as tx:
                self._refuse_other_schema(tx)
                tx.execute(POSTGRES_SCHEMA)
                self._init_meta(tx)
                self._receipt_key = receipt_key(tx, receipt_key_file)
        except BaseException:
            self._pool.close()
            raise

    def _refuse_other_schema(self, tx: PgSql) -> None:
        """Migrate a database of a migratable older schema, refuse one of any other (as SQLite)."""
        if not tx.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
            return
        found = self._meta_in(tx, "schema_version")
        if found in MIGRATABLE:
            migrate(tx, found, postgres=True)
            log.info("migrated %s from store schema %s to %d", self.where, found, SCHEMA_VERSION)
            return
        if found is not None and found != str(SCHEMA_VERSION):
            raise InvalidInput(
                f"the database at {self.where} was written with store schema {found}; this "
                f"version of the ranker reads schema {SCHEMA_VERSION} and does not migrate "
                "stores. Point RANKER_DATABASE_URL at a new database (or drop this one's tables), "
                "then load the data again: `ranker ingest`"
            )

    # -- plumbing -------------------------------------------------------------------------
    @contextmanager
    def _tx(self, before_commit: BeforeCommit | None = None) -> Iterator[PgSql]:
        """One transaction under the write lock: all of it is stored, or none of it."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
                yield PgSql(conn)
                if before_commit is not None:
                    before_commit()
        except (psycopg.Error, PoolTimeout) as e:
            mapped = storage_error(e, self.where)
            if mapped is e:
                raise
            raise mapped from e

    @contextmanager
    def _read(self) -> Iterator[PgSql]:
        """A read-only transaction on one snapshot, so a call's several queries agree."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield PgSql(conn)
        except (psycopg.Error, PoolTimeout) as e:
            mapped = storage_error(e, self.where)
            if mapped is e:
                raise
            raise mapped from e

    def _announce_changes(self, tx: Sql) -> None:
        # NOTIFY inside the transaction is delivered when it commits, and never if it rolls
        # back: followers hear of exactly the committed entries, right after the commit.
        tx.execute(
            f"SELECT pg_notify('{CHANGES_CHANNEL}', CAST((SELECT MAX(seq) FROM changes) AS TEXT))"
        )

    def close(self) -> None:
        self._pool.close()

    def last_change_seq(self, kind: str | None = None) -> int:
        """The newest feed entry's seq (of `kind` only, when given); 0 when there is none.

        One statement in autocommit (one round trip, no transaction around it), and a short
        wait for a connection: a replica asks it before every ranking, and must refuse at once,
        not after the pool's 30 s, when the database is gone.
        """
        sql, params = last_seq_query(kind)
        try:
            with self._pool.connection(timeout=FRESHNESS_TIMEOUT) as conn:
                row = conn.execute(_placeholders(sql), params or None).fetchone()
        except (psycopg.Error, PoolTimeout) as e:
            raise storage_error(e, self.where) from e
        return int(row[0]) if row else 0

    # -- the erasure's residue: dead tuples -----------------------------------------------
    # A DELETE only marks rows dead: their bytes (CV text, vectors, ids in index pages) stay in
    # the table's heap, TOAST and index files until VACUUM removes them, and even then plain
    # VACUUM leaves them in the freed space of a page until PostgreSQL reuses it (measured:
    # an erased row's text is still in the heap file after VACUUM and CHECKPOINT). VACUUM FULL
    # writes each table anew, without them (`postgres_erasure_vacuum`, default full). It runs
    # after the commit (VACUUM cannot run inside a transaction) and only once no other
    # transaction is as old as the erasure's: a snapshot that could still see the rows keeps
    # them alive through any VACUUM. The server's WAL (and its archives, base backups and
    # standbys) keep the bytes until they are recycled or expire: that is the operator's
    # retention policy (README "Choosing the store").

    def _erasure_marker(self, tx: Sql) -> object:
        full = int(tx.execute("SELECT CAST(pg_current_xact_id() AS TEXT)").fetchone()[0])
        return str(full % 2**32)  # the 32-bit xid that pg_stat_activity reports

    def _residue_left(self, marker: object, tables: set[str]) -> None:
        with self._residue_lock:
            self._pending_tables |= tables
            self._pending_xid = str(marker)  # the newest erasure's: older ones are older still

    @property
    def residue_pending(self) -> bool:
        """True while erased rows may remain as dead tuples (the VACUUM was blocked)."""
        return bool(self._pending_tables)

    def clear_residue(self, budget_seconds: float = 0.0) -> bool:
        """VACUUM the tables erasures touched, once no snapshot can still see the erased rows;
        retried for up to `budget_seconds`, reported while blocked. True when done."""
        with self._residue_lock:
            tables, xid = sorted(self._pending_tables), self._pending_xid
        if not tables:
            return True
        end = time.monotonic() + budget_seconds
        pause = 0.01
        reason = ""
        while True:
            try:
                reason = self._vacuum(tables, xid, max(end - time.monotonic(), 0.05))
            except (psycopg.Error, PoolTimeout) as e:
                reason = f"the database could not be reached ({e})"
            if not reason:
                with self._residue_lock:
                    if self._pending_xid == xid:
                        self._pending_tables -= set(tables)
                log.info("erasure: VACUUM %s of %s done", self.vacuum.upper(), ", ".join(tables))
                return True
            if time.monotonic() + pause > end:
                log.warning(
                    "erasure: the erased rows of %s in %s could not be vacuumed yet (%s); they "
                    "may remain in dead tuples until then; retrying",
                    ", ".join(tables),
                    self.where,
                    reason,
                )
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    def _vacuum(self, tables: list[str], xid: str | None, budget: float) -> str:
        """One attempt; "" when done, else why not."""
        with self._pool.connection() as conn:
            if xid is not None:
                row = conn.execute(_OLDER_SNAPSHOTS, (xid,)).fetchone()
                older = int(row[0]) if row else 0
                if older:
                    return f"{older} transaction(s) or slot(s) as old as the erasure still open"
            # Not the default wait: a blocked attempt gives up within the budget and is retried.
            conn.execute(f"SET lock_timeout = {max(int(budget * 1000), 50)}")
            try:
                for table in tables:  # our own table names (`ERASED_RELATIONS`), not input
                    verb = "VACUUM (FULL)" if self.vacuum == "full" else "VACUUM"
                    conn.execute(f"{verb} {table}")
            except pg_errors.LockNotAvailable:
                return "another transaction holds a lock on the tables"
            finally:
                conn.execute("RESET lock_timeout")
        return ""


class PostgresDecisionReader(DecisionReader):
    """The decision log of a PostgreSQL store, read in read-only transactions."""

    def __init__(self, url: str) -> None:
        if not has_store(url):
            raise InvalidInput(
                f"no store in the database at {safe_url(url)}; check RANKER_DATABASE_URL"
            )
        self._pg = psycopg.connect(
            url, autocommit=True, options="-c default_transaction_read_only=on"
        )
        _configure(self._pg)
        self._conn = PgSql(self._pg)

    def close(self) -> None:
        self._pg.close()
