"""ATS export files: JSONL and CSV round trips, and malformed input named by file, line and field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ranker.datafiles import (
    read_candidates,
    read_outcomes,
    read_postings,
    read_protected,
    write_csv,
    write_jsonl,
)
from ranker.domain import Stage, to_plain
from ranker.errors import InvalidInput
from training.demo import DemoConfig, DemoData, generate, write_demo

SMALL = DemoConfig(candidates=25, postings=6, applicants=(5, 10), seed=5, short_cvs=True)


@pytest.fixture(scope="module")
def small_demo() -> DemoData:
    return generate(SMALL)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_round_trip_keeps_every_field(small_demo: DemoData, tmp_path: Path, suffix: str) -> None:
    write = write_jsonl if suffix == "jsonl" else write_csv
    write(tmp_path / f"c.{suffix}", [to_plain(c) for c in small_demo.candidates])
    write(tmp_path / f"p.{suffix}", [to_plain(p) for p in small_demo.postings])
    write(tmp_path / f"o.{suffix}", [to_plain(o) for o in small_demo.outcomes])
    assert read_candidates(tmp_path / f"c.{suffix}") == small_demo.candidates
    assert read_postings(tmp_path / f"p.{suffix}") == small_demo.postings
    assert read_outcomes(tmp_path / f"o.{suffix}") == small_demo.outcomes


@pytest.mark.parametrize(
    ("write", "bad"),
    [(write_jsonl, {"id": object()}), (write_csv, {"id": "b", "extra": "not a column"})],
)
def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, write: Callable[[Path, list[dict[str, Any]]], None], bad: dict[str, Any]
) -> None:
    path = tmp_path / "c.data"
    write(path, [{"id": "a"}])
    before = path.read_bytes()
    with pytest.raises((TypeError, ValueError)):
        write(path, [{"id": "b"}, bad])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.data"]  # no temp file left behind


def test_demo_files_read_back_and_protected_is_separate(
    small_demo: DemoData, tmp_path: Path
) -> None:
    write_demo(small_demo, tmp_path)
    assert read_candidates(tmp_path / "candidates.jsonl") == small_demo.candidates
    assert read_protected(tmp_path / "protected.jsonl") == small_demo.protected
    for line in (tmp_path / "candidates.jsonl").read_text().splitlines():
        assert not {"sex", "age_band"} & set(json.loads(line))


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


CANDIDATE_HEADER = (
    "id,cv_text,skills,years_experience,location,willing_to_relocate,remote_ok,title\n"
)


def test_csv_bad_number_names_file_line_and_field(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "candidates.csv",
        CANDIDATE_HEADER
        + "c1,Nurse with ten years,patient care;triage,10,Leeds,false,true,Nurse\n"
        + "c2,Analyst,sql,ten,Leeds,false,true,Analyst\n",
    )
    with pytest.raises(InvalidInput) as e:
        read_candidates(path)
    assert str(e.value) == (
        "candidates.csv line 3, field years_experience: expected a number in 0..80, got 'ten'"
    )


def test_csv_line_numbers_count_multiline_cells(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "candidates.csv",
        CANDIDATE_HEADER
        + 'c1,"Line one\nline two\nline three",sql,3,Leeds,false,true,Analyst\n'
        + "c2,Analyst,sql,3,Leeds,maybe,true,Analyst\n",
    )
    with pytest.raises(InvalidInput, match=r"candidates.csv line 5, field willing_to_relocate: "):
        read_candidates(path)


def test_csv_reads_lists_bools_and_empty_cells(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "candidates.csv",
        CANDIDATE_HEADER + "c1,Some CV,sql; Python ;,4.5,,TRUE,false,\n",
    )
    (c,) = read_candidates(path)
    assert c.skills == ("sql", "python")
    assert c.years_experience == 4.5
    assert c.willing_to_relocate is True and c.remote_ok is False
    assert c.location == "" and c.title == ""


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"cv_text": "x"}, "line 2, field id: is missing"),
        ({"id": "c9", "cv_text": "   "}, "line 2, field cv_text: is required but blank"),
        (
            {"id": "c9", "cv_text": "x", "years_experience": "5"},
            "field years_experience: expected a number",
        ),
        (
            {"id": "c9", "cv_text": "x", "years_experience": 120},
            "field years_experience: expected a number in 0..80, got 120",
        ),
        (
            {"id": "c9", "cv_text": "x", "remote_ok": "yes"},
            "field remote_ok: expected true or false",
        ),
        ({"id": "c9", "cv_text": "x", "skills": "sql"}, "field skills: expected a list"),
        (
            {"id": "c9", "cv_text": "x", "updated_at": "yesterday"},
            "field updated_at: expected an ISO-8601",
        ),
        ({"id": "c9", "cv_text": "x", "yeras": 3}, "field yeras: unknown field"),
        (
            {"id": "c9", "cv_text": "x", "sex": "female"},
            "field sex: protected attributes do not belong",
        ),
        ({"id": "c1", "cv_text": "x"}, "line 2, field id: 'c1' already appeared on line 1"),
    ],
)
def test_jsonl_candidate_errors(tmp_path: Path, record: dict[str, object], expected: str) -> None:
    path = tmp_path / "candidates.jsonl"
    path.write_text(
        json.dumps({"id": "c1", "cv_text": "ok"}) + "\n" + json.dumps(record) + "\n", "utf-8"
    )
    with pytest.raises(InvalidInput) as e:
        read_candidates(path)
    assert str(e.value).startswith("candidates.jsonl line 2")
    assert expected in str(e.value)


def test_jsonl_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "postings.jsonl"
    path.write_text('{"id": "p1", "title": "t", "description": "d"}\n\n{"id": "p2",\n', "utf-8")
    with pytest.raises(InvalidInput, match=r"postings.jsonl line 3: not valid JSON"):
        read_postings(path)


def test_outcome_stage_and_time_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text(
        "posting_id,candidate_id,stage,at\n"
        "p1,c1,Interviewed,2025-01-02T10:00:00+00:00\n"
        "p1,c2,ghosted,2025-01-02T10:00:00\n",
        "utf-8",
    )
    with pytest.raises(InvalidInput, match=r"outcomes.csv line 3, field stage: expected one of"):
        read_outcomes(path)
    path.write_text("posting_id,candidate_id,stage,at\np1,c1,Interviewed,\n", "utf-8")
    with pytest.raises(InvalidInput, match=r"outcomes.csv line 2, field at: is required"):
        read_outcomes(path)
    path.write_text(
        "posting_id,candidate_id,stage,at\np1,c1,Interviewed,2025-01-02T10:00:00\n", "utf-8"
    )
    assert read_outcomes(path)[0].stage is Stage.INTERVIEWED


def test_posting_domain_error_gets_the_line(tmp_path: Path) -> None:
    path = tmp_path / "postings.jsonl"
    path.write_text(json.dumps({"id": "p1", "title": "", "description": "d"}) + "\n", "utf-8")
    with pytest.raises(InvalidInput, match=r"postings.jsonl line 1, field title"):
        read_postings(path)


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"use \.jsonl, \.json or \.csv"):
        read_candidates(_csv(tmp_path, "c.xlsx", "x"))
    with pytest.raises(InvalidInput, match="no such file"):
        read_candidates(tmp_path / "absent.jsonl")


def test_a_json_file_holds_one_record_or_a_list(tmp_path: Path) -> None:
    one = tmp_path / "posting.json"
    one.write_text('{"id": "P1", "title": "Welder", "description": "Welding."}', encoding="utf-8")
    assert [p.id for p in read_postings(one)] == ["P1"]
    many = tmp_path / "postings.json"
    many.write_text(
        '[{"id": "P1", "title": "A", "description": "a"},\n'
        ' {"id": "P2", "title": "B", "description": "b"}]',
        encoding="utf-8",
    )
    assert [p.id for p in read_postings(many)] == ["P1", "P2"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"id": "P1",\n "title": }', encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"bad.json line 2: not valid JSON"):
        read_postings(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('["P1"]', encoding="utf-8")
    with pytest.raises(InvalidInput, match="item 1: expected a JSON object"):
        read_postings(wrong)


def test_protected_needs_candidate_id(tmp_path: Path) -> None:
    path = _csv(tmp_path, "protected.csv", "candidate_id,sex\nc1,female\n,male\n")
    with pytest.raises(InvalidInput, match=r"protected.csv line 3, field candidate_id"):
        read_protected(path)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_byte_order_mark_is_ignored(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"candidates.{suffix}"
    body = (
        json.dumps({"id": "c1", "cv_text": "Pflegefachkraft in Zürich"}) + "\n"
        if suffix == "jsonl"
        else "id,cv_text\r\nc1,Pflegefachkraft in Zürich\r\n"
    )
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))  # as Excel saves "UTF-8 CSV"
    (c,) = read_candidates(path)
    assert (c.id, c.cv_text) == ("c1", "Pflegefachkraft in Zürich")


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_non_utf8_bytes_name_the_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"candidates.{suffix}"
    good = (
        json.dumps({"id": "c1", "cv_text": "ok"}) + "\n"
        if suffix == "jsonl"
        else "id,cv_text\nc1,ok\n"
    ).encode("utf-8")
    bad = (
        json.dumps({"id": "c2", "cv_text": "Zürich"}, ensure_ascii=False) + "\n"
        if suffix == "jsonl"
        else "c2,Zürich\n"
    ).encode("latin-1")
    path.write_bytes(good + bad)
    line = 2 if suffix == "jsonl" else 3
    with pytest.raises(InvalidInput) as e:
        read_candidates(path)
    assert str(e.value).startswith(f"candidates.{suffix} line {line}: not valid UTF-8 (byte 0xfc")
    assert "save the file as UTF-8" in str(e.value)
