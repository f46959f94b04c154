"""One structured log line per RPC, the request id in response metadata, ranking histograms.

Every unary RPC (the ranker's, health's Check) is wrapped: the line says method, status code,
duration, request id, model version and the counts the response holds, at INFO (WARNING for a
server-side failure), written just after the answer is sent. A client may send its own `x-request-id` (1..128 printable ASCII
characters, no spaces; anything else is ignored and a fresh id used); the id goes back in the
trailing metadata `x-request-id`, set before the handler runs so an error carries it too. For
RankCandidates without a client id, the response's `request_id` (the decision log's key) is
the request id, so header, body, log line and `ranker decision` agree.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from ranker.metrics import ServiceMetrics
from ranker.v1 import ranker_pb2 as pb

log = logging.getLogger("ranker.rpc")

REQUEST_ID_KEY = "x-request-id"
_VALID_ID = re.compile(r"[\x21-\x7e]{1,128}")
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)


def client_request_id(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The caller's `x-request-id` when it is a usable id, else None."""
    for key, value in metadata or ():
        if key.lower() == REQUEST_ID_KEY and isinstance(value, str):
            return value if _VALID_ID.fullmatch(value) else None
    return None


def response_fields(response: object) -> dict[str, Any]:
    """The counts (and model version) worth a log line, read off a response message."""
    if isinstance(response, pb.RankCandidatesResponse):
        return {
            "decision_id": response.request_id,
            "model_version": response.model_version,
            "posting_id": response.posting_id,
            "results": len(response.results),
            "eligible": response.eligible,
            "retrieved": response.retrieved,
        }
    if isinstance(
        response,
        pb.UpsertCandidatesResponse
        | pb.UpsertPostingsResponse
        | pb.DeleteCandidatesResponse
        | pb.RecordOutcomesResponse,
    ):
        return {
            "items": len(response.items),
            "refused": sum(1 for i in response.items if i.code),
        }
    if isinstance(response, pb.GetModelInfoResponse):
        return {"model_version": response.version}
    if isinstance(response, pb.ListPostingsResponse):
        return {"items": len(response.postings)}
    return {}


class RequestLogInterceptor(grpc.aio.ServerInterceptor):
    """Logs each unary RPC once and returns its request id; streaming RPCs pass untouched."""

    def __init__(self, metrics: ServiceMetrics, model_version: Callable[[], str | None]) -> None:
        self._metrics = metrics
        self._model_version = model_version

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method  # type: ignore[attr-defined]
        given = client_request_id(details.invocation_metadata)  # type: ignore[attr-defined]
        inner = handler.unary_unary

        async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
            request_id = given or uuid.uuid4().hex
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            response: Any = None
            try:
                response = await inner(request, context)
                if given is None and isinstance(response, pb.RankCandidatesResponse):
                    request_id = response.request_id
                    context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
                return response
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = _code_of(context)
                raise
            finally:
                seconds = time.perf_counter() - started
                # Written once the answer has left: grpc starts sending it as soon as this
                # coroutine returns, before the loop runs its next callback. The line and the
                # histograms cost ~0.2 ms that the caller then does not wait for.
                asyncio.get_running_loop().call_soon(
                    self._finish, method, code, seconds, request_id, response
                )

        return grpc.unary_unary_rpc_method_handler(
            logged,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _finish(
        self,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        request_id: str,
        response: object,
    ) -> None:
        fields: dict[str, Any] = {
            "method": method,
            "code": code.name,
            "duration_ms": round(seconds * 1000, 2),
            "request_id": request_id,
        }
        fields.update(response_fields(response))
        if "model_version" not in fields:
            fields["model_version"] = self._model_version() or ""
        if isinstance(response, pb.RankCandidatesResponse):
            self._observe(response)
        level = logging.WARNING if code in _SERVER_FAULTS else logging.INFO
        log.log(level, "%s %s", method.rsplit("/", 1)[-1], code.name, extra={"fields": fields})

    def _observe(self, r: pb.RankCandidatesResponse) -> None:
        m = self._metrics
        m.eligible.observe(r.eligible)
        for c in r.results:
            m.scores.observe(c.score)
            m.similarities.observe(c.similarity)


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """The status an aborted handler set; UNKNOWN when it raised without one."""
    code = context.code()  # type: ignore[attr-defined]
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN
