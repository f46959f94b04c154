"""The decision log, read-only: one logged ranking by request id, recent feature rows, listings.

`SqliteDecisionReader` opens the SQLite store with `mode=ro`, so `ranker decision`, `ranker
drift` and `ranker audit` can read it while `ranker serve` owns the data folder (WAL lets a
reader in beside the writer) and can never change it, nor create a store or a receipt key where
there was none. `ranker.store_pg.PostgresDecisionReader` reads a PostgreSQL store the same way,
in read-only transactions; `open_decision_reader` picks the one the settings name.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np

from ranker.decision_scores import read_scores
from ranker.errors import InvalidInput, NotFound
from ranker.rows import Decision
from ranker.sql import Sql, as_iso, as_time, as_utc


class DecisionReader:
    """Read-only access to the decision log (and candidate ids) of a store, on either engine."""

    _conn: Sql

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> DecisionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, request_id: str) -> Decision:
        """The logged ranking of `request_id`; NotFound when none (or not yet written)."""
        found = read_decision(self._conn, request_id)
        if found is None:
            raise NotFound(
                f"no decision logged with request id {request_id!r}; the id is in each "
                "RankCandidates response (and its x-request-id metadata)"
            )
        return found

    def feature_rows(self, model_version: str, limit: int) -> tuple[tuple[str, ...], np.ndarray]:
        """(feature names, rows) of the `limit` most recent served rows of one model version."""
        rows = self._conn.execute(
            "SELECT d.feature_names, i.features FROM decisions d JOIN decision_items i "
            "ON i.request_id = d.request_id WHERE d.model_version = ? "
            "ORDER BY d.at DESC, i.rank LIMIT ?",
            (model_version, limit),
        ).fetchall()
        if not rows:
            return (), np.zeros((0, 0), dtype=np.float32)
        names = tuple(json.loads(rows[0][0]))
        same = [f for n, f in rows if tuple(json.loads(n)) == names]
        return names, _stack(same, len(names))

    def versions(self) -> list[tuple[str, int, str]]:
        """(model version, decisions, latest time) for every version in the log, latest first."""
        return [
            (v, int(n), as_iso(at))
            for v, n, at in self._conn.execute(
                "SELECT model_version, COUNT(*), MAX(at) FROM decisions GROUP BY model_version "
                "ORDER BY MAX(at) DESC"
            ).fetchall()
        ]

    def decision_ids(self, since: datetime | None, until: datetime | None) -> list[str]:
        """Request ids of the decisions logged in [since, until), oldest first."""
        picked = []
        for request_id, at in self._conn.execute("SELECT request_id, at FROM decisions"):
            t = as_utc(as_time(at))
            if (since is None or t >= as_utc(since)) and (until is None or t < as_utc(until)):
                picked.append((t, request_id))
        return [r for _, r in sorted(picked)]

    def candidate_ids(self) -> list[str]:
        """Ids of every candidate in the store now (without loading CVs or vectors)."""
        return [r[0] for r in self._conn.execute("SELECT id FROM candidates ORDER BY id")]


class SqliteDecisionReader(DecisionReader):
    """The reader of a SQLite store file, opened read-only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InvalidInput(
                f"no store at {self.path}; point RANKER_DB_PATH (or RANKER_DATA_DIR) at the "
                "service's data folder"
            )
        self._sqlite = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        self._conn = self._sqlite

    def close(self) -> None:
        self._sqlite.close()


def _stack(blobs: list[bytes], width: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, width), dtype=np.float32)
    return np.stack([np.frombuffer(b, dtype=np.float32) for b in blobs])


def read_decision(conn: Sql, request_id: str) -> Decision | None:
    """One logged ranking, every scored candidate's score included; None when not logged.

    Shared by the store (under its lock) and the read-only reader, so both decode alike.
    """
    head = conn.execute(
        "SELECT request_id, at, model_version, posting_id, posting_hash, top_k, "
        "feature_names, params FROM decisions WHERE request_id = ?",
        (request_id,),
    ).fetchone()
    if head is None:
        return None
    items = conn.execute(
        "SELECT candidate_id, score, features FROM decision_items WHERE request_id = ? "
        "ORDER BY rank",
        (request_id,),
    ).fetchall()
    names = tuple(json.loads(head[6]))
    return Decision(
        request_id=head[0],
        at=as_time(head[1]),
        model_version=head[2],
        posting_id=head[3],
        posting_hash=head[4],
        top_k=int(head[5]),
        feature_names=names,
        candidate_ids=tuple(c for c, _, _ in items),
        scores=np.array([s for _, s, _ in items], dtype=np.float32),
        features=_stack([f for _, _, f in items], len(names)),
        params=json.loads(head[7]),
        scored=read_scores(conn, request_id),
    )
