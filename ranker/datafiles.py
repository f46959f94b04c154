"""Reading and writing the ATS export files (JSONL or CSV), validated with file, line and field.

The columns of the candidates, postings and outcomes tables are the fields of the records in
`ranker.domain` (`record_fields`), so a field added there is read and written here as well; the
tables below document them (tests/ranker/test_records.py checks they name every field).

Four tables, each a `.jsonl` file (one JSON object per line) or a `.csv` file (a header row, then
one row per record); a `.json` file holding one object or a list of them is read too. In CSV, list fields are `;`-separated, booleans are `true`/`false`, datetimes
are ISO-8601 (`2025-03-01T09:30:00+00:00`); an empty cell means "not given". Unknown columns are
refused (a typo would otherwise silently drop data; the error suggests the closest column), and so
are protected attributes anywhere but the protected table. Checking a file can report every
problem in it at once (`FileProblems`), which is how `ranker ingest` checks before it writes. Files are UTF-8; a byte-order mark (Excel writes one) is ignored, and any
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
import difflib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ranker.atomic import atomic_text_file
from ranker.domain import (
    Candidate,
    Outcome,
    Posting,
    RecordField,
    RecordT,
    record_fields,
)
from ranker.errors import InvalidField, InvalidInput

# Attributes that must never sit next to the features' inputs: a model that could see them
# could learn them, so they live in their own table, read by the fairness audit only.
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

# Only the documented spellings (any case): "yes", "1" or "y" would be guesses about intent.
_TRUE = {"true"}
_FALSE = {"false"}

MAX_REPORTED_PROBLEMS = 50
"""Problems listed one by one when checking files; beyond it they are only counted."""


class DataFilesInvalid(InvalidInput):
    """One or more data files hold errors; `problems` lists them (file, line, field, what to do)."""

    def __init__(self, problems: tuple[str, ...], total: int) -> None:
        self.problems = problems
        self.total = total
        more = f"\n... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(
            f"{total} problem{'s' if total != 1 else ''} in the data files; fix them and run "
            "again (nothing was stored):\n" + "\n".join(problems) + more
        )


class FileProblems:
    """The problems found while checking data files: every one up to a cap, then a count."""

    def __init__(self, cap: int = MAX_REPORTED_PROBLEMS) -> None:
        self.cap = cap
        self.listed: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.listed) < self.cap:
            self.listed.append(message)

    def __bool__(self) -> bool:
        return self.total > 0

    def error(self) -> DataFilesInvalid:
        """The exception that reports them all (raise it only when there are any)."""
        return DataFilesInvalid(tuple(self.listed), self.total)


def _reporter(problems: FileProblems | None) -> Callable[[str], None]:
    """Where a problem goes: raised at once (no sink given), or added to the sink."""

    def report(message: str) -> None:
        if problems is None:
            raise InvalidInput(message)
        problems.add(message)

    return report


def _unknown_field(where: str, field: str, names: set[str]) -> str:
    if field.lower() in PROTECTED_NAMES:
        return (
            f"{where}, field {field}: protected attributes do not belong in this file; "
            "put them in protected.jsonl, which the ranker never reads for features"
        )
    close = difflib.get_close_matches(field, sorted(names), n=1, cutoff=0.6)
    close = close or difflib.get_close_matches(field.lower(), sorted(names), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{where}, field {field}: unknown field; {hint}expected some of {', '.join(sorted(names))}"
    )


def _convert(col: RecordField, value: Any, from_csv: bool) -> Any:
    """One raw value (a CSV cell or a JSON value) in the type its record field takes.

    Only what the file format decides is checked here (a CSV cell is text; JSON has its own
    types); ranges and vocabularies are the record's checks (`ranker.domain`), so a number that
    does not parse is handed on as given and the record says what it expected.
    """
    if value is None or (from_csv and value == ""):
        if col.required:
            raise InvalidField("", col.name, "is required but empty")
        return None
    if col.kind == "text":
        if not isinstance(value, str):
            raise InvalidField("", col.name, f"expected text, got {value!r}")
        if col.required and not value.strip():
            raise InvalidField("", col.name, "is required but blank")
        return value
    if col.kind == "list":
        if from_csv:
            return tuple(s.strip() for s in value.split(";") if s.strip())
        if not isinstance(value, list) or not all(isinstance(s, str) and s.strip() for s in value):
            raise InvalidField("", col.name, f"expected a list of non-empty strings, got {value!r}")
        return tuple(value)
    if col.kind == "number":
        if from_csv:
            try:
                return float(value)
            except ValueError:
                return value
        return value
    if col.kind == "bool":
        if from_csv and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        return value
    if col.kind == "datetime":
        if not isinstance(value, str):
            raise InvalidField("", col.name, f"expected an ISO-8601 datetime string, got {value!r}")
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise InvalidField(
                "",
                col.name,
                f"expected an ISO-8601 datetime like 2025-03-01T09:30:00, got {value!r}",
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
    elif suffix == ".json":
        # One record, or a list of them, as one JSON document (e.g. `ranker query --posting-file`).
        with path.open("rb") as f:
            text = "".join(_lines(path, f))
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInput(
                f"{path.name} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        items = doc if isinstance(doc, list) else [doc]
        for i, record in enumerate(items, start=1):
            if not isinstance(record, dict):
                raise InvalidInput(
                    f"{path.name} item {i}: expected a JSON object, got {type(record).__name__}"
                )
            yield i, record, False
    else:
        raise InvalidInput(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .csv")


def read_records(
    path: Path | str, record: type[RecordT], problems: FileProblems | None = None
) -> list[RecordT]:
    """Records of one class from a `.jsonl` or `.csv` file; the columns are its fields.

    As `read_numbered`, without the line numbers.
    """
    return [item for _, item in read_numbered(path, record, problems)]


def read_numbered(
    path: Path | str, record: type[RecordT], problems: FileProblems | None = None
) -> list[tuple[int, RecordT]]:
    """(line, record) for each record of a `.jsonl` or `.csv` file; the columns are its fields.

    The line is where the record starts, so a later error about it (e.g. a server's per-item
    status) can point at the file.

    Without `problems`, the first error raises `InvalidInput` naming the line and the field.
    With it, every error is added there and reading goes on (a row with an error is left out),
    so one run reports them all; a file that cannot be read on (not UTF-8, not JSON, broken
    CSV) adds one problem and stops that file. Records with an `id` must not repeat one.
    """
    path = Path(path)
    report = _reporter(problems)
    columns = record_fields(record)
    names = {c.name for c in columns}
    out: list[tuple[int, RecordT]] = []
    seen: dict[object, int] = {}
    unknown_reported: set[str] = set()
    try:
        for lineno, raw, from_csv in _records(path):
            where = f"{path.name} line {lineno}"
            unknown = [k for k in raw if k not in names]
            if unknown:
                # Once per file: in a CSV every row repeats the header's typo.
                for field in unknown:
                    if field not in unknown_reported:
                        unknown_reported.add(field)
                        report(_unknown_field(where, field, names))
                continue
            values: dict[str, Any] = {}
            bad = False
            for col in columns:
                try:
                    if col.name not in raw:
                        if col.required:
                            raise InvalidField("", col.name, "is missing")
                        continue
                    v = _convert(col, raw[col.name], from_csv)
                except InvalidField as e:
                    report(f"{where}, field {e.field}: {e.problem}")
                    bad = True
                    continue
                if v is not None:
                    values[col.name] = v
            if bad:
                continue
            try:
                item = record(**values)
            except InvalidField as e:
                report(f"{where}, field {e.field}: {e.problem}")
                continue
            except InvalidInput as e:
                report(f"{where}: {e}")
                continue
            if isinstance(item, Candidate | Posting):
                k = item.id
                if k in seen:
                    report(
                        f"{where}, field id: {k!r} already appeared on line {seen[k]}; "
                        "ids must be unique"
                    )
                    continue
                seen[k] = lineno
            out.append((lineno, item))
    except InvalidInput as e:
        if problems is None:
            raise
        problems.add(str(e))  # the file cannot be read on past this point
    return out


def read_candidates(path: Path | str, problems: FileProblems | None = None) -> list[Candidate]:
    """Candidates from a `.jsonl` or `.csv` file; errors name the line and field."""
    return read_records(path, Candidate, problems)


def read_postings(path: Path | str, problems: FileProblems | None = None) -> list[Posting]:
    """Postings from a `.jsonl` or `.csv` file; errors name the line and field."""
    return read_records(path, Posting, problems)


def read_outcomes(path: Path | str, problems: FileProblems | None = None) -> list[Outcome]:
    """Stage events from a `.jsonl` or `.csv` file; errors name the line and field."""
    return read_records(path, Outcome, problems)


def read_protected(
    path: Path | str, problems: FileProblems | None = None
) -> dict[str, dict[str, str]]:
    """Protected attributes by candidate id: {candidate_id: {attribute: value}}. Audits only."""
    path = Path(path)
    report = _reporter(problems)
    out: dict[str, dict[str, str]] = {}
    try:
        for lineno, record, _ in _records(path):
            where = f"{path.name} line {lineno}"
            cid = record.get("candidate_id")
            if not isinstance(cid, str) or not cid.strip():
                report(f"{where}, field candidate_id: is required but missing or empty")
                continue
            if cid in out:
                report(f"{where}, field candidate_id: {cid!r} appears twice")
                continue
            attrs: dict[str, str] = {}
            for k, v in record.items():
                if k == "candidate_id" or v is None or v == "":
                    continue
                if not isinstance(v, str | int | float | bool):
                    report(f"{where}, field {k}: expected a plain value, got {v!r}")
                    continue
                attrs[k] = str(v)
            out[cid] = attrs
    except InvalidInput as e:
        if problems is None:
            raise
        problems.add(str(e))
    return out


# -- writing (demo data, exports) ----------------------------------------------------------


def write_jsonl(path: Path | str, records: Sequence[Mapping[str, Any]]) -> None:
    """One JSON object per line, written atomically (the old file or the whole new one)."""
    with atomic_text_file(Path(path)) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_csv(path: Path | str, records: Sequence[Mapping[str, Any]]) -> None:
    """CSV in the format the readers accept (`;`-joined lists, true/false, ISO datetimes)."""
    path = Path(path)
    if not records:
        raise InvalidInput(f"{path.name}: nothing to write")
    fields = list(records[0])
    with atomic_text_file(path, newline="") as f:
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
