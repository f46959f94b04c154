"""The model lifecycle against a real server: fallback, refused pointers, confirmed promotion,
shadow scoring of a challenger."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ranker.commands import models
from ranker.domain import Candidate, Posting
from ranker.features import FEATURE_NAMES
from ranker.model_slot import ServedModel
from ranker.prepared import prepare_candidate, prepare_posting
from ranker.registry import MODEL_FILE, ModelRegistry
from ranker.shadow import ShadowScorer, shadow_job
from ranker.store import SqliteStore
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle, seed
from tests.ranker.test_grpc_lifecycle import (
    SERVING,
    StartServer,
    _copy_version,
    _point_at,
    _rank_all,
    wait_for,
)
from training import commands
from training.demo import DemoData
from training.shadow_comparison import compare_shadow

runner = CliRunner()


def _cli(*args: str) -> Any:
    app = typer.Typer()
    commands.register(app)
    models.register(app)
    return runner.invoke(app, list(args), terminal_width=250)


def _info(h: ServerHandle) -> pb.GetModelInfoResponse:
    return h.stub.GetModelInfo(pb.GetModelInfoRequest())


def test_the_fallback_ranks_before_any_model_and_the_first_promoted_version_replaces_it(
    start_server: StartServer,
    trained_registry: ModelRegistry,
    tmp_path: Path,
    serving_demo: DemoData,
) -> None:
    empty = tmp_path / "registry"
    h = start_server(registry_dir=empty, fallback="hand_rule")
    assert h.health_status() == SERVING
    info = _info(h)
    assert info.version == "fallback-hand-rule" and info.fallback
    assert tuple(info.feature_names) == FEATURE_NAMES
    posting = serving_demo.postings[0]
    seed(h, serving_demo.candidates[:8], [posting])
    r = h.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=posting.id, top_k=8, explain=True)
    )
    assert r.model_version == "fallback-hand-rule" and len(r.results) == 8
    scores = [c.score for c in r.results]
    assert scores == sorted(scores, reverse=True)
    for c in r.results:
        e = c.explanation
        assert any("required skills" in s or "no required skills" in s for s in e.reasons)
        assert any("fallback rule of thumb" in s for s in e.reasons)
        assert set(e.required_matched) | set(e.required_missing) == set(posting.required_skills)
        # What moved the score is the rule's own terms (measured against the posting's average
        # candidate, as for a trained model), never a feature the rule does not read.
        assert {f.name for f in e.top_features} <= {
            "required_coverage",
            "location_fit",
            "under_min_years",
            "dense_cosine",
        }
    h.pipeline._decisions.flush()
    assert h.pipeline.store.get_decision(r.request_id).model_version == "fallback-hand-rule"

    version = trained_registry.current_version()
    assert version is not None
    shutil.copytree(trained_registry.root / version, empty / version)
    ModelRegistry(empty).promote(version, actor="tests", reason="first version")
    wait_for(lambda: _info(h).version == version, "the promoted version to replace the fallback")
    assert not _info(h).fallback and h.health_status() == SERVING
    assert _rank_all(h, posting.id).model_version == version


def test_models_list_shows_a_refused_pointer_as_not_served(
    start_server: StartServer,
    registry_path: Path,
    serving_demo: DemoData,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = start_server(registry_dir=registry_path)
    seed(h, serving_demo.candidates[:5], serving_demo.postings[:1])
    old = ModelRegistry(registry_path).current_version()
    assert old is not None
    broken = _copy_version(registry_path, old)
    (registry_path / broken / MODEL_FILE).write_bytes(b"not an onnx model")
    _point_at(registry_path, broken)
    wait_for(lambda: _info(h).refused_version == broken, "the broken version to be refused")
    info = _info(h)
    assert info.version == old and "is missing or changed since version" in info.refused_error

    monkeypatch.setenv("RANKER_REGISTRY_DIR", str(registry_path))
    result = _cli("models", "list", "--server", h.address)
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"in service: {broken}" in text  # what the registry says
    assert f"serves {old}" in text  # what the service does
    assert f"differs from the registry's {broken}" in text
    assert f"it refused {broken}" in text and "is missing or changed since version" in text


def test_promote_waits_for_the_service_and_records_who_and_why(
    start_server: StartServer,
    registry_path: Path,
    serving_demo: DemoData,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = start_server(registry_dir=registry_path)
    seed(h, serving_demo.candidates[:5], serving_demo.postings[:1])
    registry = ModelRegistry(registry_path)
    old = registry.current_version()
    assert old is not None
    new = _copy_version(registry_path, old)
    monkeypatch.setenv("RANKER_REGISTRY_DIR", str(registry_path))
    monkeypatch.setenv("RANKER_ACTOR", "ops-bot")

    # The copied gates were measured against the fallback, not against what serves now.
    stale = _cli("models", "promote", new, "--server", h.address)
    assert stale.exit_code == 1 and "not promoted" in stale.output
    assert "ranker gates" in stale.output and registry.current_version() == old
    # Measured against the version in service, they failed (the fixture's two postings):
    # refused, with the table, and the pointer did not move.
    gates = registry.gates(new)
    assert gates is not None
    registry.record_gates(new, {**gates, "version": new, "in_service": old})
    refused = _cli("models", "promote", new, "--server", h.address)
    assert refused.exit_code == 1 and "not promoted" in refused.output
    assert "held_out_postings" in refused.output and "short by 28" in refused.output
    assert "FAIL" in refused.output and registry.current_version() == old
    assert "--force" in _cli("models", "promote", new, "--force").output  # needs --reason

    done = _cli("models", "promote", new, "--force", "--reason", "hotfix", "--server", h.address)
    assert done.exit_code == 0, done.output
    assert f"confirmed: the service at {h.address} serves {new}" in done.output
    assert _info(h).version == new
    event = registry.events()[-1]
    assert (event["actor"], event["reason"], event["forced"]) == ("ops-bot", "hotfix", True)

    back = _cli("models", "rollback", "--actor", "ana", "--server", h.address)
    assert back.exit_code == 0 and f"serves {old}" in back.output
    assert registry.events()[-1]["actor"] == "ana"
    # No service at the address: the registry moved, and the command says it could not confirm.
    nobody = _cli("models", "promote", new, "--force", "--reason", "x", "--server", "127.0.0.1:1")
    assert nobody.exit_code == 0 and "no service answers at 127.0.0.1:1" in nobody.output


def test_a_challenger_is_scored_in_shadow_and_compare_reports_agreement(
    start_server: StartServer,
    registry_path: Path,
    serving_demo: DemoData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "shadow"
    h = start_server(data_dir=data, registry_dir=registry_path)
    seed(h, serving_demo.candidates, serving_demo.postings, serving_demo.outcomes)
    registry = ModelRegistry(registry_path)
    champion = registry.current_version()
    assert champion is not None
    challenger = _copy_version(registry_path, champion)  # the same model: known agreement
    registry.set_alias("challenger", challenger, actor="ana", reason="shadow trial")
    wait_for(lambda: _info(h).challenger_version == challenger, "the challenger to load")

    served = []
    for p in serving_demo.postings:
        r = h.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=p.id, top_k=10))
        assert r.model_version == champion
        served.append(r)
    wait_for(lambda: _info(h).shadow_scored >= len(served), "the shadow rankings")
    logged = {s.request_id: s for s in h.pipeline.store.shadow_rankings(challenger)}
    for r in served:
        s = logged[r.request_id]
        assert (s.champion_version, s.challenger_version) == (champion, challenger)
        assert list(s.champion_ids[:10]) == [c.candidate_id for c in r.results]
        assert s.posting_id == r.posting_id and s.retrieved == r.retrieved
    (pair,) = compare_shadow(list(logged.values()), serving_demo.outcomes)
    assert pair.agreement["overlap"].mean == 1.0
    assert pair.agreement["kendall_tau"].mean == pytest.approx(1.0)
    assert pair.agreement["spearman"].mean == pytest.approx(1.0)
    assert pair.labelled_postings == len(serving_demo.postings)
    assert pair.ndcg["challenger - champion"].mean == 0.0

    monkeypatch.setenv("RANKER_DATA_DIR", str(data))
    monkeypatch.setenv("RANKER_REGISTRY_DIR", str(registry_path))
    result = _cli("models", "compare")
    assert result.exit_code == 0, result.output
    assert f"champion {champion} vs challenger {challenger}" in result.output
    assert "top-10 overlap" in result.output and "1.000 [1.000, 1.000]" in result.output
    assert "NDCG@10 challenger - champion" in result.output
    # Promoting the challenger ends the shadow: it is the champion now.
    registry.promote(challenger, actor="ana", reason="won")
    wait_for(lambda: _info(h).version == challenger, "the challenger's promotion")
    assert not _info(h).challenger_version


class _SlowBuilder:
    """A feature builder that waits for the test: keeps the shadow thread busy."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    def build(self, posting: object, cands: list[object], **_: object) -> np.ndarray:
        self.gate.wait(timeout=60)
        return np.zeros((len(cands), len(FEATURE_NAMES)), dtype=np.float32)


class _Bundle:
    def __init__(self, gate: threading.Event) -> None:
        self.version = "v0099"
        self.feature_names = FEATURE_NAMES
        self.card: dict[str, object] = {}
        self.builder = _SlowBuilder(gate)
        self.scorer = self

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x), dtype=np.float32)


def test_shadow_work_is_dropped_not_queued_when_the_thread_is_busy(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", dim=3)
    gate = threading.Event()
    scorer = ShadowScorer(store, maxsize=1, depth=10)
    try:
        v = np.array([1.0, 0.0, 0.0], dtype=np.float32)
        cand = prepare_candidate(
            Candidate(id="c1", cv_text="x"),
            v,
            v[None, :],
        )
        posting = prepare_posting(
            Posting(id="p1", title="t", description="d"),
            v,
        )
        challenger = ServedModel(_Bundle(gate), explainer=None, loaded_at=datetime.now(UTC))  # type: ignore[arg-type]

        def job(i: int) -> Any:
            return shadow_job(
                request_id=f"r{i}",
                posting=posting,
                inline=False,
                cands=[cand],
                fids=np.array([1]),
                sims=np.array([1.0]),
                champion_version="v0001",
                champion_ranked=np.array([0]),
                top_k=1,
                challenger=challenger,
            )

        assert scorer.offer(job(0))
        wait_for(lambda: scorer._queue.qsize() == 0, "the thread to take the first job")
        assert scorer.offer(job(1))  # waits in the queue (size 1)
        assert not scorer.offer(job(2))  # full: dropped at once, never blocking the caller
        assert scorer.dropped == 1
        gate.set()
        scorer.flush()
        assert scorer.scored == 2
        assert [s.request_id for s in store.shadow_rankings()] == ["r0", "r1"]
    finally:
        gate.set()
        scorer.close()
        store.close()
