"""`ranker query` as a recruiter uses it: the posting header, candidates' titles and places,
--json (validated against docs/query.schema.json), --csv, --no-explain, inline posting files,
`--why A B`, and the README's example run verbatim."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from ranker.commands import query
from tests.fixtures.server import ServerHandle

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "query.schema.json").read_text(encoding="utf-8"))
runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    query.register(app)
    app.command("noop", hidden=True)(lambda: None)  # a group, so "query" is the command name
    return app


def _run(s: ServerHandle, *args: str) -> str:
    result = runner.invoke(_app(), ["query", *args, "--address", s.address], env={"COLUMNS": "220"})
    assert result.exit_code == 0, result.output
    return result.output


def test_json_has_the_documented_shape(recruiter_served: ServerHandle) -> None:
    view = json.loads(_run(recruiter_served, "--posting-id", "R-MADRID", "--k", "5", "--json"))
    jsonschema.validate(view, SCHEMA)
    assert view["posting"] == {
        "id": "R-MADRID",
        "title": "Senior Financial Analyst",
        "location": "Madrid",
        "remote": False,
        "required_skills": ["excel", "budgeting", "variance analysis"],
        "nice_skills": ["sql"],
        "min_years": 5.0,
    }
    assert len(view["results"]) == 5 and view["notice"].startswith("This ranking is a decision aid")
    by_id = {r["candidate_id"]: r for r in view["results"]}
    if "R-C-LOCAL" in by_id:
        assert by_id["R-C-LOCAL"]["title"] == "Financial Analyst"
        assert by_id["R-C-LOCAL"]["location"] == "Madrid"
    assert all(r["title"] and r["location"] and r["reasons"] for r in view["results"])


def test_no_explain_leaves_no_empty_column(recruiter_served: ServerHandle) -> None:
    view = json.loads(
        _run(recruiter_served, "--posting-id", "R-MADRID", "--k", "3", "--json", "--no-explain")
    )
    jsonschema.validate(view, SCHEMA)
    assert all("reasons" not in r for r in view["results"])
    table = _run(recruiter_served, "--posting-id", "R-MADRID", "--k", "3", "--no-explain")
    header = next(line for line in table.splitlines() if "candidate" in line and "#" in line)
    assert "reasons" not in header and header.rstrip().endswith("location ┃")
    rows = list(
        csv.reader(
            io.StringIO(
                _run(
                    recruiter_served,
                    "--posting-id",
                    "R-MADRID",
                    "--k",
                    "3",
                    "--csv",
                    "--no-explain",
                )
            )
        )
    )
    assert rows[0] == ["posting_id", "rank", "candidate_id", "title", "location", "score"]


def test_table_has_the_posting_header_and_candidate_rows(recruiter_served: ServerHandle) -> None:
    out = _run(recruiter_served, "--posting-id", "R-MADRID", "--k", "5")
    for words in (
        "Senior Financial Analyst (R-MADRID)",
        "Where: Madrid",
        "Required skills: excel, budgeting, variance analysis",
        "Nice-to-have skills: sql",
        "Minimum experience: 5 years",
        "model v0001",
        "decision aid",
    ):
        assert words in out, words
    assert re.search(r"request [0-9a-f]{32}", out)


def test_csv_one_row_per_candidate(recruiter_served: ServerHandle) -> None:
    out = _run(recruiter_served, "--posting-id", "R-MADRID", "--k", "4", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4 and [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert all(r["posting_id"] == "R-MADRID" and r["reasons"] for r in rows)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv"])
def test_an_inline_posting_file_keeps_its_id(
    recruiter_served: ServerHandle, tmp_path: Path, suffix: str
) -> None:
    record = {"id": "ATS-9", "title": "Financial Analyst", "description": "Budgets and reports."}
    path = tmp_path / f"posting{suffix}"
    if suffix == ".csv":
        path.write_text("id,title,description\nATS-9,Financial Analyst,Budgets and reports.\n")
    else:
        path.write_text(json.dumps(record) + "\n")
    view = json.loads(_run(recruiter_served, "--posting-file", str(path), "--k", "2", "--json"))
    jsonschema.validate(view, SCHEMA)
    assert view["posting"]["id"] == "ATS-9" and view["posting"]["title"] == "Financial Analyst"


def test_why_a_above_b(recruiter_served: ServerHandle) -> None:
    out = _run(recruiter_served, "--posting-id", "R-MADRID", "--why", "R-C-MOVER-1", "R-C-LOCAL")
    assert "R-C-MOVER-1" in out and "R-C-LOCAL" in out and "What separates them" in out
    assert "rank " in out
    view = json.loads(
        _run(recruiter_served, "--posting-id", "R-MADRID", "--why", "R-C-LOCAL", "C0002", "--json")
    )
    assert view["a"]["candidate_id"] == "R-C-LOCAL" and view["b"]["candidate_id"] == "C0002"
    assert view["summary"] and view["posting_id"] == "R-MADRID"


def test_the_readme_example_works_verbatim(
    recruiter_served: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- readme-example: posting.json -->\n```sh\n", 1)[1].split("```", 1)[0]
    heredoc = re.match(r"cat > (\S+) <<'EOF'\n(.*?)\nEOF\n(.*)", block, re.S)
    assert heredoc, block
    name, content, command = heredoc.groups()
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(content + "\n", encoding="utf-8")
    argv = shlex.split(command.strip())
    assert argv[:2] == ["ranker", "query"]
    host, port = recruiter_served.address.rsplit(":", 1)
    result = runner.invoke(
        _app(), argv[1:], env={"COLUMNS": "220", "RANKER_HOST": host, "RANKER_PORT": port}
    )
    assert result.exit_code == 0, result.output
    assert "Senior Data Engineer (REQ-2031)" in result.output
    assert "Required skills: python, sql, airflow" in result.output
    assert "inline-" not in result.output and "unsupported" not in result.output


def test_unknown_posting_says_what_to_do(recruiter_served: ServerHandle) -> None:
    result = runner.invoke(
        _app(), ["query", "--posting-id", "P-unknown", "--address", recruiter_served.address]
    )
    assert result.exit_code == 1 and "NOT_FOUND" in result.output
