"""The store's schema, one declaration for both engines (SQLite and PostgreSQL), and its version."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ranker.sql import Sql

SCHEMA_VERSION = 7
"""Stored in `meta`. A store of an older version listed in `MIGRATABLE` is brought up to date
when opened; any other version is refused, not migrated.

3: candidate and posting fields moved into one `record` JSON column (derived from the record's
fields, `ranker.domain.to_plain`).
4: earlier candidate versions kept (`candidate_versions`; `candidates.valid_from`).
5: every scored candidate's score per decision (`decision_score_sets`, `decision_scores`).
6: a decision's scores as two blobs in `decision_score_sets`; `decision_scored` says which
decisions scored a candidate, by block of 64 decisions (`ranker.decision_scores`).
7: SQLite only: `decision_scored` (a row per score) becomes runs of logged decisions
(`decision_scored_runs`, `decision_scored_pages`; `ranker.decision_scores.RUN_DECISIONS`);
PostgreSQL keeps `decision_scored`."""

SCORE_BLOCK_SHIFT = 6
"""PostgreSQL's `decision_scored` is keyed by (seq >> 6, faiss_id, seq): the 64 decisions of a
block share one stretch of the key, so logging a decision appends near the end instead of
touching a page per candidate; erasure probes the key once per block (`ranker.decision_scores`)."""

_SCORED_TABLE = """-- Which decisions scored a candidate (erasure's lookup); the scores are in decision_score_sets.
CREATE TABLE IF NOT EXISTS decision_scored (
    block {int} NOT NULL,
    faiss_id {int} NOT NULL,
    seq {int} NOT NULL,
    PRIMARY KEY (block, faiss_id, seq)
){without_rowid};
"""

_RUNS_TABLES = (
    """-- Which decisions scored a candidate (erasure's lookup, SQLite, ranker.decision_scores): per
-- run of consecutive decisions, every (faiss id, decision) pair they scored, sorted by faiss id
-- (int64) with the decision as an offset from first_seq (uint32, 0xFFFFFFFF once its candidate
-- is erased), in pages of consecutive rowids from first_page. fences: each page's first id.
CREATE TABLE IF NOT EXISTS decision_scored_runs (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    first_page INTEGER NOT NULL,
    fences BLOB NOT NULL
);
""",
    """CREATE TABLE IF NOT EXISTS decision_scored_pages (
    page INTEGER PRIMARY KEY,
    faiss_ids BLOB NOT NULL,
    offsets BLOB NOT NULL
);
""",
)

MIGRATABLE = frozenset({"5", "6"})
"""Older schema versions a store is migrated from in place when opened (`migrate`)."""


_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key {text} PRIMARY KEY, value {text} NOT NULL);
-- faiss_id is the integer id of the candidate in the FAISS index. AUTOINCREMENT (an identity
-- column in PostgreSQL) guarantees an erased candidate's faiss_id is never reused, so a stale
-- index entry (in a saved index, or in a replica's memory) can never alias a new one.
CREATE TABLE IF NOT EXISTS candidates (
    faiss_id {serial},
    id {text} NOT NULL UNIQUE,
    -- Every other field of the record, as JSON (`ranker.domain.to_plain`).
    record {text} NOT NULL,
    -- When this version of the record was stored (a write that changes the record moves the
    -- old version to candidate_versions); stored_at is the last write, changed or not.
    valid_from {time} NOT NULL,
    stored_at {time} NOT NULL,
    doc_vector {blob} NOT NULL,
    chunk_vectors {blob} NOT NULL,
    n_chunks {int} NOT NULL
);
-- Earlier versions of candidate records, in force from valid_from until valid_until, for
-- point-in-time training rows. Erasure deletes them with the candidate.
CREATE TABLE IF NOT EXISTS candidate_versions (
    version_id {serial},
    candidate_id {text} NOT NULL,
    valid_from {time} NOT NULL,
    valid_until {time} NOT NULL,
    record {text} NOT NULL,
    doc_vector {blob} NOT NULL,
    chunk_vectors {blob} NOT NULL,
    n_chunks {int} NOT NULL
);
CREATE INDEX IF NOT EXISTS candidate_versions_by_candidate ON candidate_versions (candidate_id);
CREATE TABLE IF NOT EXISTS postings (
    id {text} PRIMARY KEY,
    record {text} NOT NULL,
    stored_at {time} NOT NULL,
    vector {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    posting_id {text} NOT NULL,
    candidate_id {text} NOT NULL,
    stage {text} NOT NULL,
    at {time} NOT NULL,
    recorded_at {time} NOT NULL,
    PRIMARY KEY (posting_id, candidate_id, stage, at)
);
CREATE INDEX IF NOT EXISTS outcomes_by_candidate ON outcomes (candidate_id);
-- Protected attributes are kept apart, for fairness audits only; features never read them.
CREATE TABLE IF NOT EXISTS protected_attributes (
    candidate_id {text} NOT NULL,
    name {text} NOT NULL,
    value {text} NOT NULL,
    PRIMARY KEY (candidate_id, name)
);
CREATE TABLE IF NOT EXISTS decisions (
    request_id {text} PRIMARY KEY,
    at {time} NOT NULL,
    model_version {text} NOT NULL,
    posting_id {text},
    posting_hash {text} NOT NULL,
    top_k {int} NOT NULL,
    feature_names {text} NOT NULL,
    params {text} NOT NULL
);
CREATE TABLE IF NOT EXISTS decision_items (
    request_id {text} NOT NULL,
    rank {int} NOT NULL,
    candidate_id {text} NOT NULL,
    score {real} NOT NULL,
    features {blob} NOT NULL,
    PRIMARY KEY (request_id, rank)
);
CREATE INDEX IF NOT EXISTS decision_items_by_candidate ON decision_items (candidate_id);
-- Shadow scoring (ranker.shadow): per ranking the champion's and the challenger's orders of the
-- same retrieved candidates; items by role ('champion' | 'challenger'), erased like decisions.
CREATE TABLE IF NOT EXISTS shadow_rankings (
    request_id {text} PRIMARY KEY,
    at {time} NOT NULL,
    posting_id {text},
    champion_version {text} NOT NULL,
    challenger_version {text} NOT NULL,
    top_k {int} NOT NULL,
    retrieved {int} NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_items (
    request_id {text} NOT NULL,
    role {text} NOT NULL,
    rank {int} NOT NULL,
    candidate_id {text} NOT NULL,
    PRIMARY KEY (request_id, role, rank)
);
CREATE INDEX IF NOT EXISTS shadow_items_by_candidate ON shadow_items (candidate_id);
-- The score of every candidate a decision scored (the retrieved set, not only the top k), for
-- the bias audit's scoring rate. Faiss ids, not text ids: 500 scores cost ~14 KB with the
-- erasure index (about 28 bytes a score on SQLite; FAIRNESS.md); faiss ids are never reused,
-- and erasure rewrites the blobs naming one, found through the erasure index below.
CREATE TABLE IF NOT EXISTS decision_score_sets (
    seq {serial},
    request_id {text} NOT NULL UNIQUE,
    faiss_ids {blob},
    scores {blob}
);
{scored_table}-- An erasure receipt proves a request was carried out without keeping the erased id itself:
-- candidate_id_hmac is an HMAC-SHA256 of the id under a key kept outside the database.
CREATE TABLE IF NOT EXISTS erasures (
    receipt_id {serial},
    at {time} NOT NULL,
    candidate_id_hmac {text} NOT NULL,
    rows {text} NOT NULL
);
-- Added without a schema version change (CREATE TABLE IF NOT EXISTS: an older store of this
-- version gains them when opened). Ids erased and not re-consented since, by the receipts'
-- keyed digest (never the id): every write path refuses them.
CREATE TABLE IF NOT EXISTS erased_ids (
    candidate_id_hmac {text} PRIMARY KEY,
    erased_at {time} NOT NULL
);
-- Who did what: erasures and re-consents, by the token's name (never its secret).
CREATE TABLE IF NOT EXISTS admin_actions (
    action_id {serial},
    at {time} NOT NULL,
    actor {text} NOT NULL,
    action {text} NOT NULL,
    detail {text} NOT NULL
);
-- The change feed: one row per write, in the write's own transaction, in commit order (seq;
-- gaps are possible). Replicas follow it (`Store.changes_since`). kind: candidate | posting |
-- outcome | erasure; op: upsert | delete. `key` never holds a candidate's own id, so erasure
-- has nothing to scrub here: candidates and erasures are keyed by faiss_id (meaningless once
-- the candidate's row is gone, and never reused), outcomes by their posting's id.
CREATE TABLE IF NOT EXISTS changes (
    seq {serial},
    at {time} NOT NULL,
    kind {text} NOT NULL,
    key {text} NOT NULL,
    op {text} NOT NULL
);
-- The newest erasure's seq in one index probe: every ranking of a replica asks it.
CREATE INDEX IF NOT EXISTS changes_by_kind ON changes (kind, seq);
"""

_SQLITE_TYPES = {
    "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "int": "INTEGER",
    "real": "REAL",
    "text": "TEXT",
    "time": "TEXT",  # ISO 8601, UTC (`datetime.isoformat`)
    "blob": "BLOB",
    "without_rowid": " WITHOUT ROWID",
}

_POSTGRES_TYPES = {
    "serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    "int": "BIGINT",
    "real": "DOUBLE PRECISION",  # SQLite's REAL is 8 bytes too
    # Byte order, as SQLite compares text: ORDER BY id gives the same order on both engines
    # whatever locale the cluster was created with.
    "text": 'TEXT COLLATE "C"',
    "time": "TIMESTAMPTZ",
    "blob": "BYTEA",
    "without_rowid": "",
}

SCHEMA = _TABLES.format(**_SQLITE_TYPES, scored_table="".join(_RUNS_TABLES))
"""The SQLite store's tables (`ranker.store.SqliteStore`)."""

POSTGRES_SCHEMA = _TABLES.format(
    **_POSTGRES_TYPES, scored_table=_SCORED_TABLE.format(**_POSTGRES_TYPES)
)
"""The same tables for PostgreSQL (`ranker.store_pg.PostgresStore`), column for column."""


def migrate(tx: Sql, found: str, postgres: bool) -> None:
    """Bring a store of schema `found` (in `MIGRATABLE`) to `SCHEMA_VERSION` inside the caller's
    transaction, before the schema's own statements run, one version at a time."""
    if found == "5":
        _migrate_5_to_6(tx, postgres)
    if not postgres:
        _migrate_6_to_7(tx)
    tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def _migrate_6_to_7(tx: Sql) -> None:
    """SQLite: the full runs of the log are indexed in `decision_scored_runs` (the decisions
    after the last full run are found from their own blobs), and `decision_scored` is dropped."""
    from ranker.decision_scores import index_runs  # it reads this module's constants

    assert isinstance(tx, sqlite3.Connection)
    for table in _RUNS_TABLES:
        tx.execute(table)
    index_runs(tx)
    tx.execute("DROP TABLE IF EXISTS decision_scored")


def _migrate_5_to_6(tx: Sql, postgres: bool) -> None:
    """Each decision's score rows become two blobs in `decision_score_sets`, the rows' (block,
    faiss id, seq) go to `decision_scored`, and `decision_scores` is dropped."""
    types = _POSTGRES_TYPES if postgres else _SQLITE_TYPES
    tx.execute(f"ALTER TABLE decision_score_sets ADD COLUMN faiss_ids {types['blob']}")
    tx.execute(f"ALTER TABLE decision_score_sets ADD COLUMN scores {types['blob']}")
    tx.execute(_SCORED_TABLE.format(**types))
    tx.execute(
        "INSERT INTO decision_scored (block, faiss_id, seq) "
        f"SELECT seq >> {SCORE_BLOCK_SHIFT}, faiss_id, seq FROM decision_scores"
    )
    last = tx.execute("SELECT MAX(seq) FROM decision_score_sets").fetchone()[0] or 0
    for start in range(0, int(last) + 1, 1024):  # a bounded slice of the log at a time
        rows = tx.execute(
            "SELECT seq, faiss_id, score FROM decision_scores WHERE seq >= ? AND seq < ? "
            "ORDER BY seq, faiss_id",
            (start, start + 1024),
        ).fetchall()
        by_seq: dict[int, list[tuple[int, float]]] = {}
        for seq, fid, score in rows:
            by_seq.setdefault(int(seq), []).append((int(fid), float(score)))
        for seq, pairs in by_seq.items():
            fids = np.array([f for f, _ in pairs], dtype="<i8")
            scores = np.array([v for _, v in pairs], dtype="<f4")
            tx.execute(
                "UPDATE decision_score_sets SET faiss_ids = ?, scores = ? WHERE seq = ?",
                (fids.tobytes(), scores.tobytes(), seq),
            )
    tx.execute("DROP TABLE decision_scores")
