"""The gRPC server's lifecycle: bind, health, reflection, metrics endpoint, upkeep, shutdown."""

from __future__ import annotations

import asyncio
import errno
import functools
import gc
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ranker.admission import EncodeAdmission, lower_thread_priority
from ranker.config import Settings
from ranker.drift import DriftWatch
from ranker.encoding import TextEncoder
from ranker.errors import RankerError
from ranker.metrics import ServiceMetrics
from ranker.pipeline import RankingPipeline
from ranker.transport.access import (
    AccessInterceptor,
    AccessPolicy,
    ExposureRefused,
    server_credentials,
)
from ranker.transport.health import ListingHealthServicer
from ranker.transport.logging_interceptor import RequestLogInterceptor
from ranker.transport.reflection import enable_reflection
from ranker.transport.servicer import SERVICE_NAME, CandidateRankerService

log = logging.getLogger(__name__)


class StartError(RuntimeError):
    """The server could not start (e.g. a port in use); the message says what to do."""


def _port_in_use(port: int) -> StartError:
    return StartError(
        f"port {port} in use; stop the other server or set RANKER_PORT / RANKER_METRICS_PORT"
    )


HEALTH_DETAILS = ("decision-log", "erasure-checkpoint", "replication", "catalog-cache")
"""Health service names that report one concern each (`RankingPipeline.health`)."""


class RankerServer:
    """The grpc.aio server with health, reflection, metrics, model polling and index saves."""

    def __init__(self, settings: Settings, *, encoder: TextEncoder | None = None) -> None:
        self.settings = settings
        self.encoder = encoder
        self.metrics = ServiceMetrics()
        self.pool = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="ranker-worker")
        # Encoding gets its own threads: a read or a ranking by id never queues behind it.
        # ... at a lower CPU priority, so reads win a core that both want (RANKER_ENCODE_NICE).
        self.encode_pool = ThreadPoolExecutor(
            settings.encode_threads,
            thread_name_prefix="ranker-encode",
            initializer=lower_thread_priority,
            initargs=(settings.encode_nice,),
        )
        self.admission = EncodeAdmission(
            settings.max_request_chars,
            settings.max_encode_chars_in_flight,
            settings.max_encode_queue,
            self.metrics,
        )
        # Model polls and index saves get their own thread so a busy pool cannot delay them.
        self._upkeep_pool = ThreadPoolExecutor(1, thread_name_prefix="ranker-upkeep")
        self.access: AccessPolicy | None = None
        self.service = CandidateRankerService(
            self.metrics, self.pool, self.encode_pool, self.admission
        )
        self.service.strict_fields = settings.strict_fields
        self.service.inline_lone_rankings = settings.inline_lone_rankings
        self.health = ListingHealthServicer()
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_http: Any = None
        self.loaded = asyncio.Event()
        self.load_error: BaseException | None = None

    @property
    def pipeline(self) -> RankingPipeline | None:
        return self.service.pipeline

    def _model_version(self) -> str | None:
        pipeline = self.service.pipeline
        return None if pipeline is None else pipeline.model_version

    async def start(self) -> int:
        """Bind and start answering (NOT_SERVING), then load the pipeline in the background.

        The metrics port is opened first and the gRPC port second; if either is taken, what
        was started is stopped again and StartError says which port to free or change.
        """
        s = self.settings
        try:
            # Who may call, and whether this address may be served at all, before any port opens.
            self.access = AccessPolicy.from_settings(s)
            self.access.check_exposure(s)
            credentials = server_credentials(s)
        except (ExposureRefused, RankerError) as e:
            self._release_threads()
            raise StartError(str(e)) from None
        self.service.access = self.access
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
            # The log line wraps everything, refusals by the access check included.
            interceptors=[
                RequestLogInterceptor(self.metrics, self._model_version),
                AccessInterceptor(self.access, self.metrics),
            ],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers((self.service.generic_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
        )
        try:
            # grpcio raises RuntimeError("Failed to bind ...") when the port is taken.
            address = f"{s.host}:{s.port}"
            self.port = (
                server.add_secure_port(address, credentials)
                if credentials is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError:
            self._close_metrics()
            self._release_threads()
            raise _port_in_use(s.port) from None
        await self._set_health(False)
        await server.start()
        self._server = server
        log.info(
            "listening on %s:%d (%s, %s; metrics on port %s)",
            s.host,
            self.port,
            ("mutual TLS" if s.tls_client_ca_file else "TLS") if s.tls else "plaintext",
            "bearer tokens required" if self.access.required else "no tokens required",
            s.metrics_port,
        )
        self._tasks.append(asyncio.create_task(self._load(), name="ranker-load"))
        return self.port

    def _close_metrics(self) -> None:
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None

    def _release_threads(self) -> None:
        self.pool.shutdown(wait=False)
        self.encode_pool.shutdown(wait=False)
        self._upkeep_pool.shutdown(wait=False)

    @staticmethod
    def _status(serving: bool) -> Any:
        return (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _set_health(self, serving: bool, details: dict[str, bool] | None = None) -> None:
        await self.health.set("", self._status(serving))
        await self.health.set(SERVICE_NAME, self._status(serving))
        for name in HEALTH_DETAILS:
            await self.health.set(name, self._status((details or {}).get(name, serving)))

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
        # What was just loaded (the catalog's per-candidate lists and maps, the index, the model)
        # lives as long as the service: move it out of the cycle collector's reach, or every
        # full collection walks it while a ranking waits (130 ms at 10^6 candidates, measured).
        gc.collect()
        gc.freeze()
        health_now = self.service.pipeline.health()
        await self._set_health(health_now[""], health_now)
        self.loaded.set()
        self._tasks.append(asyncio.create_task(self._upkeep(), name="ranker-upkeep"))
        self._tasks.append(asyncio.create_task(self._watch_drift(), name="ranker-drift"))

    async def _watch_drift(self) -> None:
        """Refresh the feature drift gauges (ranker.drift) of the model in service, now and then."""
        s = self.settings
        watch = DriftWatch(s, self.metrics)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(s.drift_interval_seconds)
            try:
                await loop.run_in_executor(self._upkeep_pool, watch.refresh, self._model_version())
            except Exception:  # a gauge must never take the service down; say why, try again
                log.exception("could not compute the feature drift")

    async def _upkeep(self) -> None:
        """Run the pipeline's upkeep (model polling, index saves) on its own thread, often."""
        loop = asyncio.get_running_loop()
        pipeline = self.service.pipeline
        assert pipeline is not None
        # Often enough for both: the pipeline polls the registry every model_poll_seconds.
        tick = min(self.settings.model_poll_seconds, 0.5)
        reported = pipeline.health()  # as `_load` reported it
        while True:
            await loop.run_in_executor(self._upkeep_pool, pipeline.upkeep)
            now = pipeline.health()
            # A first model promoted, or the decision log or a WAL checkpoint failing or back.
            if now != reported:
                reported = now
                await self._set_health(now[""], now)
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
        await loop.run_in_executor(
            self._upkeep_pool, functools.partial(self.encode_pool.shutdown, True)
        )
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
