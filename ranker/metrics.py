"""Prometheus metrics of the service: requests, latency and errors per RPC, index size, model."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

# Ranking at 100k candidates targets ~20 ms; buckets resolve the 1-100 ms range finely.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class ServiceMetrics:
    """The service's metrics, in their own registry so several servers can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ranker_requests",
            "RPCs handled, by method and status code.",
            ["rpc", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "ranker_request_seconds",
            "RPC latency inside the server, by method.",
            ["rpc"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "ranker_errors",
            "RPCs that failed, by method and status code.",
            ["rpc", "code"],
            registry=r,
        )
        self.item_errors = Counter(
            "ranker_item_errors",
            "Items of batch calls that were refused, by method and status code.",
            ["rpc", "code"],
            registry=r,
        )
        self.stage_latency = Histogram(
            "ranker_stage_seconds",
            "Time per stage of a ranking request.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.index_size = Gauge(
            "ranker_index_size", "Candidates in the vector index (searchable).", registry=r
        )
        self.postings = Gauge("ranker_postings", "Postings held by the service.", registry=r)
        self.model_info = Info("ranker_model", "The model version in service.", registry=r)
        self.model_loaded = Gauge(
            "ranker_model_loaded_timestamp_seconds",
            "When the model in service was loaded (Unix time).",
            registry=r,
        )
        self.model_reloads = Counter(
            "ranker_model_reloads",
            "Attempts to load a newly promoted model, by result (loaded/refused).",
            ["result"],
            registry=r,
        )
        # What the service returns, for dashboards and alerts on a shifting distribution.
        self.scores = Histogram(
            "ranker_result_score",
            "Scores of the returned candidates (model or fallback scale).",
            buckets=(-4, -2, -1, -0.5, -0.25, 0, 0.25, 0.5, 1, 2, 4),
            registry=r,
        )
        self.similarities = Histogram(
            "ranker_result_similarity",
            "Retrieval cosine of the returned candidates.",
            buckets=(0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1),
            registry=r,
        )
        self.eligible = Histogram(
            "ranker_eligible_candidates",
            "Candidates passing a ranking's hard filters.",
            buckets=(0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000),
            registry=r,
        )
        self.feature_psi = Gauge(
            "ranker_feature_psi",
            "Population stability index of each feature of the served rows against the training "
            "distribution of the model in service (ranker.drift); above 0.25 is a shift.",
            ["feature"],
            registry=r,
        )
        self.drift_rows = Gauge(
            "ranker_drift_rows",
            "Served feature rows the drift figures are computed on.",
            registry=r,
        )
        # CPU, memory, file descriptors and the Python version, as Prometheus' default
        # registry would have them: this registry is the service's own.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.index_saves = Counter(
            "ranker_index_saves",
            "Index snapshots written to disk, by result.",
            ["result"],
            registry=r,
        )

        # -- robustness and security (issue 12) ----------------------------------------------
        self.encode_chars_in_flight = Gauge(
            "ranker_encode_chars_in_flight",
            "Characters admitted for encoding now (running or waiting).",
            registry=r,
        )
        self.encode_refused = Counter(
            "ranker_encode_refused",
            "Encoding calls refused at admission, by reason (busy / too_large).",
            ["reason"],
            registry=r,
        )
        self.encode_stopped = Counter(
            "ranker_encode_stopped",
            "Encodings stopped midway because their caller gave up (deadline or cancel).",
            registry=r,
        )
        self.decision_log_failing = Gauge(
            "ranker_decision_log_failing",
            "1 while the decision log cannot be written to the store, else 0.",
            registry=r,
        )
        self.decision_log_backlog = Gauge(
            "ranker_decision_log_backlog",
            "Decisions served but not yet in the store (spooled to disk or held in memory).",
            ["where"],
            registry=r,
        )
        self.decision_log_failures = Counter(
            "ranker_decision_log_failures",
            "Failed attempts to write decisions to the store, by what happened to them.",
            ["outcome"],
            registry=r,
        )
        self.erasure_checkpoint_pending = Gauge(
            "ranker_erasure_checkpoint_pending",
            "1 while erased rows may remain in the write-ahead log (a reader holds old pages).",
            registry=r,
        )
        self.erasure_exports_holding = Gauge(
            "ranker_erasure_exports_holding",
            "Export files in the data folder that still hold an erased candidate.",
            registry=r,
        )
        self.catalog_warmed_bytes = Gauge(
            "ranker_catalog_warmed_bytes",
            "Bytes of the catalog's column files read into the page cache since the start "
            "(ranker.preload; the health service `catalog-cache` says when it is done).",
            registry=r,
        )
        self.catalog_cache_sweeps = Counter(
            "ranker_catalog_cache_sweeps_total",
            "Passes over the catalog's column files after the first, keeping them in the page "
            "cache (RANKER_CATALOG_KEEP_WARM_SECONDS).",
            registry=r,
        )

        # -- replicas following a shared store (ranker.follower) -----------------------------
        self.replica_lag = Histogram(
            "ranker_replica_lag_seconds",
            "Time from another service's write (its commit, by that service's clock) to this "
            "replica applying it.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.replica_behind = Gauge(
            "ranker_replica_behind",
            "Change-feed entries known to be committed that this replica has not applied yet.",
            registry=r,
        )
        self.replica_staleness = Gauge(
            "ranker_replica_staleness_seconds",
            "Seconds since this replica last confirmed it held every committed change; above "
            "RANKER_REPLICA_MAX_LAG_SECONDS it reports NOT_SERVING.",
            registry=r,
        )
        self.replica_applied = Counter(
            "ranker_replica_applied",
            "Change-feed entries written by other services and applied here, by kind.",
            ["kind"],
            registry=r,
        )
        self.replica_database_up = Gauge(
            "ranker_replica_database_up",
            "1 while this replica reaches the shared database, else 0.",
            registry=r,
        )

    def set_model(self, version: str, loaded_at: float) -> None:
        """Record the model now in service."""
        self.model_info.info({"version": version})
        self.model_loaded.set(loaded_at)

    def serve_http(self, host: str, port: int) -> WSGIServer | None:
        """Expose /metrics on `port` (0 = disabled); returns the server so it can be shut down."""
        if port == 0:
            return None
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
