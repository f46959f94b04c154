"""Demo data: deterministic, realistic shape, protected attributes kept apart, outcomes consistent."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ranker.domain import Stage, to_plain
from training.demo import FAMILIES, DemoConfig, generate
from training.labels import labels_from_outcomes

CONFIG = DemoConfig(candidates=150, postings=10, applicants=(20, 30), seed=9)


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, b = generate(CONFIG), generate(CONFIG)
    assert a.candidates == b.candidates and a.postings == b.postings
    assert a.outcomes == b.outcomes and a.protected == b.protected
    c = generate(DemoConfig(candidates=150, postings=10, applicants=(20, 30), seed=10))
    assert c.candidates != a.candidates


def test_shape_of_candidates_and_postings() -> None:
    d = generate(CONFIG)
    assert len(d.candidates) == 150 and len(d.postings) == 10
    assert len({c.id for c in d.candidates}) == 150
    words = [len(c.cv_text.split()) for c in d.candidates]
    assert 250 <= np.median(words) <= 800 and max(words) < 1000
    for section in ("SUMMARY", "EXPERIENCE", "SKILLS", "EDUCATION"):
        assert all(section in c.cv_text for c in d.candidates)
    families = Counter(d.family_of[c.id] for c in d.candidates)
    assert len(families) == len(FAMILIES) >= 6
    created = [p.created_at for p in d.postings]
    assert created == sorted(created) and created[0] != created[-1]
    assert all(p.required_skills and p.description for p in d.postings)
    assert any(p.remote for p in generate(DemoConfig(candidates=20, postings=40)).postings)


def test_protected_attributes_are_only_in_their_own_table() -> None:
    d = generate(CONFIG)
    assert set(d.protected) == {c.id for c in d.candidates}
    assert all(set(v) == {"sex", "age_band"} for v in d.protected.values())
    for c in d.candidates:
        record = to_plain(c)
        assert not {"sex", "age_band"} & set(record)


def test_outcomes_refer_to_known_ids_and_follow_the_stages() -> None:
    d = generate(CONFIG)
    cids = {c.id for c in d.candidates}
    pids = {p.id: p for p in d.postings}
    assert all(o.candidate_id in cids and o.posting_id in pids for o in d.outcomes)
    by_pair: dict[tuple[str, str], list] = {}
    for o in d.outcomes:
        by_pair.setdefault((o.posting_id, o.candidate_id), []).append(o)
        assert o.at >= pids[o.posting_id].created_at
    for events in by_pair.values():
        assert events[0].stage is Stage.APPLIED
        times = [e.at for e in events]
        assert times == sorted(times)
        hired = any(e.stage is Stage.HIRED for e in events)
        assert hired != (events[-1].stage is Stage.REJECTED)
    applicants = Counter(pid for pid, _ in by_pair)
    assert min(applicants.values()) >= 15


def test_hidden_process_rewards_real_fit() -> None:
    d = generate(DemoConfig(candidates=400, postings=30, seed=3))
    labels = labels_from_outcomes(d.outcomes)
    cands = {c.id: c for c in d.candidates}
    posts = {p.id: p for p in d.postings}

    def coverage(pid: str, cid: str) -> float:
        req = posts[pid].required_skills
        return sum(s in cands[cid].skills for s in req) / len(req)

    high = [coverage(p, c) for (p, c), y in labels.items() if y >= 2]
    low = [coverage(p, c) for (p, c), y in labels.items() if y == 0]
    assert np.mean(high) > np.mean(low) + 0.25
    # ... but it is not a copy of the CV: some relevant candidates' CVs miss a required skill,
    # and some irrelevant ones list them all.
    assert min(high) < 1.0 and max(low) == 1.0


def test_tiny_config_with_postings_without_applicants_does_not_crash() -> None:
    cfg = DemoConfig(candidates=12, postings=6, applicants=(0, 2), seed=3, short_cvs=True)
    data = generate(cfg)
    assert len(data.candidates) == 12 and len(data.postings) == 6
    ids = {c.id for c in data.candidates}
    assert all(o.candidate_id in ids for o in data.outcomes)
    applied = {o.posting_id for o in data.outcomes}
    assert applied < {p.id for p in data.postings}  # some posting got no applicant
