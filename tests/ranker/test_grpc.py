"""The CandidateRanker service end to end: a real server on port 0, a real stub, every RPC."""

from __future__ import annotations

import json
import math
import socket
import threading
import urllib.request
from collections.abc import Callable
from datetime import datetime

import grpc
import numpy as np
import pytest
from google.protobuf import message as pb_message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ranker.features import FEATURE_NAMES, ReferenceStats
from ranker.index import ReadWriteLock
from ranker.transport.convert import candidate_to_pb
from ranker.transport.servicer import SERVICE_NAME
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import MAX_BATCH, MAX_MESSAGE_BYTES, ServerHandle
from training.demo import DemoData

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _code(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return excinfo.value.code()  # type: ignore[attr-defined, no-any-return]


def _details(excinfo: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return excinfo.value.details()  # type: ignore[attr-defined, no-any-return]


def _cand(
    cid: str, text: str = "Backend engineer: Python, SQL, Kubernetes.", **kw: object
) -> pb.Candidate:
    return pb.Candidate(id=cid, cv_text=text, **kw)  # type: ignore[arg-type]


# -- health, reflection, model info ---------------------------------------------------------


def test_health_is_serving_for_the_server_and_the_service(served: ServerHandle) -> None:
    assert served.health_status("") == health_pb2.HealthCheckResponse.SERVING
    assert served.health_status(SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(served: ServerHandle) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in responses[0].list_services_response.service}
    assert "ranker.v1.CandidateRanker" in names
    assert "grpc.health.v1.Health" in names


def test_get_model_info_reports_the_promoted_version(served: ServerHandle) -> None:
    info = served.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert info.version == served.pipeline.registry.current_version()  # type: ignore[union-attr]
    assert tuple(info.feature_names) == FEATURE_NAMES
    card = json.loads(info.card_json)
    assert card["feature_names"] == list(FEATURE_NAMES)
    assert all(math.isfinite(v) for v in info.metrics.values())
    assert info.total_candidates == served.pipeline.candidate_count
    assert info.loaded_at.seconds > 0


# -- ranking --------------------------------------------------------------------------------


def test_rank_by_stored_posting_returns_top_k_with_reasons(
    served: ServerHandle, serving_demo: DemoData
) -> None:
    posting = serving_demo.postings[0]
    r = served.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=posting.id, top_k=5, explain=True)
    )
    assert [c.rank for c in r.results] == [1, 2, 3, 4, 5]
    scores = [c.score for c in r.results]
    assert scores == sorted(scores, reverse=True)
    assert len({c.candidate_id for c in r.results}) == 5
    assert r.posting_id == posting.id
    assert r.model_version == served.stub.GetModelInfo(pb.GetModelInfoRequest()).version
    assert r.eligible == len(serving_demo.candidates)
    assert r.retrieved == len(serving_demo.candidates)  # retrieve_n 500 > 90 stored
    assert r.timings.total_ms > 0 and r.timings.encode_ms == 0
    assert 0 < r.timings.search_ms <= r.timings.retrieve_ms <= r.timings.total_ms
    by_id = {c.id: c for c in serving_demo.candidates}
    for c in r.results:
        e = c.explanation
        assert e.reasons, "every result must carry readable reasons"
        assert set(e.required_matched) | set(e.required_missing) == set(posting.required_skills)
        assert set(e.required_matched) == set(posting.required_skills) & set(
            by_id[c.candidate_id].skills
        )
        assert e.years_experience == pytest.approx(by_id[c.candidate_id].years_experience)
        assert e.min_years == pytest.approx(posting.min_years)
        assert e.top_features and all(f.name in FEATURE_NAMES for f in e.top_features)
        assert -1.0 <= c.similarity <= 1.0


def test_ranking_without_explain_has_no_reasons(
    served: ServerHandle, serving_demo: DemoData
) -> None:
    r = served.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=serving_demo.postings[1].id, top_k=3)
    )
    assert len(r.results) == 3
    assert not any(c.HasField("explanation") for c in r.results)
    assert r.timings.explain_ms == 0


def test_the_decision_log_holds_the_exact_features_served(
    served: ServerHandle, serving_demo: DemoData
) -> None:
    posting = serving_demo.postings[2]
    r = served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=posting.id, top_k=4))
    pipeline = served.pipeline
    pipeline._decisions.flush()
    d = pipeline.store.get_decision(r.request_id)
    assert d.model_version == r.model_version
    assert d.posting_id == posting.id
    assert list(d.candidate_ids) == [c.candidate_id for c in r.results]
    np.testing.assert_allclose(d.scores, [c.score for c in r.results], rtol=1e-6)
    # Rebuild the features independently and score them: the log must match what was served.
    bundle = pipeline.model.served.bundle  # type: ignore[union-attr]
    prepared = [pipeline._catalog.get(cid) for cid in d.candidate_ids]
    # Relative columns: against the retrieved set's statistics, which the decision records.
    reference = ReferenceStats.from_dict(d.params["reference"])  # type: ignore[arg-type]
    pp = pipeline._postings[posting.id]
    lexicon = pipeline._catalog.lexicon.view(pp.term_hashes.tolist())
    assert d.params["lexicon"] == {"n_docs": lexicon.n_docs, "avgdl": lexicon.avgdl}
    x = bundle.builder.build(pp, prepared, reference, lexicon=lexicon)  # type: ignore[arg-type]
    np.testing.assert_array_equal(d.features, x)
    np.testing.assert_allclose(bundle.scorer.score(d.features), d.scores, rtol=1e-6)


def test_rank_inline_posting(served: ServerHandle, serving_demo: DemoData) -> None:
    p = serving_demo.postings[0]
    inline = pb.Posting(
        title=p.title,
        description=p.description,
        required_skills=list(p.required_skills),
        min_years=p.min_years,
        location=p.location,
    )
    r = served.stub.RankCandidates(pb.RankCandidatesRequest(posting=inline, top_k=3))
    assert r.posting_id.startswith("inline-")
    assert len(r.results) == 3
    assert r.timings.encode_ms > 0
    again = served.stub.RankCandidates(pb.RankCandidatesRequest(posting=inline, top_k=3))
    assert again.posting_id == r.posting_id  # named by a hash of its content


def test_hard_filters_apply_inside_retrieval(served: ServerHandle, serving_demo: DemoData) -> None:
    skill = serving_demo.candidates[0].skills[0]
    city = serving_demo.candidates[0].location
    expected = {
        c.id
        for c in serving_demo.candidates
        if (c.location.lower() == city.lower() or c.remote_ok)
        and c.years_experience >= 2
        and skill in c.skills
    }
    assert expected, "the demo set must give this filter something to find"
    filters = pb.Filters(
        locations=[city.upper()], include_remote=True, min_years=2, must_have_skills=[skill.title()]
    )
    r = served.stub.RankCandidates(
        pb.RankCandidatesRequest(
            posting_id=serving_demo.postings[0].id, top_k=1000, filters=filters
        )
    )
    assert r.eligible == len(expected)
    assert {c.candidate_id for c in r.results} == expected


def test_filters_that_match_nothing_give_an_empty_ranking(
    served: ServerHandle, serving_demo: DemoData
) -> None:
    r = served.stub.RankCandidates(
        pb.RankCandidatesRequest(
            posting_id=serving_demo.postings[0].id,
            filters=pb.Filters(must_have_skills=["no such skill anywhere"]),
        )
    )
    assert r.eligible == 0 and not r.results


def test_retrieve_n_bounds_the_reranked_set(served: ServerHandle, serving_demo: DemoData) -> None:
    r = served.stub.RankCandidates(
        pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id, top_k=3, retrieve_n=7)
    )
    assert r.retrieved == 7 and len(r.results) == 3


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"top_k": 0},
        {"top_k": 1001},
        {"top_k": -3},
        {"retrieve_n": 0},
        {"retrieve_n": 10_001},
        {"filters": pb.Filters(min_years=float("nan"))},
        {"filters": pb.Filters(min_years=-1)},
        {"filters": pb.Filters(must_have_skills=["  "])},
    ],
    ids=str,
)
def test_out_of_range_arguments_are_invalid(
    served: ServerHandle, serving_demo: DemoData, request_kwargs: dict[str, object]
) -> None:
    req = pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id, **request_kwargs)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(req)
    assert _code(e) == INVALID
    assert _details(e)


@pytest.mark.parametrize(
    "request_",
    [
        pb.RankCandidatesRequest(),
        pb.RankCandidatesRequest(posting_id="  "),
        pb.RankCandidatesRequest(posting=pb.Posting(title="Engineer", description="   ")),
        pb.RankCandidatesRequest(posting=pb.Posting(title="", description="Builds things.")),
        pb.RankCandidatesRequest(
            posting=pb.Posting(title="Engineer", description="Builds.", min_years=math.inf)
        ),
    ],
    ids=["no-posting", "blank-id", "empty-description", "empty-title", "infinite-years"],
)
def test_malformed_postings_are_invalid(
    served: ServerHandle, request_: pb.RankCandidatesRequest
) -> None:
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(request_)
    assert _code(e) == INVALID


def test_unknown_posting_is_not_found(served: ServerHandle) -> None:
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id="P-does-not-exist"))
    assert _code(e) == grpc.StatusCode.NOT_FOUND
    assert "UpsertPostings" in _details(e)


def test_bytes_that_do_not_parse_are_invalid_not_internal(served: ServerHandle) -> None:
    raw = served.channel.unary_unary(
        f"/{SERVICE_NAME}/RankCandidates",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    # Field 1 (posting_id, a string) carrying bytes that are not UTF-8.
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x0a\x02\xff\xfe")
    assert _code(e) == INVALID
    # Field 2 (an embedded Posting) whose length prefix runs past the end of the message.
    with pytest.raises(grpc.RpcError) as e:
        raw(b"\x12\x40\x0a")
    assert _code(e) == INVALID


def _raw(served: ServerHandle, method: str):  # type: ignore[no-untyped-def]
    return served.channel.unary_unary(
        f"/{SERVICE_NAME}/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One encoded protobuf field (tag varint, then a length prefix for wire type 2)."""
    assert number < 16 and len(payload) < 128  # single-byte varints keep this readable
    tag = bytes([number << 3 | wire_type])
    return tag + (bytes([len(payload)]) + payload if wire_type == 2 else payload)


def test_a_field_of_the_wrong_wire_type_is_invalid_and_stores_nothing(served: ServerHandle) -> None:
    # years_experience (field 4, a double) sent as the string "5": protobuf alone would park it
    # among the unknown fields and store the candidate with 0 years.
    cand = pb.Candidate(id="wire-type", cv_text="Welder with ten years.").SerializeToString()
    cand += _field(4, 2, b"5")
    with pytest.raises(grpc.RpcError) as e:
        _raw(served, "UpsertCandidates")(_field(1, 2, cand))
    assert _code(e) == INVALID
    assert "field 4 (years_experience)" in _details(e) and "ranker.v1.Candidate" in _details(e)
    assert "candidates[0]" in _details(e)
    with pytest.raises(grpc.RpcError) as e:
        served.stub.GetCandidate(pb.GetCandidateRequest(id="wire-type"))
    assert _code(e) == grpc.StatusCode.NOT_FOUND


def test_a_field_the_contract_does_not_define_is_ignored_by_default(
    served: ServerHandle, serving_demo: DemoData
) -> None:
    # protobuf's convention: a client built from a newer proto keeps working (rolling upgrade).
    request = pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id).SerializeToString()
    reply = pb.RankCandidatesResponse.FromString(
        _raw(served, "RankCandidates")(request + _field(15, 0, b"\x01"))
    )
    assert reply.results
    nested = _raw(served, "RankCandidates")(request + _field(5, 2, _field(15, 0, b"\x01")))
    assert pb.RankCandidatesResponse.FromString(nested).results


def test_a_field_the_contract_does_not_define_is_invalid_when_strict(
    start_server: Callable[..., ServerHandle],
) -> None:
    served = start_server(strict_fields=True)
    served.stub.UpsertPostings(
        pb.UpsertPostingsRequest(
            postings=[pb.Posting(id="P-s", title="Welder", description="Weld")]
        )
    )
    request = pb.RankCandidatesRequest(posting_id="P-s").SerializeToString()
    with pytest.raises(grpc.RpcError) as e:
        _raw(served, "RankCandidates")(request + _field(15, 0, b"\x01"))
    assert _code(e) == INVALID
    assert "field 15" in _details(e) and "ranker.v1.RankCandidatesRequest" in _details(e)
    # Nested: an unknown field inside filters.
    filters = _field(15, 0, b"\x01")
    with pytest.raises(grpc.RpcError) as e:
        _raw(served, "RankCandidates")(request + _field(5, 2, filters))
    assert _code(e) == INVALID and "filters" in _details(e)
    served.stub.RankCandidates(pb.RankCandidatesRequest.FromString(request))  # without: fine


def test_text_of_only_invisible_characters_is_invalid_per_item(served: ServerHandle) -> None:
    r = served.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(
            candidates=[
                _cand("zw-only", "\u200b"),
                _cand("ctl-only", "\x01\x02\u200c"),
                _cand("zw-fine", "Nurse\u200b with ICU experience."),
            ]
        )
    )
    assert [i.code for i in r.items] == [INVALID.value[0], INVALID.value[0], 0]
    assert "encoder could not read" in r.items[0].message
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(
            pb.RankCandidatesRequest(posting=pb.Posting(title="\u200b", description="\u200b"))
        )
    assert _code(e) == INVALID
    served.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=["zw-fine"]))


def test_oversized_message_is_resource_exhausted_and_stores_nothing(served: ServerHandle) -> None:
    big = _cand("too-big", "x" * (MAX_MESSAGE_BYTES + 10))
    with pytest.raises(grpc.RpcError) as e:
        served.stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=[big]))
    assert _code(e) == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        served.stub.GetCandidate(pb.GetCandidateRequest(id="too-big"))
    assert _code(e) == grpc.StatusCode.NOT_FOUND


def test_an_unexpected_failure_is_internal_with_a_generic_message(
    served: ServerHandle, serving_demo: DemoData, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("secret detail that must not reach the client")

    monkeypatch.setattr(served.pipeline, "rank", boom)
    with pytest.raises(grpc.RpcError) as e:
        served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id))
    assert _code(e) == grpc.StatusCode.INTERNAL
    assert "secret" not in _details(e) and "server log" in _details(e)


# -- writes ---------------------------------------------------------------------------------


def test_upsert_reports_per_item_and_is_idempotent(served: ServerHandle) -> None:
    before = served.pipeline.candidate_count
    items = [
        _cand("u-good", skills=["Python"], years_experience=4, location="Lisbon"),
        _cand("u-empty", "   "),
        _cand("u-nan", years_experience=float("nan")),
        _cand("u-good", "a second copy of the same id"),
        _cand("", "no id"),
    ]
    r = served.stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=items))
    codes = [i.code for i in r.items]
    ok, invalid = grpc.StatusCode.OK.value[0], INVALID.value[0]
    assert codes == [ok, invalid, invalid, invalid, invalid]
    assert [i.index for i in r.items] == [0, 1, 2, 3, 4]
    assert all(i.message for i in r.items[1:])
    assert r.stored == 1 and r.items[0].created
    assert r.total_candidates == before + 1
    got = served.stub.GetCandidate(pb.GetCandidateRequest(id="u-good")).candidate
    assert got.skills == ["python"] and got.location == "Lisbon"
    for bad in ("u-empty", "u-nan"):
        with pytest.raises(grpc.RpcError):
            served.stub.GetCandidate(pb.GetCandidateRequest(id=bad))
    # The same id again replaces it: not created, the count unchanged, the new text stored.
    again = served.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(candidates=[_cand("u-good", "Now a Go developer.")])
    )
    assert again.items[0].code == ok and not again.items[0].created
    assert again.total_candidates == before + 1
    got = served.stub.GetCandidate(pb.GetCandidateRequest(id="u-good")).candidate
    assert got.cv_text == "Now a Go developer."
    served.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=["u-good"]))


@pytest.mark.parametrize("n", [0, MAX_BATCH + 1])
def test_empty_or_oversized_batches_are_invalid_and_store_nothing(
    served: ServerHandle, n: int
) -> None:
    before = served.pipeline.candidate_count
    items = [_cand(f"batch-{i}") for i in range(n)]
    with pytest.raises(grpc.RpcError) as e:
        served.stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=items))
    assert _code(e) == INVALID
    assert served.pipeline.candidate_count == before
    with pytest.raises(grpc.RpcError) as e:
        served.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=[f"x{i}" for i in range(n)]))
    assert _code(e) == INVALID


def test_upsert_postings_and_list_them(served: ServerHandle, serving_demo: DemoData) -> None:
    r = served.stub.UpsertPostings(
        pb.UpsertPostingsRequest(
            postings=[
                pb.Posting(id="P-new", title="Data engineer", description="Pipelines in Spark."),
                pb.Posting(id="P-bad", title="No description", description=""),
            ]
        )
    )
    assert [i.code for i in r.items] == [0, INVALID.value[0]]
    assert r.stored == 1 and r.items[0].created
    first = served.stub.ListPostings(pb.ListPostingsRequest())
    listed = [p.id for p in first.postings]
    assert listed == sorted(listed) and not first.next_page_token
    assert "P-new" in listed and "P-bad" not in listed
    assert {p.id for p in serving_demo.postings} <= set(listed)
    paged: list[str] = []
    token = ""
    while True:
        page = served.stub.ListPostings(pb.ListPostingsRequest(page_size=2, page_token=token))
        assert len(page.postings) <= 2
        paged += [p.id for p in page.postings]
        token = page.next_page_token
        if not token:
            break
    assert paged == listed
    with pytest.raises(grpc.RpcError) as e:
        served.stub.ListPostings(pb.ListPostingsRequest(page_token="%%%"))
    assert _code(e) == INVALID and "page_token" in _details(e)
    r = served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id="P-new", top_k=2))
    assert len(r.results) == 2


def test_record_outcomes_per_item(served: ServerHandle, serving_demo: DemoData) -> None:
    p, c = serving_demo.postings[0].id, serving_demo.candidates[5].id
    before = served.pipeline.store.count_outcomes()
    r = served.stub.RecordOutcomes(
        pb.RecordOutcomesRequest(
            outcomes=[
                pb.Outcome(posting_id=p, candidate_id=c, stage="Hired"),
                pb.Outcome(posting_id=p, candidate_id="nobody", stage="screened"),
                pb.Outcome(posting_id="P-none", candidate_id=c, stage="screened"),
                pb.Outcome(posting_id=p, candidate_id=c, stage="promoted to CEO"),
            ]
        )
    )
    nf = grpc.StatusCode.NOT_FOUND.value[0]
    assert [i.code for i in r.items] == [0, nf, nf, INVALID.value[0]]
    assert r.recorded == 1
    assert served.pipeline.store.count_outcomes() == before + 1
    stored = [o for o in served.pipeline.store.list_outcomes() if o.candidate_id == c]
    assert any(o.stage.value == "hired" and o.posting_id == p for o in stored)
    assert all(isinstance(o.at, datetime) for o in stored)
    # The same event again is OK (idempotent) but not counted as recorded; year 9999 is refused.
    hired = next(o for o in stored if o.stage.value == "hired" and o.posting_id == p)
    at = Timestamp()
    at.FromDatetime(hired.at)
    far = Timestamp(seconds=253370764800)  # 9999-01-01
    again = served.stub.RecordOutcomes(
        pb.RecordOutcomesRequest(
            outcomes=[
                pb.Outcome(posting_id=p, candidate_id=c, stage="hired", at=at),
                pb.Outcome(posting_id=p, candidate_id=c, stage="offered", at=far),
            ]
        )
    )
    assert [i.code for i in again.items] == [0, INVALID.value[0]]
    assert "future" in again.items[1].message
    assert again.recorded == 0
    assert served.pipeline.store.count_outcomes() == before + 1


def test_get_candidate_round_trips_the_fields(served: ServerHandle, serving_demo: DemoData) -> None:
    c = serving_demo.candidates[3]
    got = served.stub.GetCandidate(pb.GetCandidateRequest(id=c.id)).candidate
    assert got == candidate_to_pb(c)


class _RecordingLock:
    """The pipeline's lock, noting which thread takes a read."""

    def __init__(self, inner: ReadWriteLock) -> None:
        self.inner = inner
        self.readers: list[str] = []

    def read(self):  # type: ignore[no-untyped-def]
        self.readers.append(threading.current_thread().name)
        return self.inner.read()

    def write(self):  # type: ignore[no-untyped-def]
        return self.inner.write()


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetCandidate", pb.GetCandidateRequest(id="C0004")),
        ("GetModelInfo", pb.GetModelInfoRequest()),
        ("ListPostings", pb.ListPostingsRequest()),
    ],
    ids=["GetCandidate", "GetModelInfo", "ListPostings"],
)
def test_reads_take_the_lock_on_a_worker_not_the_event_loop(
    served: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    request_: pb_message.Message,
) -> None:
    # Unlocked, a slot freed and reused by a concurrent write could hand back another
    # candidate; and a lock taken on the event loop would stall every other call.
    recording = _RecordingLock(served.pipeline._lock)
    monkeypatch.setattr(served.pipeline, "_lock", recording)
    getattr(served.stub, method)(request_)
    assert recording.readers, f"{method} read the catalog without the lock"
    assert all(name.startswith("ranker-worker") for name in recording.readers)


def test_a_lone_ranking_runs_on_the_event_loop_and_one_beside_another_call_on_a_worker(
    served: ServerHandle, serving_demo: DemoData, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = _RecordingLock(served.pipeline._lock)
    monkeypatch.setattr(served.pipeline, "_lock", recording)
    request = pb.RankCandidatesRequest(posting_id=serving_demo.postings[0].id, top_k=3)
    loop_thread = served._thread.name

    # Alone: ranked on the loop's thread, which would otherwise only wait for a worker.
    alone = served.stub.RankCandidates(request, timeout=10)
    assert recording.readers and set(recording.readers) == {loop_thread}

    # Beside a call still in flight (a read held on a worker), the ranking goes to a worker
    # too, and neither waits for the other.
    entered, release = threading.Event(), threading.Event()
    get_candidate = served.pipeline.get_candidate

    def held(candidate_id: str):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(10)
        return get_candidate(candidate_id)

    monkeypatch.setattr(served.pipeline, "get_candidate", held)
    wanted = serving_demo.candidates[0].id
    pending = served.stub.GetCandidate.future(pb.GetCandidateRequest(id=wanted), timeout=20)
    assert entered.wait(10)
    recording.readers.clear()
    beside = served.stub.RankCandidates(request, timeout=10)
    assert recording.readers and all(n.startswith("ranker-worker") for n in recording.readers)
    release.set()
    assert pending.result().candidate.id == wanted
    assert [r.candidate_id for r in beside.results] == [r.candidate_id for r in alone.results]

    # Switched off (RANKER_INLINE_LONE_RANKINGS=false): every ranking goes to a worker.
    monkeypatch.setattr(served.server.service, "inline_lone_rankings", False)
    recording.readers.clear()
    served.stub.RankCandidates(request, timeout=10)
    assert recording.readers and all(n.startswith("ranker-worker") for n in recording.readers)


def test_concurrent_upserts_and_rankings_lose_nothing(
    served: ServerHandle, serving_demo: DemoData
) -> None:
    before = served.pipeline.candidate_count
    errors: list[BaseException] = []
    rankings: list[pb.RankCandidatesResponse] = []

    def upsert(worker: int) -> None:
        try:
            for batch in range(3):
                ids = [f"conc-{worker}-{batch}-{i}" for i in range(4)]
                r = served.stub.UpsertCandidates(
                    pb.UpsertCandidatesRequest(
                        candidates=[_cand(cid, f"Engineer {cid} with Rust.") for cid in ids]
                    )
                )
                assert r.stored == 4
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    def rank(worker: int) -> None:
        try:
            for i in range(6):
                p = serving_demo.postings[(worker + i) % len(serving_demo.postings)]
                rankings.append(
                    served.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=p.id, top_k=5))
                )
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=upsert, args=(w,)) for w in range(3)]
    threads += [threading.Thread(target=rank, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(rankings) == 18 and all(len(r.results) == 5 for r in rankings)
    new_ids = [f"conc-{w}-{b}-{i}" for w in range(3) for b in range(3) for i in range(4)]
    assert served.pipeline.candidate_count == before + len(new_ids)
    for cid in new_ids:
        assert served.stub.GetCandidate(pb.GetCandidateRequest(id=cid)).candidate.id == cid
    # Every one of them is searchable: a filter-free ranking over everything can return them.
    r = served.stub.RankCandidates(
        pb.RankCandidatesRequest(
            posting=pb.Posting(title="Rust engineer", description="Rust."), top_k=1000
        )
    )
    assert set(new_ids) <= {c.candidate_id for c in r.results}
    d = served.stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=new_ids))
    assert all(i.code == 0 for i in d.items)


# -- metrics --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_endpoint(start_server, registry_path, serving_demo: DemoData) -> None:  # type: ignore[no-untyped-def]
    port = _free_port()
    h = start_server(registry_dir=registry_path, metrics_port=port)
    h.stub.UpsertCandidates(
        pb.UpsertCandidatesRequest(candidates=[candidate_to_pb(serving_demo.candidates[0])])
    )
    with pytest.raises(grpc.RpcError):
        h.stub.RankCandidates(pb.RankCandidatesRequest(posting_id="nope"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'ranker_requests_total{code="OK",rpc="UpsertCandidates"} 1.0' in text
    assert 'ranker_errors_total{code="NOT_FOUND",rpc="RankCandidates"} 1.0' in text
    assert 'ranker_request_seconds_count{rpc="RankCandidates"} 1.0' in text
    assert "ranker_index_size 1.0" in text
    version = h.stub.GetModelInfo(pb.GetModelInfoRequest()).version
    assert f'ranker_model_info{{version="{version}"}} 1.0' in text
