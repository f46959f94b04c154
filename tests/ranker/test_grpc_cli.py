"""The recruiter's view: `ranker query` and `ranker health` against a running service."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from ranker.commands import ingest, query, serving
from ranker.datalock import DataDirLock
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle
from training.demo import DemoData, write_demo

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    serving.register(app)
    ingest.register(app)
    query.register(app)
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
    assert "required skill" in result.output.lower()  # the header and the reasons column
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
    # The file gives the posting's id: it is kept, not replaced by "inline-<hash>".
    assert serving_demo.postings[0].id in result.output and "inline-" not in result.output


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


def test_query_and_health_stay_light(served: ServerHandle, serving_demo: DemoData) -> None:
    # The client commands must not load the pipeline (FAISS prints INFO lines on import,
    # LightGBM and the index cost start-up time a recruiter waits for).
    script = f"""
import sys
import typer
from ranker.commands import ingest, query, serving
app = typer.Typer()
serving.register(app)
query.register(app)
for argv in (["query", "--posting-id", {serving_demo.postings[0].id!r}, "--k", "2",
              "--address", {served.address!r}],
             ["health", "--address", {served.address!r}]):
    try:
        app(argv)
    except SystemExit as e:
        assert not e.code, e.code
heavy = sorted(m for m in ("faiss", "lightgbm", "ranker.pipeline", "ranker.index",
                           "ranker.transport.servicer", "ranker.transport.server",
                           "ranker.features") if m in sys.modules)
print("HEAVY", heavy)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert "faiss" not in done.stderr.lower()
    assert "SERVING" in done.stdout


def _cli_env(tmp_path: Path, registry: Path, encoder_dir: Path | None = None) -> dict[str, str]:
    return {
        "RANKER_DATA_DIR": str(tmp_path / "data"),
        **({"RANKER_ENCODER_DIR": str(encoder_dir)} if encoder_dir is not None else {}),
        "RANKER_REGISTRY_DIR": str(registry),
        "RANKER_HOST": "127.0.0.1",
    }


def test_serve_on_a_taken_port_says_so_and_exits_1(
    tmp_path: Path, registry_path: Path, encoder_dir: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(
            _app(),
            ["serve", "--port", str(port), "--metrics-port", "0"],
            env=_cli_env(tmp_path, registry_path, encoder_dir),
        )
    assert result.exit_code == 1, result.output
    assert f"port {port} in use; stop the other server or set RANKER_PORT" in result.output
    assert "Traceback" not in result.output


def test_ingest_refuses_a_data_folder_in_use(tmp_path: Path, registry_path: Path) -> None:
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text('{"id": "a", "cv_text": "Welder."}\n', encoding="utf-8")
    with DataDirLock(tmp_path / "data"):
        result = runner.invoke(
            _app(),
            ["ingest", "--candidates", str(candidates)],
            env=_cli_env(tmp_path, registry_path),
        )
    assert result.exit_code == 1, result.output
    assert f"another ranker process (pid {os.getpid()}) is using" in result.output
    assert not (tmp_path / "data" / "ranker.db").exists()


def test_contradictory_settings_stop_any_command_naming_the_variables(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RANKER_")}
    env |= {
        "RANKER_DATA_DIR": str(tmp_path),
        "RANKER_DEFAULT_TOP_K": "50",
        "RANKER_MAX_TOP_K": "20",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from ranker.cli import main; main()", "health"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "RANKER_DEFAULT_TOP_K (50) is larger than RANKER_MAX_TOP_K (20)" in done.stderr
    assert "Traceback" not in done.stderr
