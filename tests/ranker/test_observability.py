"""Per-RPC log lines, request ids in metadata, Health/List, process metrics and histograms."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client import generate_latest

from ranker.observability import JsonFormatter, TextFormatter
from ranker.transport.logging_interceptor import client_request_id
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle
from training.demo import DemoData


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _rpc_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.name == "ranker.rpc"]  # type: ignore[attr-defined]


def _line_of(caplog: pytest.LogCaptureFixture, request_id: str) -> bool:
    return any(f["request_id"] == request_id for f in _rpc_lines(caplog))


def test_a_client_request_id_round_trips_and_is_logged(
    served: ServerHandle, serving_demo: DemoData, caplog: pytest.LogCaptureFixture
) -> None:
    posting = serving_demo.postings[0].id
    with caplog.at_level(logging.INFO, logger="ranker.rpc"):
        reply, call = served.stub.RankCandidates.with_call(
            pb.RankCandidatesRequest(posting_id=posting, top_k=3),
            metadata=(("x-request-id", "ats-7f3a:42"),),
        )
        # The line is written just after the answer leaves: wait for it while INFO is captured.
        wait_for(lambda: _line_of(caplog, "ats-7f3a:42"), "the log line")
    assert ("x-request-id", "ats-7f3a:42") in call.trailing_metadata()
    (line,) = [f for f in _rpc_lines(caplog) if f["request_id"] == "ats-7f3a:42"]
    assert line["method"] == "/ranker.v1.CandidateRanker/RankCandidates"
    assert line["code"] == "OK" and line["duration_ms"] > 0
    assert line["model_version"] == reply.model_version
    assert line["decision_id"] == reply.request_id
    assert (line["results"], line["eligible"]) == (3, reply.eligible)


def test_without_a_client_id_the_decision_id_is_the_request_id(served: ServerHandle) -> None:
    reply, call = served.stub.RankCandidates.with_call(
        pb.RankCandidatesRequest(posting_id=_any_posting(served), top_k=2)
    )
    assert ("x-request-id", reply.request_id) in call.trailing_metadata()


def _any_posting(h: ServerHandle) -> str:
    return str(h.stub.ListPostings(pb.ListPostingsRequest(page_size=1)).postings[0].id)


def test_errors_carry_the_request_id_and_log_their_code(
    served: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ranker.rpc"):
        with pytest.raises(grpc.RpcError) as e:
            served.stub.RankCandidates(
                pb.RankCandidatesRequest(posting_id="P-nope"),
                metadata=(("x-request-id", "err-1"),),
            )
        # An aborted call's status reaches the client before the server's handler has unwound
        # and written its line, so wait for it (briefly, and while INFO is still captured).
        wait_for(lambda: _line_of(caplog, "err-1"), "the log line")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert ("x-request-id", "err-1") in e.value.trailing_metadata()  # type: ignore[attr-defined]
    (line,) = [f for f in _rpc_lines(caplog) if f["request_id"] == "err-1"]
    assert line["code"] == "NOT_FOUND"


def test_every_unary_rpc_is_one_line(
    served: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ranker.rpc"):
        served.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=(("x-request-id", "a1"),))
        served.stub.ListPostings(pb.ListPostingsRequest(), metadata=(("x-request-id", "a2"),))
        served.health.Check(health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "a3"),))
        wait_for(lambda: all(_line_of(caplog, i) for i in ("a1", "a2", "a3")), "the log lines")
    by_id = {f["request_id"]: f for f in _rpc_lines(caplog)}
    assert by_id["a1"]["method"].endswith("/GetModelInfo") and by_id["a1"]["model_version"]
    assert by_id["a2"]["items"] > 0
    assert by_id["a3"]["method"] == "/grpc.health.v1.Health/Check"
    assert len([f for f in _rpc_lines(caplog) if f["request_id"] in by_id]) == 3


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("x-request-id", "abc-123"),), "abc-123"),
        ((("X-Request-Id", "abc"),), "abc"),
        ((("x-request-id", "has space"),), None),
        ((("x-request-id", "x" * 129),), None),
        ((("x-request-id", ""),), None),
        ((("other", "abc"),), None),
        ((), None),
    ],
)
def test_client_request_id_is_validated(
    metadata: tuple[tuple[str, str], ...], expected: str | None
) -> None:
    assert client_request_id(metadata) == expected


def test_health_list_answers(served: ServerHandle) -> None:
    reply = served.health.List(health_pb2.HealthListRequest())
    assert reply.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
    assert (
        reply.statuses["ranker.v1.CandidateRanker"].status == health_pb2.HealthCheckResponse.SERVING
    )


def test_metrics_have_process_figures_and_ranking_histograms(
    served: ServerHandle, serving_demo: DemoData
) -> None:
    served.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=serving_demo.postings[1].id, top_k=4)
    )
    names = ("ranker_result_score", "ranker_result_similarity", "ranker_eligible_candidates")

    def counts() -> dict[str, float]:
        text = generate_latest(served.server.metrics.registry).decode()
        assert "process_cpu_seconds_total" in text and "python_info" in text
        return {
            name: next(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith(f"{name}_count")
            )
            for name in names
        }

    # Observed with the log line, just after the answer has left.
    wait_for(lambda: all(c > 0 for c in counts().values()), "the ranking histograms")


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "ranker.rpc", logging.INFO, __file__, 1, "RankCandidates OK", (), None
    )
    record.fields = fields
    return record


def test_json_and_text_formats_carry_the_fields() -> None:
    line = json.loads(JsonFormatter().format(_record(request_id="r1", duration_ms=3.5)))
    assert line["message"] == "RankCandidates OK" and line["level"] == "INFO"
    assert (line["request_id"], line["duration_ms"]) == ("r1", 3.5)
    text = TextFormatter().format(_record(request_id="r1", code="OK"))
    assert text.endswith("RankCandidates OK request_id=r1 code=OK")
