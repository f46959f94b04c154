"""The serving topology: clients spread calls over replicas (gRPC round robin with health
checking, `ranker/transport/channel.py`); two real `ranker serve` processes on one PostgreSQL,
one killed with SIGKILL while a client keeps ranking."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from bench._server import ServerProcess
from ranker.config import Settings
from ranker.transport.channel import channel_target, client_channel
from ranker.transport.convert import candidate_to_pb, posting_to_pb
from ranker.v1 import ranker_pb2 as pb
from ranker.v1 import ranker_pb2_grpc as pb_grpc
from tests.fixtures.server import ServerHandle, seed, wait_for
from training.demo import DemoData


def test_addresses_become_one_target() -> None:
    assert channel_target("127.0.0.1:50051") == ("127.0.0.1:50051", False)
    assert channel_target("127.0.0.1:1, 127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", True)
    assert channel_target(["[::1]:1", "[::1]:2"]) == ("ipv6:[::1]:1,[::1]:2", True)
    assert channel_target("dns:///ranker.internal:50051") == ("dns:///ranker.internal:50051", True)
    with pytest.raises(ValueError, match="dns:///"):
        channel_target("a.internal:1,b.internal:1")
    with pytest.raises(ValueError, match="one family"):
        channel_target("127.0.0.1:1,[::1]:1")


def _ranked_on(handle: ServerHandle) -> float:
    value = handle.server.metrics.registry.get_sample_value(
        "ranker_requests_total", {"rpc": "RankCandidates", "code": "OK"}
    )
    return 0.0 if value is None else value


def test_round_robin_spreads_calls_and_skips_a_replica_not_serving(
    start_server: Callable[..., ServerHandle], serving_demo: DemoData, tmp_path: Path
) -> None:
    a, b = start_server(tmp_path / "a"), start_server(tmp_path / "b")
    for handle in (a, b):
        seed(handle, serving_demo.candidates[:5], serving_demo.postings[:1])
    request = pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id, top_k=3)
    with client_channel([a.address, b.address]) as channel:
        stub = pb_grpc.CandidateRankerStub(channel)
        wait_for(  # both connected (and healthy), then calls alternate
            lambda: (
                bool(stub.RankCandidates(request, timeout=30, wait_for_ready=True))
                and _ranked_on(a) > 0
                and _ranked_on(b) > 0
            ),
            "calls to reach both replicas",
        )
        before_a, before_b = _ranked_on(a), _ranked_on(b)
        for _ in range(10):
            stub.RankCandidates(request, timeout=30)
        assert _ranked_on(a) - before_a >= 3 and _ranked_on(b) - before_b >= 3
        # b reports NOT_SERVING: the channel's health watch takes it out of the rotation.
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        b._call(b.server.health.set("", not_serving))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the watch has seen it
            before = _ranked_on(b)
            stub.RankCandidates(request, timeout=30)
            if _ranked_on(b) == before:
                break
        before = _ranked_on(b)
        for _ in range(10):
            stub.RankCandidates(request, timeout=30)
        assert _ranked_on(b) == before


def test_two_replica_processes_one_killed_and_the_client_keeps_ranking(
    postgres_url: str, encoder_dir: Path, serving_demo: DemoData, tmp_path: Path
) -> None:
    def replica(name: str) -> ServerProcess:
        settings = Settings(
            data_dir=tmp_path / name,
            encoder_dir=encoder_dir,
            registry_dir=tmp_path / "registry",  # none promoted: the fallback ranks
            database_url=postgres_url,
            receipt_key_file=tmp_path / "receipt-key",
            replica_poll_seconds=0.2,
            grace_seconds=1.0,
            worker_threads=2,
        )
        return ServerProcess(settings, tmp_path / f"{name}.log", startup_timeout=120)

    with replica("a") as a, replica("b") as b:
        posting = serving_demo.postings[0].id
        cands = serving_demo.candidates[:12]
        written = a.stub().UpsertCandidates(
            pb.UpsertCandidatesRequest(candidates=[candidate_to_pb(c) for c in cands])
        )
        assert written.stored == len(cands)
        a.stub().UpsertPostings(
            pb.UpsertPostingsRequest(postings=[posting_to_pb(serving_demo.postings[0])])
        )
        request = pb.RankCandidatesRequest(posting_id=posting, top_k=20)

        def b_holds_them() -> bool:
            try:
                return len(b.stub().RankCandidates(request, timeout=10).results) == len(cands)
            except grpc.RpcError:
                return False  # the posting has not reached b yet

        wait_for(b_holds_them, "b to serve what was written through a")
        with client_channel([a.address, b.address]) as channel:
            stub = pb_grpc.CandidateRankerStub(channel)
            for _ in range(6):
                r = stub.RankCandidates(request, timeout=30, wait_for_ready=True)
                assert len(r.results) == len(cands)
            assert a.proc is not None
            a.proc.kill()  # SIGKILL: no goodbye, the connection just drops
            a.proc.wait(timeout=30)
            for _ in range(20):
                r = stub.RankCandidates(request, timeout=30)
                assert len(r.results) == len(cands)
        for name in ("a", "b"):  # each replica answered its share before the kill
            assert "RankCandidates OK" in (tmp_path / f"{name}.log").read_text()
