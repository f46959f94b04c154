"""The training and model CLI commands, end to end on a real store in a temporary data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from ranker.commands import models
from ranker.registry import ModelRegistry
from ranker.store import SqliteStore
from tests.fixtures.training import EncodedDemo
from training import commands
from training.demo import DEMO_FILES

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    commands.register(app)
    models.register(app)
    return app


def _run(*args: str) -> str:
    result = runner.invoke(_app(), list(args), terminal_width=200)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def test_demo_data_writes_files_and_skips_when_present(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    text = _run("demo-data", "--out", str(out), "--candidates", "30", "--postings", "8")
    assert "wrote 30 candidates, 8 postings" in text
    assert all((out / name).is_file() for name in DEMO_FILES)
    assert "skipping" in _run("demo-data", "--out", str(out), "--if-missing")


def test_train_evaluate_and_manage_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_data: EncodedDemo
) -> None:
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    # Wide enough that no table cell wraps (a version name split over two lines would not match).
    monkeypatch.setattr(commands, "console", Console(width=250))
    monkeypatch.setattr(models, "console", Console(width=250))
    result = runner.invoke(_app(), ["train"])
    assert result.exit_code == 1 and "ranker ingest" in result.output

    store = SqliteStore(tmp_path / "ranker.db")
    store.upsert_candidates(demo_data.candidate_rows)
    store.upsert_postings(demo_data.posting_rows)
    store.record_outcomes(demo_data.data.outcomes)
    store.close()

    # 2 held-out postings: the promotion gates refuse it; it is registered, not promoted.
    text = _run("train", "--seed", "3")
    assert "registered v0001" in text and "not promoted" in text
    assert "held_out_postings" in text and "short by 28" in text and "FAIL" in text
    registry = ModelRegistry(tmp_path / "registry")
    assert registry.current_version() is None
    assert registry.gates("v0001") is not None
    failed = runner.invoke(_app(), ["train", "--seed", "3", "--force"])
    assert failed.exit_code == 1 and "--reason" in failed.output
    text = _run("train", "--seed", "3", "--force", "--reason", "demo", "--actor", "ana")
    assert "dense_cosine" in text and "promoted v0002" in text and "overriding the gates" in text
    assert registry.events()[-1]["actor"] == "ana" and registry.events()[-1]["forced"]
    assert "Applicant view" in text and "Pool view" in text and "hand_rule" in text
    assert "not relevant" in text and "paired differences" in text
    assert "trained on this data; skipping" in _run("train", "--if-missing")
    assert "registered v0003" in _run("train", "--no-promote", "--seed", "4")
    assert registry.current_version() == "v0002"
    # Gates of v0003 were measured against v0002 in service; one fails (two postings).
    v3_gates = registry.gates("v0003")
    assert v3_gates is not None and v3_gates["in_service"] == "v0002"
    vs = next(g for g in v3_gates["gates"] if g["gate"] == "vs_in_service")
    assert "v0002" in vs["required"]

    listing = _run("models", "list", "--no-server")
    assert "v0001" in listing and "v0003" in listing and "in service: v0002" in listing
    assert "champion" in listing and "forced" in listing and "ana" in listing
    refused = runner.invoke(_app(), ["models", "promote", "v0003", "--no-wait"])
    assert refused.exit_code == 1 and "not promoted" in refused.output
    promoted = _run("models", "promote", "v0003", "--force", "--reason", "r", "--no-wait")
    assert "in service: v0003" in promoted
    assert "v0003 (in service)" not in _run("evaluate")
    table = _run("evaluate", "v0002")
    assert "v0002" in table and "v0003 (in service)" in table and "bm25" in table
    assert "Pool view" in table and "v0002 - v0003 (in service)" in table
    assert "v0002 - retrieval" in table and "no significant difference" in table
    # Each evaluation is stored beside the version evaluated.
    (stored,) = registry.evaluations("v0002")
    assert stored["version"] == "v0002" and stored["compared_with"] == ["v0003"]
    for view in ("applicants", "pool"):
        rankers = set(stored["views"][view]["metrics"])
        assert {"v0002", "v0003 (in service)", "retrieval", "hand_rule", "dense_cosine"} <= rankers
        assert "v0002 - v0003 (in service)" in stored["views"][view]["differences"]
    assert stored["postings"] >= 1 and len(stored["data_sha256"]) == 64
    # `ranker gates` re-measures against what is in service now and stores the result.
    regated = runner.invoke(_app(), ["gates", "v0002"], terminal_width=200)
    assert regated.exit_code == 2 and "against v0003" in regated.output
    assert (registry.gates("v0002") or {})["in_service"] == "v0003"
    assert "in service v0002" in _run("models", "rollback", "--no-wait")
    assert "Model card: candidate ranker v0003" in _run("models", "show", "v0003")
    failed = runner.invoke(_app(), ["models", "promote", "v0009"])
    assert failed.exit_code == 1 and "v0009 is not in" in failed.output


def test_train_if_missing_registers_once_per_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_data: EncodedDemo
) -> None:
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    outcomes = demo_data.data.outcomes
    store = SqliteStore(tmp_path / "ranker.db")
    store.upsert_candidates(demo_data.candidate_rows)
    store.upsert_postings(demo_data.posting_rows)
    store.record_outcomes(outcomes[:-1])
    store.close()
    registry = ModelRegistry(tmp_path / "registry")

    force = ("--force", "--reason", "test data")
    assert "promoted v0001" in _run("train", "--if-missing", *force)
    # New data while v0001 is in service: one new version, then it waits for promotion.
    store = SqliteStore(tmp_path / "ranker.db")
    store.record_outcomes(outcomes[-1:])
    store.close()
    assert "registered v0002" in _run("train", "--if-missing")
    for _ in range(2):
        text = _run("train", "--if-missing")
        assert "v0002 was trained on this data and is waiting for promotion" in text
        assert "ranker models promote v0002" in text
    assert registry.versions() == ["v0001", "v0002"]
    assert registry.current_version() == "v0001"
    # Asked to promote, it promotes the matching version instead of training a third.
    refused = _run("train", "--if-missing", "--promote")
    assert "not promoted" in refused and registry.current_version() == "v0001"
    assert "promoted it (was v0001)" in _run("train", "--if-missing", "--promote", *force)
    assert registry.current_version() == "v0002" and registry.versions() == ["v0001", "v0002"]
    assert "in service was trained on this data; skipping" in _run("train", "--if-missing")
