"""The live-service CLI (`ranker push / erase / candidate / postings / info / decision`) against
a real server on port 0."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import typer
from typer.testing import CliRunner

from ranker.commands import client
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


def _app() -> typer.Typer:
    app = typer.Typer()
    client.register(app)
    return app


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CANDIDATES = [
    {"id": "C-1", "cv_text": "Welder, ten years in shipyards; TIG and MIG.", "skills": ["welding"],
     "years_experience": 10, "location": "Leeds", "title": "Welder"},
    {"id": "C-2", "cv_text": "Data analyst: SQL, dashboards, Python.", "skills": ["sql", "python"],
     "years_experience": 4, "location": "York", "remote_ok": True, "title": "Analyst"},
    # Valid in the file, refused by the server: longer than its RANKER_MAX_TEXT_CHARS.
    {"id": "C-long", "cv_text": "Welder. " * 40, "title": "Welder"},
]  # fmt: skip
POSTINGS = [
    {"id": "P-1", "title": "Welder", "description": "Shipyard welding, TIG.",
     "required_skills": ["welding"], "location": "Leeds"},
]  # fmt: skip
OUTCOMES = [
    {"posting_id": "P-1", "candidate_id": "C-1", "stage": "interviewed",
     "at": "2025-01-02T10:00:00+00:00"},
    {"posting_id": "P-1", "candidate_id": "C-nobody", "stage": "applied",
     "at": "2025-01-02T10:00:00+00:00"},
]  # fmt: skip


def _push(h: ServerHandle, kind: str, path: Path, *extra: str) -> tuple[int, str]:
    result = runner.invoke(
        _app(), ["push", kind, str(path), "--address", h.address, *extra], env=WIDE
    )
    return result.exit_code, result.output


def test_push_reports_refused_items_with_their_file_line(
    start_server: Callable[..., ServerHandle], tmp_path: Path
) -> None:
    h = start_server(max_text_chars=200)
    code, out = _push(h, "candidates", _jsonl(tmp_path / "c.jsonl", CANDIDATES), "--batch", "2")
    assert code == 1, out  # one item refused
    assert "c.jsonl line 3 (C-long): INVALID_ARGUMENT" in out
    assert "2 of 3 candidates stored (2 new, 0 replaced); 1 refused" in out
    assert h.pipeline.store.count_candidates() == 2

    code, out = _push(h, "candidates", _jsonl(tmp_path / "c2.jsonl", CANDIDATES[:2]))
    assert code == 0, out
    assert "2 of 2 candidates stored (0 new, 2 replaced)" in out

    code, out = _push(h, "postings", _jsonl(tmp_path / "p.jsonl", POSTINGS))
    assert code == 0, out
    code, out = _push(h, "outcomes", _jsonl(tmp_path / "o.jsonl", OUTCOMES))
    assert code == 1
    assert "o.jsonl line 2 (P-1/C-nobody): NOT_FOUND" in out
    assert "1 of 2 outcome events accepted (1 new)" in out


def test_push_checks_the_whole_file_first_and_sends_nothing_when_invalid(
    start_server: Callable[..., ServerHandle], tmp_path: Path
) -> None:
    h = start_server()
    rows = [*CANDIDATES[:2], {"id": "C-3", "cv_text": "x", "years_experience": 300}]
    rows.append({"id": "C-4", "cv_txt": "typo"})
    code, out = _push(h, "candidates", _jsonl(tmp_path / "c.jsonl", rows))
    assert code == 1
    assert "c.jsonl line 3, field years_experience" in out
    assert "c.jsonl line 4, field cv_txt: unknown field; did you mean 'cv_text'?" in out
    assert "nothing was sent" in out
    assert h.pipeline.store.count_candidates() == 0


def test_read_back_info_erase_and_decision(
    start_server: Callable[..., ServerHandle], tmp_path: Path
) -> None:
    h = start_server()
    _push(h, "candidates", _jsonl(tmp_path / "c.jsonl", CANDIDATES[:2]))
    _push(h, "postings", _jsonl(tmp_path / "p.jsonl", POSTINGS))
    app = _app()

    r = runner.invoke(app, ["candidate", "C-2", "--address", h.address], env=WIDE)
    assert r.exit_code == 0, r.output
    assert "title: Analyst" in r.output and "skills: sql, python" in r.output
    r = runner.invoke(app, ["candidate", "C-2", "--json", "--address", h.address], env=WIDE)
    assert json.loads(r.output)["location"] == "York"
    r = runner.invoke(app, ["candidate", "C-none", "--address", h.address], env=WIDE)
    assert r.exit_code == 1 and "NOT_FOUND" in r.output

    r = runner.invoke(app, ["postings", "--address", h.address], env=WIDE)
    assert r.exit_code == 0 and "P-1" in r.output and "1 postings" in r.output

    r = runner.invoke(app, ["info", "--address", h.address], env=WIDE)
    assert r.exit_code == 0, r.output
    served = h.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert served.version in r.output and "2 candidates searchable" in r.output

    ranking = h.stub.RankCandidates(pb.RankCandidatesRequest(posting_id="P-1", top_k=2))
    h.pipeline._decisions.flush()  # written off the request path
    env = {**WIDE, "RANKER_DB_PATH": str(h.settings.resolved_db_path)}
    r = runner.invoke(app, ["decision", ranking.request_id], env=env)
    assert r.exit_code == 0, r.output
    assert ranking.request_id in r.output and ranking.model_version in r.output
    assert "C-1" in r.output and "required skill" in r.output  # features in words
    r = runner.invoke(app, ["decision", "no-such-request"], env=env)
    assert r.exit_code == 1 and "no decision logged" in r.output

    r = runner.invoke(app, ["erase", "C-1", "--address", h.address], env=WIDE)
    assert r.exit_code == 0, r.output
    assert "erased 1 candidate(s)" in r.output and "receipt ids:" in r.output
    assert "1 candidates searchable now" in r.output
    r = runner.invoke(app, ["erase", "C-1", "--address", h.address], env=WIDE)
    assert r.exit_code == 1 and "C-1: NOT_FOUND" in r.output


def test_no_service_says_how_to_start_one(tmp_path: Path) -> None:
    r = runner.invoke(_app(), ["info", "--address", "127.0.0.1:1", "--timeout", "2"], env=WIDE)
    assert r.exit_code == 1
    assert "ranker serve" in r.output


def test_the_whole_cli_registers_without_loading_a_model_runtime() -> None:
    # `ranker health` and `ranker query` pay for every command module's imports at start:
    # LightGBM (with scipy, sklearn) and ONNX Runtime took ~3 s there before being made lazy.
    import subprocess
    import sys

    code = (
        "import sys; import ranker.cli as c; c._register_builtin(); c._register_plugins(); "
        "print(sorted({'lightgbm', 'onnxruntime', 'sklearn', 'scipy', 'faiss', 'torch'} "
        "& set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
