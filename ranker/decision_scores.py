"""The decision log's scores of every scored candidate: written, read and erased inside the store's transactions.

A decision's scores are one row of `decision_score_sets`: the faiss ids (int64, ascending) and
their scores (float32, as served) as two blobs, ~6 KB for 500 candidates. Which decisions
scored a candidate is kept apart, in `decision_scored` (block of 64 decisions, faiss id, seq),
for erasure. Faiss ids are never reused, and mean nothing once the candidate's row is gone.

Why this layout (measured on 2 million logged scores, per decision of 500 scores):
- one row per (decision, candidate) with an index on faiss_id: each row landed on its own index
  page, 6.8 ms of CPU per decision, growing with the log;
- the same rows indexed by (block, faiss_id): 2.0 ms;
- blobs plus the (block, faiss_id, seq) index: 0.9 ms. The log is written on the service's own
  cores after every ranking, so this is CPU taken from the rankings that follow.

In a server ranking the bench's postings at 10^5 candidates (CPU time of the writer thread from
/proc, rounds of 500 rankings alternating between versions), the writer took 2.1-2.7 ms per
ranking, and 1.0 ms with these index rows left out: they are half of it. Two layouts that cut
the pages a commit rewrites did not cut that: blocks of 8 decisions (1.9-2.2 ms, and 8 times the
probes per erasure), and writing a block's rows at once, sorted, when it fills (2.0-2.6 ms). The
cost is per row (~2 µs), not per page; fewer rows would need a different erasure lookup.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from ranker.rows import ScoredCandidates
from ranker.schema import SCORE_BLOCK_SHIFT
from ranker.sql import Sql

SCORED_SEQS = """
WITH RECURSIVE blocks(b) AS (SELECT 0 UNION ALL SELECT b + 1 FROM blocks WHERE b < ?)
SELECT s.seq FROM blocks
JOIN decision_scored s ON s.block = blocks.b AND s.faiss_id = ?
"""
"""The decisions that scored a faiss id (parameters: the last block, the faiss id): one probe
of `decision_scored`'s key per block of decisions (`ranker.schema.SCORE_BLOCK_SHIFT`)."""


def write_scores(tx: Sql, request_id: str, scored: ScoredCandidates) -> None:
    """Store one decision's scores (inside the caller's transaction)."""
    fids = np.asarray(scored.faiss_ids, dtype=np.int64)
    order = np.argsort(fids, kind="stable")
    fids = fids[order]
    # float32: the score as served, so a read-back compares equal to it.
    values = np.asarray(scored.scores, dtype=np.float32)[order]
    seq = int(
        tx.execute(
            "INSERT INTO decision_score_sets (request_id, faiss_ids, scores) VALUES (?, ?, ?) "
            "RETURNING seq",
            (request_id, fids.astype("<i8").tobytes(), values.astype("<f4").tobytes()),
        ).fetchone()[0]
    )
    block = seq >> SCORE_BLOCK_SHIFT
    # One statement for all index rows, run by the engine without the GIL: executemany would
    # bind ~500 rows one by one in Python, trading the GIL with the threads answering rankings.
    if isinstance(tx, sqlite3.Connection):
        tx.execute(
            "INSERT INTO decision_scored (block, faiss_id, seq) SELECT ?, value, ? "
            "FROM json_each(?)",
            (block, seq, json.dumps(fids.tolist())),
        )
    else:
        tx.execute(
            "INSERT INTO decision_scored (block, faiss_id, seq) "
            "SELECT ?, unnest(CAST(? AS BIGINT[])), ?",
            (block, fids.tolist(), seq),
        )


def _arrays(faiss_ids: bytes | None, scores: bytes | None) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.frombuffer(faiss_ids or b"", dtype="<i8").astype(np.int64),
        np.frombuffer(scores or b"", dtype="<f4").astype(np.float32),
    )


def read_scores(conn: Sql, request_id: str) -> ScoredCandidates | None:
    """A decision's logged scores of the candidates still stored; None if it kept none."""
    row = conn.execute(
        "SELECT faiss_ids, scores FROM decision_score_sets WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is None:
        return None
    fids, scores = _arrays(row[0], row[1])
    ids: dict[int, str] = {}
    chunk = 500
    for start in range(0, len(fids), chunk):
        part = fids[start : start + chunk].tolist()
        marks = ", ".join("?" * len(part))
        ids.update(
            conn.execute(
                f"SELECT faiss_id, id FROM candidates WHERE faiss_id IN ({marks})", part
            ).fetchall()
        )
    keep = np.fromiter((int(f) in ids for f in fids), dtype=bool, count=len(fids))
    return ScoredCandidates(
        faiss_ids=fids[keep],
        candidate_ids=tuple(ids[int(f)] for f in fids[keep]),
        scores=scores[keep],
    )


def erase_scores(tx: Sql, faiss_id: int) -> int:
    """Remove one candidate's score from every decision that logged it; how many were removed.

    Each such decision's blobs are rewritten without it, and its `decision_scored` rows go.
    """
    last = tx.execute("SELECT MAX(seq) FROM decision_score_sets").fetchone()
    if last is None or last[0] is None:
        return 0
    seqs = [
        int(r[0]) for r in tx.execute(SCORED_SEQS, (int(last[0]) >> SCORE_BLOCK_SHIFT, faiss_id))
    ]
    removed = 0
    for seq in seqs:
        found = tx.execute(
            "SELECT faiss_ids, scores FROM decision_score_sets WHERE seq = ?", (seq,)
        ).fetchone()
        if found is None:
            continue
        fids, scores = _arrays(found[0], found[1])
        keep = fids != faiss_id
        removed += int(np.count_nonzero(~keep))
        tx.execute(
            "UPDATE decision_score_sets SET faiss_ids = ?, scores = ? WHERE seq = ?",
            (fids[keep].astype("<i8").tobytes(), scores[keep].astype("<f4").tobytes(), seq),
        )
        tx.execute(
            "DELETE FROM decision_scored WHERE block = ? AND faiss_id = ? AND seq = ?",
            (seq >> SCORE_BLOCK_SHIFT, faiss_id, seq),
        )
    return removed
