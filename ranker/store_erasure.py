"""The store's erasure: candidates erased everywhere in one transaction, receipts by keyed
digest, tombstones every write path refuses until a logged re-consent, and the engine's residue
(SQLite's WAL, PostgreSQL's dead tuples) cleared and verified afterwards (`StoreErasure`, a base
of both stores)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path

from ranker import tombstones
from ranker.decision_scores import erase_scores
from ranker.errors import InvalidInput
from ranker.rows import ErasureReceipt
from ranker.sql import Sql, as_iso

log = logging.getLogger(__name__)


_KEY_CHECK = b"ranker receipt key check"


def load_or_create_key(path: Path, create: bool = True) -> bytes:
    """The secret that keys erasure-receipt digests, kept in its own owner-only file.

    A plain sha256 of an ATS id like `C0001` is reversed by guessing; an HMAC with a key that
    does not sit in the database is not. Created only when `create` (a store that has none yet).
    """
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        if not create:
            raise InvalidInput(
                f"the erasure receipt key {path} is missing, and the store was written with "
                "one: without it erased ids would no longer be refused. Restore the file from "
                "the host that created the store or from a backup (every service sharing one "
                "PostgreSQL database needs the same key file: RANKER_RECEIPT_KEY_FILE)"
            ) from None
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex())
        f.flush()
        os.fsync(f.fileno())
    return key


def receipt_key(c: Sql, path: Path) -> bytes:
    """The store's receipt key from `path`, checked against the store (inside its opening
    transaction): a store keeps an HMAC of a fixed text under its key (`receipt_key_check`
    in `meta`), so a lost or different key file is refused rather than silently replaced by a
    new one, under which no erased id would be recognised again."""
    row = c.execute("SELECT value FROM meta WHERE key = 'receipt_key_check'").fetchone()
    key = load_or_create_key(path, create=row is None)
    check = hmac.new(key, _KEY_CHECK, hashlib.sha256).hexdigest()
    if row is None:
        c.execute("INSERT INTO meta(key, value) VALUES ('receipt_key_check', ?)", (check,))
    elif not hmac.compare_digest(row[0], check):
        raise InvalidInput(
            f"{path} is not the erasure receipt key this store was written with; erased ids "
            "would no longer be refused. Put the store's own key file back (every service "
            "sharing one PostgreSQL database needs the same one: RANKER_RECEIPT_KEY_FILE)"
        )
    return key


ERASED_TABLES = (
    "candidates",
    "candidate_versions",
    "outcomes",
    "decision_items",
    "decision_scores",
    "shadow_items",
    "protected_attributes",
)
"""What an erasure deletes a candidate's rows from (the receipt counts rows per table). One
entry is not a table: `decision_scores` counts the candidate's scores removed from the logged
score sets (`ranker.decision_scores`: the blobs of `decision_score_sets`, and the erasure
index: SQLite's `decision_scored_runs`, whose entries are overwritten in place, PostgreSQL's
rows of `decision_scored`)."""

_TABLES_OF = {"decision_scores": ("decision_score_sets", "decision_scored")}
"""The tables behind a receipt entry that is not a table, on PostgreSQL (VACUUMed after an
erasure; SQLite's clean-up checkpoints the whole file)."""

ERASED_RELATIONS = tuple(t for k in ERASED_TABLES for t in _TABLES_OF.get(k, (k,)))
"""Every table an erasure writes to (those whose files must lose the erased bytes)."""


class StoreErasure:
    """Erasure, receipts, tombstones and the residue clean-up; `ranker.store_sql.SqlStore`
    provides transactions and the change feed, each engine the clean-up (`clear_residue`)."""

    checkpoint_seconds: float
    """How long an erasure retries its clean-up before reporting it pending."""
    _receipt_key: bytes

    def _tx(self) -> AbstractContextManager[Sql]:
        raise NotImplementedError  # SqlStore's

    def _read(self) -> AbstractContextManager[Sql]:
        raise NotImplementedError  # SqlStore's

    def _bump_generation(self, c: Sql) -> None:
        raise NotImplementedError  # SqlStore's

    def _log_changes(self, tx: Sql, kind: str, keys: Iterable[object], op: str) -> None:
        raise NotImplementedError  # SqlStore's

    # -- the engine's residue: bytes of erased rows the engine keeps after the commit --------
    @property
    def residue_pending(self) -> bool:
        """True while erased bytes may remain in the engine's files (a clean-up was blocked)."""
        raise NotImplementedError

    def clear_residue(self, budget_seconds: float = 0.0) -> bool:
        """Remove what an erasure left in the engine's files, retrying for up to
        `budget_seconds`; True when verified done (upkeep calls it while `residue_pending`)."""
        raise NotImplementedError

    def _erasure_marker(self, tx: Sql) -> object:
        """Inside the erasure's transaction: what the clean-up needs to know of it (PostgreSQL:
        its transaction id, to tell whether any snapshot could still see the erased rows)."""
        return None

    def _residue_left(self, marker: object, tables: set[str]) -> None:
        """After the erasure committed: record that `tables` hold erased rows to clean up."""
        raise NotImplementedError

    def delete_candidates(self, ids: Sequence[str], actor: str = "anonymous") -> ErasureReceipt:
        """Erase candidates: CV and its earlier versions, vectors, outcomes, protected attributes
        and logged feature rows.

        One transaction for the whole request; a receipt per erased id keeps only its keyed
        digest (`_receipt_digest`), never the id. The digest is also kept as a tombstone that
        every write path refuses until `reconsent`, and `actor` (a token's name) is recorded in
        `admin_actions`. The change feed gets one `erasure` entry per erased candidate that had
        a stored row, keyed by its faiss id (the slot a follower drops). Then the engine's
        residue is cleared and verified (`clear_residue`: SQLite's WAL checkpoint, PostgreSQL's
        VACUUM), so no erased byte stays in the database's files.
        """
        at = datetime.now(UTC)
        erased: list[str] = []
        not_found: list[str] = []
        totals = dict.fromkeys(ERASED_TABLES, 0)
        receipt_ids: list[int] = []
        erased_fids: list[int] = []
        marker: object = None
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
                    "decision_scores": 0 if fid is None else erase_scores(tx, int(fid[0])),
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
                if fid is not None:
                    erased_fids.append(int(fid[0]))
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
                self._log_changes(tx, "erasure", erased_fids, "delete")
                marker = self._erasure_marker(tx)
        if erased:
            # The deleted rows' bytes outlive the commit in the engine's files (SQLite: the
            # write-ahead log; PostgreSQL: dead tuples in heap, TOAST and index pages); clear
            # them now, and keep retrying from upkeep while something blocks it.
            touched = {t for k, n in totals.items() if n for t in _TABLES_OF.get(k, (k,))}
            self._residue_left(marker, touched)
            self.clear_residue(self.checkpoint_seconds)
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
        with self._read() as c:
            rows = c.execute(
                "SELECT receipt_id, at, rows FROM erasures WHERE candidate_id_hmac = ? "
                "ORDER BY at, receipt_id",
                (self._receipt_digest(candidate_id),),
            ).fetchall()
        return [
            {"receipt_id": int(r), "at": as_iso(a), "rows": json.loads(rows_)}
            for r, a, rows_ in rows
        ]

    # -- erasure that sticks (tombstones, re-consent, who did it: `ranker.tombstones`) ----
    def erased_among(self, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` that were erased and not re-consented since."""
        with self._read() as c:
            return tombstones.erased(c, self._digests(ids))

    def _digests(self, ids: Sequence[str]) -> dict[str, str]:
        return {self._receipt_digest(i): i for i in dict.fromkeys(ids)}

    def _erased_in(self, tx: Sql, ids: Sequence[str]) -> set[str]:
        """The ids among `ids` erased (not re-consented), read in the caller's write transaction:
        logs written after an erasure (a replica that ranked before it heard of it) drop them."""
        return tombstones.erased(tx, self._digests(ids)) if ids else set()

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
        with self._read() as c:
            return tombstones.actions(c)
