"""Domain records validate themselves: clear errors, bounded sizes, UTC times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ranker.domain import MAX_SKILLS, Candidate, Outcome, Posting, Stage
from ranker.errors import InvalidInput


def test_skills_are_normalised_and_deduplicated() -> None:
    c = Candidate(id="c1", cv_text="cv", skills=("Python", " PYTHON ", "Zürich  Tax", "ﬁnance"))
    assert c.skills == ("python", "zürich tax", "finance")  # NFKC folds the ligature


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skills": tuple(f"s{i}" for i in range(MAX_SKILLS + 1))}, "at most"),
        ({"skills": ("x" * 101,)}, "longer than"),
        ({"skills": "python"}, "list of strings"),
        ({"skills": ("",)}, "non-empty"),
        ({"title": "t" * 201}, "shorten"),
        ({"location": 5}, "must be text"),
        ({"years_experience": float("nan")}, "0..80"),
        ({"years_experience": True}, "0..80"),
        ({"years_experience": 81}, "0..80"),
        ({"cv_text": "   "}, "non-empty"),
    ],
)
def test_bad_candidates_are_rejected_with_a_message(kwargs: dict, message: str) -> None:
    fields = {"id": "c1", "cv_text": "A CV."} | kwargs
    with pytest.raises(InvalidInput, match=message):
        Candidate(**fields)


def test_times_are_utc() -> None:
    naive = datetime(2026, 1, 1, 12)
    p = Posting(id="p", title="t", description="d", created_at=naive)
    assert p.created_at == datetime(2026, 1, 1, 12, tzinfo=UTC)
    cet = datetime(2026, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert Posting(id="p", title="t", description="d", created_at=cet).created_at == p.created_at
    assert Outcome(posting_id="p", candidate_id="c", stage=Stage.HIRED).at.tzinfo is UTC


def test_stage_parsing() -> None:
    assert Outcome(posting_id="p", candidate_id="c", stage=" Hired ").stage is Stage.HIRED  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="one of"):
        Outcome(posting_id="p", candidate_id="c", stage="foo")  # type: ignore[arg-type]
