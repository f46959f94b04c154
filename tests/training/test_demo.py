"""Demo data: deterministic, realistic shape, protected attributes kept apart, outcomes consistent."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ranker.datafiles import PROTECTED_NAMES, read_protected
from ranker.domain import Candidate, Posting, Stage, to_plain
from ranker.errors import InvalidInput
from training import commands
from training.dataset import posting_times, time_split
from training.demo import (
    DEMO_FILES,
    FAMILIES,
    RACE_ETHNICITY,
    Bias,
    DemoConfig,
    DemoData,
    generate,
    proxy_rates,
    write_demo,
)
from training.labels import RELEVANT_LABEL, labels_from_outcomes
from training.metrics import ndcg

CONFIG = DemoConfig(candidates=150, postings=10, applicants=(20, 30), seed=9)
AUDIT = DemoConfig(candidates=600, postings=120, short_cvs=True, seed=5)
"""Big enough for pass-through rates per sex (~2,500 applications each), ~1 s to generate."""
FEMALE_CAREER_BREAK = Bias("sex", "female", "career_break", 0.5)


@pytest.fixture(scope="module")
def default_data() -> DemoData:
    """What `ranker demo-data` writes by default (a few seconds)."""
    return generate(DemoConfig())


@pytest.fixture(scope="module")
def unbiased() -> DemoData:
    return generate(AUDIT)


@pytest.fixture(scope="module")
def biased() -> DemoData:
    return generate(replace(AUDIT, bias=FEMALE_CAREER_BREAK))


def _digest(data: DemoData, out: Path) -> str:
    h = hashlib.sha256()
    for path in write_demo(data, out):
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_even_in_another_process(tmp_path: Path) -> None:
    small = DemoConfig(candidates=60, postings=12, applicants=(8, 15), seed=9)
    here = _digest(generate(small), tmp_path / "a")
    assert here == _digest(generate(small), tmp_path / "b")
    # Another interpreter with another hash seed: no set or dict order may leak into the output.
    code = (
        "import hashlib, sys; from pathlib import Path; "
        "from training.demo import DemoConfig, generate, write_demo; "
        "h = hashlib.sha256(); "
        "[h.update(p.read_bytes()) for p in write_demo(generate(DemoConfig(candidates=60, "
        "postings=12, applicants=(8, 15), seed=9)), Path(sys.argv[1]))]; print(h.hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path.cwd())}
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == here
    c = generate(DemoConfig(candidates=60, postings=12, applicants=(8, 15), seed=10))
    assert _digest(c, tmp_path / "d") != here


def test_default_size_holds_out_enough_postings_and_stays_plausible(
    default_data: DemoData,
) -> None:
    d = default_data
    assert len(d.candidates) == 2000 and len(d.postings) == 1000
    split = time_split(posting_times(d.postings, d.outcomes))
    labels = labels_from_outcomes(d.outcomes)
    applicants = Counter(pid for pid, _ in labels)
    test = [pid for pid in split.test if applicants[pid] >= 2]
    assert len(test) >= 140
    relevant = {pid for (pid, _), y in labels.items() if y >= RELEVANT_LABEL}
    assert len(relevant.intersection(test)) >= 140
    # Applicants per posting (20-60 drawn, fewer when the pools overlap) and applications per
    # candidate stay in a believable range.
    assert 15 <= min(applicants.values()) and max(applicants.values()) <= 60
    per_candidate = Counter(cid for _, cid in labels)
    # ~20 applications each over 21 months: an active job seeker's pace.
    assert 10 <= np.median(list(per_candidate.values())) <= 25
    assert max(per_candidate.values()) <= 50
    # A funnel: about 40% screened, 10-20% interviewed, most (not all) postings hire once.
    y = np.array(list(labels.values()))
    assert 0.3 <= np.mean(y >= 1) <= 0.55 and 0.08 <= np.mean(y >= 2) <= 0.2
    hires = Counter(pid for (pid, _), label in labels.items() if label == 4)
    assert 0.75 * len(d.postings) <= len(hires) < len(d.postings)
    assert set(hires.values()) == {1}
    # Postings spread over the whole period, outcomes follow within weeks.
    created = sorted(posting_times(d.postings, d.outcomes).values())
    assert (created[-1] - created[0]).days > 500
    assert max((o.at - created[0]).days for o in d.outcomes) < (created[-1] - created[0]).days + 120


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


def test_protected_attributes_are_only_in_their_own_table(
    default_data: DemoData, tmp_path: Path
) -> None:
    d = default_data
    assert set(d.protected) == {c.id for c in d.candidates}
    assert all({"sex", "age_band"} <= set(v) <= {"sex", "age_band", "race_ethnicity"}
               for v in d.protected.values())  # fmt: skip
    for c in d.candidates:
        assert not PROTECTED_NAMES & set(to_plain(c))
    # Race/ethnicity: the EEOC / LL144 categories, unequal shares, some not self-identified.
    race = Counter(v.get("race_ethnicity", "unknown") for v in d.protected.values())
    assert set(race) == {name for name, _ in RACE_ETHNICITY} | {"unknown"}
    assert race["White"] > race["Hispanic or Latino"] > race["Asian"] > race["Two or more races"]
    assert 0.03 <= race["unknown"] / len(d.candidates) <= 0.1
    assert race["Native Hawaiian or Pacific Islander"] < 0.02 * len(d.candidates)
    # The reader ingest uses takes the column as it is written.
    path = write_demo(d, tmp_path)[DEMO_FILES.index("protected.jsonl")]
    assert read_protected(path) == d.protected


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


def _field_scores(p: Posting, c: Candidate) -> dict[str, float]:
    """Rankings a reader of the records could try, each from one field, and their sum."""
    words = set(re.findall(r"[a-z0-9+#./&-]+", c.cv_text.lower()))
    req = p.required_skills
    listed = sum(s in c.skills for s in req) / len(req)
    mentioned = sum(all(w in words for w in s.split()) for s in req) / len(req)
    if p.remote:
        place = float(c.remote_ok)
    else:
        place = 1.0 if c.location == p.location else 0.5 * c.willing_to_relocate
    short = min(0.0, c.years_experience - p.min_years)
    return {
        "listed coverage": listed,
        "mentioned coverage": mentioned,
        "location": place,
        "years short": short,
        "sum": 2 * listed + mentioned + place + 0.5 * short,
    }


def test_no_single_field_gives_the_hidden_process_away(default_data: DemoData) -> None:
    d = default_data
    split = time_split(posting_times(d.postings, d.outcomes))
    labels = labels_from_outcomes(d.outcomes)
    posts = {p.id: p for p in d.postings}
    cands = {c.id: c for c in d.candidates}
    by_posting: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for (pid, cid), y in labels.items():
        by_posting.setdefault(pid, []).append((y, _field_scores(posts[pid], cands[cid])))
    per_field: dict[str, list[float]] = {}
    for pid in split.test:
        rows = by_posting[pid]
        y = np.array([label for label, _ in rows])
        for name in rows[0][1]:
            # Expected NDCG over the orders of tied scores: a coarse field gets no lucky tie-break.
            value = ndcg(y, np.array([f[name] for _, f in rows]), 10)
            if value is not None:
                per_field.setdefault(name, []).append(value)
    mean = {name: float(np.mean(v)) for name, v in per_field.items()}
    best_single = max(v for name, v in mean.items() if name != "sum")
    assert best_single < 0.6, mean
    # The fields carry signal, and combining them finds more than any one alone.
    assert min(mean.values()) > 0.25 and mean["sum"] > best_single + 0.04, mean


def test_tiny_config_with_postings_without_applicants_does_not_crash() -> None:
    cfg = DemoConfig(candidates=12, postings=6, applicants=(0, 2), seed=3, short_cvs=True)
    data = generate(cfg)
    assert len(data.candidates) == 12 and len(data.postings) == 6
    ids = {c.id for c in data.candidates}
    assert all(o.candidate_id in ids for o in data.outcomes)
    applied = {o.posting_id for o in data.outcomes}
    assert applied < {p.id for p in data.postings}  # some posting got no applicant


def _rates(data: DemoData, attribute: str, label: int) -> dict[str, float]:
    """Share of each category's applications that reached `label` or further."""
    n: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    for (_, cid), y in labels_from_outcomes(data.outcomes).items():
        cat = data.protected[cid][attribute]
        n[cat] += 1
        passed[cat] += y >= label
    return {cat: passed[cat] / n[cat] for cat in n}


def test_proxies_are_much_more_common_in_their_category(unbiased: DemoData) -> None:
    career_break = proxy_rates(unbiased, "sex", "career_break")
    assert career_break["female"] > 4 * career_break["male"]
    part_time = proxy_rates(unbiased, "sex", "part_time")
    assert part_time["female"] > 2.5 * part_time["male"]
    graduated = proxy_rates(unbiased, "age_band", "graduation_year")
    assert graduated["45-59"] > 0.5 and graduated["18-29"] == 0.0
    for cid, shown in unbiased.proxies.items():
        cv = next(c.cv_text for c in unbiased.candidates if c.id == cid)
        assert ("Career break (" in cv) == ("career_break" in shown)
        assert ("(part-time)" in cv) == ("part_time" in shown)


def test_unbiased_process_treats_the_sexes_alike(unbiased: DemoData) -> None:
    interviews = _rates(unbiased, "sex", RELEVANT_LABEL)
    assert 0.85 <= interviews["female"] / interviews["male"] <= 1.15


def test_bias_through_a_proxy_lowers_the_category_s_pass_through(
    unbiased: DemoData, biased: DemoData
) -> None:
    # Only the historical process changes: same people, same postings, same applications.
    assert biased.candidates == unbiased.candidates and biased.postings == unbiased.postings
    assert biased.protected == unbiased.protected
    applied = {(o.posting_id, o.candidate_id) for o in unbiased.outcomes}
    assert {(o.posting_id, o.candidate_id) for o in biased.outcomes} == applied
    interviews = _rates(biased, "sex", RELEVANT_LABEL)
    assert interviews["female"] / interviews["male"] < 0.8
    screened = _rates(biased, "sex", 1)
    assert screened["female"] / screened["male"] < 0.9
    # The size asked for: each of two stages halves a proxy holder's chance, so about a quarter
    # of the interview rate they had without the bias.
    holders = {cid for cid, shown in biased.proxies.items() if "career_break" in shown}

    def holder_rate(data: DemoData) -> float:
        y = [v for (_, cid), v in labels_from_outcomes(data.outcomes).items() if cid in holders]
        return float(np.mean(np.array(y) >= RELEVANT_LABEL))

    assert 0.15 <= holder_rate(biased) / holder_rate(unbiased) <= 0.4


def test_graduation_year_bias_lowers_the_older_band() -> None:
    cfg = DemoConfig(candidates=900, postings=120, short_cvs=True, seed=6)
    before = _rates(generate(cfg), "age_band", RELEVANT_LABEL)
    bias = Bias("age_band", "45-59", "graduation_year", 0.6)
    after = _rates(generate(replace(cfg, bias=bias)), "age_band", RELEVANT_LABEL)
    assert after["45-59"] / before["45-59"] < 0.6
    assert after["18-29"] == pytest.approx(before["18-29"], rel=0.1)


def test_zero_strength_bias_is_the_default() -> None:
    small = DemoConfig(candidates=150, postings=20, applicants=(10, 20), seed=4, short_cvs=True)
    none = generate(small)
    zero = generate(replace(small, bias=Bias("sex", "female", "part_time", 0)))
    assert none.outcomes == zero.outcomes and none.candidates == zero.candidates


def test_a_bias_must_name_a_category_its_proxy_singles_out() -> None:
    with pytest.raises(InvalidInput, match="ATTRIBUTE=CATEGORY"):
        Bias.parse("female")
    with pytest.raises(InvalidInput, match="unknown bias proxy"):
        Bias.parse("sex=female", proxy="name")
    with pytest.raises(InvalidInput, match="within 0..1"):
        Bias.parse("sex=female", strength=1.5)
    small = DemoConfig(candidates=300, postings=8, applicants=(5, 10), seed=4, short_cvs=True)
    with pytest.raises(InvalidInput, match="no proxy of that category"):
        generate(replace(small, bias=Bias.parse("sex=male")))
    with pytest.raises(InvalidInput, match="no candidate has sex=robot"):
        generate(replace(small, bias=Bias.parse("sex=robot")))


def test_demo_data_command_writes_a_biased_scenario(tmp_path: Path) -> None:
    app = typer.Typer()
    commands.register(app)
    runner = CliRunner()
    args = ["demo-data", "--candidates", "40", "--postings", "8", "--seed", "3"]
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "a")], terminal_width=200)
    biased = runner.invoke(
        app,
        [*args, "--out", str(tmp_path / "b"), "--bias", "sex=female", "--bias-strength", "0.9"],
        terminal_width=200,
    )
    assert plain.exit_code == 0 and biased.exit_code == 0, plain.output + biased.output
    said = " ".join(biased.output.split())  # rich wraps long lines
    assert "biased against sex=female through career_break at strength 0.9" in said
    for name in DEMO_FILES:
        same = (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert same == (name != "outcomes.jsonl"), name
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "--bias", "sex"])
    assert refused.exit_code == 1 and "ATTRIBUTE=CATEGORY" in refused.output
