"""The SQLite schema of the store: tables, indexes and the schema version."""

from __future__ import annotations

SCHEMA_VERSION = 5
"""Stored in `meta`; a store written with another version is refused, not migrated.

3: candidate and posting fields moved into one `record` JSON column (derived from the record's
fields, `ranker.domain.to_plain`).
4: earlier candidate versions kept (`candidate_versions`; `candidates.valid_from`).
5: every scored candidate's score per decision (`decision_score_sets`, `decision_scores`)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- faiss_id is the integer id of the candidate in the FAISS index. AUTOINCREMENT guarantees an
-- erased candidate's faiss_id is never reused, so a stale index entry can never alias a new one.
CREATE TABLE IF NOT EXISTS candidates (
    faiss_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    -- Every other field of the record, as JSON (`ranker.domain.to_plain`).
    record TEXT NOT NULL,
    -- When this version of the record was stored (a write that changes the record moves the
    -- old version to candidate_versions); stored_at is the last write, changed or not.
    valid_from TEXT NOT NULL,
    stored_at TEXT NOT NULL,
    doc_vector BLOB NOT NULL,
    chunk_vectors BLOB NOT NULL,
    n_chunks INTEGER NOT NULL
);
-- Earlier versions of candidate records, in force from valid_from until valid_until, for
-- point-in-time training rows. Erasure deletes them with the candidate.
CREATE TABLE IF NOT EXISTS candidate_versions (
    version_id INTEGER PRIMARY KEY AUTOINCREMENT,
    candidate_id TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_until TEXT NOT NULL,
    record TEXT NOT NULL,
    doc_vector BLOB NOT NULL,
    chunk_vectors BLOB NOT NULL,
    n_chunks INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS candidate_versions_by_candidate ON candidate_versions (candidate_id);
CREATE TABLE IF NOT EXISTS postings (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    stored_at TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    posting_id TEXT NOT NULL,
    candidate_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (posting_id, candidate_id, stage, at)
);
CREATE INDEX IF NOT EXISTS outcomes_by_candidate ON outcomes (candidate_id);
-- Protected attributes are kept apart, for fairness audits only; features never read them.
CREATE TABLE IF NOT EXISTS protected_attributes (
    candidate_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (candidate_id, name)
);
CREATE TABLE IF NOT EXISTS decisions (
    request_id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    model_version TEXT NOT NULL,
    posting_id TEXT,
    posting_hash TEXT NOT NULL,
    top_k INTEGER NOT NULL,
    feature_names TEXT NOT NULL,
    params TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decision_items (
    request_id TEXT NOT NULL,
    rank INTEGER NOT NULL,
    candidate_id TEXT NOT NULL,
    score REAL NOT NULL,
    features BLOB NOT NULL,
    PRIMARY KEY (request_id, rank)
);
CREATE INDEX IF NOT EXISTS decision_items_by_candidate ON decision_items (candidate_id);
-- Shadow scoring (ranker.shadow): per ranking the champion's and the challenger's orders of the
-- same retrieved candidates; items by role ('champion' | 'challenger'), erased like decisions.
CREATE TABLE IF NOT EXISTS shadow_rankings (
    request_id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    posting_id TEXT,
    champion_version TEXT NOT NULL,
    challenger_version TEXT NOT NULL,
    top_k INTEGER NOT NULL,
    retrieved INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shadow_items (
    request_id TEXT NOT NULL,
    role TEXT NOT NULL,
    rank INTEGER NOT NULL,
    candidate_id TEXT NOT NULL,
    PRIMARY KEY (request_id, role, rank)
);
CREATE INDEX IF NOT EXISTS shadow_items_by_candidate ON shadow_items (candidate_id);
-- The score of every candidate a decision scored (the retrieved set, not only the top k), for
-- the bias audit's scoring rate. Keyed by integers, not text ids, so 500 scores cost ~15 KB
-- (about 31 bytes a score with the index; FAIRNESS.md); faiss ids are never reused, and erasure
-- deletes a candidate's rows through the index on faiss_id.
CREATE TABLE IF NOT EXISTS decision_score_sets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS decision_scores (
    seq INTEGER NOT NULL,
    faiss_id INTEGER NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (seq, faiss_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS decision_scores_by_faiss_id ON decision_scores (faiss_id);
-- An erasure receipt proves a request was carried out without keeping the erased id itself:
-- candidate_id_hmac is an HMAC-SHA256 of the id under a key kept outside the database.
CREATE TABLE IF NOT EXISTS erasures (
    receipt_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    candidate_id_hmac TEXT NOT NULL,
    rows TEXT NOT NULL
);
-- Added without a schema version change (CREATE TABLE IF NOT EXISTS: an older store of this
-- version gains them when opened). Ids erased and not re-consented since, by the receipts'
-- keyed digest (never the id): every write path refuses them.
CREATE TABLE IF NOT EXISTS erased_ids (
    candidate_id_hmac TEXT PRIMARY KEY,
    erased_at TEXT NOT NULL
);
-- Who did what: erasures and re-consents, by the token's name (never its secret).
CREATE TABLE IF NOT EXISTS admin_actions (
    action_id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""
