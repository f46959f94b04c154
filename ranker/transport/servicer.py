"""The CandidateRanker servicer: convert each request, call the pipeline, convert back."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import message as pb_message

from ranker.admission import EncodeAdmission
from ranker.api import BatchResult, Deadline
from ranker.domain import MAX_ID_CHARS
from ranker.errors import InvalidInput, NotReady, RankerError, shown_id
from ranker.metrics import ServiceMetrics
from ranker.pipeline import RankingPipeline
from ranker.transport.convert import (
    candidate_from_pb,
    candidate_to_pb,
    compare_query_from_pb,
    comparison_to_pb,
    items_to_pb,
    model_info_to_pb,
    outcome_from_pb,
    parse_items,
    posting_from_pb,
    posting_page_to_pb,
    query_from_pb,
    rank_result_to_pb,
    receipt_to_pb,
    reject_unknown_fields,
)
from ranker.transport.status import error_details, status_for
from ranker.v1 import ranker_pb2 as pb

if TYPE_CHECKING:
    from ranker.transport.access import AccessPolicy

log = logging.getLogger(__name__)

MAX_STATUS_MESSAGE = 2000
"""Longest status message sent: it travels in trailing metadata, whose size gRPC limits."""

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateRanker"].full_name
INTERNAL_MESSAGE = "internal error; the server log has the details"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer of rich error details (a serialized google.rpc.Status), gRPC's convention."""

R = TypeVar("R")

_Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[pb_message.Message]]


class CandidateRankerService:
    """ranker.v1.CandidateRanker: each method converts, calls the pipeline on a worker thread,
    and converts back; errors become status codes through the table in `ranker.transport.status` alone.

    Two pools: `pool` runs reads and rankings by stored posting, `encode_pool` runs whatever
    encodes (upserts, inline postings) after `admission` let it in; so a read never queues
    behind an encoding, and a caller that gives up stops its encoding at the next checkpoint.
    One exception: a ranking by stored posting that is the only call in flight runs on the
    event loop's thread (`inline_lone_rankings`), which has nothing else to do meanwhile.
    """

    strict_fields = False
    """Refuse field numbers the contract does not define (`Settings.strict_fields`)."""

    inline_lone_rankings = True
    """Rank by stored posting on the loop's thread when alone (`Settings.inline_lone_rankings`)."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        pool: ThreadPoolExecutor,
        encode_pool: ThreadPoolExecutor | None = None,
        admission: EncodeAdmission | None = None,
        access: AccessPolicy | None = None,
    ) -> None:
        self.metrics = metrics
        self.pool = pool
        self.encode_pool = encode_pool if encode_pool is not None else pool
        self.admission = admission
        self.access = access
        self.pipeline: RankingPipeline | None = None
        """Set once the store, index and model are loaded; until then calls are UNAVAILABLE."""
        self._in_flight = 0
        """Calls of this service between parsing and answering (the event loop's count)."""

    def _pipeline(self) -> RankingPipeline:
        p = self.pipeline
        if p is None:
            raise NotReady("the service is still loading its index and model; retry shortly")
        return p

    async def _run(
        self,
        fn: Callable[..., R],
        *args: Any,
        deadline: Deadline | None = None,
        encode_chars: int | None = None,
    ) -> R:
        """`fn(*args)` on a worker thread: the encode pool when `encode_chars` is given (after
        admission), else the read pool: CPU work stays off the event loop (but for a lone
        ranking, `RankCandidates`).

        When the call is cancelled (the caller gave up, or its deadline passed) the job is
        dropped if it has not started, and told to stop through `deadline` if it has.
        """
        pool = self.pool
        taken = 0
        if encode_chars is not None:
            pool = self.encode_pool
            if self.admission is not None:
                taken = self.admission.admit(encode_chars, "the request")
        try:
            job = pool.submit(fn, *args)
        except BaseException:
            if taken and self.admission is not None:
                self.admission.release(taken)
            raise
        if taken and self.admission is not None:
            admission = self.admission
            # Given back when the job ends (or is dropped unstarted), not when the caller
            # leaves: an encoding still winding down to its checkpoint holds its share.
            job.add_done_callback(lambda _: admission.release(taken))
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if deadline is not None and deadline.cancelled is not None:
                deadline.cancelled.set()
            raise

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext) -> Deadline:
        return Deadline.after(context.time_remaining(), threading.Event())

    async def UpsertCandidates(  # noqa: N802 (gRPC method names)
        self, request: pb.UpsertCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertCandidatesResponse:
        items = parse_items(request.candidates, candidate_from_pb, lambda m: m.id)
        d = self._deadline(context)
        chars = sum(len(m.cv_text) for m in request.candidates)
        r = await self._run(
            self._pipeline().upsert_candidates, items, d, deadline=d, encode_chars=chars
        )
        self._count_item_errors("UpsertCandidates", r)
        return pb.UpsertCandidatesResponse(
            items=items_to_pb(r), stored=r.succeeded, total_candidates=r.total_candidates
        )

    async def DeleteCandidates(  # noqa: N802
        self, request: pb.DeleteCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCandidatesResponse:
        actor = self.access.actor(context.invocation_metadata()) if self.access else "anonymous"
        d = self._deadline(context)
        r = await self._run(
            self._pipeline().delete_candidates, list(request.ids), d, actor, deadline=d
        )
        self._count_item_errors("DeleteCandidates", r)
        return pb.DeleteCandidatesResponse(
            items=items_to_pb(r),
            receipt=receipt_to_pb(r.receipt),
            total_candidates=r.total_candidates,
        )

    async def UpsertPostings(  # noqa: N802
        self, request: pb.UpsertPostingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertPostingsResponse:
        items = parse_items(request.postings, posting_from_pb, lambda m: m.id)
        d = self._deadline(context)
        chars = sum(len(m.title) + len(m.description) for m in request.postings)
        r = await self._run(
            self._pipeline().upsert_postings, items, d, deadline=d, encode_chars=chars
        )
        self._count_item_errors("UpsertPostings", r)
        return pb.UpsertPostingsResponse(items=items_to_pb(r), stored=r.succeeded)

    async def RankCandidates(  # noqa: N802
        self, request: pb.RankCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankCandidatesResponse:
        query = query_from_pb(request)
        d = self._deadline(context)
        # An inline posting is encoded now: it goes through admission to the encode pool.
        chars = (
            None
            if query.posting is None
            else len(request.posting.title) + len(request.posting.description)
        )
        if chars is None and self.inline_lone_rankings:
            # Calls that arrived with this one get to count themselves first.
            await asyncio.sleep(0)
            if self._in_flight == 1:
                # Alone: ranked here, on the loop's thread, which would otherwise only wait for
                # it; a worker would cost two thread wake-ups (there and back) on its path.
                return rank_result_to_pb(self._pipeline().rank(query, d))
        r = await self._run(self._pipeline().rank, query, d, deadline=d, encode_chars=chars)
        return rank_result_to_pb(r)

    async def RecordOutcomes(  # noqa: N802
        self, request: pb.RecordOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomesResponse:
        items = parse_items(
            request.outcomes, outcome_from_pb, lambda m: f"{m.posting_id}/{m.candidate_id}"
        )
        d = self._deadline(context)
        r = await self._run(self._pipeline().record_outcomes, items, d, deadline=d)
        self._count_item_errors("RecordOutcomes", r)
        return pb.RecordOutcomesResponse(items=items_to_pb(r), recorded=r.recorded)

    # Reads run on a worker too: they take the pipeline's lock, which must never block the loop.
    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        pipeline = self._pipeline()
        return await self._run(lambda: model_info_to_pb(pipeline.model_info()))

    async def GetCandidate(  # noqa: N802
        self, request: pb.GetCandidateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCandidateResponse:
        if not request.id.strip():
            raise InvalidInput("id is empty; send the candidate's id")
        if len(request.id) > MAX_ID_CHARS:
            raise InvalidInput(
                f"id {shown_id(request.id)} is longer than {MAX_ID_CHARS} characters; no stored "
                "candidate has such an id"
            )
        candidate = await self._run(self._pipeline().get_candidate, request.id)
        return pb.GetCandidateResponse(candidate=candidate_to_pb(candidate))

    async def ListPostings(  # noqa: N802
        self, request: pb.ListPostingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPostingsResponse:
        pipeline = self._pipeline()
        return await self._run(
            lambda: posting_page_to_pb(
                pipeline.list_postings(request.page_size, request.page_token)
            )
        )

    async def CompareCandidates(  # noqa: N802
        self, request: pb.CompareCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompareCandidatesResponse:
        query = compare_query_from_pb(request)
        r = await self._run(self._pipeline().compare, query, self._deadline(context))
        return comparison_to_pb(r)

    def _count_item_errors(self, rpc: str, r: BatchResult) -> None:
        for i in r.items:
            if i.error is not None:
                self.metrics.item_errors.labels(rpc=rpc, code=status_for(i.error).name).inc()

    # -- wiring ---------------------------------------------------------------------------
    def _wrap(self, name: str, request_cls: type[pb_message.Message], fn: _Handler) -> Any:
        """Parse, call, count and map errors; the handler gets raw bytes so that a request
        that does not parse is INVALID_ARGUMENT (gRPC's own deserializer would say INTERNAL)."""

        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> pb_message.Message:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            message = ""
            details: bytes | None = None
            self._in_flight += 1
            try:
                try:
                    request = request_cls.FromString(raw)
                except pb_message.DecodeError as e:
                    raise InvalidInput(
                        f"the request is not a valid {request_cls.DESCRIPTOR.full_name} ({e}); "
                        "check field types against proto/ranker/v1/ranker.proto"
                    ) from e
                # protobuf parks a field of the wrong wire type among the unknown fields and
                # moves on; refusing them keeps e.g. a string years_experience from reading as 0.
                reject_unknown_fields(request, strict=self.strict_fields)
                return await fn(request, context)
            except RankerError as e:
                code, message = status_for(e), str(e)
                if len(message) > MAX_STATUS_MESSAGE:
                    message = message[:MAX_STATUS_MESSAGE] + "... (cut)"
                details = error_details(e, code, message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("%s failed", name)
                code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
            finally:
                self._in_flight -= 1
                self.metrics.requests.labels(rpc=name, code=code.name).inc()
                self.metrics.latency.labels(rpc=name).observe(time.perf_counter() - started)
                if code != grpc.StatusCode.OK:
                    self.metrics.errors.labels(rpc=name, code=code.name).inc()
            if details is not None:
                # Added to what is already set (the request id), not in place of it.
                trailing = tuple(context.trailing_metadata() or ())  # type: ignore[attr-defined]
                context.set_trailing_metadata((*trailing, (STATUS_DETAILS_KEY, details)))
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises")

        return grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=None,
            response_serializer=lambda msg: msg.SerializeToString(),
        )

    def generic_handler(self) -> grpc.GenericRpcHandler:
        service = pb.DESCRIPTOR.services_by_name["CandidateRanker"]
        handlers = {
            m.name: self._wrap(m.name, _message_class(m.input_type.name), getattr(self, m.name))
            for m in service.methods
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _message_class(name: str) -> type[pb_message.Message]:
    cls: type[pb_message.Message] = getattr(pb, name)
    return cls
