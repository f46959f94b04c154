"""The store's erasure: candidates erased everywhere in one transaction, receipts by keyed
digest, tombstones every write path refuses until a logged re-consent, and the WAL checkpoint
verified afterwards (`SqliteErasure`, a base of `SqliteStore`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

from ranker import tombstones
from ranker.errors import InvalidInput
from ranker.rows import ErasureReceipt
from ranker.wal import checkpoint_wal

log = logging.getLogger(__name__)


def load_or_create_key(path: Path) -> bytes:
    """The secret that keys erasure-receipt digests, kept in its own owner-only file.

    A plain sha256 of an ATS id like `C0001` is reversed by guessing; an HMAC with a key that
    does not sit in the database is not.
    """
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex())
        f.flush()
        os.fsync(f.fileno())
    return key


class SqliteErasure:
    """Erasure, receipts, tombstones and the WAL checkpoint; `SqliteStore` provides the
    connection, its lock and transactions."""

    path: Path
    checkpoint_seconds: float
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _receipt_key: bytes
    _checkpoint_pending: bool

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError  # SqliteStore's

    def _bump_generation(self, c: sqlite3.Connection) -> None:
        raise NotImplementedError  # SqliteStore's

    def delete_candidates(self, ids: Sequence[str], actor: str = "anonymous") -> ErasureReceipt:
        """Erase candidates: CV and its earlier versions, vectors, outcomes, protected attributes
        and logged feature rows.

        One transaction for the whole request; a receipt per erased id keeps only its keyed
        digest (`_receipt_digest`), never the id. The digest is also kept as a tombstone that
        every write path refuses until `reconsent`, and `actor` (a token's name) is recorded in
        `admin_actions`. Then the write-ahead log is checkpointed and verified empty
        (`checkpoint_wal`), so no erased byte stays in any file.
        """
        at = datetime.now(UTC)
        erased: list[str] = []
        not_found: list[str] = []
        totals = {
            "candidates": 0,
            "candidate_versions": 0,
            "outcomes": 0,
            "decision_items": 0,
            "decision_scores": 0,
            "shadow_items": 0,
            "protected_attributes": 0,
        }
        receipt_ids: list[int] = []
        with self._tx() as tx:
            for cid in dict.fromkeys(ids):
                fid = tx.execute("SELECT faiss_id FROM candidates WHERE id = ?", (cid,)).fetchone()
                counts = {
                    "candidates": tx.execute(
                        "DELETE FROM candidates WHERE id = ?", (cid,)
                    ).rowcount,
                    "candidate_versions": tx.execute(
                        "DELETE FROM candidate_versions WHERE candidate_id = ?", (cid,)
                    ).rowcount,
                    "outcomes": tx.execute(
                        "DELETE FROM outcomes WHERE candidate_id = ?", (cid,)
                    ).rowcount,
                    "decision_items": tx.execute(
                        "DELETE FROM decision_items WHERE candidate_id = ?", (cid,)
                    ).rowcount,
                    # Keyed by faiss id: gone with the candidate's row, so looked up first.
                    "decision_scores": 0
                    if fid is None
                    else tx.execute(
                        "DELETE FROM decision_scores WHERE faiss_id = ?", (fid[0],)
                    ).rowcount,
                    "shadow_items": tx.execute(
                        "DELETE FROM shadow_items WHERE candidate_id = ?", (cid,)
                    ).rowcount,
                    "protected_attributes": tx.execute(
                        "DELETE FROM protected_attributes WHERE candidate_id = ?", (cid,)
                    ).rowcount,
                }
                if counts["candidates"] == 0 and not any(counts.values()):
                    not_found.append(cid)
                    continue
                erased.append(cid)
                for k, v in counts.items():
                    totals[k] += v
                # Random, not the table's sequence: sequential ids would tell every holder of a
                # receipt how many erasures the service has carried out.
                receipt_id = secrets.randbits(62) + 1
                tx.execute(
                    "INSERT INTO erasures (receipt_id, at, candidate_id_hmac, rows) "
                    "VALUES (?, ?, ?, ?)",
                    (receipt_id, at.isoformat(), self._receipt_digest(cid), json.dumps(counts)),
                )
                receipt_ids.append(receipt_id)
                tombstones.bury(tx, self._receipt_digest(cid), at)
            if erased:
                self._bump_generation(tx)
                detail = {"receipt_ids": receipt_ids, "candidates": len(erased)}
                tombstones.record_action(tx, actor, "erase", detail)
        if erased:
            # Erased rows also sit in the write-ahead log until a checkpoint; copy them into the
            # (secure-deleted) database now and truncate the log so no copy of the CV remains.
            self._checkpoint_pending = True
            self.checkpoint_wal(self.checkpoint_seconds)
        return ErasureReceipt(
            at=at,
            erased=tuple(erased),
            not_found=tuple(not_found),
            rows=totals,
            receipt_ids=tuple(receipt_ids),
        )

    def _receipt_digest(self, candidate_id: str) -> str:
        """The keyed digest that erasure receipts keep instead of the erased id."""
        return hmac.new(self._receipt_key, candidate_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def erasure_receipts(self, candidate_id: str) -> list[dict[str, object]]:
        """The receipts recorded for an id (looked up by its digest; the id itself is not kept)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT receipt_id, at, rows FROM erasures WHERE candidate_id_hmac = ? "
                "ORDER BY at, receipt_id",
                (self._receipt_digest(candidate_id),),
            ).fetchall()
        return [{"receipt_id": r, "at": a, "rows": json.loads(rows_)} for r, a, rows_ in rows]

    # -- erasure that sticks (tombstones, re-consent, who did it: `ranker.tombstones`) ----
    def erased_among(self, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` that were erased and not re-consented since."""
        with self._lock:
            return tombstones.erased(self._conn, self._digests(ids))

    def _digests(self, ids: Sequence[str]) -> dict[str, str]:
        return {self._receipt_digest(i): i for i in dict.fromkeys(ids)}

    def reconsent(self, candidate_id: str, reason: str, actor: str) -> bool:
        """Lift an erased id's tombstone so it may be stored again; logged with who and why.

        False when the id is not erased (nothing to do). The receipts stay: they prove the
        earlier erasure.
        """
        if not reason.strip():
            raise InvalidInput("a re-consent needs a reason (--reason): it is kept in the log")
        digest = self._receipt_digest(candidate_id)
        with self._tx() as tx:
            if not tombstones.lift(tx, digest):
                return False
            detail = {"candidate_id_hmac": digest, "reason": reason.strip()}
            tombstones.record_action(tx, actor, "reconsent", detail)
        return True

    def admin_actions(self) -> list[dict[str, object]]:
        """Erasures and re-consents, oldest first: when, who (a token's name), what."""
        with self._lock:
            return tombstones.actions(self._conn)

    @property
    def checkpoint_pending(self) -> bool:
        """True while erased rows may still sit in the -wal file (a checkpoint was blocked)."""
        return self._checkpoint_pending

    def checkpoint_wal(self, budget_seconds: float = 0.0) -> bool:
        """`ranker.wal.checkpoint_wal` on this store; clears `checkpoint_pending` when verified."""
        done = checkpoint_wal(
            self._conn, self._lock, self.path, budget_seconds, report=self._checkpoint_pending
        )
        if done and self._checkpoint_pending:
            log.info("write-ahead log checkpointed: no erased rows remain in %s-wal", self.path)
        if done:
            self._checkpoint_pending = False
        return done
