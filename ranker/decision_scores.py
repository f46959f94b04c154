"""The decision log's scores of every scored candidate: written, read and erased inside the store's transactions.

A decision's scores are one row of `decision_score_sets`: the faiss ids (int64, ascending) and
their scores (float32, as served) as two blobs, ~6 KB for 500 candidates. Which decisions
scored a candidate (erasure's lookup) is kept apart, in a layout per engine:

- SQLite (the service's embedded store, written on its own cores): runs. Once `RUN_DECISIONS`
  decisions have been logged since the last run, they are indexed as one run: every (faiss id,
  decision) pair they scored, sorted by faiss id, in rows of `PAGE_ENTRIES` pairs
  (`decision_scored_pages`: the ids, int64, and each one's decision as an offset from the run's
  first seq, uint32), and one row of `decision_scored_runs` with each page's first id (its
  fences). Erasure reads each run's fences, then the one or two pages they name (~35 µs a run:
  ~35 ms at 10^6 decisions), and the decisions logged since the last run (< `RUN_DECISIONS`;
  their own id blobs are sorted) directly; the erased id's entries are overwritten in place,
  so no run keeps it. One blob per run, binary-searched through `sqlite3.Blob` reads, cost
  ~0.9 ms a run instead: SQLite walks a large blob's chain of overflow pages to reach an offset.
- PostgreSQL: rows of `decision_scored` (block of 64 decisions, faiss id, seq), inserted by the
  database server from one array parameter, which is where their cost lands.

Why runs: one index row per (decision, candidate) is ~2 µs of the writer's CPU per row, ~1.1 ms
per ranking of 500, on the cores that answer rankings (measured in a server at 10^5 candidates:
the writer took 2.1-2.7 ms per ranking with the rows, 1.0 ms without; blocks of 8 decisions
instead of 64, or a block's rows written at once, sorted, did not cut it: the cost is per row,
not per page). Measured in one process logging decisions of 500 random ids out of 10^5 (batches
of 8, as the service's writer commits them): 0.84-0.90 ms of CPU per decision with the rows,
0.20 ms with runs (0.11 median; building a run takes ~90 ms once per `RUN_DECISIONS`).
"""

from __future__ import annotations

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
of `decision_scored`'s key per block of decisions (`ranker.schema.SCORE_BLOCK_SHIFT`);
PostgreSQL's layout."""

RUN_DECISIONS = 1024
"""Decisions per run of the erasure index (SQLite): ~12 bytes per score, 6 MB for 1,024
rankings of 500; erasure reads at most this many decisions' id blobs beyond the runs."""

PAGE_ENTRIES = 256
"""(faiss id, offset) entries per row of `decision_scored_pages`: 3 KB, one database page."""

_GONE = 0xFFFFFFFF
"""A run's offset for an entry whose candidate was erased."""
_BELOW_ALL = np.iinfo(np.int64).min
"""Written over an erased id that opens a run: keeps the ids ascending, matches no faiss id."""


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
    if isinstance(tx, sqlite3.Connection):
        first = _unindexed_from(tx)
        if seq - first + 1 >= RUN_DECISIONS:
            write_run(tx, first, seq)
    else:
        tx.execute(
            "INSERT INTO decision_scored (block, faiss_id, seq) "
            "SELECT ?, unnest(CAST(? AS BIGINT[])), ?",
            (seq >> SCORE_BLOCK_SHIFT, fids.tolist(), seq),
        )


def _unindexed_from(conn: sqlite3.Connection) -> int:
    """The first seq no run covers."""
    row = conn.execute(
        "SELECT last_seq FROM decision_scored_runs ORDER BY first_seq DESC LIMIT 1"
    ).fetchone()
    return 0 if row is None else int(row[0]) + 1


def write_run(conn: sqlite3.Connection, first: int, last: int) -> None:
    """Index the decisions `first`..`last` (seqs, inclusive) as one run (SQLite): their (faiss
    id, offset) entries sorted by id, in pages of `PAGE_ENTRIES`, and each page's first id."""
    if last - first >= _GONE:
        raise ValueError(f"a run spans fewer than {_GONE} seqs, not {last - first + 1}")
    rows = conn.execute(
        "SELECT seq, faiss_ids FROM decision_score_sets WHERE seq BETWEEN ? AND ? ORDER BY seq",
        (first, last),
    ).fetchall()
    parts = [np.frombuffer(blob or b"", dtype="<i8") for _, blob in rows]
    fids = np.concatenate(parts) if parts else np.zeros(0, dtype="<i8")
    offsets = np.repeat(
        np.array([seq - first for seq, _ in rows], dtype="<u4"), [len(p) for p in parts]
    )
    order = np.argsort(fids, kind="stable")
    fids, offsets = fids[order], offsets[order]
    top = conn.execute("SELECT MAX(page) FROM decision_scored_pages").fetchone()[0]
    first_page = 0 if top is None else int(top) + 1
    starts = range(0, len(fids), PAGE_ENTRIES)
    conn.executemany(
        "INSERT INTO decision_scored_pages (page, faiss_ids, offsets) VALUES (?, ?, ?)",
        (
            (
                first_page + i,
                fids[at : at + PAGE_ENTRIES].tobytes(),
                offsets[at : at + PAGE_ENTRIES].tobytes(),
            )
            for i, at in enumerate(starts)
        ),
    )
    conn.execute(
        "INSERT INTO decision_scored_runs (first_seq, last_seq, first_page, fences) "
        "VALUES (?, ?, ?, ?)",
        (first, last, first_page, fids[::PAGE_ENTRIES].tobytes()),
    )


def index_runs(conn: sqlite3.Connection) -> int:
    """Index every full run of logged decisions not yet in a run (a migrated store); how many
    runs were written."""
    last = conn.execute("SELECT MAX(seq) FROM decision_score_sets").fetchone()[0]
    written = 0
    first = _unindexed_from(conn)
    while last is not None and int(last) - first + 1 >= RUN_DECISIONS:
        write_run(conn, first, first + RUN_DECISIONS - 1)
        first += RUN_DECISIONS
        written += 1
    return written


class _Hit:
    """The pages of one run around a faiss id's entries, read back as one sorted stretch."""

    def __init__(
        self,
        faiss_id: int,
        run: int,
        first_page: int,
        fences: np.ndarray,
        start: int,
        pages: list[tuple],
    ) -> None:
        self.run, self.first_page, self.fences, self.start = run, first_page, fences, start
        self.fids = np.concatenate([np.frombuffer(f, dtype="<i8") for f, _ in pages])
        self.offsets = np.concatenate([np.frombuffer(o, dtype="<u4") for _, o in pages])
        # Where each page read starts in the stretch (and where the last ends).
        self.bounds = np.cumsum([0] + [len(f) // 8 for f, _ in pages])
        # The stretch of the id's own entries (empty when the pages do not hold it).
        self.lo = int(np.searchsorted(self.fids, faiss_id, side="left"))
        self.hi = int(np.searchsorted(self.fids, faiss_id, side="right"))

    def seqs(self) -> list[int]:
        return [self.run + int(o) for o in self.offsets[self.lo : self.hi] if o != _GONE]


def _run_hits(conn: sqlite3.Connection, faiss_id: int) -> list[_Hit]:
    """Where `faiss_id` has entries in the runs: per run, its fences (each page's first id)
    name the pages that can hold it: from the last page opening below it (so the entry before
    its first, which an erasure fills from, is read too) to the last page opening at or below it."""
    hits = []
    runs = conn.execute("SELECT first_seq, first_page, fences FROM decision_scored_runs")
    for run, first_page, fence_blob in runs.fetchall():
        fences = np.frombuffer(fence_blob, dtype="<i8")
        last = int(np.searchsorted(fences, faiss_id, side="right")) - 1
        if last < 0:
            continue
        start = max(int(np.searchsorted(fences, faiss_id, side="left")) - 1, 0)
        pages = conn.execute(
            "SELECT faiss_ids, offsets FROM decision_scored_pages WHERE page BETWEEN ? AND ? "
            "ORDER BY page",
            (first_page + start, first_page + last),
        ).fetchall()
        hit = _Hit(faiss_id, int(run), int(first_page), fences, start, pages)
        if hit.hi > hit.lo:
            hits.append(hit)
    return hits


def _unindexed_seqs(conn: sqlite3.Connection, faiss_id: int) -> list[int]:
    """The decisions logged since the last run that scored `faiss_id` (their id blobs are
    ascending: one binary search each)."""
    seqs = []
    rows = conn.execute(
        "SELECT seq, faiss_ids FROM decision_score_sets WHERE seq >= ? ORDER BY seq",
        (_unindexed_from(conn),),
    )
    for seq, blob in rows:
        fids = np.frombuffer(blob or b"", dtype="<i8")
        at = int(np.searchsorted(fids, faiss_id))
        if at < len(fids) and fids[at] == faiss_id:
            seqs.append(int(seq))
    return seqs


def scored_decisions(conn: Sql, faiss_id: int) -> list[int]:
    """The seqs of the logged decisions whose scores include `faiss_id`, ascending."""
    if not isinstance(conn, sqlite3.Connection):
        last = conn.execute("SELECT MAX(seq) FROM decision_score_sets").fetchone()
        if last is None or last[0] is None:
            return []
        rows = conn.execute(SCORED_SEQS, (int(last[0]) >> SCORE_BLOCK_SHIFT, faiss_id))
        return sorted(int(r[0]) for r in rows)
    seqs = [s for hit in _run_hits(conn, faiss_id) for s in hit.seqs()]
    return sorted(seqs + _unindexed_seqs(conn, faiss_id))


def _unindex(tx: sqlite3.Connection, faiss_id: int) -> list[int]:
    """Remove `faiss_id` from every run; the seqs its entries named. The entries are overwritten
    in place: the id by the entry before it (so the ids stay ascending and every page's first
    id, its fence, stays right), the offset by `_GONE`."""
    seqs = []
    for hit in _run_hits(tx, faiss_id):
        seqs += hit.seqs()
        fids, offsets = hit.fids.copy(), hit.offsets.copy()
        fids[hit.lo : hit.hi] = fids[hit.lo - 1] if hit.lo else _BELOW_ALL
        offsets[hit.lo : hit.hi] = _GONE
        fences = hit.fences.copy()
        for i in range(len(hit.bounds) - 1):
            at, end = int(hit.bounds[i]), int(hit.bounds[i + 1])
            if end <= hit.lo or at >= hit.hi:
                continue
            tx.execute(
                "UPDATE decision_scored_pages SET faiss_ids = ?, offsets = ? WHERE page = ?",
                (fids[at:end].tobytes(), offsets[at:end].tobytes(), hit.first_page + hit.start + i),
            )
            fences[hit.start + i] = fids[at]
        if not np.array_equal(fences, hit.fences):
            tx.execute(
                "UPDATE decision_scored_runs SET fences = ? WHERE first_seq = ?",
                (fences.tobytes(), hit.run),
            )
    return seqs


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

    Each such decision's blobs are rewritten without it, and the erasure index forgets it
    (SQLite: its run entries overwritten; PostgreSQL: its `decision_scored` rows deleted).
    """
    if isinstance(tx, sqlite3.Connection):
        seqs = sorted(_unindex(tx, faiss_id) + _unindexed_seqs(tx, faiss_id))
    else:
        seqs = scored_decisions(tx, faiss_id)
        for seq in seqs:
            tx.execute(
                "DELETE FROM decision_scored WHERE block = ? AND faiss_id = ? AND seq = ?",
                (seq >> SCORE_BLOCK_SHIFT, faiss_id, seq),
            )
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
    return removed
