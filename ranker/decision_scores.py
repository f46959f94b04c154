"""The decision log's scores of every scored candidate: written and read inside the store's transactions.

One row per (decision, candidate) keyed by integers (`decision_score_sets.seq`, the candidate's
faiss id, never reused), so 500 scores cost about 15 KB and erasure deletes a candidate's rows
through the index on faiss_id (`StoreErasure.delete_candidates`).
"""

from __future__ import annotations

import numpy as np

from ranker.rows import ScoredCandidates
from ranker.sql import Sql


def write_scores(tx: Sql, request_id: str, scored: ScoredCandidates) -> None:
    """Store one decision's scores (inside the caller's transaction)."""
    seq = tx.execute(
        "INSERT INTO decision_score_sets (request_id) VALUES (?) RETURNING seq", (request_id,)
    ).fetchone()[0]
    fids = np.asarray(scored.faiss_ids, dtype=np.int64).tolist()
    # Through float32: the score as served, so a read-back compares equal to it.
    values = np.asarray(scored.scores, dtype=np.float32).astype(np.float64).tolist()
    tx.executemany(
        "INSERT INTO decision_scores (seq, faiss_id, score) VALUES (?, ?, ?)",
        [(seq, f, v) for f, v in zip(fids, values, strict=True)],
    )


def read_scores(conn: Sql, request_id: str) -> ScoredCandidates | None:
    """A decision's logged scores of the candidates still stored; None if it kept none."""
    seq = conn.execute(
        "SELECT seq FROM decision_score_sets WHERE request_id = ?", (request_id,)
    ).fetchone()
    if seq is None:
        return None
    rows = conn.execute(
        "SELECT s.faiss_id, c.id, s.score FROM decision_scores s "
        "JOIN candidates c ON c.faiss_id = s.faiss_id WHERE s.seq = ? ORDER BY s.faiss_id",
        (seq[0],),
    ).fetchall()
    return ScoredCandidates(
        faiss_ids=np.array([r[0] for r in rows], dtype=np.int64),
        candidate_ids=tuple(r[1] for r in rows),
        scores=np.array([r[2] for r in rows], dtype=np.float32),
    )
