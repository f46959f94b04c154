"""Domain records shared by ingestion, features, training and serving: validated and frozen."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from ranker.errors import InvalidInput
from ranker.text import display_term, phrase_key


class Stage(StrEnum):
    """Hiring stages an ATS reports for a (posting, candidate) pair."""

    APPLIED = "applied"
    SCREENED = "screened"
    INTERVIEWED = "interviewed"
    OFFERED = "offered"
    HIRED = "hired"
    REJECTED = "rejected"


def _utc(value: datetime | None, what: str) -> datetime | None:
    """Every time in the domain is timezone-aware UTC; a naive time is taken to be UTC already.

    Files and ATSs send both kinds, and comparing a naive with an aware time raises, so the
    records normalise once here instead of every consumer guessing.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{what} must be a date-time, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _require_id(kind: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{kind} id must be a non-empty string")
    if len(value) > 200:
        raise InvalidInput(f"{kind} id {value[:40]!r}... is longer than 200 characters")


MAX_SKILLS = 100
"""Most skills on one candidate or posting list: bounds memory per record in the service."""
MAX_SKILL_CHARS = 100
MAX_SHORT_TEXT_CHARS = 200
"""Longest title or location."""


def _require_text(kind: str, name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{kind} {name} must be non-empty text")


def _short_text(kind: str, name: str, value: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{kind} {name} must be text, got {type(value).__name__}")
    if len(value) > MAX_SHORT_TEXT_CHARS:
        raise InvalidInput(
            f"{kind} {name} is {len(value)} characters; shorten it to {MAX_SHORT_TEXT_CHARS}"
        )
    return value.strip()


def _normalise_skills(kind: str, skills: tuple[str, ...]) -> tuple[str, ...]:
    """Each skill in its stored form (`display_term`), one per `phrase_key`, first spelling kept."""
    if isinstance(skills, str):
        raise InvalidInput(f"{kind} skills must be a list of strings, not one string")
    if len(skills) > MAX_SKILLS:
        raise InvalidInput(f"{kind} lists {len(skills)} skills; send at most {MAX_SKILLS}")
    out: dict[str, str] = {}
    for s in tuple(skills):
        if not isinstance(s, str) or not s.strip():
            raise InvalidInput(f"{kind} skills must be non-empty strings, got {s!r}")
        if len(s) > MAX_SKILL_CHARS:
            raise InvalidInput(
                f"{kind} skill {s[:30]!r}... is longer than {MAX_SKILL_CHARS} characters"
            )
        out.setdefault(phrase_key(s), display_term(s))
    return tuple(out.values())


def _years(kind: str, name: str, y: object) -> float:
    if (
        isinstance(y, bool)
        or not isinstance(y, int | float)
        or not math.isfinite(y)
        or not 0 <= y <= 80
    ):
        raise InvalidInput(f"{kind} {name} must be a number in 0..80, got {y!r}")
    return float(y)


@dataclass(frozen=True)
class Candidate:
    """A candidate as the ATS sends it. Protected attributes are never part of this record."""

    id: str
    cv_text: str
    skills: tuple[str, ...] = ()
    years_experience: float = 0.0
    location: str = ""
    willing_to_relocate: bool = False
    remote_ok: bool = False
    title: str = ""
    """Current or most recent job title."""
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_id("candidate", self.id)
        _require_text(f"candidate {self.id!r}", "cv_text", self.cv_text)
        object.__setattr__(self, "skills", _normalise_skills(f"candidate {self.id!r}", self.skills))
        object.__setattr__(
            self,
            "years_experience",
            _years(f"candidate {self.id!r}", "years_experience", self.years_experience),
        )
        object.__setattr__(
            self, "title", _short_text(f"candidate {self.id!r}", "title", self.title)
        )
        object.__setattr__(
            self, "location", _short_text(f"candidate {self.id!r}", "location", self.location)
        )
        object.__setattr__(
            self, "updated_at", _utc(self.updated_at, f"candidate {self.id!r} updated_at")
        )


@dataclass(frozen=True)
class Posting:
    """A job posting (requisition)."""

    id: str
    title: str
    description: str
    required_skills: tuple[str, ...] = ()
    nice_skills: tuple[str, ...] = ()
    min_years: float = 0.0
    location: str = ""
    remote: bool = False
    created_at: datetime | None = None

    def __post_init__(self) -> None:
        _require_id("posting", self.id)
        _require_text(f"posting {self.id!r}", "title", self.title)
        _require_text(f"posting {self.id!r}", "description", self.description)
        object.__setattr__(
            self,
            "required_skills",
            _normalise_skills(f"posting {self.id!r}", self.required_skills),
        )
        object.__setattr__(
            self, "nice_skills", _normalise_skills(f"posting {self.id!r}", self.nice_skills)
        )
        object.__setattr__(
            self, "min_years", _years(f"posting {self.id!r}", "min_years", self.min_years)
        )
        object.__setattr__(self, "title", _short_text(f"posting {self.id!r}", "title", self.title))
        object.__setattr__(
            self, "location", _short_text(f"posting {self.id!r}", "location", self.location)
        )
        object.__setattr__(
            self, "created_at", _utc(self.created_at, f"posting {self.id!r} created_at")
        )


@dataclass(frozen=True)
class Outcome:
    """One stage event reported by the ATS: the raw material of training labels."""

    posting_id: str
    candidate_id: str
    stage: Stage
    at: datetime = field(default_factory=_now)

    def __post_init__(self) -> None:
        _require_id("posting", self.posting_id)
        _require_id("candidate", self.candidate_id)
        if not isinstance(self.stage, Stage):
            try:
                object.__setattr__(self, "stage", Stage(str(self.stage).strip().lower()))
            except ValueError:
                allowed = ", ".join(s.value for s in Stage)
                raise InvalidInput(f"stage {self.stage!r} is not one of: {allowed}") from None
        object.__setattr__(self, "at", _utc(self.at, "outcome at"))
