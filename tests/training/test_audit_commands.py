"""`ranker audit` end to end on a real store in a temporary data folder."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ranker.domain import Candidate, Outcome, Stage
from ranker.rows import CandidateRow, Decision
from ranker.store import SqliteStore
from training import commands

runner = CliRunner()
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _app() -> typer.Typer:
    app = typer.Typer()
    commands.register(app)
    return app


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """40 postings x 10 applicants; women are screened half as often as men."""
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path))
    store = SqliteStore(tmp_path / "ranker.db", dim=4)
    outcomes, protected = [], []
    rng = np.random.default_rng(0)
    for p in range(40):
        for j in range(10):
            cid = f"c{p}_{j}"
            female = j % 2 == 0
            protected += [(cid, "sex", "female" if female else "male")]
            protected += [(cid, "race_ethnicity", ["black", "white"][j % 4 // 2])]
            at = T0 + timedelta(days=p)
            outcomes.append(Outcome(f"P{p}", cid, Stage.APPLIED, at))
            if rng.random() < (0.3 if female else 0.6):
                outcomes.append(Outcome(f"P{p}", cid, Stage.SCREENED, at + timedelta(days=1)))
    store.record_outcomes(outcomes)
    store.upsert_protected(protected)
    store.upsert_candidates(
        [CandidateRow(Candidate(f"c0_{j}", "cv"), np.ones(4), np.ones((1, 4))) for j in range(10)]
    )
    store.log_decisions(
        [
            Decision(
                request_id=f"r{n}",
                at=T0 + timedelta(days=n),
                model_version="v0001",
                posting_id=f"P{n}",
                posting_hash="h",
                top_k=2,
                feature_names=("f",),
                candidate_ids=("c0_1", "c0_3"),
                scores=np.array([2.0, 1.0], dtype=np.float32),
                features=np.zeros((2, 1), dtype=np.float32),
                params={},
            )
            for n in range(6)
        ]
    )
    store.close()
    return tmp_path


def test_historical_audit_flags_the_screening_bias(data_dir: Path) -> None:
    out_json, out_md = data_dir / "audit.json", data_dir / "audit.md"
    result = runner.invoke(
        _app(),
        ["audit", "--boot", "200", "--json", str(out_json), "--markdown", str(out_md)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "# Bias audit: historical outcomes" in result.output
    assert "applied → screened" in result.output
    data = json.loads(out_json.read_text())
    flag = next(f for f in data["flags"] if (f["dimension"], f["category"]) == ("sex", "female"))
    assert flag["metric"] == "screened" and flag["significant"]
    assert out_md.read_text() == result.output
    strict = runner.invoke(_app(), ["audit", "--boot", "200", "--strict"])
    assert strict.exit_code == 2


def test_served_audit_reads_the_decision_log(data_dir: Path) -> None:
    result = runner.invoke(
        _app(),
        [
            "audit",
            "--frame",
            "served",
            "--k",
            "2",
            "--boot",
            "50",
            "--since",
            "2025-03-02",
            "--json",
            str(data_dir / "served.json"),
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((data_dir / "served.json").read_text())
    assert data["meta"]["period"] == ["2025-03-02", "now"]
    assert data["meta"]["model_version"] == "v0001"
    assert data["sample"] == {"rankings": 5, "rows": 50, "candidates": 10}
    assert "Scoring rate unavailable" in result.output
    sex = next(d for d in data["dimensions"] if d["name"] == "sex")
    rates = {c["name"]: c["rates"]["selection"] for c in sex["categories"]}
    assert rates["male"]["rate"] == 0.4 and rates["female"]["rate"] == 0.0


def test_model_frame_without_a_model_and_a_missing_store_say_what_to_do(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Frame (b) itself: tests/training/test_audit_model.py.
    result = runner.invoke(_app(), ["audit", "--frame", "model"], terminal_width=200)
    assert result.exit_code == 1 and "no model version in service" in result.output
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path_factory.mktemp("empty")))
    result = runner.invoke(_app(), ["audit"], terminal_width=200)
    assert result.exit_code == 1 and "ranker ingest" in result.output
