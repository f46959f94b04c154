"""The gRPC transport: convert messages, run the pipeline off the event loop, convert back."""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf import message as pb_message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ranker.config import Settings
from ranker.encoding import TextEncoder
from ranker.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelRejected,
    NotFound,
    NotReady,
    Overloaded,
    RankerError,
)
from ranker.explain import Explanation
from ranker.messages import candidate_from_pb as candidate_from_pb
from ranker.messages import candidate_to_pb as candidate_to_pb
from ranker.messages import outcome_from_pb as outcome_from_pb
from ranker.messages import posting_from_pb as posting_from_pb
from ranker.messages import posting_to_pb as posting_to_pb
from ranker.messages import reject_unknown_fields, timestamp
from ranker.metrics import ServiceMetrics
from ranker.pipeline import (
    BatchResult,
    Deadline,
    RankFilters,
    RankingPipeline,
    RankQuery,
    RankResult,
    Rejected,
    check_settings,
)
from ranker.v1 import ranker_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CandidateRanker"].full_name

# The one table from domain errors to status codes; the first matching class wins.
STATUS_BY_ERROR: tuple[tuple[type[RankerError], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ModelRejected, grpc.StatusCode.FAILED_PRECONDITION),
)
INTERNAL_MESSAGE = "internal error; the server log has the details"


def status_for(error: BaseException) -> grpc.StatusCode:
    """The status code of a domain error; anything unexpected is INTERNAL."""
    for cls, code in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


class StartError(RuntimeError):
    """The server could not start (e.g. a port in use); the message says what to do."""


def _port_in_use(port: int) -> StartError:
    return StartError(
        f"port {port} in use; stop the other server or set RANKER_PORT / RANKER_METRICS_PORT"
    )


# ---------------------------------------------------------------------------------------------
# Conversions (messages <-> domain records; the record conversions live in ranker.messages)


R = TypeVar("R")


def _parse_items(
    messages: Sequence[Any], convert: Callable[[Any], R], ident: Callable[[Any], str]
) -> list[R | Rejected]:
    """Each message as a domain record, or the reason it is not one (reported per item)."""
    out: list[R | Rejected] = []
    for m in messages:
        try:
            out.append(convert(m))
        except RankerError as e:
            out.append(Rejected(ident(m), e))
    return out


def filters_from_pb(m: pb.Filters) -> RankFilters:
    return RankFilters(
        locations=tuple(m.locations),
        include_remote=m.include_remote,
        include_relocating=m.include_relocating,
        remote_only=m.remote_only,
        min_years=m.min_years if m.HasField("min_years") else None,
        must_have_skills=tuple(m.must_have_skills),
    )


def query_from_pb(m: pb.RankCandidatesRequest) -> RankQuery:
    which = m.WhichOneof("posting_ref")
    if which is None:
        raise InvalidInput("the request names no posting; set posting_id or posting")
    if which == "posting_id" and not m.posting_id.strip():
        raise InvalidInput("posting_id is empty; send a stored posting's id or an inline posting")
    return RankQuery(
        posting_id=m.posting_id if which == "posting_id" else None,
        posting=posting_from_pb(m.posting, default_id="inline") if which == "posting" else None,
        top_k=m.top_k if m.HasField("top_k") else None,
        retrieve_n=m.retrieve_n if m.HasField("retrieve_n") else None,
        filters=filters_from_pb(m.filters) if m.HasField("filters") else RankFilters(),
        explain=m.explain,
    )


def _explanation_to_pb(e: Explanation) -> pb.Explanation:
    return pb.Explanation(
        reasons=list(e.reasons),
        required_matched=list(e.fit.required_matched),
        required_missing=list(e.fit.required_missing),
        nice_matched=list(e.fit.nice_matched),
        years_experience=e.fit.years_experience,
        min_years=e.fit.min_years,
        location_fit=e.fit.location_fit,
        top_features=[
            pb.FeatureContribution(name=f.name, value=f.value, contribution=f.contribution)
            for f in e.top_features
        ],
    )


def rank_result_to_pb(r: RankResult) -> pb.RankCandidatesResponse:
    t = r.timings_ms
    return pb.RankCandidatesResponse(
        request_id=r.request_id,
        model_version=r.model_version,
        posting_id=r.posting_id,
        results=[
            pb.RankedCandidate(
                candidate_id=c.candidate_id,
                rank=c.rank,
                score=c.score,
                similarity=c.similarity,
                explanation=_explanation_to_pb(c.explanation) if c.explanation else None,
            )
            for c in r.results
        ],
        eligible=r.eligible,
        retrieved=r.retrieved,
        timings=pb.StageTimings(
            encode_ms=t["encode"],
            retrieve_ms=t["retrieve"],
            features_ms=t["features"],
            score_ms=t["score"],
            explain_ms=t["explain"],
            total_ms=t["total"],
        ),
    )


def _items_to_pb(result: BatchResult) -> list[pb.ItemStatus]:
    return [
        pb.ItemStatus(
            index=i.index,
            id=i.id,
            code=0 if i.error is None else status_for(i.error).value[0],
            message="" if i.error is None else str(i.error),
            created=i.created,
        )
        for i in result.items
    ]


# ---------------------------------------------------------------------------------------------
# The servicer

_Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[pb_message.Message]]


class CandidateRankerService:
    """ranker.v1.CandidateRanker: each method converts, calls the pipeline on a worker thread,
    and converts back; errors become status codes through `STATUS_BY_ERROR` alone."""

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
        items = _parse_items(request.candidates, candidate_from_pb, lambda m: m.id)
        r = await self._run(self._pipeline().upsert_candidates, items, self._deadline(context))
        self._count_item_errors("UpsertCandidates", r)
        return pb.UpsertCandidatesResponse(
            items=_items_to_pb(r), stored=r.succeeded, total_candidates=r.total_candidates
        )

    async def DeleteCandidates(  # noqa: N802
        self, request: pb.DeleteCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCandidatesResponse:
        r = await self._run(
            self._pipeline().delete_candidates, list(request.ids), self._deadline(context)
        )
        self._count_item_errors("DeleteCandidates", r)
        receipt = None
        if r.receipt is not None:
            receipt = pb.ErasureReceipt(
                receipt_ids=list(r.receipt.receipt_ids),
                erased_at=timestamp(r.receipt.at),
                candidates=len(r.receipt.erased),
                rows_deleted=sum(r.receipt.rows.values()),
                rows_by_table=dict(r.receipt.rows),
            )
        return pb.DeleteCandidatesResponse(
            items=_items_to_pb(r), receipt=receipt, total_candidates=r.total_candidates
        )

    async def UpsertPostings(  # noqa: N802
        self, request: pb.UpsertPostingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertPostingsResponse:
        items = _parse_items(request.postings, posting_from_pb, lambda m: m.id)
        r = await self._run(self._pipeline().upsert_postings, items, self._deadline(context))
        self._count_item_errors("UpsertPostings", r)
        return pb.UpsertPostingsResponse(items=_items_to_pb(r), stored=r.succeeded)

    async def RankCandidates(  # noqa: N802
        self, request: pb.RankCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankCandidatesResponse:
        query = query_from_pb(request)
        r = await self._run(self._pipeline().rank, query, self._deadline(context))
        return rank_result_to_pb(r)

    async def RecordOutcomes(  # noqa: N802
        self, request: pb.RecordOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomesResponse:
        items = _parse_items(
            request.outcomes, outcome_from_pb, lambda m: f"{m.posting_id}/{m.candidate_id}"
        )
        r = await self._run(self._pipeline().record_outcomes, items, self._deadline(context))
        self._count_item_errors("RecordOutcomes", r)
        return pb.RecordOutcomesResponse(items=_items_to_pb(r), recorded=r.recorded)

    # Reads run on a worker too: they take the pipeline's lock, which must never block the loop.
    async def GetModelInfo(  # noqa: N802
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        pipeline = self._pipeline()

        def build() -> pb.GetModelInfoResponse:
            info = pipeline.model_info()
            return pb.GetModelInfoResponse(
                version=info.version,
                feature_names=list(info.feature_names),
                metrics=RankingPipeline.card_metrics(info.card),
                card_json=json.dumps(info.card, sort_keys=True, default=str),
                loaded_at=timestamp(info.loaded_at),
                total_candidates=info.total_candidates,
            )

        return await self._run(build)

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

        def build() -> pb.ListPostingsResponse:
            page = pipeline.list_postings(request.page_size, request.page_token)
            return pb.ListPostingsResponse(
                postings=[posting_to_pb(p) for p in page.postings],
                next_page_token=page.next_page_token,
            )

        return await self._run(build)

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
                reject_unknown_fields(request)
                return await fn(request, context)
            except RankerError as e:
                code, message = status_for(e), str(e)
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


# ---------------------------------------------------------------------------------------------
# The server


class RankerServer:
    """The grpc.aio server with health, reflection, metrics, model polling and index saves."""

    def __init__(self, settings: Settings, *, encoder: TextEncoder | None = None) -> None:
        self.settings = settings
        self.encoder = encoder
        self.metrics = ServiceMetrics()
        self.pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="ranker-worker")
        # Model polls and index saves get their own thread so a busy pool cannot delay them.
        self._upkeep_pool = ThreadPoolExecutor(1, thread_name_prefix="ranker-upkeep")
        self.service = CandidateRankerService(self.metrics, self.pool)
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_http: Any = None
        self.loaded = asyncio.Event()
        self.load_error: BaseException | None = None

    @property
    def pipeline(self) -> RankingPipeline | None:
        return self.service.pipeline

    async def start(self) -> int:
        """Bind and start answering (NOT_SERVING), then load the pipeline in the background.

        The metrics port is opened first and the gRPC port second; if either is taken, what
        was started is stopped again and StartError says which port to free or change.
        """
        s = self.settings
        check_settings(s)
        try:
            self._metrics_http = self.metrics.serve_http(s.host, s.metrics_port)
        except OSError as e:
            self._release_threads()
            if e.errno == errno.EADDRINUSE:
                raise _port_in_use(s.metrics_port) from None
            raise StartError(
                f"cannot open the metrics port {s.host}:{s.metrics_port} ({e}); set "
                "RANKER_METRICS_PORT (0 disables it) or RANKER_HOST"
            ) from None
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers((self.service.generic_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            # grpcio raises RuntimeError("Failed to bind ...") when the port is taken.
            self.port = server.add_insecure_port(f"{s.host}:{s.port}")
        except RuntimeError:
            self._close_metrics()
            self._release_threads()
            raise _port_in_use(s.port) from None
        await self._set_health(False)
        await server.start()
        self._server = server
        log.info("listening on %s:%d (metrics on port %s)", s.host, self.port, s.metrics_port)
        self._tasks.append(asyncio.create_task(self._load(), name="ranker-load"))
        return self.port

    def _close_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None

    def _release_threads(self) -> None:
        self.pool.shutdown(wait=False)
        self._upkeep_pool.shutdown(wait=False)

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def _load(self) -> None:
        opening = self._upkeep_pool.submit(
            RankingPipeline.open, self.settings, encoder=self.encoder, metrics=self.metrics
        )
        try:
            self.service.pipeline = await asyncio.wrap_future(opening)
        except asyncio.CancelledError:
            # Stopped while loading: close the pipeline the worker is still opening.
            opening.add_done_callback(
                lambda f: (
                    f.result().close() if not f.cancelled() and f.exception() is None else None
                )
            )
            raise
        except Exception as e:
            log.exception("the service could not load its store, index or model")
            self.load_error = e
            self.loaded.set()
            return
        await self._set_health(self.service.pipeline.ready)
        self.loaded.set()
        self._tasks.append(asyncio.create_task(self._upkeep(), name="ranker-upkeep"))

    async def _upkeep(self) -> None:
        """Poll the registry for a newly promoted model and save the index after writes."""
        loop = asyncio.get_running_loop()
        pipeline = self.service.pipeline
        assert pipeline is not None
        tick = min(self.settings.model_poll_seconds, 0.5)
        next_poll = 0.0
        while True:
            try:
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.settings.model_poll_seconds
                    await loop.run_in_executor(self._upkeep_pool, pipeline.refresh_model)
                    await self._set_health(pipeline.ready)
                await loop.run_in_executor(self._upkeep_pool, pipeline.save_index)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background upkeep failed; retrying")
            await asyncio.sleep(tick)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish within `grace`, then save and close."""
        grace = self.settings.grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        loop = asyncio.get_running_loop()
        # A call the server gave up on (grace over, client gone) may still run on a worker:
        # let every worker finish before the store under them is closed.
        await loop.run_in_executor(self._upkeep_pool, functools.partial(self.pool.shutdown, True))
        pipeline = self.service.pipeline
        self.service.pipeline = None
        if pipeline is not None:
            await loop.run_in_executor(self._upkeep_pool, pipeline.close)
        self._close_metrics()
        self._upkeep_pool.shutdown(wait=True)
        log.info("server stopped")


async def serve(settings: Settings, *, encoder: TextEncoder | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (`ranker serve`)."""
    server = RankerServer(settings, encoder=encoder)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    loaded = asyncio.create_task(server.loaded.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loaded, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if server.load_error is None and not stop.is_set():
        await stopping
    loaded.cancel()
    await server.stop()
    if server.load_error is not None:
        raise server.load_error
