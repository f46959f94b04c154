"""The decision log is never silently lost: strict refuses rankings while it cannot be written,
spool keeps serving with a durable backlog replayed later; health and metrics say which."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from ranker.store import SqliteStore
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle, seed, wait_for
from training.demo import DemoData

StartServer = Callable[..., ServerHandle]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def fill_disk(store: SqliteStore) -> None:
    """Make the store's disk full as SQLite sees it: no page may be added (SQLITE_FULL)."""
    conn = store._conn  # the store's own connection: max_page_count is per connection
    with store._lock:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for _ in range(10_000):
                conn.execute("INSERT INTO filler VALUES (randomblob(3000))")


def free_disk(store: SqliteStore) -> None:
    with store._lock:
        store._conn.execute("PRAGMA max_page_count = 1073741823")


def _metric(h: ServerHandle, name: str, **labels: str) -> float:
    return float(h.server.metrics.registry.get_sample_value(name, labels) or 0.0)


def _rank_until_refused(h: ServerHandle, demo: DemoData) -> tuple[int, grpc.RpcError]:
    """Rank until one is refused (the log's last free page space runs out); (answered, error)."""
    for answered in range(500):
        try:
            _rank(h, demo)
        except grpc.RpcError as e:
            return answered, e
    raise AssertionError("no ranking was refused")


def _rank(h: ServerHandle, demo: DemoData) -> pb.RankCandidatesResponse:
    return h.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=demo.postings[0].id, top_k=5), timeout=60
    )


@pytest.mark.parametrize("sync", [False, True])
def test_strict_refuses_rankings_while_the_log_fails_and_recovers_after(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData, sync: bool
) -> None:
    # strict is the default; with sync each ranking also waits for its decision's write.
    h = start_server(registry_dir=registry_path, decision_log_sync=sync)
    seed(h, serving_demo.candidates[:20], serving_demo.postings[:1])
    logged = h.pipeline.store.count_decisions()
    _rank(h, serving_demo)
    h.pipeline._decisions.flush()
    assert h.pipeline.store.count_decisions() == logged + 1
    fill_disk(h.pipeline.store)
    answered, e = _rank_until_refused(h, serving_demo)
    assert e.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "decision log" in e.details()  # type: ignore[attr-defined]
    assert "RANKER_DECISION_LOG_POLICY" in e.details()  # type: ignore[attr-defined]
    wait_for(lambda: h.health_status() == NOT_SERVING, "health NOT_SERVING")
    assert h.health_status("decision-log") == NOT_SERVING
    assert _metric(h, "ranker_decision_log_failing") == 1
    # Disk full on a write reaches the caller as RESOURCE_EXHAUSTED with what to do.
    with pytest.raises(grpc.RpcError) as full:
        h.stub.UpsertCandidates(
            pb.UpsertCandidatesRequest(
                candidates=[
                    pb.Candidate(id=f"C-full-{i}", cv_text="Cook, kitchen work. " * 200)
                    for i in range(5)
                ]
            ),
            timeout=60,
        )
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "full" in full.value.details()  # type: ignore[attr-defined]
    free_disk(h.pipeline.store)
    wait_for(lambda: h.health_status() == SERVING, "health SERVING again")
    assert _metric(h, "ranker_decision_log_failing") == 0
    _rank(h, serving_demo)
    # Exactly the rankings that were answered are logged (those served just before the failure
    # was seen from the spool file), and the refused one is not.
    h.pipeline._decisions.flush()
    assert h.pipeline.store.count_decisions() == logged + 1 + answered + 1


def test_spool_keeps_serving_with_a_durable_backlog_replayed_later(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData
) -> None:
    h = start_server(registry_dir=registry_path, decision_log_policy="spool")
    seed(h, serving_demo.candidates[:20], serving_demo.postings[:1])
    store = h.pipeline.store
    logged = store.count_decisions()
    fill_disk(store)
    spool = h.settings.decision_spool_path
    served: list[pb.RankCandidatesResponse] = []
    # Every ranking is answered; once the log's free page space runs out they are spooled.
    while not spool.exists():
        served.append(_rank(h, serving_demo))
        h.pipeline._decisions.flush()
        assert len(served) < 500
    served += [_rank(h, serving_demo) for _ in range(2)]
    h.pipeline._decisions.flush()
    lines = spool.read_text().splitlines()
    assert len(lines) >= 3
    spooled = {line.split('"request_id":"')[1].split('"')[0] for line in lines}
    assert spooled <= {r.request_id for r in served}
    assert h.health_status() == SERVING  # still serving...
    wait_for(lambda: h.health_status("decision-log") == NOT_SERVING, "decision-log reported")
    assert _metric(h, "ranker_decision_log_backlog", where="spool") == len(lines)
    # An erasure needs the backlog in the store first (no copy may wait in the spool file).
    victim = served[-1].results[0].candidate_id
    with pytest.raises(grpc.RpcError) as e:
        h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[victim]), timeout=60)
    assert e.value.code() in (  # type: ignore[attr-defined]
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    free_disk(store)
    r = h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[victim]), timeout=60)
    assert r.receipt.candidates == 1
    assert not spool.exists()
    assert store.count_decisions() == logged + len(served)
    for resp in served:
        assert victim not in store.get_decision(resp.request_id).candidate_ids
    wait_for(lambda: h.health_status("decision-log") == SERVING, "decision-log healthy")
    assert _metric(h, "ranker_decision_log_backlog", where="spool") == 0


def test_a_decision_with_every_score_round_trips_through_the_spool_encoding() -> None:
    # The spool file holds served decisions while the store cannot take them: every field,
    # the retrieved set's scores included, must come back as it went in.
    import numpy as np

    from ranker.decisions import _decision_from_json, _decision_to_json
    from ranker.rows import Decision, ScoredCandidates

    d = Decision(
        request_id="r1",
        at=datetime.now(UTC),
        model_version="v0001",
        posting_id="P-1",
        posting_hash="h",
        top_k=1,
        feature_names=("a", "b"),
        candidate_ids=("C-1",),
        scores=np.asarray([0.5], dtype=np.float32),
        features=np.asarray([[1.0, 2.0]], dtype=np.float32),
        params={"retrieve_n": 2},
        scored=ScoredCandidates(
            faiss_ids=np.asarray([1, 2], dtype=np.int64),
            candidate_ids=("C-1", "C-2"),
            scores=np.asarray([0.5, 0.25], dtype=np.float32),
        ),
    )
    back = _decision_from_json(json.loads(json.dumps(_decision_to_json(d))))
    assert back.scored is not None and back.scored.candidate_ids == ("C-1", "C-2")
    np.testing.assert_array_equal(back.scored.scores, d.scored.scores)
    np.testing.assert_array_equal(back.features, d.features)
