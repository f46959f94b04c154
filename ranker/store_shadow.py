"""The store's shadow-scoring tables: per ranking the champion's and the challenger's orders of
the same retrieved candidates (`ranker.shadow` writes them, `ranker models compare` reads them;
erasure deletes their rows with the candidate's). A base of both stores (`ranker.store_sql`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from ranker.rows import ShadowRanking
from ranker.sql import Sql, as_time


class ShadowTables:
    """Shadow rankings in and out; the store provides connections and transactions."""

    def _tx(self) -> AbstractContextManager[Sql]:
        raise NotImplementedError  # SqlStore's

    def _read(self) -> AbstractContextManager[Sql]:
        raise NotImplementedError  # SqlStore's

    def _erased_in(self, tx: Sql, ids: Sequence[str]) -> set[str]:
        raise NotImplementedError  # StoreErasure's

    def log_shadow(self, records: Sequence[ShadowRanking]) -> None:
        """Store shadow rankings in one transaction."""
        heads = [
            (
                r.request_id,
                r.at.isoformat(),
                r.posting_id,
                r.champion_version,
                r.challenger_version,
                r.top_k,
                r.retrieved,
            )
            for r in records
        ]
        items = [
            (r.request_id, role, rank, cid)
            for r in records
            for role, ids in (("champion", r.champion_ids), ("challenger", r.challenger_ids))
            for rank, cid in enumerate(ids, 1)
        ]
        with self._tx() as tx:
            erased = self._erased_in(tx, [item[3] for item in items])
            items = [item for item in items if item[3] not in erased]
            if heads:
                tx.executemany(
                    "INSERT INTO shadow_rankings (request_id, at, posting_id, champion_version, "
                    "challenger_version, top_k, retrieved) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(request_id) DO UPDATE SET at = excluded.at, "
                    "posting_id = excluded.posting_id, "
                    "champion_version = excluded.champion_version, "
                    "challenger_version = excluded.challenger_version, "
                    "top_k = excluded.top_k, retrieved = excluded.retrieved",
                    heads,
                )
            if items:
                tx.executemany(
                    "INSERT INTO shadow_items (request_id, role, rank, candidate_id) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(request_id, role, rank) "
                    "DO UPDATE SET candidate_id = excluded.candidate_id",
                    items,
                )

    def shadow_rankings(self, challenger_version: str | None = None) -> list[ShadowRanking]:
        """Logged shadow rankings, oldest first (only those of `challenger_version` if given)."""
        where, args = "", []
        if challenger_version is not None:
            where, args = "WHERE challenger_version = ?", [challenger_version]
        with self._read() as c:
            heads = c.execute(
                "SELECT request_id, at, posting_id, champion_version, challenger_version, top_k, "
                f"retrieved FROM shadow_rankings {where} ORDER BY at, request_id",
                args,
            ).fetchall()
            items = c.execute(
                "SELECT request_id, role, candidate_id FROM shadow_items ORDER BY request_id, "
                "role, rank"
            ).fetchall()
        orders: dict[tuple[str, str], list[str]] = {}
        for rid, role, cid in items:
            orders.setdefault((rid, role), []).append(cid)
        return [
            ShadowRanking(
                request_id=h[0],
                at=as_time(h[1]),
                posting_id=h[2],
                champion_version=h[3],
                challenger_version=h[4],
                top_k=int(h[5]),
                retrieved=int(h[6]),
                champion_ids=tuple(orders.get((h[0], "champion"), ())),
                challenger_ids=tuple(orders.get((h[0], "challenger"), ())),
            )
            for h in heads
        ]
