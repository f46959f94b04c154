"""The service's one settings object (pydantic-settings, env prefix `RANKER_`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator

from embeddings.config import EncoderSettings

MAX_RETRIEVE_N = 10_000
"""Most candidates one request may retrieve before reranking (and so the largest `top_k`)."""


class Settings(EncoderSettings):
    """Everything configurable about the service; nothing else reads the environment.

    Inherits the encoder's fields (`data_dir`, ONNX Runtime threads, ...) from
    `embeddings.config.EncoderSettings`; `ort_session` hands the ONNX Runtime ones to both the
    encoder and the ranking model's scorer.
    """

    host: str = "127.0.0.1"
    """Address the gRPC server binds to."""

    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one (tests)."""

    metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Prometheus metrics HTTP port; 0 disables the metrics endpoint."""

    retrieve_n: int = Field(default=500, ge=1, le=MAX_RETRIEVE_N)
    """Candidates retrieved by FAISS before reranking, when the request does not say."""

    default_top_k: int = Field(default=10, ge=1)
    """Candidates returned when the request does not say."""

    max_top_k: int = Field(default=1000, ge=1)
    """Largest `top_k` a request may ask for."""

    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest gRPC message accepted; larger ones get RESOURCE_EXHAUSTED."""

    max_batch_items: int = Field(default=1000, ge=1)
    """Most candidates, postings or outcomes in one upsert call."""

    max_text_chars: int = Field(default=100_000, ge=100)
    """Longest CV or posting text accepted, in characters."""

    worker_threads: int = Field(default=4, ge=1)
    """Threads that run rankings by stored posting and reads off the event loop; encoding has
    its own (`encode_threads`), so a read never waits behind an upsert."""

    inline_lone_rankings: bool = True
    """Run a ranking by stored posting on the event loop's own thread when no other call is in
    flight, instead of handing it to a worker and back: two thread wake-ups fewer on the
    ranking's path (BENCHMARKS.md, "At scale"). A call arriving meanwhile waits for that one
    ranking (a few ms); while any other call is in flight, rankings go to the workers."""

    model_poll_seconds: float = Field(default=2.0, gt=0)
    """How often the service checks the registry for a newly promoted model version."""

    grace_seconds: float = Field(default=5.0, ge=0)
    """On shutdown, how long in-flight requests get to finish."""

    max_concurrent_rpcs: int = Field(default=256, ge=1)
    """RPCs in flight at once; more get RESOURCE_EXHAUSTED instead of queueing without bound."""

    index_save_delay_seconds: float = Field(default=2.0, ge=0)
    """After a candidate write, how long the service waits for more before saving the index."""

    index_storage: Literal["flat", "fp16"] = "fp16"
    """FAISS vector storage: `fp16` halves memory and scan time (recall@500 ≈ 0.9997 of exact),
    `flat` is exact float32. Changing it rebuilds the index from the store at the next start."""

    index_ivf_min_candidates: int = Field(default=50_000, ge=0)
    """From this many candidates the index is an inverted file (IVF): a search scans the
    `index_nprobe` lists nearest the query instead of every vector (sub-linear; recall measured
    in BENCHMARKS.md). Below it, and at 0, every search is an exact scan."""

    index_nprobe: int = Field(default=64, ge=1)
    """IVF lists scanned by an unfiltered search. A filter passing a share s of the candidates
    scans nprobe / s lists, and every list (exact) once that is over a quarter of them."""

    catalog_read: Literal["auto", "pread", "mmap"] = "auto"
    """How a ranking reads the retrieved candidates' vectors and terms from the catalog's column
    files. `pread`: one system call per candidate; the pages read stay in the kernel's page
    cache, not in the service's resident memory. `mmap`: through a memory map, ~1 ms faster per
    ranking (one copy, no system call or page-cache lookup per candidate), but every page read
    stays mapped: resident memory grows toward the blobs file's size (~9 GiB at 10^6
    candidates; clean pages the kernel reclaims under pressure). `auto`: mmap while the blobs
    file is at most `catalog_mmap_max_mib`, pread beyond, so the mapped share of resident memory
    stays bounded by that size."""

    catalog_mmap_max_mib: int = Field(default=1024, ge=0)
    """With `catalog_read` = auto: the largest blobs file (MiB) read through a memory map
    (about 100,000 candidates of CV length). Checked at every ranking: a file that grows past it
    is read with pread from then on, and its map released."""

    catalog_preload: Literal["auto", "on", "off"] = "auto"
    """After a start, read the catalog's column files once from start to end on a thread of
    their own, so rankings find the retrieved candidates in the page cache instead of waiting
    on the disk (at 10^6 candidates, 12 GiB read in 55 s from a cold disk, measured). `auto`:
    the files that fit in three quarters of the memory available at start (the blobs first);
    `on`: all; `off`: none. The health service `catalog-cache` turns SERVING when it is done."""

    catalog_keep_warm_seconds: float = Field(default=30.0, ge=0)
    """After warming (`catalog_preload`), touch the files again this often so they stay in the
    page cache: a ranking reads ~500 of 10^6 candidates, so to the kernel most pages look idle,
    and a proactive reclaimer (DAMON's pageout, as on the machine BENCHMARKS.md was measured
    on: unmapped pages idle for 60 s) or memory pressure evicts them, and rankings wait on the
    disk again. Keep it below the reclaimer's idle age. Each pass splices the files to
    /dev/null (no copy): ~0.5 s for 12 GiB, ~0.25 s of it CPU. 0: warm once, then leave
    them to the kernel."""

    catalog_compact_share: float = Field(default=0.5, gt=0, le=1)
    """At start, the catalog's column files are rewritten without the bytes of replaced and
    erased candidates (zeroed, but kept by the append-only files) once those are this share of
    the files or more; it takes about one read and write of the live bytes. 1: only when all
    of it is dead."""

    index_retrain_growth: float = Field(default=0.5, gt=0)
    """Retrain the IVF's coarse quantiser (in the background, swapped in atomically) once the
    pool has grown by this share since it was trained, so its lists stay balanced."""

    # -- security (README "Security") ------------------------------------------------------
    tls_cert_file: Path | None = None
    """PEM certificate chain the server presents; with `tls_key_file` turns TLS on."""

    tls_key_file: Path | None = None
    """PEM private key of `tls_cert_file`."""

    tls_client_ca_file: Path | None = None
    """PEM CA bundle: when set (with TLS), clients must present a certificate it signed (mutual TLS)."""

    require_tokens: bool = False
    """Refuse every call without a valid bearer token even while the token file is empty.
    Tokens are also required whenever the token file holds any token when the server starts."""

    tokens_file: Path | None = None
    """Hashed bearer tokens (`ranker tokens`); defaults to `<data_dir>/tokens.json`."""

    allow_insecure: bool = False
    """Serve a non-loopback address without TLS and tokens anyway (e.g. behind a TLS-terminating
    proxy that authenticates). Without it such a server refuses to start."""

    target: str = ""
    """Where the command-line clients (`ranker query`, `health`, `push`, ...) call the service
    when no address is given: one `host:port`, several separated by commas (calls spread round
    robin over those whose health is SERVING), or a gRPC target URI (`dns:///ranker:50051`, every
    address of the name round robin). Empty: `host:port` of these settings."""

    client_token: SecretStr | None = None
    """Bearer token `ranker query` / `ranker health` send (or pass --token)."""

    client_ca_file: Path | None = None
    """CA the clients trust for the server's certificate; setting it makes them use TLS."""

    client_cert_file: Path | None = None
    """Client certificate the clients present (mutual TLS), with `client_key_file`."""

    client_key_file: Path | None = None
    """Private key of `client_cert_file`."""

    # -- isolation of slow work ------------------------------------------------------------
    encode_threads: int = Field(default=1, ge=1)
    """Threads that encode (upserts, inline postings); apart from `worker_threads`."""

    encode_nice: int = Field(default=10, ge=0, le=19)
    """Niceness added to the encoding threads (Linux): when reads and encoding both want a core,
    the reads get it. 0 leaves them at the service's priority."""

    changes_retention_hours: float = Field(default=168.0, gt=0)
    """Hours the store's change feed keeps an entry. A replica that stops following for longer
    must be restarted (it reports NOT_SERVING and says so), as it cannot know what it missed."""

    serving_encoder_threads: int = Field(default=0, ge=0)
    """ONNX Runtime intra-op threads of the service's encoder; 0: one fewer than the physical
    cores (at least one), so a long encode always leaves a core to reads and rankings. Offline
    ingestion (`ranker ingest`) uses `intra_op_threads` instead."""

    max_request_chars: int = Field(default=2_000_000, ge=100)
    """Most text characters one write or inline ranking may ask to encode; more is
    RESOURCE_EXHAUSTED (split the batch)."""

    max_encode_chars_in_flight: int = Field(default=4_000_000, ge=100)
    """Characters admitted for encoding at once (running and waiting); a write that would pass
    it gets RESOURCE_EXHAUSTED at once instead of queueing behind the others."""

    max_encode_queue: int = Field(default=16, ge=1)
    """Encoding calls admitted at once (running and waiting), whatever their size."""

    # -- durability ------------------------------------------------------------------------
    decision_log_policy: Literal["strict", "spool"] = "strict"
    """When the decision log cannot be written: `strict` refuses rankings (UNAVAILABLE, health
    NOT_SERVING) until it can; `spool` keeps serving. Either way decisions already served are
    kept in `<data_dir>/decisions.spool.jsonl` (fsynced) and replayed into the store."""

    decision_log_sync: bool = False
    """Answer a ranking only once its decision is stored (an fsync on every ranking's path):
    then not even the rankings served just before the log failed are answered unlogged."""

    decision_log_linger_ms: float = Field(default=3.0, ge=0, le=1000)
    """How long the decision-log writer waits after a decision arrives before writing it (and
    whatever arrived meanwhile), so the ranking's answer leaves first instead of racing the
    writer for the cores. Not applied with `decision_log_sync`."""

    decision_log_nice: int = Field(default=10, ge=0, le=19)
    """How much nicer (Linux) the decision-log writer thread runs than the threads answering
    requests: on a busy machine the cores go to rankings first, the log catches up after."""

    erasure_checkpoint_seconds: float = Field(default=2.0, ge=0)
    """How long an erasure retries its clean-up (SQLite: the WAL checkpoint, which readers of
    old pages block; PostgreSQL: the VACUUM, which older snapshots and locks block) before it
    reports the clean-up pending; upkeep keeps retrying until no erased byte is left."""

    database_url: str = ""
    """The store. Empty (the default): the embedded SQLite file (`db_path`). A
    `postgresql://user@host:port/dbname` URL (libpq form; `postgres://` too; the password best
    in `~/.pgpass` or PGPASSWORD rather than here): a PostgreSQL database, shared by every
    service and command given the same URL (README "Choosing the store")."""

    database_pool_size: int = Field(default=8, ge=1)
    """PostgreSQL only: most connections one process keeps open to the database."""

    postgres_erasure_vacuum: Literal["full", "plain"] = "full"
    """PostgreSQL only: how an erasure clears the dead tuples that still hold the erased rows.
    `full`: VACUUM FULL of the tables it touched, which rewrites them, so no erased byte stays
    in their files; it locks each table while it runs (writes and store reads wait; serving
    from memory does not). `plain`: VACUUM, no such lock, but the freed space keeps the erased
    bytes until PostgreSQL reuses it, so erasure leaves residue on disk."""

    replica_poll_seconds: float = Field(default=1.0, gt=0)
    """PostgreSQL only: how often a serving replica reads the change feed when no notification
    has woken it (NOTIFY wakes it at once; the poll is the fallback, and its confirmation that
    nothing was missed keeps the replica fresh while no one writes)."""

    replica_max_lag_seconds: float = Field(default=10.0, gt=0)
    """PostgreSQL only: how stale a serving replica may be (time since it last confirmed it had
    applied every committed change) before it reports NOT_SERVING and refuses rankings
    (UNAVAILABLE) rather than serve stale data; it serves again once it has caught up. Must be
    above `replica_poll_seconds`."""

    receipt_key_file: Path | None = None
    """The secret keying erasure receipts and tombstones; defaults to `<db_path>.receipt-key`
    (SQLite) or `<data_dir>/receipt-key` (PostgreSQL). Every service sharing one PostgreSQL
    database must hold the same file: the store refuses another key."""

    db_path: Path | None = None
    """SQLite store; defaults to `<data_dir>/ranker.db`. Unused with `database_url`."""

    index_dir: Path | None = None
    """FAISS index folder; defaults to `<data_dir>/index`."""

    registry_dir: Path | None = None
    """Model registry; defaults to `<data_dir>/registry`."""

    demo_dir: Path | None = None
    """Generated demo data files; defaults to `<data_dir>/demo`."""

    # -- model lifecycle: fallback ranker, aliases, shadow scoring, promotion gates ----------
    fallback: Literal["hand_rule", "retrieval", "none"] = "hand_rule"
    """What ranks while no trained version is promoted (`ranker.fallback`): `hand_rule` (the
    transparent rule of thumb, served as `fallback-hand-rule`), `retrieval` (the search order,
    `fallback-retrieval`), or `none` (the service is NOT_SERVING until a version is promoted)."""

    actor: str | None = None
    """Who registry changes are recorded as (promote, rollback, aliases) when `--actor` is not
    given; default the OS user running the command."""

    shadow_queue: int = Field(default=32, ge=1)
    """Rankings waiting to be scored by the challenger in shadow; when full, more are dropped
    (counted) rather than slowing responses."""

    shadow_idle_ms: float = Field(default=20.0, ge=0)
    """Shadow scoring runs only once no ranking has been in flight for this long (idle time),
    so it never competes with responses for the CPU or the GIL; under sustained load rankings
    are dropped from the shadow instead (see `ranker.shadow`)."""

    shadow_depth: int = Field(default=20, ge=10, le=MAX_RETRIEVE_N)
    """How many of each order (champion's and challenger's) a shadow record keeps."""

    gate_min_postings: int = Field(default=30, ge=1)
    """Promotion gate: held-out postings the pool-view evaluation must cover."""

    gate_vs_service: Literal["not_worse", "beats"] = "not_worse"
    """Promotion gate against the version in service on pool-view NDCG@10 (paired 95% CI of
    new - in service): `not_worse` = the interval's upper bound is not below 0; `beats` = its
    lower bound is above 0. The retrieval order must always be beaten (lower bound above 0)."""

    gate_impact_floor: float = Field(default=0.8, gt=0, le=1)
    """Promotion gate: no selection-rate impact ratio (pool view, top 10, sex and
    race/ethnicity) significantly below this (its 95% interval wholly below it)."""

    gate_impact_margin: float = Field(default=0.05, ge=0, le=1)
    """Promotion gate: no impact ratio more than this below the version in service's."""

    fair_rerank: Literal["off", "detconstsort"] = "off"
    """Opt-in fair re-ranking of each top k over the retrieved set (`ranker.fair_serving`,
    DetConstSort). Off by default: adjusting rankings by protected category can itself be
    unlawful (US Civil Rights Act 1991 §106), so enabling it is a deployment decision. Only when
    on are protected attributes read, from their own table, and each use is logged."""

    fair_rerank_attribute: Literal["sex", "race_ethnicity"] = "sex"
    """The protected attribute the re-ranker balances."""

    fair_rerank_targets: dict[str, float] = Field(default_factory=dict)
    """Target share of each category in every prefix of the top k, e.g.
    `{"female": 0.5, "male": 0.5}`; empty: each request's retrieved set's own shares."""

    strict_fields: bool = False
    """Refuse a request holding a field number the contract does not define (INVALID_ARGUMENT).
    Off by protobuf's convention: such fields are ignored, so a client built from a newer proto
    keeps working during a rolling upgrade. A known field sent with the wrong wire type is
    refused either way (it would otherwise read as 0)."""

    # -- observability -------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged; every RPC is one INFO line (`ranker.rpc`)."""

    log_format: Literal["text", "json"] = "text"
    """`text` lines, or `json`: one object per line with the structured fields at its top level."""

    drift_window: int = Field(default=5000, ge=100)
    """Most recent served feature rows (top-k rows in the decision log) the drift figures use."""

    drift_interval_seconds: float = Field(default=60.0, gt=0)
    """How often a running service recomputes the drift gauges (`ranker_feature_psi`)."""

    # -- offline work on Dask ------------------------------------------------------------
    dask: str | None = None
    """Dask cluster for `ranker ingest` and `ranker train` (their `--dask` overrides it): a
    scheduler address (`tcp://host:8786`), or `local:N` for N worker processes on this machine.
    Unset: both run in this process."""

    dask_encoder_threads: int = Field(default=1, ge=0)
    """ONNX Runtime threads inside one operator on each Dask worker encoding candidates (0: one
    per physical core). 1: the parallelism comes from the workers, which share the cores."""

    @model_validator(mode="after")
    def _limits_agree(self) -> Self:
        """Refuse limits that contradict each other, naming the variables to fix."""
        if self.default_top_k > self.max_top_k:
            raise ValueError(
                f"RANKER_DEFAULT_TOP_K ({self.default_top_k}) is larger than RANKER_MAX_TOP_K "
                f"({self.max_top_k}); lower the first or raise the second"
            )
        shares = self.fair_rerank_targets.values()
        if any(not 0 <= p <= 1 for p in shares) or sum(shares) > 1 + 1e-9:
            raise ValueError(
                f"RANKER_FAIR_RERANK_TARGETS ({self.fair_rerank_targets}) must be shares in "
                "0..1 summing to at most 1; fix them or leave them empty for the retrieved set's"
            )
        if self.max_top_k > MAX_RETRIEVE_N:
            raise ValueError(
                f"RANKER_MAX_TOP_K ({self.max_top_k}) is larger than the {MAX_RETRIEVE_N} "
                "candidates a request may retrieve; lower it"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "RANKER_TLS_CERT_FILE and RANKER_TLS_KEY_FILE go together; set both to serve "
                "TLS, or neither"
            )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                "RANKER_TLS_CLIENT_CA_FILE (mutual TLS) needs TLS: set RANKER_TLS_CERT_FILE and "
                "RANKER_TLS_KEY_FILE too"
            )
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError(
                "RANKER_CLIENT_CERT_FILE and RANKER_CLIENT_KEY_FILE go together; set both or neither"
            )
        if self.max_request_chars > self.max_encode_chars_in_flight:
            raise ValueError(
                f"RANKER_MAX_REQUEST_CHARS ({self.max_request_chars}) is larger than "
                f"RANKER_MAX_ENCODE_CHARS_IN_FLIGHT ({self.max_encode_chars_in_flight}): such a "
                "request could never be admitted; lower the first or raise the second"
            )
        if self.database_url and not self.uses_postgres:
            raise ValueError(
                "RANKER_DATABASE_URL must be a postgresql:// URL (or empty for the embedded "
                "SQLite store)"
            )
        if self.replica_max_lag_seconds <= self.replica_poll_seconds:
            raise ValueError(
                f"RANKER_REPLICA_MAX_LAG_SECONDS ({self.replica_max_lag_seconds}) must be above "
                f"RANKER_REPLICA_POLL_SECONDS ({self.replica_poll_seconds}): a replica that "
                "polls less often than its bound would report itself stale between polls"
            )
        if self.max_text_chars > self.max_request_chars:
            raise ValueError(
                f"RANKER_MAX_TEXT_CHARS ({self.max_text_chars}) is larger than "
                f"RANKER_MAX_REQUEST_CHARS ({self.max_request_chars}); lower the first or raise "
                "the second"
            )
        return self

    @property
    def tls(self) -> bool:
        """True when the server serves TLS."""
        return self.tls_cert_file is not None

    @property
    def resolved_tokens_file(self) -> Path:
        return self.tokens_file if self.tokens_file is not None else self.data_dir / "tokens.json"

    @property
    def decision_spool_path(self) -> Path:
        """Where decisions wait, fsynced, while the store cannot take them (policy `spool`)."""
        return self.data_dir / "decisions.spool.jsonl"

    @property
    def serving_encoder(self) -> Settings:
        """These settings with the encoder's ONNX Runtime threads as the service runs them."""
        from embeddings.runtime import physical_cores  # onnxruntime only when an encoder loads

        threads = self.serving_encoder_threads or max(1, physical_cores() - 1)
        return self.model_copy(update={"intra_op_threads": threads})

    @property
    def resolved_db_path(self) -> Path:
        return self.db_path if self.db_path is not None else self.data_dir / "ranker.db"

    @property
    def uses_postgres(self) -> bool:
        """True when the store is PostgreSQL (`database_url`), False for the SQLite file."""
        return self.database_url.startswith(("postgresql://", "postgres://"))

    @property
    def resolved_receipt_key_file(self) -> Path:
        if self.receipt_key_file is not None:
            return self.receipt_key_file
        if self.uses_postgres:
            return self.data_dir / "receipt-key"
        db = self.resolved_db_path
        return db.with_name(db.name + ".receipt-key")

    @property
    def catalog_map_bytes(self) -> int:
        """The blobs file size up to which the catalog reads through a memory map (0: never)."""
        if self.catalog_read == "auto":
            return self.catalog_mmap_max_mib << 20
        return sys.maxsize if self.catalog_read == "mmap" else 0

    @property
    def resolved_index_dir(self) -> Path:
        return self.index_dir if self.index_dir is not None else self.data_dir / "index"

    @property
    def resolved_registry_dir(self) -> Path:
        return self.registry_dir if self.registry_dir is not None else self.data_dir / "registry"

    @property
    def resolved_demo_dir(self) -> Path:
        return self.demo_dir if self.demo_dir is not None else self.data_dir / "demo"


def settings_error(e: ValidationError) -> str:
    """A refused settings object's errors, each naming the variable to fix, on one line."""
    parts = []
    for err in e.errors():
        where = f"RANKER_{str(err['loc'][0]).upper()}: " if err["loc"] else ""
        parts.append(where + err["msg"].removeprefix("Value error, "))
    return "; ".join(parts)
