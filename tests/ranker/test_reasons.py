"""Reasons in a recruiter's words: one sentence per fact, grammar for every count, no raw numbers,
nothing about requirements a posting does not have; every feature has wording."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from ranker.domain import Candidate, Posting
from ranker.explain import candidate_facts, fit_summary
from ranker.features import FEATURE_NAMES, FEATURES
from ranker.reasons import (
    TOPICS,
    CandidateFacts,
    TopicValues,
    candidate_reasons,
    comparison_summary,
    experience_sentence,
    location_sentence,
    nice_sentence,
    percentile_phrase,
    required_sentence,
    separations,
    silent_topics,
    topic_of,
    topic_sentence,
    weigh,
)

# A number a recruiter cannot read: a contribution, a cosine or a score (0.64, +0.76, 1.911).
RAW_NUMBER = re.compile(r"[+\u2212-]?\d+\.\d{2,}")

BASE = CandidateFacts(
    required_matched=(),
    required_mentioned=(),
    required_absent=(),
    nice_matched=(),
    nice_total=0,
    years_experience=4,
    min_years=0,
    location_fit="no location requirement",
    candidate_location="Lisbon",
    posting_location="",
    posting_remote=False,
    title="Data Engineer",
)


def _req(listed: tuple[str, ...], mentioned: tuple[str, ...], absent: tuple[str, ...]) -> str:
    return required_sentence(
        replace(BASE, required_matched=listed, required_mentioned=mentioned, required_absent=absent)
    )


@pytest.mark.parametrize(
    ("listed", "mentioned", "absent", "words"),
    [
        (("python",), (), (), "Lists the required skill (python)"),
        (("python", "sql"), (), (), "Lists both required skills (python, sql)"),
        (("a", "b", "c"), (), (), "Lists all 3 required skills (a, b, c)"),
        (
            ("python", "sql"),
            ("audit",),
            (),
            "Lists 2 of 3 required skills (python, sql); mentions the third (audit) in the CV",
        ),
        (
            ("python",),
            ("sql", "audit"),
            (),
            "Lists 1 of 3 required skills (python); mentions the other 2 (sql, audit) in the CV",
        ),
        (
            ("python",),
            ("sql",),
            ("audit",),
            "Lists 1 of 3 required skills (python); mentions 1 more (sql) in the CV; "
            "missing: audit",
        ),
        ((), ("python",), (), "Does not list the required skill; mentions it (python) in the CV"),
        ((), (), ("python",), "Does not list the required skill; missing: python"),
        ((), ("a", "b"), (), "Lists neither required skill; mentions both (a, b) in the CV"),
        (
            (),
            ("a",),
            ("b", "c"),
            "Lists none of the 3 required skills; mentions 1 (a) in the CV; missing: b, c",
        ),
        (("a",), (), ("b",), "Lists 1 of 2 required skills (a); missing: b"),
    ],
)
def test_required_skills_listed_and_mentioned_in_one_sentence(
    listed: tuple[str, ...], mentioned: tuple[str, ...], absent: tuple[str, ...], words: str
) -> None:
    assert _req(listed, mentioned, absent) == words


def test_counts_are_grammatical() -> None:
    nice = replace(BASE, nice_total=1, nice_matched=("docker",))
    assert nice_sentence(nice) == "Lists the nice-to-have skill (docker)"
    assert nice_sentence(replace(nice, nice_total=2, nice_matched=())) == (
        "Lists neither nice-to-have skill"
    )
    assert nice_sentence(replace(nice, nice_total=3)) == "Lists 1 of 3 nice-to-have skills (docker)"
    one = replace(BASE, years_experience=1, min_years=1)
    assert experience_sentence(one) == "1 year of experience; the posting asks for at least 1 year"
    short = replace(BASE, years_experience=3, min_years=5)
    assert experience_sentence(short) == (
        "3 years of experience, 2 years short of the 5 years the posting asks for"
    )
    # No minimum: nothing said about one.
    assert experience_sentence(replace(BASE, years_experience=1)) == "1 year of experience"
    for sentence in (_req(("a",), (), ()), _req(("a", "b"), (), ())):
        assert "all 1" not in sentence and "all 2" not in sentence


def test_location_in_words() -> None:
    on_site = replace(BASE, posting_location="Madrid")
    assert location_sentence(replace(on_site, location_fit="same location")) == (
        "Lives in Madrid, where the job is"
    )
    assert location_sentence(replace(on_site, location_fit="willing to relocate")) == (
        "Lives in Lisbon; would relocate to Madrid"
    )
    assert location_sentence(replace(on_site, location_fit="location mismatch")) == (
        "Lives in Lisbon; not open to relocating to Madrid"
    )
    remote = replace(BASE, posting_remote=True, location_fit="remote")
    assert location_sentence(remote) == "Accepts remote work, and the job can be done remotely"


def test_similarity_reads_as_a_percentile_among_the_postings_candidates() -> None:
    column = np.linspace(0.1, 0.9, 20)
    assert percentile_phrase(0.86, column) == "more closely than 95% of this posting's candidates"
    assert percentile_phrase(0.12, column) == "less closely than 95% of this posting's candidates"
    assert percentile_phrase(0.5, column[:1]) is None


def _all_values(value: float) -> dict[str, float]:
    return dict.fromkeys(FEATURE_NAMES, value)


def test_every_feature_has_wording_through_its_topic() -> None:
    # Each column the model reads belongs to a topic whose sentence a recruiter can read: no
    # raw feature name, no "name = value", no raw decimal.
    reference = {n: np.linspace(0, 1, 10) for n in FEATURE_NAMES}
    facts = replace(
        BASE,
        required_matched=("python",),
        required_absent=("sql",),
        nice_total=1,
        min_years=2,
        posting_location="Madrid",
        location_fit="willing to relocate",
    )
    for f in FEATURES:
        topic = topic_of(f.name)
        assert f.name in topic.features
        for value in (-2.0, 0.0, 0.5, 1.0, 3.0):
            values = {n: value for n in topic.features}
            text = topic_sentence(topic, facts, TopicValues(values, reference))
            assert text.strip(), f.name
            assert "=" not in text and f.name not in text, (f.name, text)
            assert not RAW_NUMBER.search(text), (f.name, text)
    # The topics cover the columns once each.
    named = [n for t in TOPICS for n in t.features]
    assert sorted(named) == sorted(FEATURE_NAMES)


def test_posting_without_requirements_says_nothing_about_them() -> None:
    # The issue: "0% of the required skills mentioned in the CV lowered the score" for a
    # posting that lists none.
    reference = {n: np.linspace(0, 1, 10) for n in FEATURE_NAMES}
    reference["required_text_coverage"] = np.zeros(10)
    silent = silent_topics(BASE, has_location=False, reference=reference)
    assert {"required", "nice", "location"} <= silent
    contrib = _all_values(0.0) | {"required_text_coverage": -0.41, "dense_cosine": 0.3}
    weights = weigh(contrib, silent)
    assert all(w.topic.key not in silent for w in weights)
    reasons = candidate_reasons(BASE, weights, _all_values(0.0), reference, silent)
    text = " ".join(reasons).lower()
    assert "required" not in text and "nice-to-have" not in text and "relocat" not in text
    assert "minimum" not in text and "asks for" not in text


def test_a_constant_topic_is_silent() -> None:
    # Every candidate of the posting with the same location values: location cannot order them.
    reference = {n: np.linspace(0, 1, 10) for n in FEATURE_NAMES}
    for n in topic_of("location_fit").features:
        reference[n] = np.ones(10)
    facts = replace(BASE, posting_location="Madrid", location_fit="same location")
    assert "location" in silent_topics(facts, has_location=True, reference=reference)


def test_one_sentence_per_topic_with_its_strength_and_no_raw_numbers() -> None:
    facts = replace(
        BASE,
        required_matched=("python", "sql"),
        required_mentioned=("audit",),
        nice_total=1,
        nice_matched=("docker",),
        min_years=3,
        posting_location="Madrid",
        location_fit="same location",
    )
    reference = {n: np.linspace(0, 1, 10) for n in FEATURE_NAMES}
    contrib = _all_values(0.01) | {
        "required_coverage": 0.5,
        "required_text_coverage": 0.7,  # the listed-vs-mentioned pair of the issue
        "same_location": 0.3,
        "location_fit": 0.46,  # "Located in Madrid" + "A location fit raised the score"
        "dense_cosine": 0.4,
    }
    silent = silent_topics(facts, True, reference)
    weights = weigh(contrib, silent)
    reasons = candidate_reasons(facts, weights, _all_values(0.5), reference, silent)
    assert reasons[0] == (
        "Lists 2 of 3 required skills (python, sql); mentions the third (audit) in the CV: "
        "weighed strongly in favour"
    )
    assert sum("required skill" in r for r in reasons) == 1
    assert sum("Madrid" in r or "location" in r.lower() for r in reasons) == 1
    assert "Lives in Madrid, where the job is: weighed strongly in favour" in reasons
    assert any(r.startswith("CV as a whole matches the posting more closely than") for r in reasons)
    for r in reasons:
        assert not RAW_NUMBER.search(r) and "score" not in r, r


def test_separations_name_both_candidates_and_the_favoured_one() -> None:
    a = replace(BASE, years_experience=9, min_years=5, posting_location="Madrid")
    b = replace(a, years_experience=2)
    a = replace(a, location_fit="willing to relocate", candidate_location="Lisbon")
    b = replace(b, location_fit="same location", candidate_location="Madrid")
    diff = _all_values(0.0) | {"experience_gap": 0.9, "under_min_years": 0.4, "location_fit": -0.3}
    reference = {n: np.linspace(0, 1, 10) for n in FEATURE_NAMES}
    found = separations(
        ("A", "B"), (a, b), (_all_values(1.0), _all_values(0.0)), diff, reference, frozenset()
    )
    assert [s.topic for s in found] == ["Experience", "Location"]
    assert found[0].favours == "A" and found[0].strength == "strong"
    assert found[0].reason == (
        "Experience: A: 9 years of experience; the posting asks for at least 5 years; "
        "B: 2 years of experience, 3 years short of the 5 years the posting asks for "
        "(favours A, strong)"
    )
    assert found[1].favours == "B"
    assert comparison_summary(("A", "B"), (2.0, 1.0), found) == (
        "A is above B mostly on experience; B is ahead on location"
    )


def test_fit_summary_tells_mentioned_from_missing() -> None:
    posting = Posting(
        id="P",
        title="Auditor",
        description="Audit work.",
        required_skills=("Python", "SQL", "internal audit"),
    )
    cand = Candidate(
        id="C",
        cv_text="Led the internal audit of payments; wrote reports.",
        skills=("python",),
    )
    fit = fit_summary(posting, cand)
    # Records keep skills case-folded.
    assert fit.required_matched == ("python",)
    assert fit.required_missing == ("sql", "internal audit")
    assert fit.required_mentioned == ("internal audit",)
    facts = candidate_facts(posting, cand, fit)
    assert required_sentence(facts) == (
        "Lists 1 of 3 required skills (python); mentions 1 more (internal audit) in the CV; "
        "missing: sql"
    )
