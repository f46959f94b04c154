"""The store's behaviour, one suite run against both engines (SQLite and a real PostgreSQL):
upserts, versions, postings, outcomes, protected attributes, decisions, shadow rankings,
erasure with receipts and tombstones, re-consent, and the change feed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ranker import decision_scores
from ranker.config import Settings
from ranker.decision_reader import DecisionReader
from ranker.decision_scores import scored_decisions
from ranker.domain import Candidate, Outcome, Posting, Stage
from ranker.errors import ErasedId, InvalidInput, NotFound
from ranker.rows import CandidateRow, Decision, PostingRow, ScoredCandidates, ShadowRanking
from ranker.store import SqliteStore
from ranker.store_api import open_decision_reader, open_store, store_exists
from ranker.store_sql import SqlStore

DIM = 8
BACKENDS = ["sqlite", "postgres"]


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


def _posting(pid: str = "p1") -> PostingRow:
    p = Posting(
        id=pid,
        title="Backend engineer",
        description="Build APIs in Python.",
        required_skills=("python",),
        min_years=3,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return PostingRow(posting=p, vector=_vec(9))


def _decision(request_id: str, ids: tuple[str, ...], version: str = "v1") -> Decision:
    return Decision(
        request_id=request_id,
        at=datetime.now(UTC),
        model_version=version,
        posting_id="p1",
        posting_hash="h",
        top_k=len(ids),
        feature_names=("a", "b"),
        candidate_ids=ids,
        scores=np.linspace(0.9, 0.1, len(ids)),
        features=np.arange(2 * len(ids), dtype=np.float32).reshape(len(ids), 2),
        params={"k": len(ids)},
    )


def _shadow(request_id: str, retrieved: int = 2) -> ShadowRanking:
    return ShadowRanking(
        request_id=request_id,
        at=datetime.now(UTC),
        posting_id="p1",
        champion_version="v1",
        challenger_version="v2",
        top_k=2,
        retrieved=retrieved,
        champion_ids=("c1", "c2"),
        challenger_ids=("c2", "c1"),
    )


class Backend:
    """Opens stores of one engine on one database (again, as a restart or a second service)."""

    def __init__(self, name: str, tmp_path: Path, url: str | None) -> None:
        self.name = name
        self.settings = Settings(
            data_dir=tmp_path / "data",
            database_url=url or "",
            database_pool_size=4,
            erasure_checkpoint_seconds=5.0,
        )

    def open(self, **overrides: object) -> SqlStore:
        store = open_store(self.settings.model_copy(update=overrides), dim=DIM)
        assert isinstance(store, SqlStore)
        return store

    def reader(self) -> DecisionReader:
        return open_decision_reader(self.settings)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return Backend(request.param, tmp_path, url)


@pytest.fixture
def store(backend: Backend) -> Iterator[SqlStore]:
    s = backend.open()
    yield s
    s.close()


def _rows_naming(store: SqlStore, table: str, column: str, value: object) -> int:
    with store._read() as c:
        return int(
            c.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (value,)).fetchone()[0]
        )


def test_each_backend_is_the_one_the_settings_name(backend: Backend, store: SqlStore) -> None:
    from ranker.store_pg import PostgresStore

    assert isinstance(store, PostgresStore if backend.name == "postgres" else SqliteStore)
    assert store_exists(backend.settings)


def test_candidates_roundtrip_and_upsert_is_idempotent(store: SqlStore) -> None:
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
    by_fid = store.get_candidates_by_faiss_ids([ids1[1], 10**9, ids1[0]])
    assert [(f, r.candidate.id) for f, r in by_fid] == [(ids1[0], "c1"), (ids1[1], "c2")]


def test_lookups_of_more_ids_than_one_statement_binds(store: SqlStore) -> None:
    # 1,200 ids go to the database in slices; every stored one is found, in the order asked.
    stored = [_cand(i) for i in range(0, 1200, 7)]
    store.upsert_candidates(stored)
    asked = [f"c{i}" for i in reversed(range(1200))]
    found = store.get_candidates(asked)
    assert [r.candidate.id for r in found] == [i for i in asked if int(i[1:]) % 7 == 0]
    assert set(store.faiss_ids(asked)) == {r.candidate.id for r in stored}


def test_ids_order_by_bytes_on_both_engines(store: SqlStore) -> None:
    # PostgreSQL's columns are COLLATE "C": the order SQLite gives, whatever the cluster locale.
    for pid in ("p-b", "P-a", "p_a", "p-A"):
        store.upsert_postings([_posting(pid)])
    assert [r.posting.id for r in store.list_postings()] == sorted(["p-b", "P-a", "p_a", "p-A"])


def test_a_bad_row_stores_nothing(store: SqlStore) -> None:
    store.upsert_candidates([_cand(1)])
    seq = store.last_change_seq()
    bad = CandidateRow(
        candidate=_cand(2).candidate,
        doc_vector=np.full(DIM, np.nan, np.float32),
        chunk_vectors=_vec(2, 1),
    )
    with pytest.raises(InvalidInput):
        store.upsert_candidates([_cand(3), bad])
    assert store.count_candidates() == 1 and store.last_change_seq() == seq


def test_a_write_whose_caller_gave_up_stores_nothing(store: SqlStore) -> None:
    seq = store.last_change_seq()

    def expired() -> None:
        raise TimeoutError("deadline passed")

    with pytest.raises(TimeoutError):
        store.upsert_candidates([_cand(1)], before_commit=expired)
    with pytest.raises(TimeoutError):
        store.upsert_postings([_posting()], before_commit=expired)
    assert store.count_candidates() == 0 and store.count_postings() == 0
    assert store.last_change_seq() == seq and store.changes_since(0) == []
    store.upsert_candidates([_cand(1)])  # the store is usable after the rollback
    assert store.count_candidates() == 1


def test_postings_and_outcomes(store: SqlStore) -> None:
    store.upsert_postings([_posting()])
    (row,) = store.list_postings()
    assert row.posting == _posting().posting
    np.testing.assert_array_equal(row.vector, _vec(9))
    assert [r.posting.id for r in store.get_postings(["ghost", "p1"])] == ["p1"]
    assert store.count_postings() == 1
    o = Outcome(
        posting_id="p1",
        candidate_id="c1",
        stage=Stage.SCREENED,
        at=datetime(2026, 2, 1, tzinfo=UTC),
    )
    assert store.record_outcomes([o, o]) == 1
    assert store.record_outcomes([o]) == 0
    assert store.list_outcomes() == [o] and store.count_outcomes() == 1


def test_protected_attributes_are_kept_apart_and_updated(store: SqlStore) -> None:
    store.upsert_protected([("c1", "sex", "f"), ("c2", "sex", "m"), ("c1", "race", "x")])
    store.upsert_protected([("c2", "sex", "f")])
    assert store.protected_attributes("sex") == {"c1": "f", "c2": "f"}
    assert store.protected_attributes("race") == {"c1": "x"}


def test_decisions_are_logged_and_read_back(backend: Backend, store: SqlStore) -> None:
    store.log_decisions([_decision("r1", ("c1", "c2")), _decision("r2", ("c2",), "v2")])
    got = store.get_decision("r1")
    assert got.candidate_ids == ("c1", "c2") and got.model_version == "v1"
    assert got.params == {"k": 2} and got.feature_names == ("a", "b")
    np.testing.assert_array_equal(got.features, np.arange(4, dtype=np.float32).reshape(2, 2))
    assert got.at.tzinfo is not None
    assert store.has_decisions(["r1", "r9", "r2"]) == {"r1", "r2"}
    assert store.count_decisions() == 2
    with pytest.raises(NotFound):
        store.get_decision("r9")
    store.upsert_candidates([_cand(2)])
    with backend.reader() as reader:  # read-only, beside the store
        assert reader.get("r2").candidate_ids == ("c2",)
        names, rows = reader.feature_rows("v1", limit=10)
        assert names == ("a", "b") and rows.shape == (2, 2)
        assert [(v, n) for v, n, _ in reader.versions()] == [("v2", 1), ("v1", 1)]
        assert reader.decision_ids(None, None) == ["r1", "r2"]
        assert reader.candidate_ids() == ["c2"]


def test_shadow_rankings_roundtrip(store: SqlStore) -> None:
    record = _shadow("r1", retrieved=3)
    store.log_shadow([record])
    store.log_shadow([record])  # a replay replaces, never duplicates
    assert store.shadow_rankings() == [record]
    assert store.shadow_rankings("v3") == []


def test_erasure_removes_every_trace_and_keeps_a_receipt(store: SqlStore) -> None:
    store.upsert_candidates([_cand(1), _cand(2)])
    store.upsert_candidates([_cand(1, "An edited CV.")])  # the first one is kept as a version
    store.record_outcomes([Outcome(posting_id="p1", candidate_id="c1", stage=Stage.HIRED)])
    store.upsert_protected([("c1", "sex", "f")])
    store.log_decisions([_decision("r1", ("c1", "c2"))])
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
    receipt = store.delete_candidates(["c1", "ghost"], actor="token:ops")
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
    assert not store.residue_pending  # the engine's clean-up ran and was verified
    assert store.get_candidates(["c1"]) == []
    assert store.candidate_versions(["c1"]) == []
    assert store.list_outcomes() == []
    assert store.get_decision("r1").candidate_ids == ("c2",)
    (shadow,) = store.shadow_rankings()
    assert shadow.champion_ids == ("c2",) and shadow.challenger_ids == ("c2",)
    assert store.protected_attributes("sex") == {}
    (found,) = store.erasure_receipts("c1")
    assert found["rows"]["candidates"] == 1  # type: ignore[index]
    assert found["receipt_id"] in receipt.receipt_ids
    # The receipt is keyed by an HMAC of the id, never the id.
    with store._read() as c:
        kept = c.execute("SELECT candidate_id_hmac, rows FROM erasures").fetchall()
    ((digest, rows),) = kept
    assert len(digest) == 64 and digest != "c1" and '"c1"' not in rows
    (action,) = store.admin_actions()
    assert action["actor"] == "token:ops" and action["action"] == "erase"


def test_an_erased_id_is_refused_by_every_write_path_until_reconsent(store: SqlStore) -> None:
    store.upsert_candidates([_cand(1), _cand(2)])
    store.delete_candidates(["c1"])
    assert store.erased_among(["c1", "c2", "c3"]) == {"c1"}
    outcome = Outcome(posting_id="p1", candidate_id="c1", stage=Stage.APPLIED)
    for write in (
        lambda: store.upsert_candidates([_cand(2), _cand(1)]),
        lambda: store.record_outcomes([outcome]),
        lambda: store.upsert_protected([("c1", "sex", "f")]),
    ):
        with pytest.raises(ErasedId):
            write()
    assert store.count_candidates() == 1 and store.count_outcomes() == 0
    with pytest.raises(InvalidInput):
        store.reconsent("c1", reason="  ", actor="cli:ops")
    assert not store.reconsent("c2", reason="never erased", actor="cli:ops")
    assert store.reconsent("c1", reason="consent ref 42", actor="cli:ops")
    assert store.erased_among(["c1"]) == set()
    store.upsert_candidates([_cand(1)])
    assert store.record_outcomes([outcome]) == 1
    assert [a["action"] for a in store.admin_actions()] == ["erase", "reconsent"]
    assert len(store.erasure_receipts("c1")) == 1  # the receipt outlives the re-consent


def test_every_scored_candidate_s_score_is_logged_and_erased_with_the_candidate(
    store: SqlStore,
) -> None:
    names = ["c1", "c2", "c3", "c4"]
    fids = dict(zip(names, store.upsert_candidates([_cand(i) for i in range(1, 5)]), strict=True))

    def scored(request_id: str, ids: list[str]) -> Decision:
        scores = np.linspace(1.0, 0.0, len(ids), dtype=np.float32)
        base = _decision(request_id, tuple(ids[:2]))
        return Decision(
            **{
                **base.__dict__,
                "scored": ScoredCandidates(
                    np.array([fids[c] for c in ids], dtype=np.int64), tuple(ids), scores
                ),
            }
        )

    store.log_decisions(
        [
            scored("r1", ["c3", "c1", "c4", "c2"]),
            scored("r2", ["c1", "c2"]),
            _decision("r3", ("c1",)),
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
    assert _rows_naming(store, "decision_items", "candidate_id", "c1") == 0
    assert _indexed(store, fids["c1"]) == []
    assert fids["c1"] not in _index_fids(store)
    assert _logged_fids(store) == {fids["c2"], fids["c3"], fids["c4"]}


def _logged_fids(store: SqlStore) -> set[int]:
    """Every faiss id in the logged score sets' blobs."""
    with store._read() as c:
        blobs = [r[0] for r in c.execute("SELECT faiss_ids FROM decision_score_sets")]
    return {int(f) for b in blobs for f in np.frombuffer(b or b"", dtype="<i8")}


def _scoring(request_id: str, fids: np.ndarray, names: tuple[str, ...]) -> Decision:
    """A decision that scored `fids` (candidates `names`)."""
    scores = np.linspace(1.0, 0.0, len(fids), dtype=np.float32)
    scored = ScoredCandidates(np.asarray(fids, dtype=np.int64), names, scores)
    return Decision(**{**_decision(request_id, names[:1]).__dict__, "scored": scored})


def _indexed(store: SqlStore, fid: int) -> list[int]:
    """The decisions the erasure index says scored `fid` (seqs)."""
    with store._read() as c:
        return scored_decisions(c, fid)


def _index_fids(store: SqlStore) -> set[int]:
    """Every faiss id the erasure index holds (SQLite's runs, where an erased entry opening a
    run holds a negative filler, PostgreSQL's rows)."""
    with store._read() as c:
        if isinstance(store, SqliteStore):
            blobs = [r[0] for r in c.execute("SELECT faiss_ids FROM decision_scored_pages")]
            blobs += [r[0] for r in c.execute("SELECT fences FROM decision_scored_runs")]
            return {int(f) for b in blobs for f in np.frombuffer(b, dtype="<i8") if f >= 0}
        return {int(r[0]) for r in c.execute("SELECT faiss_id FROM decision_scored")}


def _runs(store: SqlStore) -> int:
    with store._read() as c:
        if not isinstance(store, SqliteStore):
            return 0
        return int(c.execute("SELECT COUNT(*) FROM decision_scored_runs").fetchone()[0])


def test_erasure_finds_a_candidate_s_scores_in_every_block_and_run_of_decisions(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL indexes by (block of 64 decisions, faiss id): 150 decisions span three blocks.
    # SQLite by runs, here of 64 decisions: two runs, and the decisions after them not yet in one.
    _small_runs(monkeypatch, 64)
    fids = store.upsert_candidates([_cand(1), _cand(2)])
    base = _decision("x", ("c1",))
    scores = np.array([0.5, 0.25], dtype=np.float32)
    store.log_decisions(
        [
            Decision(
                **{
                    **base.__dict__,
                    "request_id": f"r{i}",
                    "scored": ScoredCandidates(np.array(fids), ("c1", "c2"), scores),
                }
            )
            for i in range(150)
        ]
    )
    assert _runs(store) == (2 if isinstance(store, SqliteStore) else 0)
    seqs = _indexed(store, fids[0])
    assert len(seqs) == 150 and seqs == sorted(seqs) and seqs == _indexed(store, fids[1])
    receipt = store.delete_candidates(["c1"])
    assert receipt.rows["decision_scores"] == 150
    assert _indexed(store, fids[0]) == []
    assert _indexed(store, fids[1]) == seqs
    assert _index_fids(store) == {fids[1]}
    assert _logged_fids(store) == {fids[1]}
    got = store.get_decision("r149").scored
    assert got is not None and got.candidate_ids == ("c2",)
    # Decisions logged after the erasure close the third run; the erased id stays out of it.
    store.log_decisions([_scoring(f"s{i}", np.array(fids[1:]), ("c2",)) for i in range(50)])
    assert _runs(store) == (3 if isinstance(store, SqliteStore) else 0)
    assert len(_indexed(store, fids[1])) == 200 and _indexed(store, fids[0]) == []
    assert store.delete_candidates(["c2"]).rows["decision_scores"] == 200
    assert _index_fids(store) == set() and _logged_fids(store) == set()


def test_a_store_of_schema_5_is_migrated_in_place(backend: Backend) -> None:
    from ranker.schema import SCHEMA_VERSION

    store = backend.open()
    fids = store.upsert_candidates([_cand(1), _cand(2)])
    store.log_decisions([_decision("r1", ("c1",)), _decision("r2", ("c2",))])
    # Back to schema 5: one row per (decision, candidate) in decision_scores, no blobs.
    with store._tx() as tx:
        tx.execute("DROP TABLE IF EXISTS decision_scored")
        tx.execute("DROP TABLE IF EXISTS decision_scored_runs")
        tx.execute("DROP TABLE IF EXISTS decision_scored_pages")
        tx.execute("DROP TABLE decision_score_sets")
        serial = (
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
            if backend.name == "postgres"
            else "INTEGER PRIMARY KEY AUTOINCREMENT"
        )
        tx.execute(
            f"CREATE TABLE decision_score_sets (seq {serial}, request_id TEXT NOT NULL UNIQUE)"
        )
        tx.execute(
            "CREATE TABLE decision_scores (seq BIGINT NOT NULL, faiss_id BIGINT NOT NULL, "
            "score DOUBLE PRECISION NOT NULL, PRIMARY KEY (seq, faiss_id))"
        )
        tx.execute("CREATE INDEX decision_scores_by_faiss_id ON decision_scores (faiss_id)")
        for rid in ("r1", "r2"):
            tx.execute("INSERT INTO decision_score_sets (request_id) VALUES (?)", (rid,))
        tx.executemany(
            "INSERT INTO decision_scores (seq, faiss_id, score) VALUES (?, ?, ?)",
            [(1, fids[1], 0.25), (1, fids[0], 0.5), (2, fids[0], 0.75)],
        )
        tx.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    store.close()
    store = backend.open()
    try:
        with store._read() as c:
            assert store._meta_in(c, "schema_version") == str(SCHEMA_VERSION)
        r1 = store.get_decision("r1").scored
        assert r1 is not None and r1.candidate_ids == ("c1", "c2")
        assert r1.scores.tolist() == [0.5, 0.25]
        assert len(_indexed(store, fids[0])) == 2
        receipt = store.delete_candidates(["c1"])  # erasure works on the migrated log
        assert receipt.rows["decision_scores"] == 2
        assert _logged_fids(store) == {fids[1]}
    finally:
        store.close()


def _small_runs(monkeypatch: pytest.MonkeyPatch, runs: int, pages: int | None = None) -> None:
    """Runs of `runs` decisions (and pages of `pages` entries) in SQLite's erasure index."""
    monkeypatch.setattr(decision_scores, "RUN_DECISIONS", runs)
    if pages is not None:
        monkeypatch.setattr(decision_scores, "PAGE_ENTRIES", pages)


def test_the_runs_index_stays_exact_while_candidates_are_erased_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _small_runs(monkeypatch, 8, 4)  # ids span pages; erased stretches open pages and runs
    store = Backend("sqlite", tmp_path, None).open()
    try:
        fids = store.upsert_candidates([_cand(i) for i in range(1, 31)])
        names = {fid: f"c{i}" for i, fid in enumerate(fids, start=1)}
        rng = np.random.default_rng(7)
        picks = [np.sort(rng.choice(fids, rng.integers(1, 12), replace=False)) for _ in range(45)]
        store.log_decisions(
            [
                _scoring(f"r{i}", pick, tuple(names[int(f)] for f in pick))
                for i, pick in enumerate(picks)
            ]
        )
        assert _runs(store) == 5  # 45 decisions: 5 runs of 8 (the first from seq 0), 5 after

        def check() -> None:
            with store._read() as c:
                sets = c.execute("SELECT seq, faiss_ids FROM decision_score_sets").fetchall()
                pages = {
                    p: np.frombuffer(b, dtype="<i8")
                    for p, b in c.execute("SELECT page, faiss_ids FROM decision_scored_pages")
                }
                runs = c.execute("SELECT first_page, fences FROM decision_scored_runs").fetchall()
                for first_page, fences in runs:
                    fence_ids = np.frombuffer(fences, dtype="<i8")
                    run_ids = [pages[first_page + i] for i in range(len(fence_ids))]
                    assert [p[0] for p in run_ids] == fence_ids.tolist()  # each page's first id
                    joined = np.concatenate(run_ids)
                    assert (joined[1:] >= joined[:-1]).all()  # ascending through the run
            truth: dict[int, list[int]] = {}
            for seq, blob in sets:
                for f in np.frombuffer(blob, dtype="<i8"):
                    truth.setdefault(int(f), []).append(int(seq))
            for f in fids:
                assert _indexed(store, f) == sorted(truth.get(f, []))

        check()
        erased: set[int] = set()
        for f in rng.permutation(fids)[:20].tolist():
            expected = len(_indexed(store, f))
            assert store.delete_candidates([names[f]]).rows["decision_scores"] == expected
            erased.add(f)
            check()
            assert _index_fids(store) <= set(fids) - erased
    finally:
        store.close()


def test_a_sqlite_store_of_schema_6_gets_its_erasure_index_as_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ranker.schema import SCHEMA_VERSION

    _small_runs(monkeypatch, 4)
    backend = Backend("sqlite", tmp_path, None)
    store = backend.open()
    fids = store.upsert_candidates([_cand(1), _cand(2)])
    store.log_decisions([_scoring(f"r{i}", np.array(fids), ("c1", "c2")) for i in range(10)])
    # Back to schema 6: one decision_scored row per score, no runs.
    with store._tx() as tx:
        tx.execute("DROP TABLE decision_scored_runs")
        tx.execute("DROP TABLE decision_scored_pages")
        tx.execute(
            "CREATE TABLE decision_scored (block INTEGER NOT NULL, faiss_id INTEGER NOT NULL, "
            "seq INTEGER NOT NULL, PRIMARY KEY (block, faiss_id, seq)) WITHOUT ROWID"
        )
        for (seq,) in tx.execute("SELECT seq FROM decision_score_sets").fetchall():
            for fid in fids:
                tx.execute("INSERT INTO decision_scored VALUES (?, ?, ?)", (seq >> 6, fid, seq))
        tx.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
    store.close()
    store = backend.open()
    try:
        with store._read() as c:
            assert store._meta_in(c, "schema_version") == str(SCHEMA_VERSION)
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
        assert "decision_scored" not in tables
        assert _runs(store) == 2  # seqs 0-3 and 4-7; 8-10 are found from their own blobs
        assert len(_indexed(store, fids[0])) == 10 == len(_indexed(store, fids[1]))
        assert store.delete_candidates(["c1"]).rows["decision_scores"] == 10
        assert _indexed(store, fids[0]) == [] and _index_fids(store) == {fids[1]}
        assert _logged_fids(store) == {fids[1]}
    finally:
        store.close()


def test_a_changed_record_keeps_the_version_before_it(store: SqlStore) -> None:
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


def test_reopen_keeps_data_identity_and_tombstones(backend: Backend, store: SqlStore) -> None:
    store.upsert_candidates([_cand(5), _cand(6)])
    store.delete_candidates(["c6"])
    gen, uuid = store.generation(), store.uuid
    assert len(uuid) == 32 and gen.startswith(uuid)
    store.close()
    again = backend.open()
    try:
        assert again.count_candidates() == 1 and again.generation() == gen and again.uuid == uuid
        (row,) = again.get_candidates(["c5"])
        assert row.candidate == _cand(5).candidate
        np.testing.assert_array_equal(row.chunk_vectors, _vec(5, 3))
        assert again.erased_among(["c6"]) == {"c6"}
        assert again.erasure_receipts("c6")[0]["rows"]["candidates"] == 1  # type: ignore[index]
    finally:
        again.close()


def test_another_receipt_key_is_refused_not_replaced(
    backend: Backend, store: SqlStore, tmp_path: Path
) -> None:
    store.upsert_candidates([_cand(1)])
    store.delete_candidates(["c1"])
    store.close()
    other = tmp_path / "other-key"
    other.write_text("00" * 32, encoding="ascii")
    with pytest.raises(InvalidInput, match="not the erasure receipt key"):
        backend.open(receipt_key_file=other)
    with pytest.raises(InvalidInput, match="is missing"):
        backend.open(receipt_key_file=tmp_path / "lost-key")
    assert not (tmp_path / "lost-key").exists()  # not silently replaced by a new key


def test_concurrent_upserts_lose_nothing(store: SqlStore) -> None:
    def work(offset: int) -> None:
        for i in range(offset, offset + 25):
            store.upsert_candidates([_cand(i)])

    threads = [threading.Thread(target=work, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count_candidates() == 100
    wanted = [f"c{k * 100 + i}" for k in range(4) for i in range(25)]
    assert len(set(store.faiss_ids(wanted).values())) == 100
    assert [c.seq for c in store.changes_since(0, limit=1000)] == sorted(
        c.seq for c in store.changes_since(0, limit=1000)
    )
    assert len(store.changes_since(0, limit=1000)) == 100


# -- the change feed --------------------------------------------------------------------------
def test_every_write_is_in_the_change_feed_in_order(store: SqlStore) -> None:
    assert store.last_change_seq() == 0 and store.changes_since(0) == []
    fids = store.upsert_candidates([_cand(1), _cand(2), _cand(1)])  # c1 twice: one entry
    store.upsert_postings([_posting("p1"), _posting("p2")])
    o = Outcome(posting_id="p1", candidate_id="c1", stage=Stage.SCREENED, at=datetime.now(UTC))
    store.record_outcomes([o])
    store.record_outcomes([o])  # nothing new: no entry
    store.upsert_protected([("c2", "sex", "f")])  # not followed: no entry
    store.log_decisions([_decision("r1", ("c1",))])  # nor the decision log
    store.delete_candidates(["c1"])
    feed = store.changes_since(0)
    assert [(c.kind, c.key, c.op) for c in feed] == [
        ("candidate", str(fids[0]), "upsert"),
        ("candidate", str(fids[1]), "upsert"),
        ("posting", "p1", "upsert"),
        ("posting", "p2", "upsert"),
        ("outcome", "p1", "upsert"),
        ("erasure", str(fids[0]), "delete"),
    ]
    seqs = [c.seq for c in feed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert store.last_change_seq() == seqs[-1]
    assert all(c.at.tzinfo is not None for c in feed)
    assert store.changes_since(seqs[1], limit=2) == feed[2:4]
    assert store.changes_since(seqs[-1]) == []
    # An erasure's entry names the faiss id, which no longer leads to the candidate.
    assert store.get_candidates_by_faiss_ids([fids[0]]) == []
    with store._read() as c:
        keys = [r[0] for r in c.execute("SELECT key FROM changes").fetchall()]
    assert "c1" not in keys and "c2" not in keys


def test_an_erasure_of_a_candidate_never_stored_adds_no_feed_entry(store: SqlStore) -> None:
    store.record_outcomes([Outcome(posting_id="p1", candidate_id="c7", stage=Stage.APPLIED)])
    seq = store.last_change_seq()
    receipt = store.delete_candidates(["c7"])  # only outcomes: erased, but nothing to drop
    assert receipt.erased == ("c7",) and store.changes_since(seq) == []


def test_logs_written_after_an_erasure_keep_no_row_of_the_erased(store: SqlStore) -> None:
    # A replica that ranked before it heard of an erasure made elsewhere logs afterwards.
    store.upsert_candidates([_cand(1), _cand(2)])
    store.delete_candidates(["c1"])
    store.log_decisions([_decision("late", ("c1", "c2"))])
    store.log_shadow([_shadow("late")])
    assert _rows_naming(store, "decision_items", "candidate_id", "c1") == 0
    assert _rows_naming(store, "shadow_items", "candidate_id", "c1") == 0
    assert store.get_decision("late").candidate_ids == ("c2",)


def test_each_write_names_its_own_feed_entries_once(store: SqlStore) -> None:
    store.upsert_candidates([_cand(1), _cand(2)])
    first = store.take_own_changes()
    assert first is not None and store.take_own_changes() is None
    store.delete_candidates(["c1"])
    second = store.take_own_changes()
    assert second is not None
    assert [c.seq for c in store.changes_since(0)] == [*range(first[0], first[1] + 1), second[0]]
    assert store.last_change_seq("erasure") == second[0] == second[1]
    assert store.last_change_seq("posting") == 0


def test_the_change_feed_is_pruned_to_its_retention_keeping_the_newest(store: SqlStore) -> None:
    store.upsert_candidates([_cand(1), _cand(2)])
    store.upsert_postings([_posting("p1")])
    feed = store.changes_since(0)
    assert store.prune_changes(datetime.now(UTC) - timedelta(hours=1)) == 0  # all recent
    assert store.changes_pruned_through() == 0
    # Everything is older than a cut-off in the future: all but the newest entry go.
    assert store.prune_changes(datetime.now(UTC) + timedelta(hours=1)) == len(feed) - 1
    assert store.changes_since(0) == feed[-1:]
    assert store.changes_pruned_through() == feed[-2].seq
    assert store.last_change_seq() == feed[-1].seq  # what a new replica starts from
    # A pruned entry may have been an erasure: a replica that had not applied it sees one.
    assert store.last_change_seq("erasure") == feed[-2].seq
    store.delete_candidates(["c1"])  # the sequence goes on
    assert store.changes_since(feed[-1].seq)[0].kind == "erasure"
