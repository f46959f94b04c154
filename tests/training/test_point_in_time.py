"""Point-in-time training rows: a candidate's row comes from the record current when they applied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ranker.domain import Candidate, Outcome, Stage
from ranker.features import FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import PreparedCandidate, PreparedPosting
from ranker.rows import CandidateRow, CandidateVersion
from ranker.store import SqliteStore
from tests.fixtures.training import EncodedDemo
from training.dataset import (
    SPLITS,
    Datasets,
    TimeSplit,
    applied_at,
    candidates_as_of,
    make_datasets,
    prepare_all,
)
from training.pool import Pool

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _row(ds: Datasets, pid: str, cid: str) -> np.ndarray:
    for name in SPLITS:
        s = ds.sets[name]
        for p, rows in s.queries():
            for i in range(rows.start, rows.stop):
                if (p, s.candidate_ids[i]) == (pid, cid):
                    return s.x[i]
    raise AssertionError(f"no row for {(pid, cid)}")


RETRIEVE_N = 50


def _build(
    store: SqliteStore, builder: FeatureBuilder, pool: Pool, split: TimeSplit | None = None
) -> tuple[Datasets, dict[str, PreparedCandidate], dict[str, PreparedPosting], list[Outcome]]:
    """The datasets as `ranker train` builds them from the store, point in time.

    The reference set (what serving would have retrieved) comes from `pool`, held fixed here so
    the test isolates the applicant's own record; `ranker train` uses the pool as stored.
    """
    candidates = list(store.iter_candidates())
    postings = store.list_postings()
    outcomes = store.list_outcomes()
    pc, pp = prepare_all(candidates, postings)
    as_of = candidates_as_of(store.candidate_versions(), outcomes)
    return (
        make_datasets(
            builder, pc, pp, outcomes, split, pool=pool, retrieve_n=RETRIEVE_N, as_of=as_of
        ),
        pc,
        pp,
        outcomes,
    )


def test_a_cv_edited_after_the_hire_does_not_change_the_training_row(
    demo_data: EncodedDemo, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "ranker.db")
    try:
        store.upsert_candidates(demo_data.candidate_rows)
        store.upsert_postings(demo_data.posting_rows)
        store.record_outcomes(demo_data.data.outcomes)
        pc, _ = prepare_all(demo_data.candidate_rows, demo_data.posting_rows)
        lexicon = Lexicon.fit(pc.values())
        builder = FeatureBuilder(lexicon)
        pool = Pool.build(pc.values(), "flat", lexicon)
        before, _, _, outcomes = _build(store, builder, pool)
        hire = next(o for o in outcomes if o.stage is Stage.HIRED)
        pid, cid = hire.posting_id, hire.candidate_id
        # After the hire (the outcomes are in the past; this write is now) the CV gains the job
        # it won: the posting's own text and skills, and the posting's vector.
        posting = next(r for r in demo_data.posting_rows if r.posting.id == pid)
        old = next(r for r in demo_data.candidate_rows if r.candidate.id == cid)
        edited = Candidate(
            id=cid,
            cv_text=old.candidate.cv_text + "\n" + posting.posting.description,
            skills=old.candidate.skills + posting.posting.required_skills,
            years_experience=old.candidate.years_experience + 1,
            location=posting.posting.location,
            title=posting.posting.title,
        )
        store.upsert_candidates(
            [CandidateRow(edited, posting.vector, np.atleast_2d(posting.vector))]
        )
        after, pc_now, pp_now, outcomes = _build(store, builder, pool, before.split)
        np.testing.assert_array_equal(_row(after, pid, cid), _row(before, pid, cid))
        for name in SPLITS:
            np.testing.assert_array_equal(after.sets[name].x, before.sets[name].x)
        # Built from the record as it is now, the row would differ: the test can fail.
        now = make_datasets(
            builder, pc_now, pp_now, outcomes, before.split, pool=pool, retrieve_n=RETRIEVE_N
        )
        assert not np.array_equal(_row(now, pid, cid), _row(before, pid, cid))
    finally:
        store.close()


def _version(cv: str, until: datetime) -> CandidateVersion:
    v = np.full(4, 0.5, dtype=np.float32)
    return CandidateVersion(
        candidate=Candidate(id="c", cv_text=cv),
        doc_vector=v,
        chunk_vectors=v[None],
        valid_from=until - timedelta(days=10),
        valid_until=until,
    )


def test_the_version_in_force_when_the_pair_applied_is_chosen() -> None:
    versions = [_version("second", T0 + timedelta(days=20)), _version("first", T0)]
    outcomes = [
        # applied before any stored version: the oldest one
        Outcome(posting_id="p0", candidate_id="c", stage=Stage.APPLIED, at=T0 - timedelta(days=30)),
        Outcome(posting_id="p0", candidate_id="c", stage=Stage.HIRED, at=T0 + timedelta(days=40)),
        # applied while the second was in force; a later event does not move it
        Outcome(posting_id="p1", candidate_id="c", stage=Stage.APPLIED, at=T0 + timedelta(days=5)),
        Outcome(
            posting_id="p1", candidate_id="c", stage=Stage.REJECTED, at=T0 + timedelta(days=25)
        ),
        # no applied event: its earliest event decides
        Outcome(posting_id="p2", candidate_id="c", stage=Stage.SCREENED, at=T0 + timedelta(days=1)),
        Outcome(posting_id="p2", candidate_id="c", stage=Stage.HIRED, at=T0 + timedelta(days=30)),
        # applied after the last edit: the current record (absent from the mapping)
        Outcome(posting_id="p3", candidate_id="c", stage=Stage.APPLIED, at=T0 + timedelta(days=21)),
    ]
    assert applied_at(outcomes)[("p2", "c")] == T0 + timedelta(days=1)
    chosen = {pair: p.candidate.cv_text for pair, p in candidates_as_of(versions, outcomes).items()}
    assert chosen == {("p0", "c"): "first", ("p1", "c"): "second", ("p2", "c"): "second"}


@pytest.mark.parametrize("boundary", [0, 1])
def test_a_version_ends_when_its_successor_was_stored(boundary: int) -> None:
    # An application at the very instant of the edit already sees the edited record.
    versions = [_version("old", T0)]
    at = T0 - timedelta(microseconds=1 - boundary)
    outcomes = [Outcome(posting_id="p", candidate_id="c", stage=Stage.APPLIED, at=at)]
    assert bool(candidates_as_of(versions, outcomes)) == (boundary == 0)
