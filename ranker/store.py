"""The SQLite store: the source of truth for candidates, postings, outcomes, vectors and decisions."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ranker import tombstones
from ranker.decision_reader import read_decision
from ranker.decision_scores import write_scores
from ranker.domain import Candidate, Outcome, Posting, RecordT, Stage, from_plain, to_plain
from ranker.errors import InvalidInput, NotFound, StorageFull, StorageUnavailable
from ranker.permissions import private_dir, private_file, tighten_if_present
from ranker.rows import CandidateRow, CandidateVersion, Decision, PostingRow
from ranker.schema import SCHEMA, SCHEMA_VERSION
from ranker.store_erasure import SqliteErasure, load_or_create_key
from ranker.store_shadow import SqliteShadowTables

log = logging.getLogger(__name__)

_IN_LIMIT = 500
"""Values bound per `IN (...)` query: well under SQLite's variable limit (999 before 3.32)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def _vec_bytes(v: np.ndarray, dim: int | None, what: str) -> bytes:
    arr = np.ascontiguousarray(v, dtype=np.float32)
    if dim is not None and arr.shape[-1] != dim:
        raise InvalidInput(f"{what} has dimension {arr.shape[-1]}, the store holds {dim}-d vectors")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{what} contains NaN or infinite values")
    return arr.tobytes()


def _record_json(record: Candidate | Posting) -> str:
    """Every field of the record but its id (a column of its own), as `to_plain` JSON."""
    plain = to_plain(record)
    del plain["id"]
    return json.dumps(plain, ensure_ascii=False, sort_keys=True)


def _record(kind: type[RecordT], record_id: str, record_json: str) -> RecordT:
    return from_plain(kind, {"id": record_id, **json.loads(record_json)})


BeforeCommit = Callable[[], None]
"""Runs inside a write transaction just before COMMIT; raising rolls the write back (a caller
whose deadline passed stores nothing)."""


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


class SqliteStore(SqliteErasure, SqliteShadowTables):
    """SQLite in WAL mode, one connection guarded by a lock, every write one transaction.

    `synchronous=FULL` so an acknowledged write survives power loss, not only a crash: the
    service acknowledges upserts only once they are durable.
    """

    def __init__(self, path: Path, dim: int = 384, checkpoint_seconds: float = 2.0) -> None:
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
        self._receipt_key = load_or_create_key(self.path.with_name(self.path.name + ".receipt-key"))
        self._conn.execute("PRAGMA journal_mode=WAL")
        # Erased rows are overwritten with zeros, not left readable in free pages.
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._refuse_other_schema()
            # executescript commits implicitly, so it runs outside our BEGIN/COMMIT helper.
            self._conn.executescript(SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            self._conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0')")
            self._conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('store_uuid', lower(hex(randomblob(16))))"
            )
            with self._tx() as tx:
                tombstones.backfill(tx)

    def _refuse_other_schema(self) -> None:
        """Refuse a store written with another schema, before creating any table in it.

        Not migrated: the store is rebuilt from the ATS's files by `ranker ingest`, and the
        message says so.
        """
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        found = self._meta("schema_version") if has_meta else None
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

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _bump_generation(self, c: sqlite3.Connection) -> None:
        c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")

    def _rows_in(self, query: str, values: Sequence[object]) -> list[tuple]:
        """The rows of `query` for all `values`, bound to its one `{marks}` (an `IN` list).

        Run in slices of `_IN_LIMIT` values, the most one statement may bind safely.
        """
        out: list[tuple] = []
        with self._lock:
            for start in range(0, len(values), _IN_LIMIT):
                part = list(values[start : start + _IN_LIMIT])
                marks = ",".join("?" * len(part))
                out.extend(self._conn.execute(query.format(marks=marks), part))
        return out

    @property
    def uuid(self) -> str:
        """This database's identity: a new database (deleted and recreated) gets a new one."""
        with self._lock:
            return str(self._meta("store_uuid"))

    def generation(self) -> str:
        """Changes on every candidate write or erasure; a saved index from another generation is stale."""
        with self._lock:
            return f"{self.uuid}:{self._meta('generation')}"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- candidates -----------------------------------------------------------------------
    # A row keeps the id (unique, looked up) and the vectors in their own columns; every other
    # field of the record sits in `record` as `to_plain` JSON, so a new record field needs no
    # new column. A write that changes the record first moves the stored version, vectors and
    # all, to `candidate_versions`, so training can use the record as it was when an outcome
    # happened (`candidate_versions`).

    def upsert_candidates(
        self, rows: Sequence[CandidateRow], before_commit: BeforeCommit | None = None
    ) -> list[int]:
        """Insert or replace candidates by id, atomically; returns their faiss ids in order.

        A replaced record that differs from the stored one (CV or any field) is kept as an
        earlier version, in force from when it was stored until now. An erased id (not
        re-consented) refuses the whole call with ErasedId: callers screen with `erased_among`.
        """
        now = _iso(_now())
        params = []
        for r in rows:
            c = r.candidate
            chunks = np.atleast_2d(np.asarray(r.chunk_vectors, dtype=np.float32))
            params.append(
                (
                    c.id,
                    _record_json(c),
                    now,
                    _vec_bytes(r.doc_vector, self.dim, f"candidate {c.id!r} doc_vector"),
                    _vec_bytes(chunks, self.dim, f"candidate {c.id!r} chunk_vectors"),
                    int(chunks.shape[0]),
                )
            )
        ids: list[int] = []
        with self._tx(before_commit) as tx:
            tombstones.refuse(tx, self._digests([p[0] for p in params]))
            for p in params:
                tx.execute(
                    """INSERT INTO candidate_versions (candidate_id, valid_from, valid_until,
                           record, doc_vector, chunk_vectors, n_chunks)
                       SELECT id, valid_from, ?, record, doc_vector, chunk_vectors, n_chunks
                       FROM candidates WHERE id = ? AND record != ?""",
                    (now, p[0], p[1]),
                )
                row = tx.execute(
                    """INSERT INTO candidates (id, record, valid_from, stored_at, doc_vector,
                           chunk_vectors, n_chunks)
                       VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)
                       ON CONFLICT(id) DO UPDATE SET
                           valid_from=CASE WHEN record = excluded.record THEN valid_from
                                           ELSE excluded.valid_from END,
                           record=excluded.record, stored_at=excluded.stored_at,
                           doc_vector=excluded.doc_vector, chunk_vectors=excluded.chunk_vectors,
                           n_chunks=excluded.n_chunks
                       RETURNING faiss_id""",
                    p,
                ).fetchone()
                ids.append(int(row[0]))
            if params:
                self._bump_generation(tx)
        return ids

    def candidate_versions(self, ids: Sequence[str] | None = None) -> list[CandidateVersion]:
        """Earlier versions of candidates (of `ids`, or all), by candidate then time.

        The stored record is the current version; it came into force when the newest earlier
        version went out of force (`valid_until`).
        """
        cols = "candidate_id, record, doc_vector, chunk_vectors, n_chunks, valid_from, valid_until"
        order = "ORDER BY candidate_id, valid_until, version_id"
        if ids is None:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT {cols} FROM candidate_versions {order}"
                ).fetchall()
        else:
            rows = self._rows_in(
                f"SELECT {cols} FROM candidate_versions WHERE candidate_id IN ({{marks}}) {order}",
                ids,
            )
            rows.sort(key=lambda r: (r[0], r[6]))
        return [
            CandidateVersion(
                candidate=_record(Candidate, r[0], r[1]),
                doc_vector=np.frombuffer(r[2], dtype=np.float32).copy(),
                chunk_vectors=np.frombuffer(r[3], dtype=np.float32).reshape(int(r[4]), -1).copy(),
                valid_from=datetime.fromisoformat(r[5]),
                valid_until=datetime.fromisoformat(r[6]),
            )
            for r in rows
        ]

    _CAND_COLS = "faiss_id, id, record, doc_vector, chunk_vectors, n_chunks"

    @staticmethod
    def _candidate_row(r: tuple) -> CandidateRow:
        doc = np.frombuffer(r[3], dtype=np.float32).copy()
        chunks = np.frombuffer(r[4], dtype=np.float32).reshape(int(r[5]), -1).copy()
        return CandidateRow(
            candidate=_record(Candidate, r[1], r[2]), doc_vector=doc, chunk_vectors=chunks
        )

    def get_candidates(self, ids: Sequence[str]) -> list[CandidateRow]:
        """The stored candidates among `ids`, in the order asked; unknown ids are skipped."""
        rows = self._rows_in(
            f"SELECT {self._CAND_COLS} FROM candidates WHERE id IN ({{marks}})", ids
        )
        found = {r[1]: self._candidate_row(r) for r in rows}
        return [found[i] for i in ids if i in found]

    def iter_candidates(self, batch: int = 1000) -> Iterator[CandidateRow]:
        """Every stored candidate, in faiss-id order (see `iter_candidates_with_ids` for the ids)."""
        for _, row in self.iter_candidates_with_ids(batch):
            yield row

    def iter_candidates_with_ids(self, batch: int = 1000) -> Iterator[tuple[int, CandidateRow]]:
        """(faiss_id, row) for every stored candidate; pages so memory stays flat."""
        last = -1
        while True:
            with self._lock:
                page = self._conn.execute(
                    f"SELECT {self._CAND_COLS} FROM candidates WHERE faiss_id > ? "
                    "ORDER BY faiss_id LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not page:
                return
            for r in page:
                yield int(r[0]), self._candidate_row(r)
            last = int(page[-1][0])

    def count_candidates(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0])

    def faiss_ids(self, candidate_ids: Sequence[str]) -> dict[str, int]:
        """The faiss id of each stored candidate among `candidate_ids`."""
        rows = self._rows_in(
            "SELECT id, faiss_id FROM candidates WHERE id IN ({marks})", candidate_ids
        )
        return {cid: int(fid) for cid, fid in rows}

    # -- postings -------------------------------------------------------------------------
    def upsert_postings(
        self, rows: Sequence[PostingRow], before_commit: BeforeCommit | None = None
    ) -> None:
        """Insert or replace postings by id, atomically (the record as JSON, like candidates)."""
        now = _iso(_now())
        params = [
            (
                r.posting.id,
                _record_json(r.posting),
                now,
                _vec_bytes(r.vector, self.dim, f"posting {r.posting.id!r} vector"),
            )
            for r in rows
        ]
        with self._tx(before_commit) as tx:
            tx.executemany(
                """INSERT INTO postings (id, record, stored_at, vector) VALUES (?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET record=excluded.record,
                       stored_at=excluded.stored_at, vector=excluded.vector""",
                params,
            )

    _POST_COLS = "id, record, vector"

    @staticmethod
    def _posting_row(r: tuple) -> PostingRow:
        return PostingRow(
            posting=_record(Posting, r[0], r[1]),
            vector=np.frombuffer(r[2], dtype=np.float32).copy(),
        )

    def list_postings(self) -> list[PostingRow]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._POST_COLS} FROM postings ORDER BY id"
            ).fetchall()
        return [self._posting_row(r) for r in rows]

    def count_postings(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM postings").fetchone()[0])

    # -- outcomes -------------------------------------------------------------------------
    def record_outcomes(
        self, outcomes: Sequence[Outcome], before_commit: BeforeCommit | None = None
    ) -> int:
        """Store stage events; a repeated identical event is stored once. Returns how many were new.

        Outcomes of an erased candidate refuse the call with ErasedId (screen with `erased_among`).
        """
        now = _iso(_now())
        params = [(o.posting_id, o.candidate_id, o.stage.value, _iso(o.at), now) for o in outcomes]
        with self._tx(before_commit) as tx:
            tombstones.refuse(tx, self._digests([o.candidate_id for o in outcomes]))
            before = tx.total_changes
            tx.executemany(
                "INSERT OR IGNORE INTO outcomes (posting_id, candidate_id, stage, at, recorded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                params,
            )
            return tx.total_changes - before

    def list_outcomes(self) -> list[Outcome]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT posting_id, candidate_id, stage, at FROM outcomes "
                "ORDER BY at, posting_id, candidate_id, stage"
            ).fetchall()
        return [
            Outcome(posting_id=p, candidate_id=c, stage=Stage(s), at=datetime.fromisoformat(a))
            for p, c, s, a in rows
        ]

    def count_outcomes(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])

    # -- protected attributes (audits only) -----------------------------------------------
    def upsert_protected(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(candidate_id, attribute, value) triples, kept apart from everything features read.

        Attributes of an erased candidate refuse the call with ErasedId (screen with `erased_among`).
        """
        with self._tx() as tx:
            tombstones.refuse(tx, self._digests([r[0] for r in rows]))
            tx.executemany(
                "INSERT INTO protected_attributes (candidate_id, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT(candidate_id, name) DO UPDATE SET value=excluded.value",
                rows,
            )

    def protected_attributes(self, name: str) -> dict[str, str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT candidate_id, value FROM protected_attributes WHERE name = ?", (name,)
            ).fetchall()
        return dict(rows)

    # -- decision log ---------------------------------------------------------------------
    def log_decisions(self, decisions: Sequence[Decision]) -> None:
        """Store several rankings in one transaction (one sync to disk for the batch)."""
        heads: list[tuple[object, ...]] = []
        items: list[tuple[object, ...]] = []
        for d in decisions:
            feats = np.ascontiguousarray(d.features, dtype=np.float32)
            if feats.shape[0] != len(d.candidate_ids):
                raise InvalidInput(
                    "decision log: one feature row per returned candidate is required"
                )
            heads.append(
                (
                    d.request_id,
                    _iso(d.at),
                    d.model_version,
                    d.posting_id,
                    d.posting_hash,
                    d.top_k,
                    json.dumps(list(d.feature_names)),
                    json.dumps(d.params, default=str),
                )
            )
            items.extend(
                (d.request_id, rank, cid, float(score), feats[rank - 1].tobytes())
                for rank, (cid, score) in enumerate(zip(d.candidate_ids, d.scores, strict=True), 1)
            )
        with self._tx() as tx:
            tx.executemany(
                "INSERT INTO decisions (request_id, at, model_version, posting_id, posting_hash, "
                "top_k, feature_names, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                heads,
            )
            tx.executemany(
                "INSERT INTO decision_items (request_id, rank, candidate_id, score, features) "
                "VALUES (?, ?, ?, ?, ?)",
                items,
            )
            for d in decisions:
                if d.scored is not None:
                    write_scores(tx, d.request_id, d.scored)

    def get_decision(self, request_id: str) -> Decision:
        with self._lock:
            found = read_decision(self._conn, request_id)
        if found is None:
            raise NotFound(f"no decision logged with request id {request_id!r}")
        return found

    def has_decisions(self, request_ids: Sequence[str]) -> set[str]:
        """The request ids among `request_ids` whose decision is stored (a replay skips them)."""
        rows = self._rows_in(
            "SELECT request_id FROM decisions WHERE request_id IN ({marks})", request_ids
        )
        return {r[0] for r in rows}

    def count_decisions(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    # -- erasure --------------------------------------------------------------------------
    def probe_write(self, size: int = 65_536) -> None:
        """Whether the store can grow again: writes `size` bytes (new pages, committed, so the
        file system is asked too), then deletes them. Raises StorageFull / StorageUnavailable.

        A write of a few bytes could still fit in a page's free space while the disk is full.
        """
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('write_probe', randomblob(?)) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (size,),
            )
        with self._tx() as tx:
            tx.execute("DELETE FROM meta WHERE key = 'write_probe'")
