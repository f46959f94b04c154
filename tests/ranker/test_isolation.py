"""Isolation of slow work: reads and rankings by id never wait behind encoding; abandoned
encodings stop; a full encoder refuses writes at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from ranker.encoding import TextEncoder
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle, seed
from training.demo import DemoData

StartServer = Callable[..., ServerHandle]


class _Gate:
    """Wraps the real encoder; once armed, every encoding waits until the test opens it.

    Used only to fix the order of events (a read arriving while upserts are mid-encoding);
    the real-encoder test below checks the same isolation without it.
    """

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.armed = False
        self.open = threading.Event()
        self.entered = threading.Event()

    def _wait(self) -> None:
        if self.armed:
            self.entered.set()
            assert self.open.wait(timeout=120)

    def encode(self, texts: list[str]) -> np.ndarray:
        self._wait()
        return self.inner.encode(texts)

    def encode_documents(self, texts: list[str]) -> Any:
        self._wait()
        return self.inner.encode_documents(texts)


def _upsert(cid: str, text: str) -> pb.UpsertCandidatesRequest:
    return pb.UpsertCandidatesRequest(candidates=[pb.Candidate(id=cid, cv_text=text)])


def test_reads_and_rankings_answer_while_upserts_are_encoding(
    start_server: StartServer, registry_path: Path, encoder: TextEncoder, serving_demo: DemoData
) -> None:
    gate = _Gate(encoder)
    # One thread each: in the old single pool, one stuck upsert blocked every read.
    h = start_server(
        registry_dir=registry_path,
        text_encoder=gate,
        worker_threads=1,
        encode_threads=1,
        max_encode_queue=2,
    )
    seed(h, serving_demo.candidates[:20], serving_demo.postings[:1])
    gate.armed = True
    upserts = [
        h.stub.UpsertCandidates.future(
            _upsert(f"slow-{i}", "Welder, pipe work. " * 50), timeout=120
        )
        for i in range(2)
    ]
    assert gate.entered.wait(timeout=60)  # one upsert is encoding, the other waits for it
    info = h.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    ranked = h.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id, top_k=5), timeout=60
    )
    assert info.version and len(ranked.results) == 5
    assert not gate.open.is_set() and not any(f.done() for f in upserts)
    # The encoder's queue is full: a third write is refused at once, saying what to do.
    with pytest.raises(grpc.RpcError) as e:
        h.stub.UpsertCandidates(_upsert("slow-3", "Baker."), timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "retry with backoff" in e.value.details()  # type: ignore[attr-defined]
    gate.open.set()
    assert all(f.result(timeout=120).stored == 1 for f in upserts)
    # Admission is given back: writes are accepted again.
    assert h.stub.UpsertCandidates(_upsert("slow-3", "Baker."), timeout=60).stored == 1


def test_a_request_over_the_character_budget_is_refused_before_encoding(
    start_server: StartServer, registry_path: Path
) -> None:
    h = start_server(registry_dir=registry_path, max_text_chars=1000, max_request_chars=1500)
    big = pb.UpsertCandidatesRequest(
        candidates=[pb.Candidate(id=f"C{i}", cv_text="x" * 900) for i in range(2)]
    )
    with pytest.raises(grpc.RpcError) as e:
        h.stub.UpsertCandidates(big, timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "split it into smaller batches" in e.value.details()  # type: ignore[attr-defined]
    assert h.pipeline.store.count_candidates() == 0


def _stopped(h: ServerHandle) -> float:
    value = h.server.metrics.registry.get_sample_value("ranker_encode_stopped_total")
    return float(value or 0.0)


def test_huge_upserts_with_short_deadlines_stop_encoding_and_leave_reads_answering(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData
) -> None:
    # The scenario scaled down, with the real encoder: concurrent upserts of long CVs
    # whose callers give up long before the encoding could finish.
    h = start_server(registry_dir=registry_path, max_text_chars=100_000, encode_threads=1)
    seed(h, serving_demo.candidates[:20], serving_demo.postings[:1])
    before = h.pipeline.store.count_candidates()
    cv = " ".join(
        f"Project {i}: led a team building data pipelines in Python and Spark for retail."
        for i in range(900)
    )[:70_000]
    calls = [
        h.stub.UpsertCandidates.future(
            pb.UpsertCandidatesRequest(
                candidates=[pb.Candidate(id=f"huge-{i}-{j}", cv_text=cv) for j in range(2)]
            ),
            timeout=0.3,
        )
        for i in range(4)
    ]
    info = h.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60)
    ranked = h.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id, top_k=3), timeout=60
    )
    assert info.version and len(ranked.results) == 3
    for f in calls:
        with pytest.raises(grpc.RpcError) as e:
            f.result(timeout=60)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    # Once the encode thread is free, it was stopped midway (not run to the end) and the
    # abandoned calls stored nothing.
    h.server.encode_pool.submit(lambda: None).result(timeout=120)
    assert _stopped(h) >= 1
    assert h.pipeline.store.count_candidates() == before
    assert h.server.admission.in_flight == (0, 0)


def test_the_service_encoder_leaves_a_core_to_reads_unless_told_otherwise() -> None:
    from embeddings.runtime import physical_cores
    from ranker.config import Settings

    cores = physical_cores()
    assert Settings().serving_encoder.intra_op_threads == max(1, cores - 1)
    assert Settings(serving_encoder_threads=3).serving_encoder.intra_op_threads == 3
    # Offline ingestion keeps its own setting: 0 is one thread per core there.
    assert Settings().intra_op_threads == 0


def test_encoding_threads_run_nicer_than_the_threads_that_answer_reads() -> None:
    import os
    from concurrent.futures import ThreadPoolExecutor

    from ranker.admission import lower_thread_priority

    def nice_of_this_thread() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice_of_this_thread()
    with ThreadPoolExecutor(1, initializer=lower_thread_priority, initargs=(5,)) as pool:
        encoding = pool.submit(nice_of_this_thread).result()
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(nice_of_this_thread).result()
    assert encoding == min(19, base + 5)
    assert reading == base == nice_of_this_thread()  # only the pool's own thread changed


def test_the_decision_log_writer_runs_nicer_and_writes_what_arrived_while_it_lingered(
    tmp_path: Path,
) -> None:
    import os
    from datetime import UTC, datetime

    from ranker.decisions import DecisionLog
    from ranker.rows import Decision
    from ranker.store import SqliteStore

    store = SqliteStore(tmp_path / "r.db", dim=4)
    batches: list[int] = []
    real = store.log_decisions

    def counted(decisions: list[Decision]) -> None:
        batches.append(len(decisions))
        real(decisions)

    store.log_decisions = counted  # type: ignore[method-assign]  # the real write, counted
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    log = DecisionLog(store, None, maxsize=100, linger=0.5, nice=5)
    try:
        assert log._thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, log._thread.native_id) == min(19, base + 5)
        for i in range(3):  # all queued within the writer's linger: one write
            log.settle(
                log.submit(
                    Decision(
                        f"r{i}",
                        datetime.now(UTC),
                        "v1",
                        "p1",
                        "h",
                        1,
                        ("a",),
                        ("c1",),
                        np.ones(1),
                        np.ones((1, 1), np.float32),
                        {},
                    )
                )
            )
        log.flush()
        assert batches == [3] and store.count_decisions() == 3
        synced = DecisionLog(store, None, maxsize=1, sync=True, linger=0.5)
        assert synced.linger == 0.0  # a synced ranking waits for its write: no linger then
        synced.close()
    finally:
        log.close()
        store.close()
