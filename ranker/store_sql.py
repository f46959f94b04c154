"""The store's logic in the SQL both engines speak: candidates, postings, outcomes, protected
attributes, the decision log and the change feed (`SqlStore`, the base of `SqliteStore` and
`PostgresStore`, which provide connections and transactions)."""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ranker import tombstones
from ranker.decision_reader import read_decision
from ranker.decision_scores import write_scores
from ranker.domain import Candidate, Outcome, Posting, RecordT, Stage, from_plain, to_plain
from ranker.errors import InvalidInput, NotFound
from ranker.rows import CandidateRow, CandidateVersion, Change, Decision, PostingRow
from ranker.schema import SCHEMA_VERSION
from ranker.sql import Sql, as_time
from ranker.store_erasure import StoreErasure
from ranker.store_shadow import ShadowTables

_IN_LIMIT = 500
"""Values bound per `IN (...)` query: well under SQLite's variable limit (999 before 3.32)."""


BeforeCommit = Callable[[], None]
"""Runs inside a write transaction just before COMMIT; raising rolls the write back (a caller
whose deadline passed stores nothing)."""


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


def last_seq_query(kind: str | None) -> tuple[str, tuple[str, ...]]:
    """The newest feed seq (of `kind`). For erasures, at least the seq the feed was pruned
    through: a pruned entry may have been one, and a replica that had not applied it must learn
    it is behind (one statement: a replica asks it before every read)."""
    if kind is None:
        return "SELECT COALESCE(MAX(seq), 0) FROM changes", ()
    if kind == "erasure":
        return (
            "SELECT COALESCE(MAX(s), 0) FROM (SELECT MAX(seq) AS s FROM changes WHERE kind = ? "
            "UNION ALL SELECT CAST(value AS BIGINT) FROM meta "
            "WHERE key = 'changes_pruned_through') AS t",
            (kind,),
        )
    return "SELECT COALESCE(MAX(seq), 0) FROM changes WHERE kind = ?", (kind,)


def _record_json(record: Candidate | Posting) -> str:
    """Every field of the record but its id (a column of its own), as `to_plain` JSON."""
    plain = to_plain(record)
    del plain["id"]
    return json.dumps(plain, ensure_ascii=False, sort_keys=True)


def _record(kind: type[RecordT], record_id: str, record_json: str) -> RecordT:
    return from_plain(kind, {"id": record_id, **json.loads(record_json)})


class SqlStore(StoreErasure, ShadowTables):
    """Everything the store does, once for both engines; a subclass provides `_tx` (one write
    transaction, one writer at a time), `_read` (a connection for reads), `close` and the
    residue clean-up after an erasure (`StoreErasure`)."""

    dim: int

    def _tx(self, before_commit: BeforeCommit | None = None) -> AbstractContextManager[Sql]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Sql]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- plumbing -------------------------------------------------------------------------
    def _init_meta(self, tx: Sql) -> None:
        """A new store's version, generation and identity; an existing store keeps its own."""
        for key, value in (
            ("schema_version", str(SCHEMA_VERSION)),
            ("generation", "0"),
            ("store_uuid", uuid.uuid4().hex),
        ):
            tx.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
                (key, value),
            )
        tombstones.backfill(tx)

    @staticmethod
    def _meta_in(c: Sql, key: str) -> str | None:
        row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _bump_generation(self, c: Sql) -> None:
        c.execute(
            "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) "
            "WHERE key = 'generation'"
        )

    def _rows_in(self, query: str, values: Sequence[object]) -> list[Any]:
        """The rows of `query` for all `values`, bound to its one `{marks}` (an `IN` list).

        Run in slices of `_IN_LIMIT` values, the most one statement may bind safely.
        """
        out: list[Any] = []
        with self._read() as c:
            for start in range(0, len(values), _IN_LIMIT):
                part = list(values[start : start + _IN_LIMIT])
                marks = ",".join("?" * len(part))
                out.extend(c.execute(query.format(marks=marks), part).fetchall())
        return out

    def _count(self, table: str) -> int:
        with self._read() as c:
            return int(c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    @property
    def uuid(self) -> str:
        """This database's identity: a new database (deleted and recreated) gets a new one."""
        with self._read() as c:
            return str(self._meta_in(c, "store_uuid"))

    def generation(self) -> str:
        """Changes on every candidate write or erasure; a saved index from another generation is stale."""
        with self._read() as c:
            return f"{self._meta_in(c, 'store_uuid')}:{self._meta_in(c, 'generation')}"

    # -- change feed ----------------------------------------------------------------------
    def _log_changes(self, tx: Sql, kind: str, keys: Iterable[object], op: str) -> None:
        """Feed entries for one write, inside its transaction (so they commit with it)."""
        at = _iso(_now())
        rows = [(at, kind, str(k), op) for k in keys]
        if rows:
            last = "SELECT COALESCE(MAX(seq), 0) FROM changes"
            before = int(tx.execute(last).fetchone()[0])
            tx.executemany("INSERT INTO changes (at, kind, key, op) VALUES (?, ?, ?, ?)", rows)
            # One writer at a time (the write lock), so every entry above `before` is this
            # write's: its follower need not apply them again (`take_own_changes`).
            self._own_changes().span = (before + 1, int(tx.execute(last).fetchone()[0]))
            self._announce_changes(tx)

    def _own_changes(self) -> threading.local:
        own = self.__dict__.get("_own_local")
        if own is None:
            own = self.__dict__.setdefault("_own_local", threading.local())
        return own

    def take_own_changes(self) -> tuple[int, int] | None:
        """The feed seqs (first, last) the calling thread's last write added, once; None when
        it added none since the last call. Read right after a write that succeeded."""
        own = self._own_changes()
        span: tuple[int, int] | None = getattr(own, "span", None)
        own.span = None
        return span

    def _announce_changes(self, tx: Sql) -> None:
        """Tell followers new entries are coming (PostgreSQL: NOTIFY, sent at COMMIT)."""

    def prune_changes(self, older_than: datetime) -> int:
        """Drop feed entries committed before `older_than`, always keeping the newest; how many.

        The seq pruned through is kept (`changes_pruned_through`): a follower that had not
        applied those entries learns it missed some and must be restarted, rather than serve
        a candidate whose erasure it never saw.
        """
        with self._tx() as tx:
            newest = int(tx.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
            row = tx.execute(
                "SELECT MAX(seq) FROM changes WHERE at < ? AND seq < ?",
                (_iso(older_than), newest),
            ).fetchone()
            through = int(row[0] or 0)
            if not through:
                return 0
            gone = tx.execute("DELETE FROM changes WHERE seq <= ?", (through,)).rowcount
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('changes_pruned_through', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(through),),
            )
        return int(gone)

    def changes_pruned_through(self) -> int:
        """The newest seq `prune_changes` removed (0: none ever was)."""
        with self._read() as c:
            return int(self._meta_in(c, "changes_pruned_through") or 0)

    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        """Feed entries after `seq`, oldest first, at most `limit` (follow with the last seq)."""
        with self._read() as c:
            rows = c.execute(
                "SELECT seq, at, kind, key, op FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [Change(int(s), as_time(a), k, key, op) for s, a, k, key, op in rows]

    def last_change_seq(self, kind: str | None = None) -> int:
        """The newest feed entry's seq (of `kind` only, when given); 0 when there is none."""
        sql, params = last_seq_query(kind)
        with self._read() as c:
            return int(c.execute(sql, params).fetchone()[0])

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
                       VALUES (?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(id) DO UPDATE SET
                           valid_from=CASE WHEN candidates.record = excluded.record
                                           THEN candidates.valid_from
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
                self._log_changes(tx, "candidate", dict.fromkeys(ids), "upsert")
        return ids

    def candidate_versions(self, ids: Sequence[str] | None = None) -> list[CandidateVersion]:
        """Earlier versions of candidates (of `ids`, or all), by candidate then time.

        The stored record is the current version; it came into force when the newest earlier
        version went out of force (`valid_until`).
        """
        cols = "candidate_id, record, doc_vector, chunk_vectors, n_chunks, valid_from, valid_until"
        order = "ORDER BY candidate_id, valid_until, version_id"
        if ids is None:
            with self._read() as c:
                rows = c.execute(f"SELECT {cols} FROM candidate_versions {order}").fetchall()
        else:
            rows = self._rows_in(
                f"SELECT {cols} FROM candidate_versions WHERE candidate_id IN ({{marks}}) {order}",
                ids,
            )
            rows.sort(key=lambda r: (r[0], as_time(r[6])))
        return [
            CandidateVersion(
                candidate=_record(Candidate, r[0], r[1]),
                doc_vector=np.frombuffer(r[2], dtype=np.float32).copy(),
                chunk_vectors=np.frombuffer(r[3], dtype=np.float32).reshape(int(r[4]), -1).copy(),
                valid_from=as_time(r[5]),
                valid_until=as_time(r[6]),
            )
            for r in rows
        ]

    _CAND_COLS = "faiss_id, id, record, doc_vector, chunk_vectors, n_chunks"

    @staticmethod
    def _candidate_row(r: Sequence[Any]) -> CandidateRow:
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

    def get_candidates_by_faiss_ids(self, fids: Sequence[int]) -> list[tuple[int, CandidateRow]]:
        """(faiss_id, row) of the stored candidates among `fids` (a change feed's keys), in
        faiss-id order; ids no longer stored (erased since) are skipped."""
        rows = self._rows_in(
            f"SELECT {self._CAND_COLS} FROM candidates WHERE faiss_id IN ({{marks}})",
            [int(f) for f in fids],
        )
        return sorted(((int(r[0]), self._candidate_row(r)) for r in rows), key=lambda t: t[0])

    def iter_candidates(self, batch: int = 1000) -> Iterator[CandidateRow]:
        """Every stored candidate, in faiss-id order (see `iter_candidates_with_ids` for the ids)."""
        for _, row in self.iter_candidates_with_ids(batch):
            yield row

    def iter_candidates_with_ids(self, batch: int = 1000) -> Iterator[tuple[int, CandidateRow]]:
        """(faiss_id, row) for every stored candidate; pages so memory stays flat."""
        last = -1
        while True:
            with self._read() as c:
                page = c.execute(
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
        return self._count("candidates")

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
            self._log_changes(tx, "posting", dict.fromkeys(p[0] for p in params), "upsert")

    _POST_COLS = "id, record, vector"

    @staticmethod
    def _posting_row(r: Sequence[Any]) -> PostingRow:
        return PostingRow(
            posting=_record(Posting, r[0], r[1]),
            vector=np.frombuffer(r[2], dtype=np.float32).copy(),
        )

    def list_postings(self) -> list[PostingRow]:
        with self._read() as c:
            rows = c.execute(f"SELECT {self._POST_COLS} FROM postings ORDER BY id").fetchall()
        return [self._posting_row(r) for r in rows]

    def get_postings(self, ids: Sequence[str]) -> list[PostingRow]:
        """The stored postings among `ids`, in the order asked; unknown ids are skipped."""
        rows = self._rows_in(f"SELECT {self._POST_COLS} FROM postings WHERE id IN ({{marks}})", ids)
        found = {r[0]: self._posting_row(r) for r in rows}
        return [found[i] for i in ids if i in found]

    def count_postings(self) -> int:
        return self._count("postings")

    # -- outcomes -------------------------------------------------------------------------
    def record_outcomes(
        self, outcomes: Sequence[Outcome], before_commit: BeforeCommit | None = None
    ) -> int:
        """Store stage events; a repeated identical event is stored once. Returns how many were new.

        Outcomes of an erased candidate refuse the call with ErasedId (screen with `erased_among`).
        The change feed names each posting of the call once, when any event was new.
        """
        now = _iso(_now())
        params = [(o.posting_id, o.candidate_id, o.stage.value, _iso(o.at), now) for o in outcomes]
        with self._tx(before_commit) as tx:
            tombstones.refuse(tx, self._digests([o.candidate_id for o in outcomes]))
            new = 0
            if params:
                new = tx.executemany(
                    "INSERT INTO outcomes (posting_id, candidate_id, stage, at, recorded_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    params,
                ).rowcount
            if new:
                postings = dict.fromkeys(o.posting_id for o in outcomes)
                self._log_changes(tx, "outcome", postings, "upsert")
            return new

    def list_outcomes(self) -> list[Outcome]:
        with self._read() as c:
            rows = c.execute(
                "SELECT posting_id, candidate_id, stage, at FROM outcomes "
                "ORDER BY at, posting_id, candidate_id, stage"
            ).fetchall()
        return [
            Outcome(posting_id=p, candidate_id=c, stage=Stage(s), at=as_time(a))
            for p, c, s, a in rows
        ]

    def count_outcomes(self) -> int:
        return self._count("outcomes")

    # -- protected attributes (audits only) -----------------------------------------------
    def upsert_protected(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """(candidate_id, attribute, value) triples, kept apart from everything features read.

        Attributes of an erased candidate refuse the call with ErasedId (screen with `erased_among`).
        """
        with self._tx() as tx:
            tombstones.refuse(tx, self._digests([r[0] for r in rows]))
            if rows:
                tx.executemany(
                    "INSERT INTO protected_attributes (candidate_id, name, value) "
                    "VALUES (?, ?, ?) "
                    "ON CONFLICT(candidate_id, name) DO UPDATE SET value=excluded.value",
                    rows,
                )

    def protected_attributes(self, name: str) -> dict[str, str]:
        with self._read() as c:
            rows = c.execute(
                "SELECT candidate_id, value FROM protected_attributes WHERE name = ?", (name,)
            ).fetchall()
        return {cid: value for cid, value in rows}

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
            # Under the write lock, so either an erasure deleted these rows or they see its
            # tombstone: a decision queued by a replica before it heard of the erasure keeps
            # no row of the erased candidate (its scores are keyed by a FAISS id, which is
            # meaningless once the candidate's row is gone).
            erased = self._erased_in(tx, [str(item[2]) for item in items])
            items = [item for item in items if item[2] not in erased]
            if heads:
                tx.executemany(
                    "INSERT INTO decisions (request_id, at, model_version, posting_id, "
                    "posting_hash, top_k, feature_names, params) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    heads,
                )
            if items:
                tx.executemany(
                    "INSERT INTO decision_items (request_id, rank, candidate_id, score, features) "
                    "VALUES (?, ?, ?, ?, ?)",
                    items,
                )
            for d in decisions:
                if d.scored is not None:
                    write_scores(tx, d.request_id, d.scored)

    def get_decision(self, request_id: str) -> Decision:
        with self._read() as c:
            found = read_decision(c, request_id)
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
        return self._count("decisions")

    # -- health ---------------------------------------------------------------------------
    def probe_write(self, size: int = 65_536) -> None:
        """Whether the store can grow again: writes `size` bytes (new pages, committed, so the
        file system is asked too), then deletes them. Raises StorageFull / StorageUnavailable.

        A write of a few bytes could still fit in a page's free space while the disk is full.
        """
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO meta(key, value) VALUES ('write_probe', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (secrets.token_hex(max(size // 2, 1)),),
            )
        with self._tx() as tx:
            tx.execute("DELETE FROM meta WHERE key = 'write_probe'")
