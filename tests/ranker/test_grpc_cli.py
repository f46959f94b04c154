"""The recruiter's view: `ranker query` and `ranker health` against a running service."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from ranker.commands import serving
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle
from training.demo import DemoData, write_demo

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    serving.register(app)
    return app


def test_query_prints_the_top_k_with_reasons(served: ServerHandle, serving_demo: DemoData) -> None:
    posting = serving_demo.postings[0]
    expected = served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=posting.id, top_k=5))
    result = runner.invoke(
        _app(),
        ["query", "--posting-id", posting.id, "--k", "5", "--address", served.address],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for c in expected.results:
        assert any(c.candidate_id in line for line in lines), c.candidate_id
    assert "required skills" in result.output  # the reasons column
    assert expected.model_version in result.output


def test_query_with_a_posting_file(served: ServerHandle, serving_demo: DemoData, tmp_path) -> None:  # type: ignore[no-untyped-def]
    demo = DemoData(candidates=[], postings=serving_demo.postings[:1], outcomes=[], protected={})
    write_demo(demo, tmp_path)
    result = runner.invoke(
        _app(),
        [
            "query",
            "--posting-file",
            str(tmp_path / "postings.jsonl"),
            "--k",
            "3",
            "--no-explain",
            "--address",
            served.address,
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "inline-" in result.output


def test_query_reports_errors_plainly(served: ServerHandle) -> None:
    result = runner.invoke(
        _app(), ["query", "--posting-id", "P-unknown", "--address", served.address]
    )
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output and "UpsertPostings" in result.output


def test_health_command(served: ServerHandle) -> None:
    result = runner.invoke(_app(), ["health", "--address", served.address])
    assert result.exit_code == 0, result.output
    assert "SERVING" in result.output
