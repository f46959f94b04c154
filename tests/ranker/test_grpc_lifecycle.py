"""The service across its life: readiness, model swaps under load, erasure, restarts, deadlines."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ranker.encoding import TextEncoder
from ranker.index import INDEX_FILE, load_index_if_current
from ranker.registry import CARD_FILE, MODEL_FILE, POINTER_FILE, ModelRegistry
from ranker.store import SqliteStore
from ranker.transport.convert import candidate_to_pb
from ranker.transport.server import RankerServer, StartError
from ranker.v1 import ranker_pb2 as pb
from ranker.v1 import ranker_pb2_grpc as pb_grpc
from tests.fixtures.server import ServerHandle, seed, serving_settings
from training.demo import DemoData

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
StartServer = Callable[..., ServerHandle]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll until `condition` holds; a generous bound, not a speed assertion."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _copy_version(registry_dir: Path, source: str) -> str:
    """A new version folder holding the same model (as training would register it)."""
    versions = ModelRegistry(registry_dir).versions()
    new = f"v{int(versions[-1][1:]) + 1:04d}"
    shutil.copytree(registry_dir / source, registry_dir / new)
    return new


def _point_at(registry_dir: Path, version: str) -> None:
    """Move the pointer without the registry's checks, as a hand edit or bad disk would."""
    path = registry_dir / POINTER_FILE
    pointer = json.loads(path.read_text())
    pointer["history"].append(version)
    pointer["current"] = version
    path.write_text(json.dumps(pointer))


def _rank_all(h: ServerHandle, posting_id: str) -> pb.RankCandidatesResponse:
    return h.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=posting_id, top_k=1000))


def test_not_serving_until_a_model_is_promoted_when_the_fallback_is_off(
    start_server: StartServer,
    trained_registry: ModelRegistry,
    tmp_path: Path,
    serving_demo: DemoData,
) -> None:
    empty = tmp_path / "registry"
    # RANKER_FALLBACK=none keeps the service NOT_SERVING until a version is promoted (the
    # default serves the fallback ranker instead: tests/ranker/test_model_lifecycle.py).
    h = start_server(registry_dir=empty, fallback="none")
    assert h.health_status() == NOT_SERVING
    for call, req in (
        (h.stub.RankCandidates, pb.RankCandidatesRequest(posting_id="P0001")),
        (h.stub.GetModelInfo, pb.GetModelInfoRequest()),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call(req)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert "ranker train" in e.value.details()  # type: ignore[attr-defined]
    # Data may flow in before any model exists (ingest runs before training in `make run`).
    seed(h, serving_demo.candidates[:6], serving_demo.postings[:1])

    version = trained_registry.current_version()
    assert version is not None
    shutil.copytree(trained_registry.root / version, empty / version)
    ModelRegistry(empty).promote(version)
    wait_for(lambda: h.health_status() == SERVING, "the promoted model to be served")
    assert h.health_status("ranker.v1.CandidateRanker") == SERVING
    r = _rank_all(h, serving_demo.postings[0].id)
    assert r.model_version == version and len(r.results) == 6


def test_a_model_promoted_under_load_fails_no_request(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData
) -> None:
    h = start_server(registry_dir=registry_path)
    seed(h, serving_demo.candidates[:20], serving_demo.postings[:2])
    registry = ModelRegistry(registry_path)
    old = registry.current_version()
    assert old is not None
    new = _copy_version(registry_path, old)

    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[list[str]] = [[] for _ in range(3)]

    def load(worker: int) -> None:
        try:
            while not stop.is_set():
                for p in serving_demo.postings[:2]:
                    r = h.stub.RankCandidates(
                        pb.RankCandidatesRequest(posting_id=p.id, top_k=5, explain=worker == 0)
                    )
                    assert len(r.results) == 5
                    seen[worker].append(r.model_version)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(s) >= 3 for s in seen) or bool(errors), "traffic on the old model")
        registry.promote(new)
        wait_for(
            lambda: all(new in s[-2:] for s in seen) or bool(errors), "traffic on the new model"
        )
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    for versions in seen:
        assert set(versions) == {old, new}
        # Each client sees the switch once: old, then new, never back.
        switch = versions.index(new)
        assert all(v == old for v in versions[:switch])
        assert all(v == new for v in versions[switch:])
    assert h.stub.GetModelInfo(pb.GetModelInfoRequest()).version == new


@pytest.mark.parametrize("damage", ["corrupt-onnx", "renamed-feature"])
def test_a_broken_model_is_refused_and_the_old_one_keeps_serving(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData, damage: str
) -> None:
    h = start_server(registry_dir=registry_path)
    seed(h, serving_demo.candidates[:10], serving_demo.postings[:1])
    old = ModelRegistry(registry_path).current_version()
    assert old is not None
    broken = _copy_version(registry_path, old)
    if damage == "corrupt-onnx":
        (registry_path / broken / MODEL_FILE).write_bytes(b"not an onnx model")
    else:
        card_path = registry_path / broken / CARD_FILE
        card = json.loads(card_path.read_text())
        card["feature_names"][0] = "a_feature_this_code_does_not_build"
        card_path.write_text(json.dumps(card))
    _point_at(registry_path, broken)

    metrics = h.server.metrics.registry
    wait_for(
        lambda: (
            metrics.get_sample_value("ranker_model_reloads_total", {"result": "refused"}) == 1.0
        ),
        "the broken model to be refused",
    )
    assert h.health_status() == SERVING
    r = _rank_all(h, serving_demo.postings[0].id)
    assert r.model_version == old and len(r.results) == 10
    assert h.stub.GetModelInfo(pb.GetModelInfoRequest()).version == old
    # Refused once, not retried on every poll.
    time.sleep(0.3)
    assert metrics.get_sample_value("ranker_model_reloads_total", {"result": "refused"}) == 1.0


def test_erasure_is_permanent_also_after_a_restart(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData, tmp_path: Path
) -> None:
    data = tmp_path / "erasure"
    cands = serving_demo.candidates[:12]
    posting = serving_demo.postings[0]
    h = start_server(data_dir=data, registry_dir=registry_path)
    seed(h, cands, [posting])
    victims = [cands[2].id, cands[7].id]
    outcomes = [
        pb.Outcome(posting_id=posting.id, candidate_id=cid, stage="screened") for cid in victims
    ]
    assert h.stub.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=outcomes)).recorded == 2
    first = _rank_all(h, posting.id)
    assert set(victims) <= {c.candidate_id for c in first.results}
    # An index snapshot that still holds the victims, as a crash before the next save leaves it.
    h.pipeline.save_index(force=True)
    stale = (data / "index" / INDEX_FILE).read_bytes()

    d = h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[*victims, "never-existed"]))
    assert [i.code for i in d.items] == [0, 0, grpc.StatusCode.NOT_FOUND.value[0]]
    assert d.receipt.candidates == 2 and len(d.receipt.receipt_ids) == 2
    assert d.receipt.rows_by_table["candidates"] == 2
    assert d.receipt.rows_by_table["outcomes"] == 2
    assert d.receipt.rows_by_table["decision_items"] >= 2  # the ranking above logged both
    assert d.receipt.erased_at.seconds > 0
    assert d.total_candidates == 10

    def assert_gone(handle: ServerHandle) -> None:
        ranked = {c.candidate_id for c in _rank_all(handle, posting.id).results}
        assert len(ranked) == 10 and not ranked & set(victims)
        for cid in victims:
            with pytest.raises(grpc.RpcError) as e:
                handle.stub.GetCandidate(pb.GetCandidateRequest(id=cid))
            assert e.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        again = handle.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=victims))
        assert all(i.code == grpc.StatusCode.NOT_FOUND.value[0] for i in again.items)
        assert not again.HasField("receipt")
        r = handle.stub.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=outcomes))
        assert r.recorded == 0

    assert_gone(h)
    h.stop()
    store = SqliteStore(data / "ranker.db")
    try:
        logged = store.get_decision(first.request_id)
        assert not set(logged.candidate_ids) & set(victims)
        assert len(logged.candidate_ids) == logged.features.shape[0] == 10
        assert all(store.erasure_receipts(cid) for cid in victims)
        assert not store.get_candidates(victims)
        assert not any(o.candidate_id in victims for o in store.list_outcomes())
    finally:
        store.close()

    (data / "index" / INDEX_FILE).write_bytes(stale)
    assert_gone(start_server(data_dir=data, registry_dir=registry_path))


def test_a_restart_keeps_all_data(
    start_server: StartServer, registry_path: Path, serving_demo: DemoData, tmp_path: Path
) -> None:
    data = tmp_path / "restart"
    cands = serving_demo.candidates[:15]
    postings = serving_demo.postings[:2]
    h = start_server(data_dir=data, registry_dir=registry_path)
    seed(h, cands, postings)
    outcomes = [
        pb.Outcome(posting_id=postings[0].id, candidate_id=c.id, stage="applied") for c in cands[:5]
    ]
    h.stub.RecordOutcomes(pb.RecordOutcomesRequest(outcomes=outcomes))
    before = _rank_all(h, postings[1].id)
    h.stop()

    store = SqliteStore(data / "ranker.db")
    try:
        assert store.count_outcomes() == 5
        # Shutdown saved the index for the store as it is: the restart loads, not rebuilds.
        assert load_index_if_current(data / "index", store.generation()) is not None
    finally:
        store.close()

    gc.unfreeze()  # what an earlier start in this process froze
    h2 = start_server(data_dir=data, registry_dir=registry_path)
    assert h2.pipeline.candidate_count == 15
    # What it loaded is out of the cycle collector's reach: no full collection walks it.
    assert gc.get_freeze_count() > 0
    assert [p.id for p in h2.stub.ListPostings(pb.ListPostingsRequest()).postings] == [
        p.id for p in postings
    ]
    for c in cands:
        assert h2.stub.GetCandidate(pb.GetCandidateRequest(id=c.id)).candidate == candidate_to_pb(c)
    after = _rank_all(h2, postings[1].id)
    assert [c.candidate_id for c in after.results] == [c.candidate_id for c in before.results]
    np.testing.assert_allclose(
        [c.score for c in after.results], [c.score for c in before.results], rtol=1e-6
    )


class _GateEncoder:
    """Wraps the real encoder; document encoding waits until the test opens the gate."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _wait(self) -> None:
        self.entered.set()
        self.gate.wait(timeout=60)

    def encode(self, texts: list[str]) -> np.ndarray:
        self._wait()
        return self.inner.encode(texts)

    def encode_documents(self, texts: list[str]):  # type: ignore[no-untyped-def]
        self._wait()
        return self.inner.encode_documents(texts)


def test_work_past_the_deadline_is_abandoned_and_stores_nothing(
    start_server: StartServer, registry_path: Path, encoder: TextEncoder
) -> None:
    gated = _GateEncoder(encoder)
    # One worker: once a no-op submitted after a call has run, that call has finished.
    h = start_server(registry_dir=registry_path, text_encoder=gated, worker_threads=1)
    calls = [
        (
            h.stub.UpsertCandidates,
            pb.UpsertCandidatesRequest(
                candidates=[pb.Candidate(id="late", cv_text="Data engineer with Spark.")]
            ),
        ),
        (
            h.stub.RankCandidates,
            pb.RankCandidatesRequest(posting=pb.Posting(title="Welder", description="Welding.")),
        ),
    ]
    for call, request in calls:
        gated.gate.clear()
        gated.entered.clear()
        future = call.future(request, timeout=0.5)
        assert gated.entered.wait(timeout=60)  # the server is mid-request when the deadline hits
        with pytest.raises(grpc.RpcError) as e:
            future.result()
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        gated.gate.set()
        h.server.pool.submit(lambda: None).result(timeout=60)
    # The upsert stored nothing and the ranking was abandoned before it was served or logged.
    with pytest.raises(grpc.RpcError) as e:
        h.stub.GetCandidate(pb.GetCandidateRequest(id="late"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert h.pipeline.store.count_candidates() == 0
    h.pipeline._decisions.flush()
    assert h.pipeline.store.count_decisions() == 0


def test_serve_shuts_down_gracefully_on_sigterm(
    encoder_dir: Path, registry_path: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RANKER_")},
        "RANKER_DATA_DIR": str(data),
        "RANKER_ENCODER_DIR": str(encoder_dir),
        "RANKER_REGISTRY_DIR": str(registry_path),
        "RANKER_PORT": "0",
        "RANKER_METRICS_PORT": "0",
        "RANKER_GRACE_SECONDS": "1",
        "RANKER_INDEX_SAVE_DELAY_SECONDS": "600",  # only the shutdown may save the index
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ranker.cli import main; main()", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:
            if m := re.search(r"listening on [\d.]+:(\d+)", line):
                port = int(m.group(1))
                break
        assert port, "the server never said where it listens"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            wait_for(
                lambda: health.Check(health_pb2.HealthCheckRequest()).status == SERVING,
                "the service to load",
            )
            stub = pb_grpc.CandidateRankerStub(channel)
            r = stub.UpsertCandidates(
                pb.UpsertCandidatesRequest(
                    candidates=[pb.Candidate(id="kept", cv_text="Welder, 10 years.")]
                )
            )
            assert r.stored == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    store = SqliteStore(data / "ranker.db")
    try:
        assert store.get_candidates(["kept"])[0].candidate.cv_text == "Welder, 10 years."
        assert load_index_if_current(data / "index", store.generation()) is not None
    finally:
        store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("taken", ["grpc", "metrics"])
def test_a_taken_port_stops_what_started_and_says_which(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path, taken: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = _free_port()
        ports = {"port": port, "metrics_port": other}
        if taken == "metrics":
            ports = {"port": other, "metrics_port": port}
        server = RankerServer(
            serving_settings(tmp_path / "data", registry_path, **ports), encoder=encoder
        )
        with pytest.raises(StartError) as e:
            asyncio.run(server.start())
    assert str(e.value) == (
        f"port {port} in use; stop the other server or set RANKER_PORT / RANKER_METRICS_PORT"
    )
    # Nothing was left running: the other port is free again, no server, no loading.
    assert server._server is None and server._metrics_http is None and not server._tasks
    assert _port_is_free(other)


def test_shutdown_lets_running_calls_finish_before_closing_the_store(
    start_server: StartServer, registry_path: Path, encoder: TextEncoder, tmp_path: Path
) -> None:
    gated = _GateEncoder(encoder)
    data = tmp_path / "drain"
    h = start_server(data_dir=data, registry_dir=registry_path, text_encoder=gated)
    gated.gate.clear()
    future = h.stub.UpsertCandidates.future(
        pb.UpsertCandidatesRequest(candidates=[pb.Candidate(id="late", cv_text="Welder.")]),
        timeout=120,
    )
    assert gated.entered.wait(timeout=60)  # a worker is mid-call
    stopper = threading.Thread(target=h.stop)
    stopper.start()
    with pytest.raises(grpc.RpcError):
        future.result(timeout=60)  # the grace period ran out: the server gave up on the call
    # The worker carries on after that; shutdown must wait for it rather than close the store
    # under it (which logged "Cannot operate on a closed database"). The call was given up,
    # so the worker stops before storing (a call that missed its end stores nothing).
    time.sleep(0.5)
    gated.gate.set()
    stopper.join(timeout=60)
    assert not stopper.is_alive()
    store = SqliteStore(data / "ranker.db")
    try:
        assert store.get_candidates(["late"]) == []
        saved = load_index_if_current(data / "index", store.generation())
        assert saved is None or len(saved) == 0
    finally:
        store.close()
