"""The standard grpc.health.v1 service, with `List` answered (grpcio's aio servicer lacks it)."""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2


class ListingHealthServicer(health.aio.HealthServicer):
    """grpcio's asyncio health servicer plus `List`: every service's status in one reply.

    Without it `List` ends in grpcio's base class, which raises NotImplementedError and logs a
    traceback on every probe that tries it.
    """

    async def List(  # noqa: N802 (gRPC method name)
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        # `_server_status` is the servicer's own table of statuses, kept by `set`.
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )
