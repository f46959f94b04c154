"""The transport-free pipeline: filter columns, locks, deadlines, erasure and re-ingest."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from ranker.api import Deadline, RankFilters, RankQuery, Rejected
from ranker.catalog import CandidateCatalog
from ranker.config import MAX_RETRIEVE_N
from ranker.domain import Candidate, Outcome, Stage
from ranker.encoding import TextEncoder
from ranker.errors import DeadlineExceeded, ErasedId, InvalidInput
from ranker.index import INDEX_FILE, ReadWriteLock, load_index_if_current
from ranker.pipeline import RankingPipeline
from ranker.prepared import PreparedCandidate, prepare_candidate
from tests.fixtures.server import serving_settings
from training.demo import DemoData

CITIES = ("Berlin", "Lisbon", "Warsaw", "")
SKILLS = ("python", "sql", "go", "excel", "nursing")


def _random_candidates(rng: np.random.Generator, n: int, start: int = 0) -> list[Candidate]:
    return [
        Candidate(
            id=f"c{start + i}",
            cv_text=f"cv {start + i}",
            skills=tuple(s for s in SKILLS if rng.random() < 0.4),
            years_experience=float(rng.integers(0, 30)) / 2,
            location=str(rng.choice(CITIES)),
            willing_to_relocate=bool(rng.random() < 0.3),
            remote_ok=bool(rng.random() < 0.3),
        )
        for i in range(n)
    ]


def _brute_force(cands: dict[int, Candidate], f: RankFilters) -> set[int]:
    keep = set()
    for fid, c in cands.items():
        # The location clause applies when any of its three parts is set, as an OR of them.
        if f.locations or f.include_remote or f.include_relocating:
            ok = c.location.lower() in f.locations
            ok |= f.include_remote and c.remote_ok
            ok |= f.include_relocating and c.willing_to_relocate
            if not ok:
                continue
        if f.remote_only and not c.remote_ok:
            continue
        if f.min_years is not None and c.years_experience < f.min_years:
            continue
        if not set(f.must_have_skills) <= set(c.skills):
            continue
        keep.add(fid)
    return keep


def test_catalog_filters_match_a_brute_force_scan_through_upserts_and_deletes() -> None:
    rng = np.random.default_rng(3)
    catalog = CandidateCatalog(capacity=4)  # small, so the columns grow several times
    vec = np.ones(8, dtype=np.float32) / np.sqrt(8)
    live: dict[int, Candidate] = {}
    next_fid = 100

    def put(c: Candidate) -> None:
        nonlocal next_fid
        fid = next((f for f, old in live.items() if old.id == c.id), None)
        if fid is None:
            fid, next_fid = next_fid, next_fid + 1
        catalog.put_many([(fid, prepare_candidate(c, vec, vec[None, :]))])
        live[fid] = c

    for c in _random_candidates(rng, 60):
        put(c)
    for cid in [f"c{i}" for i in range(0, 60, 3)]:  # erase a third: their slots are reused
        [fid] = catalog.remove_many([cid])
        assert fid is not None and live.pop(fid).id == cid
    assert catalog.remove_many(["c0"]) == [None]
    for c in _random_candidates(rng, 30, start=45):  # overlaps: replaces c46..c59 in place
        put(c)
    assert len(catalog) == len(live)

    for _ in range(200):
        f = RankFilters(
            locations=tuple(rng.choice(CITIES[:3], size=int(rng.integers(0, 3)), replace=False)),
            include_remote=bool(rng.random() < 0.5),
            include_relocating=bool(rng.random() < 0.5),
            remote_only=bool(rng.random() < 0.2),
            # Halves too: the bound is compared in the scalars' float64, never rounded.
            min_years=float(rng.integers(0, 20)) / 2 if rng.random() < 0.5 else None,
            must_have_skills=tuple(rng.choice(SKILLS, size=int(rng.integers(0, 3)), replace=False)),
        )
        allowed = catalog.allowed(f)
        expected = _brute_force(live, f)
        if allowed is None:
            assert expected == set(live)
        else:
            assert set(allowed.tolist()) == expected


def test_catalog_without_filters_searches_everything() -> None:
    assert CandidateCatalog().allowed(RankFilters()) is None
    assert CandidateCatalog().allowed(RankFilters(min_years=0)) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_years": float("nan")},
        {"min_years": 81},
        {"locations": ("",)},
        {"must_have_skills": (" ",)},
    ],
    ids=str,
)
def test_filters_validate_themselves(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        RankFilters(**kwargs)  # type: ignore[arg-type]


def test_filters_normalise_case_and_spaces() -> None:
    f = RankFilters(locations=(" New  York",), must_have_skills=("Machine   Learning", "SQL"))
    assert f.locations == ("new york",)
    assert f.must_have_skills == ("machine learning", "sql")


def test_a_waiting_writer_goes_before_new_readers() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    first_reader_in = threading.Event()
    release_first = threading.Event()

    def reader(name: str, hold: threading.Event | None) -> None:
        with lock.read():
            if hold is not None:
                first_reader_in.set()
                hold.wait(10)
            order.append(name)

    def writer() -> None:
        with lock.write():
            order.append("writer")

    r1 = threading.Thread(target=reader, args=("r1", release_first))
    r1.start()
    first_reader_in.wait(10)
    w = threading.Thread(target=writer)
    w.start()
    while lock._writers_waiting == 0:  # the writer is queued behind r1
        time.sleep(0.001)
    r2 = threading.Thread(target=reader, args=("r2", None))
    r2.start()
    time.sleep(0.05)  # r2 would slip in now if readers could pass a waiting writer
    release_first.set()
    for t in (r1, w, r2):
        t.join(10)
    assert order == ["r1", "writer", "r2"]


@pytest.fixture
def pipeline(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path
) -> Iterator[RankingPipeline]:
    p = RankingPipeline.open(serving_settings(tmp_path / "data", registry_path), encoder=encoder)
    yield p
    p.close()


def test_upkeep_saves_the_index_after_writes_and_logs_a_failed_save_instead_of_raising(
    encoder: TextEncoder,
    registry_path: Path,
    tmp_path: Path,
    serving_demo: DemoData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = serving_settings(tmp_path / "data", registry_path, index_save_delay_seconds=0)
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        index_dir = settings.resolved_index_dir
        (index_dir / INDEX_FILE).unlink(missing_ok=True)
        p.upsert_candidates(serving_demo.candidates[:3])
        (index_dir / INDEX_FILE).mkdir()  # the save cannot replace a folder with its file
        p.upkeep()  # runs in the background: it must not raise
        p.upkeep()  # within the backoff pause: not tried again, so not logged again
        failures = [r for r in caplog.records if "could not save the index" in r.getMessage()]
        # One line per failed attempt, without a traceback (a full disk must not flood the log).
        assert len(failures) == 1 and failures[0].exc_info is None
        (index_dir / INDEX_FILE).rmdir()
        deadline = time.monotonic() + 30
        while not (index_dir / INDEX_FILE).is_file() and time.monotonic() < deadline:
            p.upkeep()  # still dirty: retried once the backoff pause is over, and saved
            time.sleep(0.05)
        assert (index_dir / INDEX_FILE).is_file()
        assert load_index_if_current(index_dir, p.store.generation()) is not None
    finally:
        p.close()


def test_a_spent_deadline_stores_nothing(pipeline: RankingPipeline, serving_demo: DemoData) -> None:
    spent = Deadline(at=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded, match="longer deadline"):
        pipeline.upsert_candidates(serving_demo.candidates[:3], spent)
    assert pipeline.candidate_count == 0 and pipeline.store.count_candidates() == 0
    with pytest.raises(DeadlineExceeded):
        pipeline.upsert_postings(serving_demo.postings[:1], spent)
    assert pipeline.list_postings().postings == ()
    pipeline.upsert_candidates(serving_demo.candidates[:3])
    with pytest.raises(DeadlineExceeded):
        pipeline.delete_candidates([serving_demo.candidates[0].id], spent)
    assert pipeline.candidate_count == 3


def test_rejected_items_are_reported_in_place(
    pipeline: RankingPipeline, serving_demo: DemoData
) -> None:
    good = serving_demo.candidates[0]
    r = pipeline.upsert_candidates([Rejected("bad", InvalidInput("no text")), good])
    assert [(i.index, i.id, i.error is None) for i in r.items] == [
        (0, "bad", False),
        (1, good.id, True),
    ]
    assert r.succeeded == 1 and r.total_candidates == 1


def test_an_erased_id_is_refused_until_reconsent_then_stored_as_a_new_candidate(
    pipeline: RankingPipeline, serving_demo: DemoData
) -> None:
    cands = serving_demo.candidates[:5]
    pipeline.upsert_candidates(cands)
    pipeline.upsert_postings(serving_demo.postings[:1])
    victim = cands[1]
    old_fid = pipeline.store.faiss_ids([victim.id])[victim.id]
    r = pipeline.delete_candidates([victim.id])
    assert r.receipt is not None and r.receipt.erased == (victim.id,)
    ranked = pipeline.rank(RankQuery(posting_id=serving_demo.postings[0].id, top_k=10))
    assert victim.id not in {c.candidate_id for c in ranked.results}
    # The ATS sends the candidate again: refused until the person consents anew.
    refused = pipeline.upsert_candidates([victim])
    assert isinstance(refused.items[0].error, ErasedId)
    assert "ranker reconsent" in str(refused.items[0].error)
    assert pipeline.store.reconsent(victim.id, "applied again, consent ref 42", actor="test")
    # Re-consented (a new application): a new record with a new FAISS id.
    again = pipeline.upsert_candidates([victim])
    assert again.items[0].created
    assert pipeline.store.faiss_ids([victim.id])[victim.id] != old_fid
    ranked = pipeline.rank(RankQuery(posting_id=serving_demo.postings[0].id, top_k=10))
    assert victim.id in {c.candidate_id for c in ranked.results}
    assert len(ranked.results) == 5


def test_texts_over_the_limit_are_refused_per_item(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path, serving_demo: DemoData
) -> None:
    settings = serving_settings(tmp_path / "data", registry_path, max_text_chars=500)
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        long = Candidate(id="long", cv_text="word " * 200)
        short = Candidate(id="short", cv_text="Nurse with ICU experience.")
        r = p.upsert_candidates([long, short])
        assert isinstance(r.items[0].error, InvalidInput) and "shorten" in str(r.items[0].error)
        assert r.items[1].error is None and p.candidate_count == 1
    finally:
        p.close()


def test_catalog_forgets_a_skill_or_location_when_its_last_holder_goes() -> None:
    catalog = CandidateCatalog(capacity=4)
    vec = np.ones(8, dtype=np.float32) / np.sqrt(8)

    def prep(cid: str, skills: tuple[str, ...], location: str) -> PreparedCandidate:
        c = Candidate(id=cid, cv_text=f"cv {cid}", skills=skills, location=location)
        return prepare_candidate(c, vec, vec[None, :])

    # Every candidate brings skills and a place nobody else has: the old design kept a column
    # per skill ever seen, so memory grew with this stream even as the candidates went.
    for round_ in range(3):
        ids = [f"r{round_}-c{i}" for i in range(50)]
        catalog.put_many(
            [
                (1000 * round_ + i, prep(cid, (f"skill-{cid}", "python"), f"town {cid}"))
                for i, cid in enumerate(ids)
            ]
        )
        assert catalog.distinct_skills == 51 and catalog.distinct_locations == 50
        catalog.remove_many(ids)
        assert catalog.distinct_skills == 0 and catalog.distinct_locations == 0
    # A replacement drops the skills and place the candidate no longer has.
    catalog.put_many([(1, prep("a", ("go", "sql"), "Berlin"))])
    catalog.put_many([(1, prep("a", ("sql",), "Lisbon"))])
    assert catalog.distinct_skills == 1 and catalog.distinct_locations == 1

    def allowed(f: RankFilters) -> list[int]:
        ids = catalog.allowed(f)
        assert ids is not None
        return list(ids.tolist())

    assert allowed(RankFilters(must_have_skills=("go",))) == []
    assert allowed(RankFilters(must_have_skills=("SQL",))) == [1]
    assert allowed(RankFilters(locations=("berlin",))) == []
    assert allowed(RankFilters(locations=("lisbon",))) == [1]


def test_remote_or_relocating_alone_keep_only_those_candidates() -> None:
    catalog = CandidateCatalog()
    vec = np.ones(8, dtype=np.float32) / np.sqrt(8)
    people = {
        1: Candidate(id="remote", cv_text="x", remote_ok=True),
        2: Candidate(id="mover", cv_text="x", willing_to_relocate=True),
        3: Candidate(id="stays", cv_text="x", location="Berlin"),
    }
    catalog.put_many([(fid, prepare_candidate(c, vec, vec[None, :])) for fid, c in people.items()])

    def allowed(**kw: object) -> set[int]:
        ids = catalog.allowed(RankFilters(**kw))  # type: ignore[arg-type]
        assert ids is not None, "a filter was given: it must apply"
        return set(ids.tolist())

    assert allowed(include_remote=True) == {1}
    assert allowed(include_relocating=True) == {2}
    assert allowed(include_remote=True, include_relocating=True) == {1, 2}
    assert allowed(locations=("Berlin",), include_remote=True) == {1, 3}


def test_contradictory_settings_are_refused(registry_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="RANKER_DEFAULT_TOP_K"):
        serving_settings(tmp_path / "data", registry_path, default_top_k=50, max_top_k=20)
    with pytest.raises(ValidationError, match="RANKER_MAX_TOP_K"):
        serving_settings(tmp_path / "data", registry_path, max_top_k=MAX_RETRIEVE_N + 1)


def test_postings_are_listed_in_pages(pipeline: RankingPipeline, serving_demo: DemoData) -> None:
    pipeline.upsert_postings(serving_demo.postings)
    expected = sorted(p.id for p in serving_demo.postings)
    seen: list[str] = []
    token = ""
    while True:
        page = pipeline.list_postings(page_size=2, page_token=token)
        assert len(page.postings) <= 2
        seen += [p.id for p in page.postings]
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    everything = pipeline.list_postings()
    assert [p.id for p in everything.postings] == expected and not everything.next_page_token
    with pytest.raises(InvalidInput, match="page_token"):
        pipeline.list_postings(page_token="not base64 at all!")
    with pytest.raises(InvalidInput, match="page_size"):
        pipeline.list_postings(page_size=-1)


def test_outcomes_far_in_the_future_are_refused_and_repeats_are_not_counted(
    pipeline: RankingPipeline, serving_demo: DemoData
) -> None:
    c, p = serving_demo.candidates[0], serving_demo.postings[0]
    pipeline.upsert_candidates([c])
    pipeline.upsert_postings([p])
    now = datetime.now(UTC)
    good = Outcome(posting_id=p.id, candidate_id=c.id, stage=Stage.SCREENED, at=now)
    soon = Outcome(p.id, c.id, Stage.INTERVIEWED, at=now + timedelta(hours=2))  # clock skew
    far = Outcome(p.id, c.id, Stage.HIRED, at=datetime(9999, 1, 1, tzinfo=UTC))
    r = pipeline.record_outcomes([good, soon, far])
    assert [i.error is None for i in r.items] == [True, True, False]
    assert isinstance(r.items[2].error, InvalidInput) and "future" in str(r.items[2].error)
    assert r.recorded == 2
    again = pipeline.record_outcomes([good])
    assert again.items[0].error is None and again.recorded == 0  # idempotent, nothing new
    assert pipeline.store.count_outcomes() == 2


def test_features_and_scoring_run_without_the_lock_and_an_erasure_meanwhile_is_not_served(
    pipeline: RankingPipeline, serving_demo: DemoData, monkeypatch: pytest.MonkeyPatch
) -> None:
    cands = serving_demo.candidates[:8]
    posting = serving_demo.postings[0]
    pipeline.upsert_candidates(cands)
    pipeline.upsert_postings([posting])
    everyone = pipeline.rank(RankQuery(posting_id=posting.id, top_k=8))
    victim = everyone.results[0].candidate_id  # the best: it would surely be served
    served = pipeline.model.served
    assert served is not None
    builder = served.bundle.builder
    real_build = builder.build_with_reference
    held_during_build: list[int] = []
    erased = threading.Event()

    def build_while_erasing(*args: object, **kwargs: object) -> tuple[np.ndarray, object]:
        held_during_build.append(pipeline._lock._readers)
        if not erased.is_set():
            # An erasure lands while this ranking builds features; with the lock held through
            # scoring it could not run until the ranking finished (and would time out here).
            t = threading.Thread(target=pipeline.delete_candidates, args=([victim],))
            t.start()
            t.join(timeout=30)
            assert not t.is_alive(), "the erasure waited for the ranking's features"
            erased.set()
        return real_build(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builder, "build_with_reference", build_while_erasing)
    r = pipeline.rank(RankQuery(posting_id=posting.id, top_k=3, explain=True))
    assert held_during_build == [0]
    ids = [c.candidate_id for c in r.results]
    assert victim not in ids and len(ids) == 3  # filled up from the next best
    assert [c.rank for c in r.results] == [1, 2, 3]
    assert all(c.explanation is not None for c in r.results)
    pipeline._decisions.flush()
    logged = pipeline.store.get_decision(r.request_id)
    assert list(logged.candidate_ids) == ids and logged.features.shape[0] == 3
    # Nor is its score logged among the scored candidates' (the audit's scoring rate).
    assert logged.scored is not None and victim not in logged.scored.candidate_ids
    assert len(logged.scored.candidate_ids) == len(cands) - 1


def test_filters_compare_like_the_features() -> None:
    """A filter for "Zurich" or "machine-learning" matches what the features call the same."""
    from ranker.api import RankFilters as Filters
    from ranker.text import phrase_key

    f = Filters(locations=("Zurich",), must_have_skills=("Machine-Learning",))
    assert f.locations == (phrase_key("Zürich"),)
    assert f.must_have_skills == (phrase_key("machine learning"),)
