"""Feature values in words, as the feature specs word them (the reasons are in test_reasons.py)."""

from __future__ import annotations

import pytest

from ranker.explain import describe_feature
from ranker.features import FEATURE_NAMES, FEATURES


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("required_missing", 0.0, "no required skill missing"),
        ("required_missing", 3.0, "3 required skills missing"),
        ("required_coverage", 0.75, "75% of the required skills listed"),
        ("years_experience", 1.0, "1 year of experience"),
        ("experience_gap", 0.0, "exactly the minimum experience"),
        ("under_min_years", 1.0, "experience below the minimum"),
        ("same_location", 1.0, "same location as the job"),
        ("location_fit", 0.5, "a location fit through relocation"),
        ("seniority_gap", -1.0, "a title 1 seniority level below the posting's"),
        ("skills_listed", 7.0, "7 skills listed"),
        ("not_a_feature", 0.25, "not_a_feature = 0.25"),
    ],
)
def test_feature_values_in_words(name: str, value: float, words: str) -> None:
    assert describe_feature(name, value) == words


def test_every_feature_has_words() -> None:
    # A new feature without words would show its raw name to recruiters.
    assert all("=" not in describe_feature(name, 1.0) for name in FEATURE_NAMES)


def test_the_words_are_those_of_the_feature_spec() -> None:
    # One wording per feature, on its spec: explain adds none of its own.
    for f in FEATURES:
        assert describe_feature(f.name, 2.0) == f.in_words(2.0)
