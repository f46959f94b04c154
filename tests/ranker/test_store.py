"""What only the SQLite store does: its files (no erased byte left in the database or its WAL),
a recreated file's new identity, a failed COMMIT. The behaviour both engines share is
`test_store_shared.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ranker.store import SqliteStore
from tests.ranker.test_store_shared import DIM, _cand


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "ranker.db", dim=DIM)
    yield s
    s.close()


def test_a_recreated_database_has_a_new_uuid(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "db.sqlite", dim=DIM)
    uuid = s.uuid
    assert len(uuid) == 32 and s.generation().startswith(uuid)
    s.close()
    (tmp_path / "db.sqlite").unlink()
    s2 = SqliteStore(tmp_path / "db.sqlite", dim=DIM)
    assert s2.uuid != uuid
    s2.close()


def test_erased_text_is_gone_from_the_files(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "ranker.db", dim=DIM)
    secret = "Unmistakable-CV-marker-4711 lives in Springfield."
    s.upsert_candidates([_cand(1, secret), _cand(2)])
    s.upsert_candidates([_cand(1, "Edited, the marker gone."), _cand(1, secret + " Again.")])
    receipt = s.delete_candidates(["c1"])
    assert receipt.rows["candidate_versions"] == 2
    for f in tmp_path.iterdir():
        assert b"Unmistakable-CV-marker-4711" not in f.read_bytes(), f.name
    # The receipt is keyed: it is not the plain sha256 of the id, and the key outlives a
    # restart, so the receipt is still found by the id after reopening.
    import hashlib

    assert hashlib.sha256(b"c1").hexdigest().encode() not in (tmp_path / "ranker.db").read_bytes()
    assert s.erasure_receipts("c1")[0]["rows"]["candidates"] == 1
    s.close()
    s2 = SqliteStore(tmp_path / "ranker.db", dim=DIM)
    assert s2.erasure_receipts("c1")[0]["rows"]["candidates"] == 1
    s2.close()


def test_a_failed_commit_leaves_the_store_usable(store: SqliteStore) -> None:
    with pytest.raises(RuntimeError), store._tx() as tx:
        tx.execute("INSERT INTO meta(key, value) VALUES ('x', 'y')")
        raise RuntimeError("boom")
    assert store._meta("x") is None
    store.upsert_candidates([_cand(1)])
    assert store.count_candidates() == 1
