"""gRPC conventions: reflection v1 and v1alpha, rich error details, package options."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_status import rpc_status

from ranker.transport.reflection import V1_SERVICE_NAME
from ranker.transport.servicer import SERVICE_NAME
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle


def _reflect(
    h: ServerHandle, service: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    call = h.channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (reply,) = list(call(iter([request]), timeout=10))
    return reply


@pytest.mark.parametrize("service", [V1_SERVICE_NAME, "grpc.reflection.v1alpha.ServerReflection"])
def test_reflection_answers_at_v1_and_v1alpha(served: ServerHandle, service: str) -> None:
    listed = _reflect(served, service, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert SERVICE_NAME in names and "grpc.health.v1.Health" in names
    described = _reflect(
        served, service, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)
    )
    assert described.file_descriptor_response.file_descriptor_proto


def test_invalid_argument_carries_bad_request_field_violations(served: ServerHandle) -> None:
    request = pb.RankCandidatesRequest(posting=pb.Posting(title="", description="Welding"))
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(request, metadata=(("x-request-id", "bad-1"),))
    status = rpc_status.from_call(e.value)  # type: ignore[arg-type]
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == e.value.details()  # type: ignore[attr-defined]
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    (violation,) = bad.field_violations
    assert violation.field == "title" and violation.description == status.message
    assert ("x-request-id", "bad-1") in e.value.trailing_metadata()  # type: ignore[attr-defined]


def test_other_codes_have_no_details(served: ServerHandle) -> None:
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id="P-none"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert rpc_status.from_call(e.value) is None  # type: ignore[arg-type]


def test_the_proto_names_packages_for_other_languages() -> None:
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package.endswith(";rankerv1")
    assert options.java_package == "com.candidateranker.ranker.v1" and options.java_multiple_files


# -- the contract and the behaviour agree (proto comments) -------------------------------------


def test_retrieve_n_below_top_k_is_refused(served: ServerHandle) -> None:
    posting = served.stub.ListPostings(pb.ListPostingsRequest(page_size=1)).postings[0].id
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(
            pb.RankCandidatesRequest(posting_id=posting, top_k=10, retrieve_n=5)
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "between top_k (10)" in e.value.details()  # type: ignore[attr-defined]
    ok = served.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=posting, top_k=5, retrieve_n=5)
    )
    assert ok.retrieved == 5


def test_an_id_twice_in_one_erasure_is_invalid_at_its_second_place(
    start_server: Callable[..., ServerHandle],
) -> None:
    h = start_server()
    h.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(
            candidates=[pb.Candidate(id=c, cv_text=f"Welder {c}, ten years.") for c in "ABC"]
        )
    )
    r = h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=["A", "A", "Z"]))
    codes = [(i.id, grpc.StatusCode.OK.value[0] if not i.code else i.code) for i in r.items]
    assert codes == [
        ("A", 0),
        ("A", grpc.StatusCode.INVALID_ARGUMENT.value[0]),
        ("Z", grpc.StatusCode.NOT_FOUND.value[0]),
    ]
    assert "more than once" in r.items[1].message
    assert r.receipt.candidates == 1 and len(r.receipt.receipt_ids) == 1
    # Receipt ids are opaque: random, not the next number of a sequence.
    second = h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=["B"])).receipt.receipt_ids[0]
    third = h.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=["C"])).receipt.receipt_ids[0]
    first = r.receipt.receipt_ids[0]
    assert {second - first, third - second} != {1}
    assert min(first, second, third) > 1_000_000  # about 2^62 in range, not 1, 2, 3
