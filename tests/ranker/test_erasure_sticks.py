"""Erasure that sticks: erased ids refused by every write path until a logged re-consent, no
erased bytes left in the WAL with a concurrent reader, exports rewritten, who erased recorded."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import typer
from typer.testing import CliRunner

from ranker.commands import tokens as tokens_commands
from ranker.config import Settings
from ranker.domain import Candidate
from ranker.encoding import TextEncoder
from ranker.ingest import ingest_files
from ranker.pipeline import RankingPipeline
from ranker.store import SqliteStore
from ranker.transport.convert import candidate_to_pb
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle, outcome_to_pb, seed, serving_settings
from training.demo import DemoData, write_demo

StartServer = Callable[..., ServerHandle]

MARKER = "Quetzalcoatl-7781-zebra"
"""A phrase only the erased CV holds: searched for in every file of the store."""


def _small_demo(demo: DemoData, n: int = 12) -> DemoData:
    cands = demo.candidates[:n]
    ids = {c.id for c in cands}
    return DemoData(
        candidates=cands,
        postings=demo.postings[:2],
        outcomes=[
            o
            for o in demo.outcomes
            if o.candidate_id in ids and o.posting_id in {p.id for p in demo.postings[:2]}
        ],
        protected={cid: a for cid, a in demo.protected.items() if cid in ids},
    )


def test_reingest_after_erasure_skips_the_id_its_outcomes_and_attributes_until_reconsent(
    encoder: TextEncoder, tmp_path: Path, serving_demo: DemoData
) -> None:
    demo = _small_demo(serving_demo)
    files = tmp_path / "files"
    write_demo(demo, files)
    settings = Settings(data_dir=tmp_path / "data", db_path=None, index_dir=None)
    kw = {
        "candidates": files / "candidates.jsonl",
        "outcomes": files / "outcomes.jsonl",
        "protected": files / "protected.jsonl",
    }
    ingest_files(settings, encoder, **kw)  # type: ignore[arg-type]
    victim = next(
        c.id for c in demo.candidates if any(o.candidate_id == c.id for o in demo.outcomes)
    )
    store = SqliteStore(settings.resolved_db_path)
    try:
        assert store.delete_candidates([victim], actor="token:privacy").erased == (victim,)
    finally:
        store.close()
    again = ingest_files(settings, encoder, **kw)  # type: ignore[arg-type]
    assert again.erased == (victim,)
    assert again.erased_outcomes == sum(o.candidate_id == victim for o in demo.outcomes) > 0
    assert again.erased_protected == len(demo.protected.get(victim, {}))
    store = SqliteStore(settings.resolved_db_path)
    try:
        assert store.get_candidates([victim]) == []
        assert all(o.candidate_id != victim for o in store.list_outcomes())
        assert victim not in store.protected_attributes(next(iter(demo.protected[victim])))
    finally:
        store.close()
    # The re-consent command lifts it (logged with the reason), and ingest stores it again.
    app = typer.Typer()
    tokens_commands.register(app)
    env = {"RANKER_DATA_DIR": str(settings.data_dir)}
    runner = CliRunner()
    no_reason = runner.invoke(app, ["reconsent", victim, "--reason", " "], env=env)
    assert no_reason.exit_code == 1 and "reason" in no_reason.output
    done = runner.invoke(app, ["reconsent", victim, "--reason", "new application #9"], env=env)
    assert done.exit_code == 0, done.output
    assert runner.invoke(app, ["reconsent", victim, "--reason", "x"], env=env).exit_code == 1
    back = ingest_files(settings, encoder, **kw)  # type: ignore[arg-type]
    assert back.erased == ()
    store = SqliteStore(settings.resolved_db_path)
    try:
        assert [r.candidate.id for r in store.get_candidates([victim])] == [victim]
        actions = store.admin_actions()
        assert [a["action"] for a in actions] == ["erase", "reconsent"]
        assert actions[0]["actor"] == "token:privacy"
        assert actions[1]["detail"]["reason"] == "new application #9"  # type: ignore[index]
        assert victim not in json.dumps(actions)  # the digest, never the id
    finally:
        store.close()


def test_upsert_and_outcomes_of_an_erased_id_are_refused_per_item(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData
) -> None:
    h = start_server(registry_dir=registry_path)
    cands = serving_demo.candidates[:3]
    seed(h, cands, serving_demo.postings[:1])
    victim = cands[0]
    h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[victim.id]))
    r = h.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(candidates=[candidate_to_pb(c) for c in cands[:2]])
    )
    codes = [grpc.StatusCode.FAILED_PRECONDITION.value[0], 0]
    assert [i.code for i in r.items] == codes
    assert "ranker reconsent" in r.items[0].message
    outcome = next(o for o in serving_demo.outcomes if o.candidate_id == victim.id)
    outcome = outcome.__class__(serving_demo.postings[0].id, victim.id, outcome.stage, outcome.at)
    ro = h.stub.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=[outcome_to_pb(outcome)]))
    assert ro.items[0].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert ro.recorded == 0
    assert h.pipeline.store.get_candidates([victim.id]) == []


def _files_holding(db: Path, text: str) -> list[str]:
    needle = text.encode()
    return [
        p.name
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if p.exists() and needle in p.read_bytes()
    ]


def test_no_erased_bytes_remain_in_any_file_after_a_concurrent_reader_lets_go(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path
) -> None:
    settings = serving_settings(tmp_path / "data", registry_path, erasure_checkpoint_seconds=0.2)
    p = RankingPipeline.open(settings, encoder=encoder)
    db = settings.resolved_db_path
    try:
        victim = Candidate(id="C-secret", cv_text=f"Translator. {MARKER}. Fluent in Nahuatl.")
        other = Candidate(id="C-other", cv_text="Welder with pipe experience.")
        p.upsert_candidates([victim, other])
        assert _files_holding(db, MARKER)  # the test can see the CV where it sits
        reader = sqlite3.connect(db, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == 2
        r = p.delete_candidates([victim.id])
        assert r.receipt is not None and r.receipt.erased == (victim.id,)
        # The reader holds old pages: the checkpoint could not finish, and that is reported.
        assert p.store.residue_pending
        assert p.health()["erasure-checkpoint"] is False
        assert _files_holding(db, MARKER)
        reader.execute("COMMIT")
        reader.close()
        p.upkeep()  # the service's upkeep retries the checkpoint
        assert not p.store.residue_pending
        assert p.health()["erasure-checkpoint"] is True
        assert _files_holding(db, MARKER) == []
        assert [c.id for c in [p.get_candidate("C-other")]] == ["C-other"]
    finally:
        p.close()
    assert _files_holding(db, MARKER) == []


def test_an_erasure_rewrites_the_export_files_and_reports_others_that_hold_the_id(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path, serving_demo: DemoData
) -> None:
    demo = _small_demo(serving_demo)
    settings = serving_settings(tmp_path / "data", registry_path)
    exports = settings.resolved_demo_dir
    write_demo(demo, exports)
    victim = next(
        c.id for c in demo.candidates if any(o.candidate_id == c.id for o in demo.outcomes)
    )
    (exports / "notes.jsonl").write_text(json.dumps({"about": victim}) + "\n")
    before = {f.name: f.read_text() for f in exports.iterdir()}
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        p.upsert_candidates(demo.candidates)
        p.delete_candidates([victim])
    finally:
        p.close()
    for name in ("candidates.jsonl", "outcomes.jsonl", "protected.jsonl"):
        text = (exports / name).read_text()
        assert f'"{victim}"' not in text, name
        kept = [json.loads(line) for line in text.splitlines()]
        old = [json.loads(line) for line in before[name].splitlines()]
        key = "id" if name == "candidates.jsonl" else "candidate_id"
        assert kept == [row for row in old if row[key] != victim]
    assert (exports / "postings.jsonl").read_text() == before["postings.jsonl"]
    # A file of unknown layout is not rewritten; it is reported (logged) instead.
    assert (exports / "notes.jsonl").read_text() == before["notes.jsonl"]


def test_an_unknown_export_still_holding_the_id_is_reported_in_the_metrics(
    start_server: StartServer, registry_path: Path
) -> None:
    h = start_server(registry_dir=registry_path)
    exports = h.settings.resolved_demo_dir
    exports.mkdir(parents=True, exist_ok=True)
    (exports / "notes.csv").write_text("about\nC-held\n")
    seed(h, [Candidate(id="C-held", cv_text="Gardener.")])
    h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=["C-held"]))
    value = h.server.metrics.registry.get_sample_value("ranker_erasure_exports_holding")
    assert value == 1
