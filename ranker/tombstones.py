"""Erasure that sticks: erased ids kept as keyed digests that every write path refuses, the
re-consent that lifts one, and the record of who erased or re-consented (SQL on the store's
connection, inside its transactions)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from ranker.errors import ErasedId, shown_id
from ranker.sql import Sql, as_iso

_IN_LIMIT = 500


def erased_message(candidate_id: str) -> str:
    """Why a write of an erased id is refused, and how to re-add it."""
    return (
        f"candidate {shown_id(candidate_id)} was erased; it is stored again only after the person "
        "consents anew and an admin records it with `ranker reconsent ID --reason ...` (service "
        "stopped); then send it again"
    )


def backfill(c: Sql) -> None:
    """Tombstones for erasures recorded before the `erased_ids` table existed (once per store:
    a later re-consent must not be undone by running this again)."""
    done = c.execute("SELECT 1 FROM meta WHERE key = 'erased_ids_from_receipts'").fetchone()
    if done:
        return
    c.execute(
        "INSERT INTO erased_ids (candidate_id_hmac, erased_at) "
        "SELECT candidate_id_hmac, MIN(at) FROM erasures GROUP BY candidate_id_hmac "
        "ON CONFLICT DO NOTHING"
    )
    c.execute("INSERT INTO meta(key, value) VALUES ('erased_ids_from_receipts', '1')")


def erased(c: Sql, digests: dict[str, str]) -> set[str]:
    """The ids (values of `digests`, keyed by digest) that are erased and not re-consented."""
    keys = list(digests)
    found: set[str] = set()
    for start in range(0, len(keys), _IN_LIMIT):
        part = keys[start : start + _IN_LIMIT]
        marks = ",".join("?" * len(part))
        rows = c.execute(
            f"SELECT candidate_id_hmac FROM erased_ids WHERE candidate_id_hmac IN ({marks})", part
        )
        found.update(digests[d] for (d,) in rows)
    return found


def refuse(c: Sql, digests: dict[str, str]) -> None:
    """Raise ErasedId when any of the ids is erased (the store's last line of defence)."""
    gone = erased(c, digests)
    if gone:
        raise ErasedId(erased_message(sorted(gone)[0]))


def bury(c: Sql, digest: str, at: datetime) -> None:
    c.execute(
        "INSERT INTO erased_ids (candidate_id_hmac, erased_at) VALUES (?, ?) "
        "ON CONFLICT(candidate_id_hmac) DO UPDATE SET erased_at = excluded.erased_at",
        (digest, at.isoformat()),
    )


def lift(c: Sql, digest: str) -> bool:
    """Remove a tombstone; False when there was none."""
    return bool(c.execute("DELETE FROM erased_ids WHERE candidate_id_hmac = ?", (digest,)).rowcount)


def record_action(c: Sql, actor: str, action: str, detail: Mapping[str, object]) -> None:
    """Who (a token's name or an OS user, never a secret) did what, with its details."""
    c.execute(
        "INSERT INTO admin_actions (at, actor, action, detail) VALUES (?, ?, ?, ?)",
        (datetime.now(UTC).isoformat(), actor, action, json.dumps(detail, sort_keys=True)),
    )


def actions(c: Sql) -> list[dict[str, object]]:
    """Erasures and re-consents, oldest first."""
    rows = c.execute(
        "SELECT action_id, at, actor, action, detail FROM admin_actions ORDER BY action_id"
    ).fetchall()
    return [
        {
            "id": int(i),
            "at": as_iso(at),
            "actor": actor,
            "action": action,
            "detail": json.loads(detail),
        }
        for i, at, actor, action, detail in rows
    ]
