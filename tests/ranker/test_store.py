"""SqliteStore: upserts are idempotent and atomic, erasure removes everything and keeps a receipt."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from ranker.domain import Candidate, Outcome, Posting, Stage
from ranker.errors import InvalidInput
from ranker.rows import CandidateRow, Decision, PostingRow, ScoredCandidates, ShadowRanking
from ranker.store import SqliteStore

DIM = 8


def _vec(seed: int, n: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n or 1, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v if n else v[0]


def _cand(i: int, text: str = "Python developer with ten years of Django.") -> CandidateRow:
    c = Candidate(
        id=f"c{i}",
        cv_text=text,
        skills=("Python", "Django"),
        years_experience=i % 20,
        location="Berlin",
        remote_ok=bool(i % 2),
        title="Engineer",
    )
    return CandidateRow(candidate=c, doc_vector=_vec(i), chunk_vectors=_vec(i, 3))


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "ranker.db", dim=DIM)
    yield s
    s.close()


def test_candidates_roundtrip_and_upsert_is_idempotent(store: SqliteStore) -> None:
    ids1 = store.upsert_candidates([_cand(1), _cand(2)])
    gen = store.generation()
    ids2 = store.upsert_candidates([_cand(1, "Rewritten CV text.")])
    assert ids2 == ids1[:1]  # same faiss id on re-upsert
    assert store.generation() != gen
    assert store.count_candidates() == 2
    (row,) = store.get_candidates(["c1"])
    assert row.candidate.cv_text == "Rewritten CV text."
    assert row.candidate.skills == ("python", "django")
    np.testing.assert_array_equal(row.chunk_vectors, _vec(1, 3))
    assert [r.candidate.id for r in store.iter_candidates(batch=1)] == ["c1", "c2"]
    assert store.faiss_ids(["c2", "ghost", "c1"]) == {"c1": ids1[0], "c2": ids1[1]}
    assert [r.candidate.id for r in store.get_candidates(["c2", "ghost", "c1"])] == ["c2", "c1"]


def test_lookups_of_more_ids_than_sqlite_binds_at_once(store: SqliteStore) -> None:
    # 1,200 ids go to SQLite in slices; every stored one is found, in the order asked.
    stored = [_cand(i) for i in range(0, 1200, 7)]
    store.upsert_candidates(stored)
    asked = [f"c{i}" for i in reversed(range(1200))]
    found = store.get_candidates(asked)
    assert [r.candidate.id for r in found] == [i for i in asked if int(i[1:]) % 7 == 0]
    assert set(store.faiss_ids(asked)) == {r.candidate.id for r in stored}


def test_a_bad_row_stores_nothing(store: SqliteStore) -> None:
    store.upsert_candidates([_cand(1)])
    bad = CandidateRow(
        candidate=_cand(2).candidate,
        doc_vector=np.full(DIM, np.nan, np.float32),
        chunk_vectors=_vec(2, 1),
    )
    with pytest.raises(InvalidInput):
        store.upsert_candidates([_cand(3), bad])
    assert store.count_candidates() == 1


def test_postings_and_outcomes(store: SqliteStore) -> None:
    p = Posting(
        id="p1",
        title="Backend engineer",
        description="Build APIs in Python.",
        required_skills=("python",),
        min_years=3,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    store.upsert_postings([PostingRow(posting=p, vector=_vec(9))])
    (row,) = store.list_postings()
    assert row.posting == p
    np.testing.assert_array_equal(row.vector, _vec(9))
    o = Outcome(
        posting_id="p1",
        candidate_id="c1",
        stage=Stage.SCREENED,
        at=datetime(2026, 2, 1, tzinfo=UTC),
    )
    assert store.record_outcomes([o, o]) == 1
    assert store.record_outcomes([o]) == 0
    assert store.list_outcomes() == [o]


def test_erasure_removes_every_trace_and_keeps_a_receipt(store: SqliteStore) -> None:
    store.upsert_candidates([_cand(1), _cand(2)])
    store.upsert_candidates([_cand(1, "An edited CV.")])  # the first one is kept as a version
    store.record_outcomes([Outcome(posting_id="p1", candidate_id="c1", stage=Stage.HIRED)])
    store.upsert_protected([("c1", "sex", "f")])
    store.log_decisions(
        [
            Decision(
                request_id="r1",
                at=datetime.now(UTC),
                model_version="v1",
                posting_id="p1",
                posting_hash="h",
                top_k=2,
                feature_names=("a", "b"),
                candidate_ids=("c1", "c2"),
                scores=np.array([0.9, 0.1]),
                features=np.ones((2, 2)),
                params={},
            )
        ]
    )
    store.log_shadow(
        [
            ShadowRanking(
                request_id="r1",
                at=datetime.now(UTC),
                posting_id="p1",
                champion_version="v1",
                challenger_version="v2",
                top_k=2,
                retrieved=2,
                champion_ids=("c1", "c2"),
                challenger_ids=("c2", "c1"),
            )
        ]
    )
    receipt = store.delete_candidates(["c1", "ghost"])
    assert receipt.erased == ("c1",) and receipt.not_found == ("ghost",)
    assert receipt.rows == {
        "candidates": 1,
        "candidate_versions": 1,
        "outcomes": 1,
        "decision_items": 1,
        "shadow_items": 2,
        "decision_scores": 0,  # this decision kept no scores beyond the top k
        "protected_attributes": 1,
    }
    assert store.get_candidates(["c1"]) == []
    assert store.candidate_versions(["c1"]) == []
    assert store.list_outcomes() == []
    assert store.get_decision("r1").candidate_ids == ("c2",)
    (shadow,) = store.shadow_rankings()
    assert shadow.champion_ids == ("c2",) and shadow.challenger_ids == ("c2",)
    assert store.protected_attributes("sex") == {}
    receipts = store.erasure_receipts("c1")
    assert len(receipts) == 1 and receipts[0]["rows"]["candidates"] == 1


def _scored_decision(request_id: str, fids: dict[str, int], ids: list[str]) -> Decision:
    scores = np.linspace(1.0, 0.0, len(ids), dtype=np.float32)
    return Decision(
        request_id=request_id,
        at=datetime.now(UTC),
        model_version="v1",
        posting_id="p1",
        posting_hash="h",
        top_k=2,
        feature_names=("a",),
        candidate_ids=tuple(ids[:2]),
        scores=scores[:2],
        features=np.ones((2, 1)),
        params={},
        scored=ScoredCandidates(
            np.array([fids[c] for c in ids], dtype=np.int64), tuple(ids), scores
        ),
    )


def test_every_scored_candidate_s_score_is_logged_and_erased_with_the_candidate(
    store: SqliteStore,
) -> None:
    fids = dict(
        zip(
            ["c1", "c2", "c3", "c4"],
            store.upsert_candidates([_cand(i) for i in range(1, 5)]),
            strict=True,
        )
    )
    store.log_decisions(
        [
            _scored_decision("r1", fids, ["c3", "c1", "c4", "c2"]),
            _scored_decision("r2", fids, ["c1", "c2"]),
            Decision(  # an older-style decision: top k only
                request_id="r3",
                at=datetime.now(UTC),
                model_version="v1",
                posting_id="p1",
                posting_hash="h",
                top_k=1,
                feature_names=("a",),
                candidate_ids=("c1",),
                scores=np.array([0.5]),
                features=np.ones((1, 1)),
                params={},
            ),
        ]
    )
    got = store.get_decision("r1").scored
    assert got is not None
    kept = dict(zip(got.candidate_ids, got.scores.tolist(), strict=True))
    assert kept == pytest.approx({"c3": 1.0, "c1": 2 / 3, "c4": 1 / 3, "c2": 0.0})
    assert store.get_decision("r3").scored is None

    receipt = store.delete_candidates(["c1"])
    assert receipt.rows["decision_scores"] == 2 and receipt.rows["decision_items"] == 3
    for rid in ("r1", "r2"):
        d = store.get_decision(rid)
        assert d.scored is not None and "c1" not in d.candidate_ids
        assert "c1" not in d.scored.candidate_ids
    assert store.get_decision("r1").scored.candidate_ids == ("c2", "c3", "c4")  # type: ignore[union-attr]
    # No row anywhere still names the erased candidate or its faiss id.
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute(
            "SELECT COUNT(*) FROM decision_items WHERE candidate_id = 'c1'"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT COUNT(*) FROM decision_scores WHERE faiss_id = ?", (fids["c1"],)
        ).fetchone() == (0,)
    finally:
        conn.close()


def test_a_changed_record_keeps_the_version_before_it(store: SqliteStore) -> None:
    first = datetime.now(UTC)
    store.upsert_candidates([_cand(1), _cand(2)])
    store.upsert_candidates([_cand(1)])  # the same record again: no new version
    assert store.candidate_versions() == []
    edited = CandidateRow(
        candidate=Candidate(id="c1", cv_text="A rewritten CV.", skills=("Rust",), location="Oslo"),
        doc_vector=_vec(11),
        chunk_vectors=_vec(11, 2),
    )
    store.upsert_candidates([edited])
    store.upsert_candidates([_cand(1, "A third CV.")])
    versions = store.candidate_versions(["c1", "c2"])
    # Oldest first, each with its own record and vectors, spans that meet end to start.
    assert [v.candidate for v in versions] == [_cand(1).candidate, edited.candidate]
    np.testing.assert_array_equal(versions[0].chunk_vectors, _vec(1, 3))
    np.testing.assert_array_equal(versions[1].doc_vector, _vec(11))
    np.testing.assert_array_equal(versions[1].chunk_vectors, _vec(11, 2))
    assert first <= versions[0].valid_from <= versions[0].valid_until
    assert versions[0].valid_until == versions[1].valid_from <= versions[1].valid_until
    assert store.get_candidates(["c1"])[0].candidate.cv_text == "A third CV."
    assert [v.candidate.id for v in store.candidate_versions()] == ["c1", "c1"]


def test_reopen_keeps_data(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "db.sqlite", dim=DIM)
    s.upsert_candidates([_cand(5)])
    gen, uuid = s.generation(), s.uuid
    s.close()
    s2 = SqliteStore(tmp_path / "db.sqlite", dim=DIM)
    assert s2.count_candidates() == 1 and s2.generation() == gen and s2.uuid == uuid
    (row,) = s2.get_candidates(["c5"])
    assert row.candidate == _cand(5).candidate
    np.testing.assert_array_equal(row.chunk_vectors, _vec(5, 3))
    s2.close()


def test_a_recreated_database_has_a_new_uuid(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "db.sqlite", dim=DIM)
    uuid = s.uuid
    assert len(uuid) == 32 and s.generation().startswith(uuid)
    s.close()
    (tmp_path / "db.sqlite").unlink()
    s2 = SqliteStore(tmp_path / "db.sqlite", dim=DIM)
    assert s2.uuid != uuid
    s2.close()


def test_concurrent_upserts_lose_nothing(store: SqliteStore) -> None:
    def work(offset: int) -> None:
        for i in range(offset, offset + 25):
            store.upsert_candidates([_cand(i)])

    threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count_candidates() == 100
    assert (
        len(set(store.faiss_ids([f"c{k * 100 + i}" for k in range(4) for i in range(25)]).values()))
        == 100
    )


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
