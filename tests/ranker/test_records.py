"""Each record is declared once: files, proto messages and store rows all follow its fields."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

import ranker.datafiles
import ranker.store_sql
from ranker.api import RankFilters
from ranker.datafiles import read_records, write_jsonl
from ranker.domain import (
    Candidate,
    Outcome,
    Posting,
    Stage,
    parse_stage,
    record_fields,
    to_plain,
)
from ranker.errors import InvalidField, InvalidInput
from ranker.rows import CandidateRow, PostingRow
from ranker.store import SqliteStore
from ranker.transport.convert import (
    candidate_from_pb,
    candidate_to_pb,
    outcome_from_pb,
    posting_from_pb,
    posting_to_pb,
)
from ranker.v1 import ranker_pb2 as pb

DIM = 4
ROOT = Path(__file__).resolve().parents[2]

# Every field away from its default, so a field dropped anywhere shows as a difference.
CANDIDATE = Candidate(
    id="C-1",
    cv_text="Backend engineer; Python and Go.",
    skills=("python", "go"),
    years_experience=6.5,
    location="Berlin",
    willing_to_relocate=True,
    remote_ok=True,
    title="Senior engineer",
    updated_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
)
POSTING = Posting(
    id="P-1",
    title="Platform engineer",
    description="Runs the platform.",
    required_skills=("python",),
    nice_skills=("go",),
    min_years=3,
    location="Leeds",
    remote=True,
    created_at=datetime(2026, 1, 2, tzinfo=UTC),
)
OUTCOME = Outcome(
    posting_id="P-1",
    candidate_id="C-1",
    stage=Stage.INTERVIEWED,
    at=datetime(2026, 2, 1, tzinfo=UTC),
)


def _all_set(record: object) -> None:
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        default = f.default if f.default is not dataclasses.MISSING else None
        assert getattr(record, f.name) != default, f"fixture leaves {f.name} at its default"


@pytest.mark.parametrize(
    ("record", "message"),
    [(Candidate, pb.Candidate), (Posting, pb.Posting), (Outcome, pb.Outcome)],
    ids=["candidate", "posting", "outcome"],
)
def test_the_proto_names_the_records_fields(record: type, message: type) -> None:
    assert [f.name for f in message.DESCRIPTOR.fields] == [
        f.name for f in dataclasses.fields(record)
    ]


def test_converters_round_trip_every_field() -> None:
    _all_set(CANDIDATE)
    _all_set(POSTING)
    assert candidate_from_pb(candidate_to_pb(CANDIDATE)) == CANDIDATE
    assert posting_from_pb(posting_to_pb(POSTING)) == POSTING
    message = pb.Outcome(posting_id="P-1", candidate_id="C-1", stage="Interviewed")
    message.at.FromDatetime(datetime(2026, 2, 1))
    assert outcome_from_pb(message) == OUTCOME
    unset = outcome_from_pb(pb.Outcome(posting_id="P-1", candidate_id="C-1", stage="hired"))
    assert unset.at.tzinfo is UTC  # an unset time is the record's default: now


@pytest.mark.parametrize("record", [CANDIDATE, POSTING, OUTCOME], ids=["c", "p", "o"])
def test_files_round_trip_every_field(
    tmp_path: Path, record: Candidate | Posting | Outcome
) -> None:
    path = tmp_path / "records.jsonl"
    write_jsonl(path, [to_plain(record)])
    assert set(json.loads(path.read_text("utf-8"))) == {f.name for f in record_fields(type(record))}
    assert read_records(path, type(record)) == [record]


def test_store_round_trips_every_field(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "ranker.db", dim=DIM)
    try:
        store.upsert_candidates(
            [CandidateRow(CANDIDATE, np.ones(DIM, np.float32) / 2, np.ones((1, DIM), np.float32))]
        )
        store.upsert_postings([PostingRow(POSTING, np.ones(DIM, np.float32) / 2)])
        store.record_outcomes([OUTCOME])
        assert [r.candidate for r in store.get_candidates(["C-1"])] == [CANDIDATE]
        assert [r.posting for r in store.list_postings()] == [POSTING]
        assert store.list_outcomes() == [OUTCOME]
    finally:
        store.close()


@dataclasses.dataclass(frozen=True)
class WideCandidate(Candidate):
    """A candidate with one field more, as if it had just been added to the record."""

    pronouns_optional: str = ""


def test_a_new_field_flows_through_files_and_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide = WideCandidate(id="C-2", cv_text="A CV.", pronouns_optional="they")
    path = tmp_path / "candidates.jsonl"
    write_jsonl(path, [to_plain(wide)])
    assert read_records(path, WideCandidate) == [wide]
    # The store names no candidate field but the id: the new one is kept without a new column.
    monkeypatch.setattr(ranker.store_sql, "Candidate", WideCandidate)
    store = SqliteStore(tmp_path / "ranker.db", dim=DIM)
    try:
        row = CandidateRow(wide, np.ones(DIM, np.float32) / 2, np.ones((1, DIM), np.float32))
        store.upsert_candidates([row])
        assert [r.candidate for r in store.get_candidates(["C-2"])] == [wide]
    finally:
        store.close()
    # The proto is the one other place to edit by hand; forgetting it fails loudly.
    with pytest.raises(ValueError, match="pronouns_optional"):
        candidate_to_pb(wide)


@pytest.mark.parametrize(
    ("record", "table"),
    [(Candidate, "candidates"), (Posting, "postings"), (Outcome, "outcomes")],
)
def test_the_manuals_document_every_column(record: type, table: str) -> None:
    documented = (ranker.datafiles.__doc__ or "", (ROOT / "README.md").read_text("utf-8"))
    for text in documented:
        for f in record_fields(record):
            assert f"| {f.name} " in text, f"document the {table} column {f.name}"


def test_one_years_check_for_records_and_filters() -> None:
    with pytest.raises(
        InvalidField, match=r"candidate 'c' years_experience: expected a number in 0\.\.80, got 81"
    ):
        Candidate(id="c", cv_text="x", years_experience=81)
    with pytest.raises(InvalidField, match=r"posting 'p' min_years: .* got nan"):
        Posting(id="p", title="t", description="d", min_years=float("nan"))
    with pytest.raises(InvalidField, match=r"^filters\.min_years: expected a number in 0\.\.80"):
        RankFilters(min_years=-1)
    assert RankFilters(min_years=2).min_years == 2.0


def test_one_stage_parser() -> None:
    assert parse_stage(" Offered ") is Stage.OFFERED
    with pytest.raises(InvalidField) as e:
        parse_stage("ghosted")
    assert e.value.field == "stage" and "applied, screened" in e.value.problem


def test_a_store_of_another_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "ranker.db"
    SqliteStore(path, dim=DIM).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute("DROP TABLE candidates")
    conn.close()
    with pytest.raises(InvalidInput, match=r"store schema 2.*ranker ingest"):
        SqliteStore(path, dim=DIM)
    with sqlite3.connect(path) as conn:  # refused before any table was created in it
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "candidates" not in tables
