"""Time split and datasets: nothing crosses the split, groups line up, the data digest is stable."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ranker.domain import Posting
from ranker.errors import InvalidInput
from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import PreparedCandidate, PreparedPosting
from tests.fixtures.training import EncodedDemo
from training.dataset import (
    SPLITS,
    Datasets,
    data_sha256,
    make_datasets,
    posting_times,
    prepare_all,
    time_split,
    training_candidates,
)
from training.labels import as_utc
from training.pool import Pool

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _make(
    pc: dict[str, PreparedCandidate], pp: dict[str, PreparedPosting], demo: EncodedDemo
) -> Datasets:
    lexicon = Lexicon.fit(pc.values())
    pool = Pool.build(pc.values(), "flat", lexicon)
    return make_datasets(
        FeatureBuilder(lexicon), pc, pp, demo.data.outcomes, pool=pool, retrieve_n=20
    )


def _datasets(demo: EncodedDemo) -> tuple[Datasets, dict[str, PreparedPosting]]:
    pc, pp = prepare_all(demo.candidate_rows, demo.posting_rows)
    return _make(pc, pp, demo), pp


def test_no_posting_and_no_outcome_crosses_the_split(demo_data: EncodedDemo) -> None:
    ds, pp = _datasets(demo_data)
    split = ds.split
    created = {pid: as_utc(p.posting.created_at) for pid, p in pp.items()}
    assert set(split.train).isdisjoint(split.valid) and set(split.valid).isdisjoint(split.test)
    assert set(split.train) | set(split.valid) | set(split.test) == set(created)
    assert (
        max(created[p] for p in split.train)
        < split.valid_start
        == min(created[p] for p in split.valid)
    )
    assert (
        max(created[p] for p in split.valid)
        < split.test_start
        == min(created[p] for p in split.test)
    )
    # Every row of a split belongs to one of its postings, and its label only uses events from
    # before the next split starts.
    events = {}
    for o in demo_data.data.outcomes:
        events.setdefault((o.posting_id, o.candidate_id), []).append(o)
    from training.labels import STAGE_LABEL

    for name in SPLITS:
        data = ds.sets[name]
        cutoff = split.cutoff(name)
        assert set(data.posting_ids) <= set(split.postings(name))
        for pid, rows in data.queries():
            for cid, label in zip(data.candidate_ids[rows], data.y[rows], strict=True):
                seen = [o for o in events[(pid, cid)] if cutoff is None or as_utc(o.at) < cutoff]
                assert seen, "a row whose events all lie after the cutoff"
                assert label == max(STAGE_LABEL[o.stage] for o in seen)
    assert all(ds.sets[n].n_queries > 0 for n in SPLITS)


def test_groups_and_features_line_up(demo_data: EncodedDemo) -> None:
    ds, _ = _datasets(demo_data)
    for data in ds.sets.values():
        assert data.x.shape == (len(data.y), len(FEATURE_NAMES))
        assert data.group.sum() == len(data.y) == len(data.candidate_ids)
        assert len(data.posting_ids) == data.n_queries
        assert np.all(np.isfinite(data.x))


def test_time_split_keeps_ties_together_and_needs_three_postings() -> None:
    times = {f"p{i}": T0 + timedelta(days=i // 2) for i in range(10)}  # pairs share a day
    s = time_split(times)
    for a, b in ((s.train, s.valid), (s.valid, s.test)):
        assert max(times[p] for p in a) < min(times[p] for p in b)
    with pytest.raises(InvalidInput, match="at least 3 postings"):
        time_split({"p1": T0, "p2": T0})
    with pytest.raises(InvalidInput, match="share creation times"):
        time_split({f"p{i}": T0 for i in range(5)})


def test_posting_time_falls_back_to_first_event(demo_data: EncodedDemo) -> None:
    p = dataclasses.replace(demo_data.data.postings[0], created_at=None)
    first = min(as_utc(o.at) for o in demo_data.data.outcomes if o.posting_id == p.id)
    assert posting_times([p], demo_data.data.outcomes) == {p.id: first}
    assert posting_times([Posting("lonely", "t", "d")], []) == {}


def test_time_split_reapplies_recorded_dates() -> None:
    times = {f"p{i}": T0 + timedelta(days=i) for i in range(6)}
    s = time_split(times, at=(T0 + timedelta(days=3), T0 + timedelta(days=5)))
    assert (s.train, s.valid, s.test) == (("p0", "p1", "p2"), ("p3", "p4"), ("p5",))
    # The chosen boundaries, re-applied, give the same split.
    auto = time_split(times)
    assert time_split(times, at=(auto.valid_start, auto.test_start)) == auto


def test_training_candidates_are_training_applicants_only(demo_data: EncodedDemo) -> None:
    pc, pp = prepare_all(demo_data.candidate_rows, demo_data.posting_rows)
    split = _make(pc, pp, demo_data)
    chosen = {c.id for c in training_candidates(pc, demo_data.data.outcomes, split.split)}
    train_rows = set(split.sets["train"].candidate_ids)
    assert train_rows <= chosen
    later_only = {
        o.candidate_id for o in demo_data.data.outcomes if o.posting_id not in split.split.train
    } - {o.candidate_id for o in demo_data.data.outcomes if o.posting_id in split.split.train}
    assert later_only and chosen.isdisjoint(later_only)


def test_data_digest_is_stable_and_sensitive(demo_data: EncodedDemo) -> None:
    d = demo_data.data
    digest = data_sha256(d.candidates, d.postings, d.outcomes)
    assert digest == data_sha256(reversed(d.candidates), d.postings, reversed(d.outcomes))
    changed = [dataclasses.replace(d.candidates[0], years_experience=1.5), *d.candidates[1:]]
    assert data_sha256(changed, d.postings, d.outcomes) != digest
    assert data_sha256(d.candidates, d.postings, d.outcomes[:-1]) != digest
