"""Domain records shared by ingestion, features, training and serving: validated and frozen.

Each record's fields are declared once, here. The data-file columns (`ranker.datafiles`), the
proto converters (`ranker.transport.convert`: the proto's field names are the records' field
names) and the store's rows (`ranker.store`) all derive from `record_fields`, so adding a field
to a record touches the proto and this module only.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar

from ranker.errors import InvalidField
from ranker.text import display_term, phrase_key


class Stage(StrEnum):
    """Hiring stages an ATS reports for a (posting, candidate) pair."""

    APPLIED = "applied"
    SCREENED = "screened"
    INTERVIEWED = "interviewed"
    OFFERED = "offered"
    HIRED = "hired"
    REJECTED = "rejected"


# -- checks shared by every record (and by request filters) -----------------------------------

MAX_ID_CHARS = 200
MAX_SKILLS = 100
"""Most skills on one candidate or posting list: bounds memory per record in the service."""
MAX_SKILL_CHARS = 100
MAX_SHORT_TEXT_CHARS = 200
"""Longest title or location."""
MAX_YEARS = 80


def years_in_range(value: object, subject: str, name: str) -> float:
    """`value` as a number of years in 0..80, or `InvalidField` naming `subject` and `name`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= MAX_YEARS
    ):
        raise InvalidField(subject, name, f"expected a number in 0..{MAX_YEARS}, got {value!r}")
    return float(value)


def parse_stage(value: object, subject: str = "outcome") -> Stage:
    """A stage from its name (case and surrounding spaces ignored), or `InvalidField`."""
    if isinstance(value, Stage):
        return value
    try:
        return Stage(str(value).strip().lower())
    except ValueError:
        allowed = ", ".join(s.value for s in Stage)
        raise InvalidField(subject, "stage", f"expected one of {allowed}, got {value!r}") from None


def _utc(value: datetime | None, subject: str, name: str) -> datetime | None:
    """Every time in the domain is timezone-aware UTC; a naive time is taken to be UTC already.

    Files and ATSs send both kinds, and comparing a naive with an aware time raises, so the
    records normalise once here instead of every consumer guessing.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidField(subject, name, f"expected a date-time, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _id(kind: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(kind, "id", "must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise InvalidField(
            kind, "id", f"{value[:40]!r}... is longer than {MAX_ID_CHARS} characters"
        )
    return value


def _required_text(subject: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(subject, name, "must be non-empty text")
    return value


def _short_text(subject: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidField(subject, name, f"must be text, got {type(value).__name__}")
    if len(value) > MAX_SHORT_TEXT_CHARS:
        raise InvalidField(
            subject, name, f"is {len(value)} characters; shorten it to {MAX_SHORT_TEXT_CHARS}"
        )
    return value.strip()


def _flag(subject: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidField(subject, name, f"expected true or false, got {value!r}")
    return value


def _skills(subject: str, name: str, skills: object) -> tuple[str, ...]:
    """Each skill in its stored form (`display_term`), one per `phrase_key`, first spelling kept."""
    if isinstance(skills, str):
        raise InvalidField(subject, name, "must be a list of strings, not one string")
    if not isinstance(skills, tuple | list):
        raise InvalidField(subject, name, f"must be a list of strings, got {skills!r}")
    if len(skills) > MAX_SKILLS:
        raise InvalidField(subject, name, f"lists {len(skills)} skills; send at most {MAX_SKILLS}")
    out: dict[str, str] = {}
    for s in skills:
        if not isinstance(s, str) or not _visible(s):
            raise InvalidField(
                subject,
                name,
                f"must be non-empty strings of visible characters, got {repr(s)[:40]}",
            )
        if len(s) > MAX_SKILL_CHARS:
            raise InvalidField(
                subject, name, f"{s[:30]!r}... is longer than {MAX_SKILL_CHARS} characters"
            )
        out.setdefault(phrase_key(s), display_term(s))
    return tuple(out.values())


def _visible(text: str) -> bool:
    """True when `text` holds a character that shows: not only spaces, zero-width or control
    characters (a skill of only U+200B matches nothing and reads as blank to a recruiter)."""
    return any(not c.isspace() and unicodedata.category(c)[0] not in "CZ" for c in text)


def _set(record: object, name: str, value: object) -> None:
    object.__setattr__(record, name, value)


# -- the records ---------------------------------------------------------------------------------


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
        me = f"candidate {_id('candidate', self.id)!r}"
        _required_text(me, "cv_text", self.cv_text)
        _set(self, "skills", _skills(me, "skills", self.skills))
        _set(
            self, "years_experience", years_in_range(self.years_experience, me, "years_experience")
        )
        _set(self, "title", _short_text(me, "title", self.title))
        _set(self, "location", _short_text(me, "location", self.location))
        _flag(me, "willing_to_relocate", self.willing_to_relocate)
        _flag(me, "remote_ok", self.remote_ok)
        _set(self, "updated_at", _utc(self.updated_at, me, "updated_at"))


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
        me = f"posting {_id('posting', self.id)!r}"
        _required_text(me, "title", self.title)
        _required_text(me, "description", self.description)
        _set(self, "required_skills", _skills(me, "required_skills", self.required_skills))
        _set(self, "nice_skills", _skills(me, "nice_skills", self.nice_skills))
        _set(self, "min_years", years_in_range(self.min_years, me, "min_years"))
        _set(self, "title", _short_text(me, "title", self.title))
        _set(self, "location", _short_text(me, "location", self.location))
        _flag(me, "remote", self.remote)
        _set(self, "created_at", _utc(self.created_at, me, "created_at"))


@dataclass(frozen=True)
class Outcome:
    """One stage event reported by the ATS: the raw material of training labels."""

    posting_id: str
    candidate_id: str
    stage: Stage
    at: datetime = field(default_factory=_now, metadata={"required_in_files": True})
    """When it happened. A message may leave it unset (= now, as the ATS reports live); a file
    must give it, because a history without times cannot be split by time."""

    def __post_init__(self) -> None:
        _id("posting", self.posting_id)
        _id("candidate", self.candidate_id)
        _set(self, "stage", parse_stage(self.stage))
        _set(self, "at", _utc(self.at, "outcome", "at"))


# -- what the other layers derive from the records ----------------------------------------------

Record = Candidate | Posting | Outcome
RecordT = TypeVar("RecordT", Candidate, Posting, Outcome)

FieldKind = Literal["text", "list", "number", "bool", "datetime"]


@dataclass(frozen=True)
class RecordField:
    """One field of a record as files, messages and rows see it."""

    name: str
    kind: FieldKind
    """text (str, or an enum sent by its name), list (of text), number, bool or datetime."""
    required: bool
    """A file row must give it: it has no default, or its metadata says `required_in_files`."""


def _kind(annotation: object) -> FieldKind:
    """The kind of a field from its type annotation (`X | None` is the kind of X)."""
    if isinstance(annotation, types.UnionType):
        (annotation,) = (a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return "list"
    if isinstance(annotation, type):
        if issubclass(annotation, bool):
            return "bool"
        if issubclass(annotation, str):  # str and StrEnum (a stage is sent by its name)
            return "text"
        if issubclass(annotation, int | float):
            return "number"
        if issubclass(annotation, datetime):
            return "datetime"
    raise TypeError(f"no record field kind for {annotation!r}; extend domain._kind")


_FIELDS: dict[type, tuple[RecordField, ...]] = {}


def record_fields(record: type[Record]) -> tuple[RecordField, ...]:
    """The fields of a record class in declaration order, with their kinds."""
    found = _FIELDS.get(record)
    if found is not None:
        return found
    hints = typing.get_type_hints(record)
    found = tuple(
        RecordField(
            name=f.name,
            kind=_kind(hints[f.name]),
            required=bool(f.metadata.get("required_in_files"))
            or (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING),
        )
        for f in dataclasses.fields(record)
    )
    _FIELDS[record] = found
    return found


def to_plain(record: Record) -> dict[str, Any]:
    """The record as JSON-ready values (lists, ISO-8601 times, stage names), every field."""
    out: dict[str, Any] = {}
    for f in record_fields(type(record)):
        value = getattr(record, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, StrEnum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_plain(record: type[RecordT], values: dict[str, Any]) -> RecordT:
    """The record from `to_plain` values (a missing optional field takes its default)."""
    kinds = {f.name: f.kind for f in record_fields(record)}
    args: dict[str, Any] = {}
    for name, value in values.items():
        if kinds.get(name) == "datetime" and isinstance(value, str):
            value = datetime.fromisoformat(value)
        elif kinds.get(name) == "list" and isinstance(value, list):
            value = tuple(value)
        args[name] = value
    return record(**args)
