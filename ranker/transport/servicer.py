"""The CandidateRanker servicer: convert each request, call the pipeline, convert back."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf import message as pb_message

from ranker.api import BatchResult, Deadline
from ranker.errors import InvalidInput, NotReady, RankerError
from ranker.metrics import ServiceMetrics
from ranker.pipeline import RankingPipeline
from ranker.transport.convert import (
    candidate_from_pb,
    candidate_to_pb,
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

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateRanker"].full_name
INTERNAL_MESSAGE = "internal error; the server log has the details"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer of rich error details (a serialized google.rpc.Status), gRPC's convention."""

R = TypeVar("R")

_Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[pb_message.Message]]


class CandidateRankerService:
    """ranker.v1.CandidateRanker: each method converts, calls the pipeline on a worker thread,
    and converts back; errors become status codes through the table in `ranker.transport.status` alone."""

    strict_fields = False
    """Refuse field numbers the contract does not define (`Settings.strict_fields`)."""

    def __init__(self, metrics: ServiceMetrics, pool: ThreadPoolExecutor) -> None:
        self.metrics = metrics
        self.pool = pool
        self.pipeline: RankingPipeline | None = None
        """Set once the store, index and model are loaded; until then calls are UNAVAILABLE."""

    def _pipeline(self) -> RankingPipeline:
        p = self.pipeline
        if p is None:
            raise NotReady("the service is still loading its index and model; retry shortly")
        return p

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        # CPU work (encoding, search, features, scoring) never runs on the event loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args))

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext) -> Deadline:
        return Deadline.after(context.time_remaining())

    async def UpsertCandidates(  # noqa: N802 (gRPC method names)
        self, request: pb.UpsertCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertCandidatesResponse:
        items = parse_items(request.candidates, candidate_from_pb, lambda m: m.id)
        r = await self._run(self._pipeline().upsert_candidates, items, self._deadline(context))
        self._count_item_errors("UpsertCandidates", r)
        return pb.UpsertCandidatesResponse(
            items=items_to_pb(r), stored=r.succeeded, total_candidates=r.total_candidates
        )

    async def DeleteCandidates(  # noqa: N802
        self, request: pb.DeleteCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCandidatesResponse:
        r = await self._run(
            self._pipeline().delete_candidates, list(request.ids), self._deadline(context)
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
        r = await self._run(self._pipeline().upsert_postings, items, self._deadline(context))
        self._count_item_errors("UpsertPostings", r)
        return pb.UpsertPostingsResponse(items=items_to_pb(r), stored=r.succeeded)

    async def RankCandidates(  # noqa: N802
        self, request: pb.RankCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankCandidatesResponse:
        query = query_from_pb(request)
        r = await self._run(self._pipeline().rank, query, self._deadline(context))
        return rank_result_to_pb(r)

    async def RecordOutcomes(  # noqa: N802
        self, request: pb.RecordOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomesResponse:
        items = parse_items(
            request.outcomes, outcome_from_pb, lambda m: f"{m.posting_id}/{m.candidate_id}"
        )
        r = await self._run(self._pipeline().record_outcomes, items, self._deadline(context))
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
                details = error_details(e, code, message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("%s failed", name)
                code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
            finally:
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
