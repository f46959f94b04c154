"""Replicas following one PostgreSQL store (`ranker/follower.py`): two real services in this
process on a real database (`tests/fixtures/postgres.py`), each with its own data folder."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from ranker.follower import ChangeFollower
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle, seed, wait_for
from training.demo import DemoData

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _ranked(handle: ServerHandle, posting: str, k: int = 50) -> list[str]:
    r = handle.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=posting, top_k=k))
    return [c.candidate_id for c in r.results]


def _holds(handle: ServerHandle, candidates: int, posting: str) -> None:
    """Wait until `handle` has applied that many candidates and the posting (through the feed)."""
    wait_for(
        lambda: (
            handle.pipeline.candidate_count == candidates
            and posting in {p.id for p in handle.pipeline.list_postings().postings}
        ),
        f"{candidates} candidates and posting {posting}",
    )


def _follower(handle: ServerHandle) -> ChangeFollower:
    follower = handle.pipeline._follower
    assert follower is not None, "a service on PostgreSQL follows the store"
    return follower


def _metric(handle: ServerHandle, name: str, labels: dict[str, str] | None = None) -> float:
    value = handle.server.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture
def replicas(
    postgres_url: str, start_server: Callable[..., ServerHandle], tmp_path: Path
) -> Callable[..., tuple[ServerHandle, ServerHandle]]:
    def start(**overrides: Any) -> tuple[ServerHandle, ServerHandle]:
        shared: dict[str, Any] = {
            "database_url": postgres_url,
            "receipt_key_file": tmp_path / "receipt-key",
            "replica_poll_seconds": 0.2,
            "replica_max_lag_seconds": 30.0,
        }
        shared.update(overrides)
        return start_server(tmp_path / "a", **shared), start_server(tmp_path / "b", **shared)

    return start


def test_writes_through_either_replica_are_served_by_the_other(
    replicas: Callable[..., tuple[ServerHandle, ServerHandle]], serving_demo: DemoData
) -> None:
    a, b = replicas()
    posting = serving_demo.postings[0].id
    seed(a, serving_demo.candidates[:15], serving_demo.postings[:1])
    # The posting and the candidates reach b through the feed, without a restart.
    _holds(b, 15, posting)
    assert sorted(_ranked(b, posting)) == sorted(c.id for c in serving_demo.candidates[:15])
    seed(b, serving_demo.candidates[15:20])
    wait_for(lambda: a.pipeline.candidate_count == 20, "a to apply b's candidates")
    # A changed record replaces the one held, as the store holds it.
    changed = serving_demo.candidates[3]
    reply = a.stub.GetCandidate(pb.GetCandidateRequest(id=changed.id))
    seed(b, [dataclasses.replace(changed, title="Chief Replica Officer")])
    wait_for(
        lambda: (
            a.stub.GetCandidate(pb.GetCandidateRequest(id=changed.id)).candidate.title
            == "Chief Replica Officer"
        ),
        "a to hold b's new version",
    )
    assert reply.candidate.title != "Chief Replica Officer"
    # Each side applied only the other's entries: its own were in memory already.
    assert _metric(a, "ranker_replica_applied_total", {"kind": "candidate"}) == 6
    assert _metric(b, "ranker_replica_applied_total", {"kind": "candidate"}) == 15
    assert _metric(b, "ranker_replica_applied_total", {"kind": "posting"}) == 1
    assert _metric(b, "ranker_replica_lag_seconds_count") >= 16
    wait_for(lambda: _follower(a).applied_seq == _follower(b).applied_seq, "both at the head")
    assert a.pipeline.health()["replication"] and b.health_status("replication") == SERVING


def test_an_erasure_through_one_is_never_served_by_the_other(
    replicas: Callable[..., tuple[ServerHandle, ServerHandle]], serving_demo: DemoData
) -> None:
    a, b = replicas()
    posting = serving_demo.postings[0].id
    seed(a, serving_demo.candidates[:20], serving_demo.postings[:1])
    _holds(b, 20, posting)
    # Erase through a, rank through b at once: whatever b's follower thread has done by then.
    for victim in _ranked(b, posting, 3):
        a.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[victim]))
        assert victim not in _ranked(b, posting)
    # Even with b's follower stopped (no notification, no poll), the ranking checks the feed's
    # newest erasure first and applies it before answering.
    _follower(b).close()
    for victim in _ranked(b, posting, 3):
        a.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[victim]))
        assert victim not in _ranked(b, posting)
        with pytest.raises(grpc.RpcError) as e:
            b.stub.GetCandidate(pb.GetCandidateRequest(id=victim))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert b.pipeline.candidate_count == 14


def test_a_replica_cut_off_from_the_database_stops_serving_and_recovers(
    replicas: Callable[..., tuple[ServerHandle, ServerHandle]],
    serving_demo: DemoData,
    postgres_url: str,
) -> None:
    a, b = replicas(replica_max_lag_seconds=2.0)
    posting = serving_demo.postings[0].id
    seed(a, serving_demo.candidates[:10], serving_demo.postings[:1])
    _holds(b, 10, posting)
    name = postgres_url.rsplit("/", 1)[1]
    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        # The database goes away for every service: no new connection, existing ones cut.
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        try:
            wait_for(lambda: b.health_status() == NOT_SERVING, "b to report NOT_SERVING")
            assert b.health_status("replication") == NOT_SERVING
            with pytest.raises(grpc.RpcError) as e:
                _ranked(b, posting)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _metric(b, "ranker_replica_database_up") == 0
        finally:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    wait_for(lambda: b.health_status() == SERVING, "b to serve again", timeout=40)
    assert len(_ranked(b, posting)) == 10
    # And it follows again: a write through a reaches it.
    seed(a, serving_demo.candidates[10:12])
    wait_for(lambda: b.pipeline.candidate_count == 12, "b to apply a's new candidates", 40)


def test_a_replica_behind_its_bound_reports_not_serving(
    replicas: Callable[..., tuple[ServerHandle, ServerHandle]], serving_demo: DemoData
) -> None:
    a, b = replicas(replica_max_lag_seconds=0.5, replica_poll_seconds=0.1)
    seed(a, serving_demo.candidates[:5], serving_demo.postings[:1])
    _follower(b).close()  # b stops following: it can no longer confirm it is fresh
    wait_for(lambda: b.health_status() == NOT_SERVING, "b to report NOT_SERVING")
    with pytest.raises(grpc.RpcError) as e:
        _ranked(b, serving_demo.postings[0].id)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "RANKER_REPLICA_MAX_LAG_SECONDS" in (e.value.details() or "")


def test_sqlite_has_no_follower(start_server: Callable[..., ServerHandle]) -> None:
    handle = start_server()
    assert handle.pipeline._follower is None
    assert handle.pipeline.health()["replication"] is True


def test_a_replica_that_missed_pruned_feed_entries_stops_serving_for_good(
    replicas: Callable[..., tuple[ServerHandle, ServerHandle]], serving_demo: DemoData
) -> None:
    a, b = replicas()
    posting = serving_demo.postings[0].id
    seed(a, serving_demo.candidates[:5], serving_demo.postings[:1])
    _holds(b, 5, posting)
    _follower(b).close()  # b stops following, then misses writes the feed no longer holds
    victim = _ranked(b, posting, 1)[0]
    a.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[victim]))
    seed(a, serving_demo.candidates[5:7])
    head = a.pipeline.store.last_change_seq()
    wait_for(lambda: _follower(a).applied_seq == head, "a to hold its own writes")
    a.pipeline.store.prune_changes(datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(grpc.RpcError) as e:
        _ranked(b, posting)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "restart it" in (e.value.details() or "")
    wait_for(lambda: b.health_status("replication") == NOT_SERVING, "b to report NOT_SERVING")
    assert b.health_status() == NOT_SERVING
    assert victim in {pc for pc in b.pipeline._catalog.ids_and_fids()[0]}  # memory kept, unused
    assert len(_ranked(a, posting)) == 6  # the writer itself is whole and serves
