"""Ingest checks every file before it writes: all problems in one run, nothing stored, progress."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ranker.commands import ingest as ingest_command
from ranker.commands.progress import LogProgress
from ranker.config import Settings
from ranker.datafiles import DataFilesInvalid, FileProblems, read_candidates
from ranker.encoding import TextEncoder
from ranker.errors import InvalidInput
from ranker.ingest import check_files, ingest_files, ingest_state_path

runner = CliRunner()

CANDIDATES = (
    "id,cv_text,skills,years_experience,location,willing_to_relocate,remote_ok,title\n"
    "c1,Welder with ten years in shipyards,welding,10,Leeds,false,true,Welder\n"
    "c2,Analyst,sql,ten,Leeds,false,true,Analyst\n"  # years: not a number
    "c3,Analyst,sql,3,Leeds,yes,true,Analyst\n"  # bool: only true/false are documented
)


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "candidates.csv").write_text(CANDIDATES, encoding="utf-8")
    postings = [
        {"id": "p1", "title": "Welder", "description": "Shipyard welding"},
        {"id": "p2", "title": "Analyst", "description": "SQL", "requried_skills": ["sql"]},
    ]
    (folder / "postings.jsonl").write_text(
        "".join(json.dumps(p) + "\n" for p in postings), encoding="utf-8"
    )
    (folder / "outcomes.csv").write_text(
        "posting_id,candidate_id,stage,at\n"
        "p1,c1,interviewed,2025-01-02T10:00:00+00:00\n"
        "p1,c1,ghosted,2025-01-03T10:00:00+00:00\n",
        encoding="utf-8",
    )
    return {
        "candidates": folder / "candidates.csv",
        "postings": folder / "postings.jsonl",
        "outcomes": folder / "outcomes.csv",
    }


EXPECTED = (
    "candidates.csv line 3, field years_experience",
    "candidates.csv line 4, field willing_to_relocate: expected true or false, got 'yes'",
    "postings.jsonl line 2, field requried_skills: unknown field; did you mean 'required_skills'?",
    "outcomes.csv line 3, field stage",
)


def test_check_files_reports_all_problems_across_files(tmp_path: Path) -> None:
    with pytest.raises(DataFilesInvalid) as e:
        check_files(_bad_files(tmp_path))
    assert e.value.total == len(EXPECTED)
    for expected, problem in zip(EXPECTED, e.value.problems, strict=True):
        assert problem.startswith(expected), (expected, problem)


def test_nothing_is_stored_when_any_file_is_invalid(encoder: TextEncoder, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", db_path=None, index_dir=None)
    with pytest.raises(DataFilesInvalid):
        ingest_files(settings, encoder, **_bad_files(tmp_path / "files"))
    assert not settings.resolved_db_path.exists()
    assert not ingest_state_path(settings).exists()


def test_problems_are_capped_then_counted(tmp_path: Path) -> None:
    path = tmp_path / "candidates.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"c{i}", "cv_text": ""}) + "\n" for i in range(70)),
        encoding="utf-8",
    )
    problems = FileProblems(cap=50)
    assert read_candidates(path, problems) == []
    error = problems.error()
    assert error.total == 70 and len(error.problems) == 50
    assert "and 20 more" in str(error)


def test_without_a_sink_the_first_error_raises(tmp_path: Path) -> None:
    path = tmp_path / "candidates.csv"
    path.write_text(CANDIDATES, encoding="utf-8")
    with pytest.raises(InvalidInput, match="line 3, field years_experience") as e:
        read_candidates(path)
    assert not isinstance(e.value, DataFilesInvalid)


def test_unreadable_file_is_one_problem_and_the_others_are_still_checked(tmp_path: Path) -> None:
    files = _bad_files(tmp_path)
    files["postings"].write_text('{"id": "p1",\n', encoding="utf-8")
    with pytest.raises(DataFilesInvalid) as e:
        check_files(files)
    assert any("postings.jsonl line 1: not valid JSON" in p for p in e.value.problems)
    assert any(p.startswith("outcomes.csv line 3") for p in e.value.problems)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    ingest_command.register(app)
    return app


def test_cli_check_lists_problems_and_stores_nothing(tmp_path: Path) -> None:
    files = _bad_files(tmp_path / "files")
    env = {"RANKER_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "300"}
    args = ["ingest", "--check"] + [a for k, p in files.items() for a in (f"--{k}", str(p))]
    result = runner.invoke(_app(), args, env=env)
    assert result.exit_code == 1
    for expected in EXPECTED:
        assert expected in result.output, expected
    assert not (tmp_path / "data").exists()


def test_cli_check_on_valid_files_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "candidates.csv"
    path.write_text(CANDIDATES.splitlines(keepends=True)[0] + CANDIDATES.splitlines()[1] + "\n")
    result = runner.invoke(
        _app(),
        ["ingest", "--check", "--candidates", str(path)],
        env={"RANKER_DATA_DIR": str(tmp_path / "data")},
    )
    assert result.exit_code == 0, result.output
    assert "files are valid: 1 candidates" in result.output
    assert not (tmp_path / "data").exists()


def test_log_progress_logs_every_few_seconds_with_rate_and_time_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    progress = LogProgress(every=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="ranker.progress"):
        progress.stage("encoding candidates")
        for done in range(0, 101, 10):  # one update a second, 100 items at 10/s
            now[0] = done / 10
            progress.update(done, 100)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "encoding candidates ..."
    # At 5 s and 10 s (the end), not on every update.
    assert lines[1:] == [
        "encoding candidates: 50/100 (50%), 10.0/s, about 5.0 s left",
        "encoding candidates: 100/100 (100%), 10.0/s, done in 10.0 s",
    ]
