"""Reading and writing the ATS export files (JSONL or CSV), validated with file, line and field.

Four tables, each a `.jsonl` file (one JSON object per line) or a `.csv` file (a header row, then
one row per record). In CSV, list fields are `;`-separated, booleans are `true`/`false`, datetimes
are ISO-8601 (`2025-03-01T09:30:00+00:00`); an empty cell means "not given". Unknown columns are
refused (a typo would otherwise silently drop data), and so are protected attributes anywhere but
the protected table. Files are UTF-8; a byte-order mark (Excel writes one) is ignored, and any
other encoding is refused with the line of the first bad byte.

candidates (`candidates.jsonl` / `.csv`):

| column              | type                 | required | meaning                                   |
|---------------------|----------------------|----------|-------------------------------------------|
| id                  | text                 | yes      | the ATS's candidate id, unique            |
| cv_text             | text                 | yes      | the CV as free text                       |
| skills              | list of text         | no       | skills the candidate lists                |
| years_experience    | number 0..80         | no (0)   | years of professional experience          |
| location            | text                 | no       | city or region                            |
| willing_to_relocate | bool                 | no       | would move for the job                    |
| remote_ok           | bool                 | no       | accepts remote work                       |
| title               | text                 | no       | current or most recent job title          |
| updated_at          | datetime             | no       | when the profile last changed             |

postings (`postings.jsonl` / `.csv`):

| column          | type          | required | meaning                                        |
|-----------------|---------------|----------|------------------------------------------------|
| id              | text          | yes      | the ATS's posting (requisition) id, unique     |
| title           | text          | yes      | job title                                      |
| description     | text          | yes      | job description as free text                   |
| required_skills | list of text  | no       | must-have skills                               |
| nice_skills     | list of text  | no       | nice-to-have skills                            |
| min_years       | number 0..80  | no (0)   | minimum years of experience                    |
| location        | text          | no       | where the job is (empty when remote)           |
| remote          | bool          | no       | the job can be done remotely                   |
| created_at      | datetime      | no       | when the posting opened (orders the time split) |

outcomes (`outcomes.jsonl` / `.csv`), one row per stage event:

| column       | type     | required | meaning                                                      |
|--------------|----------|----------|--------------------------------------------------------------|
| posting_id   | text     | yes      | the posting applied to                                       |
| candidate_id | text     | yes      | the applicant                                                |
| stage        | text     | yes      | applied, screened, interviewed, offered, hired or rejected   |
| at           | datetime | yes      | when the stage was reached                                   |

protected (`protected.jsonl` / `.csv`), for fairness audits only, never read by features:

| column       | type | required | meaning                                                     |
|--------------|------|----------|-------------------------------------------------------------|
| candidate_id | text | yes      | the candidate                                               |
| any other    | text | no       | one column per attribute, e.g. `sex`, `age_band`            |
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ranker.domain import Candidate, Outcome, Posting, Stage
from ranker.errors import InvalidInput

T = TypeVar("T")

# Attributes that must never sit next to the features' inputs (DESIGN.md).
PROTECTED_NAMES = frozenset(
    {
        "sex",
        "gender",
        "age",
        "age_band",
        "date_of_birth",
        "birth_date",
        "ethnicity",
        "race",
        "race_ethnicity",
        "disability",
        "religion",
        "name",
        "full_name",
        "first_name",
        "last_name",
        "photo",
        "photo_url",
        "marital_status",
        "nationality",
    }
)


class _FieldError(Exception):
    """A bad value of one field; the reader adds the file and line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # text, list, number, bool, datetime
    required: bool = False


_CANDIDATE_COLUMNS = (
    _Column("id", "text", True),
    _Column("cv_text", "text", True),
    _Column("skills", "list"),
    _Column("years_experience", "number"),
    _Column("location", "text"),
    _Column("willing_to_relocate", "bool"),
    _Column("remote_ok", "bool"),
    _Column("title", "text"),
    _Column("updated_at", "datetime"),
)
_POSTING_COLUMNS = (
    _Column("id", "text", True),
    _Column("title", "text", True),
    _Column("description", "text", True),
    _Column("required_skills", "list"),
    _Column("nice_skills", "list"),
    _Column("min_years", "number"),
    _Column("location", "text"),
    _Column("remote", "bool"),
    _Column("created_at", "datetime"),
)
_OUTCOME_COLUMNS = (
    _Column("posting_id", "text", True),
    _Column("candidate_id", "text", True),
    _Column("stage", "text", True),
    _Column("at", "datetime", True),
)

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _convert(col: _Column, value: Any, from_csv: bool) -> Any:
    """One raw value (a CSV cell or a JSON value) to its Python type, or `_FieldError`."""
    if value is None or (from_csv and value == ""):
        if col.required:
            raise _FieldError(col.name, "is required but empty")
        return None
    if col.kind == "text":
        if not isinstance(value, str):
            raise _FieldError(col.name, f"expected text, got {value!r}")
        if col.required and not value.strip():
            raise _FieldError(col.name, "is required but blank")
        return value
    if col.kind == "list":
        if from_csv:
            return tuple(s.strip() for s in value.split(";") if s.strip())
        if not isinstance(value, list) or not all(isinstance(s, str) and s.strip() for s in value):
            raise _FieldError(col.name, f"expected a list of non-empty strings, got {value!r}")
        return tuple(value)
    if col.kind == "number":
        number: float
        if from_csv:
            try:
                number = float(value)
            except ValueError:
                raise _FieldError(col.name, f"expected a number in 0..80, got {value!r}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise _FieldError(col.name, f"expected a number in 0..80, got {value!r}")
        else:
            number = float(value)
        if not math.isfinite(number) or not 0 <= number <= 80:
            raise _FieldError(col.name, f"expected a number in 0..80, got {value!r}")
        return number
    if col.kind == "bool":
        if isinstance(value, bool):
            return value
        if from_csv and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _FieldError(col.name, f"expected true or false, got {value!r}")
    if col.kind == "datetime":
        if not isinstance(value, str):
            raise _FieldError(col.name, f"expected an ISO-8601 datetime string, got {value!r}")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise _FieldError(
                col.name, f"expected an ISO-8601 datetime like 2025-03-01T09:30:00, got {value!r}"
            ) from None
    raise AssertionError(col.kind)


def _lines(path: Path, f: Iterable[bytes]) -> Iterator[str]:
    """The file's lines decoded as UTF-8 (line endings kept), a leading byte-order mark dropped.

    Decoded line by line rather than by `open(encoding=...)`, so a bad byte is reported with its
    line number instead of escaping as a `UnicodeDecodeError` from deep inside the reader.
    """
    for lineno, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise InvalidInput(
                f"{path.name} line {lineno}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte "
                f"{e.start + 1} of the line); save the file as UTF-8 and load it again"
            ) from None


def _records(path: Path) -> Iterator[tuple[int, Mapping[str, Any], bool]]:
    """(line number, raw record, whether it came from CSV) for each record of the file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file; check the path (expected .jsonl or .csv)")
    if suffix == ".jsonl":
        with path.open("rb") as f:
            for lineno, line in enumerate(_lines(path, f), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InvalidInput(
                        f"{path.name} line {lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                        "each line must be one JSON object"
                    ) from None
                if not isinstance(record, dict):
                    raise InvalidInput(
                        f"{path.name} line {lineno}: expected a JSON object, got "
                        f"{type(record).__name__}"
                    )
                yield lineno, record, False
    elif suffix == ".csv":
        with path.open("rb") as f:
            # Binary lines keep their "\r\n" / "\n" endings, as `newline=""` would give.
            reader = csv.DictReader(_lines(path, f), strict=True)
            start = 2  # a record's first line: quoted CVs may span several lines
            try:
                for row in reader:
                    if None in row:
                        raise InvalidInput(
                            f"{path.name} line {start}: more cells than header columns; "
                            "quote cells that contain commas"
                        )
                    yield start, row, True
                    start = reader.line_num + 1
            except csv.Error as e:
                raise InvalidInput(f"{path.name} line {reader.line_num}: bad CSV ({e})") from None
    else:
        raise InvalidInput(f"{path}: unsupported file type {suffix!r}; use .jsonl or .csv")


def _read(
    path: Path | str,
    columns: Sequence[_Column],
    make: Callable[[dict[str, Any]], T],
    key: Callable[[T], object] | None,
) -> list[T]:
    path = Path(path)
    names = {c.name for c in columns}
    out: list[T] = []
    seen: dict[object, int] = {}
    for lineno, record, from_csv in _records(path):
        where = f"{path.name} line {lineno}"
        unknown = [k for k in record if k not in names]
        if unknown:
            field = unknown[0]
            if field.lower() in PROTECTED_NAMES:
                raise InvalidInput(
                    f"{where}, field {field}: protected attributes do not belong in this file; "
                    "put them in protected.jsonl, which the ranker never reads for features"
                )
            raise InvalidInput(
                f"{where}, field {field}: unknown field; expected some of {', '.join(sorted(names))}"
            )
        values: dict[str, Any] = {}
        try:
            for col in columns:
                if col.name not in record:
                    if col.required:
                        raise _FieldError(col.name, "is missing")
                    continue
                v = _convert(col, record[col.name], from_csv)
                if v is not None:
                    values[col.name] = v
        except _FieldError as e:
            raise InvalidInput(f"{where}, field {e.field}: {e.message}") from None
        try:
            item = make(values)
        except _FieldError as e:
            raise InvalidInput(f"{where}, field {e.field}: {e.message}") from None
        except InvalidInput as e:
            raise InvalidInput(f"{where}: {e}") from None
        if key is not None:
            k = key(item)
            if k in seen:
                raise InvalidInput(
                    f"{where}, field id: {k!r} already appeared on line {seen[k]}; ids must be unique"
                )
            seen[k] = lineno
        out.append(item)
    return out


def read_candidates(path: Path | str) -> list[Candidate]:
    """Candidates from a `.jsonl` or `.csv` file; `InvalidInput` names the line and field."""
    return _read(path, _CANDIDATE_COLUMNS, lambda v: Candidate(**v), lambda c: c.id)


def read_postings(path: Path | str) -> list[Posting]:
    """Postings from a `.jsonl` or `.csv` file; `InvalidInput` names the line and field."""
    return _read(path, _POSTING_COLUMNS, lambda v: Posting(**v), lambda p: p.id)


def _outcome(values: dict[str, Any]) -> Outcome:
    stage = values["stage"].strip().lower()
    if stage not in {s.value for s in Stage}:
        allowed = ", ".join(s.value for s in Stage)
        raise _FieldError("stage", f"expected one of {allowed}, got {values['stage']!r}")
    return Outcome(values["posting_id"], values["candidate_id"], Stage(stage), values["at"])


def read_outcomes(path: Path | str) -> list[Outcome]:
    """Stage events from a `.jsonl` or `.csv` file; `InvalidInput` names the line and field."""
    return _read(path, _OUTCOME_COLUMNS, _outcome, None)


def read_protected(path: Path | str) -> dict[str, dict[str, str]]:
    """Protected attributes by candidate id: {candidate_id: {attribute: value}}. Audits only."""
    path = Path(path)
    out: dict[str, dict[str, str]] = {}
    for lineno, record, _ in _records(path):
        where = f"{path.name} line {lineno}"
        cid = record.get("candidate_id")
        if not isinstance(cid, str) or not cid.strip():
            raise InvalidInput(f"{where}, field candidate_id: is required but missing or empty")
        if cid in out:
            raise InvalidInput(f"{where}, field candidate_id: {cid!r} appears twice")
        attrs: dict[str, str] = {}
        for k, v in record.items():
            if k == "candidate_id" or v is None or v == "":
                continue
            if not isinstance(v, str | int | float | bool):
                raise InvalidInput(f"{where}, field {k}: expected a plain value, got {v!r}")
            attrs[k] = str(v)
        out[cid] = attrs
    return out


# -- writing (demo data, exports) ----------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Stage):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def candidate_record(c: Candidate) -> dict[str, Any]:
    return {col.name: _jsonable(getattr(c, col.name)) for col in _CANDIDATE_COLUMNS}


def posting_record(p: Posting) -> dict[str, Any]:
    return {col.name: _jsonable(getattr(p, col.name)) for col in _POSTING_COLUMNS}


def outcome_record(o: Outcome) -> dict[str, Any]:
    return {col.name: _jsonable(getattr(o, col.name)) for col in _OUTCOME_COLUMNS}


def write_jsonl(path: Path | str, records: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line, written to a temporary file and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_csv(path: Path | str, records: Sequence[Mapping[str, Any]]) -> None:
    """CSV in the format the readers accept (`;`-joined lists, true/false, ISO datetimes)."""
    path = Path(path)
    if not records:
        raise InvalidInput(f"{path.name}: nothing to write")
    fields = list(records[0])
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in records:
            w.writerow(
                {
                    k: ";".join(v)
                    if isinstance(v, list)
                    else (
                        "true" if v is True else "false" if v is False else ("" if v is None else v)
                    )
                    for k, v in r.items()
                }
            )
    tmp.replace(path)
