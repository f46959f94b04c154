"""One node at scale (BENCH_SCALE candidates, 10^6 by default): memory, startup, recall per
filter selectivity, latency and throughput, each beside the straightforward stack."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._baseline import LeanStack, StraightforwardStack, sentence_transformer
from bench._data import (
    BaseSet,
    BenchData,
    base_set,
    bench_root,
    build_candidate_set,
    file_bytes,
    fresh_candidates,
)
from bench._machine import cached_share, measured_peak
from bench._report import Summary, mib, ms, rate_ratio, ratio, table, timed_without_gc
from bench._server import ServerProcess
from bench.serving import (
    PathRun,
    ServingConfig,
    _aio_throughput,
    _compare,
    _median,
    _ranker,
    _requests,
    _service_block,
    _targets_of,
    _thread_throughput,
)
from ranker.api import RankFilters
from ranker.catalog import CandidateCatalog
from ranker.catalog_state import STATE_FILE
from ranker.columns import reads_mapped
from ranker.config import Settings
from ranker.index import FaissIndex, IvfOptions
from ranker.prepared import Scalar
from ranker.transport.convert import candidate_to_pb
from ranker.v1 import ranker_pb2 as pb
from ranker.warmup import CATALOG_DIR
from training.metrics import bootstrap

log = logging.getLogger(__name__)

TITLE = "At scale"
SCALE_ENV = "BENCH_SCALE"
DEFAULT_SCALE = 1_000_000
SMALL = 100_000
"""The size the issue also sets a latency target at (p99 ≤ 5 ms)."""
LEAN_ABOVE = 200_000
"""From this size the baseline reads candidates from the catalog (`LeanStack`): 10^6 prepared
objects would not fit in memory."""
SELECTIVITIES = (1.0, 0.1, 0.01)
TARGET_RSS = 2 * 1024**3
TARGET_STARTUP_S = 60.0
TARGET_P99_LARGE = 10.0
TARGET_P99_SMALL = 5.0
TARGET_SPEEDUP = 5.0
TARGET_RECALL = 0.98


def scale() -> int:
    """Candidates of the large set: `BENCH_SCALE` (0 skips the section)."""
    return int(os.environ.get(SCALE_ENV, DEFAULT_SCALE))


@dataclass(frozen=True)
class ScaleConfig:
    """Sizes and request counts; the defaults are the full run, tests pass tiny ones."""

    sizes: tuple[int, ...] = ()
    """Candidate sets measured; empty = 100,000 and `BENCH_SCALE`."""
    lean_above: int = LEAN_ABOVE
    requests: int = 300
    throughput_requests: int = 240
    concurrency: tuple[int, ...] = (1, 4, 16)
    recall_postings: int = 40
    filtered_requests: int = 100
    crash_writes: int = 200
    """New candidates written (half of them then erased) before the crash of the restart
    measurement, on the largest set; 0 skips it."""


@dataclass
class Memory:
    rss: int
    anon: int
    file: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
        return cls(
            fields["VmRSS"], fields["RssAnon"], fields["RssFile"] + fields.get("RssShmem", 0)
        )


@dataclass
class Filtered:
    share: float
    filters: RankFilters
    eligible: int
    recall: float
    """Mean over the postings of the share of the exact top 500 retrieved."""
    search_ms: float
    """In-process search of the saved index (median)."""
    exact_ms: float
    filter_ms: float = 0.0
    """In-process `CandidateCatalog.allowed` (the filters' pass over the catalog), median."""
    recall_ci: tuple[float, float] = (float("nan"), float("nan"))
    """95% percentile-bootstrap interval of `recall`, resampling postings."""
    postings: int = 0
    """Postings the recall is measured on."""
    rank_ms: Summary | None = None
    """Rankings by id with this filter through gRPC."""


@dataclass
class SizeRun:
    n: int
    data: BenchData
    lean: bool
    startup_s: float = 0.0
    warm_s: float = 0.0
    """From the start until the catalog's files were in the page cache (`catalog-cache`)."""
    loaded: Memory | None = None
    served: Memory | None = None
    service: PathRun | None = None
    baseline: PathRun | None = None
    tuned: PathRun | None = None
    throughput: dict[int, tuple[float, float]] = field(default_factory=dict)
    filtered: list[Filtered] = field(default_factory=list)
    nlist: int = 0
    nprobe: int = 0
    shapes: dict[str, float] = field(default_factory=dict)
    rpc_floor_ms: float = float("nan")
    reads: dict[str, tuple[Summary, Memory]] = field(default_factory=dict)
    """Service-only rankings per `RANKER_CATALOG_READ` mode: latency, RSS after them. The
    first is the mode the default (`auto`) chose on the main server."""
    crash: Crash | None = None
    cached: float = float("nan")
    """Share of the catalog's column files in the page cache after the main server's runs."""


@dataclass
class Crash:
    """A restart after SIGKILL right after writes the debounced save had not yet saved."""

    added: int
    erased: int
    startup_s: float
    caught_up: bool
    """The log says the saved memory caught up from the change feed (not rebuilt)."""


# ---------------------------------------------------------------------------------------------
# Measurements


def _empty_server(base: BaseSet, root: Path) -> tuple[Memory, float]:
    """The fixed cost: a server with the same encoder and model and no candidate."""
    folder = root / "empty"
    folder.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        data_dir=folder, registry_dir=base.registry_dir, encoder_dir=base.encoder_dir
    )
    with ServerProcess(settings, root / "logs" / "serve-empty.log") as server:
        return Memory.of(server.pid), server.startup_seconds


def _bandwidth_gbs() -> float:
    """Single-thread read bandwidth (GB/s, best of 5 sums over 512 MiB)."""
    a = np.ones(128 * 1024 * 1024, dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        float(a.sum())
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9


def _filters_for(catalog: CandidateCatalog, share: float, n: int) -> tuple[RankFilters, int]:
    """The filter among a few natural ones whose pass share is nearest `share`."""
    if share >= 1.0:
        return RankFilters(), n
    options: list[RankFilters] = [RankFilters(min_years=float(y)) for y in range(1, 40)]
    locations = sorted({loc for loc in _locations(catalog)})
    for loc in locations:
        options.append(RankFilters(locations=(loc,)))
        options += [
            RankFilters(locations=(loc,), min_years=float(y)) for y in (3, 5, 8, 10, 12, 15)
        ]
    best: tuple[float, RankFilters, int] | None = None
    for f in options:
        allowed = catalog.allowed(f)
        m = n if allowed is None else len(allowed)
        gap = abs(np.log(max(m, 1) / n) - np.log(share))
        if best is None or gap < best[0]:
            best = (gap, f, m)
    assert best is not None
    return best[1], best[2]


def _locations(catalog: CandidateCatalog) -> list[str]:
    ids, fids = catalog.ids_and_fids()
    seen: set[str] = set()
    for fid in fids[: min(len(fids), 20_000) : 50].tolist():
        pc = catalog.lookup(np.array([fid]))[0][0]
        if pc.candidate.location:
            seen.add(pc.candidate.location)
    return sorted(seen)


def _recall(
    run: SizeRun,
    base: BaseSet,
    stack: StraightforwardStack,
    catalog: CandidateCatalog,
    cfg: ScaleConfig,
) -> None:
    """Recall of the service's index (the saved file, searched as the service does) against an
    exact float32 search, per filter selectivity."""
    settings = Settings()
    ivf = IvfOptions.from_settings(settings)
    index = FaissIndex.load(run.data.index_dir, ivf)
    run.nlist, run.nprobe = index.nlist, ivf.nprobe
    fids = stack.fids
    postings = base.postings[: cfg.recall_postings]
    for share in SELECTIVITIES:
        f, eligible = _filters_for(catalog, share, run.n)
        allowed = catalog.allowed(f)
        filter_times = []
        for _ in range(20):
            t0 = time.perf_counter()
            catalog.allowed(f)
            filter_times.append((time.perf_counter() - t0) * 1000)
        recalls, times, exact_times = [], [], []
        for prow in postings:
            q = prow.vector.astype(np.float32)
            t0 = time.perf_counter()
            got, _ = index.search(q, 500, allowed)
            times.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            truth = _exact(stack, fids, q, 500, allowed)
            exact_times.append((time.perf_counter() - t0) * 1000)
            recalls.append(len(set(got.tolist()) & set(truth.tolist())) / max(1, len(truth)))
        est = bootstrap(recalls)
        run.filtered.append(
            Filtered(
                share,
                f,
                eligible,
                est.mean,
                _median(np.array(times)),
                _median(np.array(exact_times)),
                _median(np.array(filter_times)),
                (est.low, est.high),
                est.n,
            )
        )


def _exact(
    stack: StraightforwardStack, fids: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None
) -> np.ndarray:
    """Exact top-k fids: the baseline's float32 flat index, the filter as a selector."""
    import faiss

    params = None
    if allowed is not None:
        positions = np.searchsorted(fids, np.sort(allowed))
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(positions.astype(np.int64)))  # type: ignore[call-arg]
    _, rows = stack.index.search(q[None, :], k, params=params)
    return fids[rows[0][rows[0] >= 0]]


def _filtered_latency(server: ServerProcess, base: BaseSet, run: SizeRun, cfg: ScaleConfig) -> None:
    stub = server.stub()
    for f in run.filtered:
        if f.share >= 1.0:
            continue
        req_filters = pb.Filters(locations=list(f.filters.locations))
        if f.filters.min_years is not None:
            req_filters.min_years = f.filters.min_years
        times = []
        with timed_without_gc():
            for i in range(cfg.filtered_requests):
                req = pb.RankCandidatesRequest(
                    posting_id=base.postings[i % len(base.postings)].posting.id,
                    top_k=10,
                    retrieve_n=500,
                    filters=req_filters,
                )
                t0 = time.perf_counter()
                stub.RankCandidates(req, timeout=60)
                times.append((time.perf_counter() - t0) * 1000)
        f.rank_ms = Summary.of(times)


def _shapes(catalog: CandidateCatalog, n: int) -> dict[str, float]:
    """Average rows and terms per candidate (what a features gather reads)."""
    ids, fids = catalog.ids_and_fids()
    sample = catalog.lookup(np.sort(fids)[:: max(1, n // 2000)])[0].packed
    s = sample.scalars
    return {
        "rows": float(np.mean(s[:, Scalar.CHUNKS] + 1)),
        "terms": float(np.mean(s[:, Scalar.TERMS])),
        "tags": float(np.mean(s[:, Scalar.SKILLS] + s[:, Scalar.TITLE] + 1)),
    }


def measure(base: BaseSet, n: int, cfg: ScaleConfig, root: Path, crash: bool = False) -> SizeRun:
    data = build_candidate_set(base, n, root)
    lean = n > cfg.lean_above
    run = SizeRun(n=n, data=data, lean=lean)
    sentence_transformer()
    gc.collect()
    log.info("scale bench: %d candidates, loading the straightforward stack", n)
    stack: StraightforwardStack = (LeanStack if lean else StraightforwardStack)(base, data)
    catalog = data.saved_catalog()
    serving_cfg = ServingConfig(requests=cfg.requests, throughput_requests=cfg.throughput_requests)
    log.info("scale bench: %d candidates, starting the server", n)
    with ServerProcess(data.settings(base), root / "logs" / f"serve-scale-c{n}.log") as server:
        run.startup_s, run.warm_s = server.startup_seconds, server.warm_seconds
        run.loaded = Memory.of(server.pid)
        stub = server.stub()
        run.service, run.baseline, run.tuned = _compare(
            stub, stack, base, serving_cfg, "id", False, n
        )
        reqs = _requests(base, serving_cfg, "id", False)
        for c in cfg.concurrency:
            ours = asyncio.run(_aio_throughput(server.address, reqs, cfg.throughput_requests, c))
            theirs = _thread_throughput(
                _ranker(stack, _targets_of(base, "id"), serving_cfg), cfg.throughput_requests, c
            )
            run.throughput[c] = (ours, theirs)
        _recall(run, base, stack, catalog, cfg)
        _filtered_latency(server, base, run, cfg)
        run.served = Memory.of(server.pid)
        run.shapes = _shapes(catalog, n)
        run.rpc_floor_ms = _rpc_floor(server)
        chosen = _default_read(data)
        run.reads[chosen] = (_service_only(server, reqs, cfg, n), Memory.of(server.pid))
        run.cached = cached_share(catalog.column_paths())
    catalog.close()
    # One service per data folder: the other read mode runs on a server started after.
    other = "pread" if chosen == "mmap" else "mmap"
    log.info("scale bench: %d candidates, the same rankings with %s catalog reads", n, other)
    with ServerProcess(
        data.settings(base, catalog_read=other), root / "logs" / f"serve-scale-{other}-c{n}.log"
    ) as server:
        run.reads[other] = (_service_only(server, reqs, cfg, n), Memory.of(server.pid))
    if crash and cfg.crash_writes:
        run.crash = _crash_restart(base, data, root, cfg.crash_writes)
    del stack
    gc.collect()
    return run


def _default_read(data: BenchData) -> str:
    """The read mode the default settings (`auto`) chose for this set's blobs file."""
    blobs = sum(file_bytes(p) for p in (data.index_dir / CATALOG_DIR).glob("blobs*.bin"))
    return "mmap" if reads_mapped(blobs, Settings().catalog_map_bytes) else "pread"


def _crash_restart(base: BaseSet, data: BenchData, root: Path, writes: int) -> Crash:
    """Write `writes` new candidates and erase half of them, SIGKILL the server at once (before
    its debounced save), and time the restart to SERVING; then erase the rest, so the set holds
    what it held before (the ids are this run's own: an erased id is refused for good)."""
    tag = uuid.uuid4().hex[:8]
    fresh = [replace(c, id=f"crash-{tag}-{c.id}") for c in fresh_candidates(writes)]
    ids = [c.id for c in fresh]
    settings = data.settings(base)
    logs = root / "logs"
    state = data.index_dir / CATALOG_DIR / STATE_FILE
    saved_at = state.stat().st_mtime_ns
    with ServerProcess(settings, logs / "serve-scale-crash.log") as server:
        stub = server.stub()
        for start in range(0, len(fresh), 50):
            part = [candidate_to_pb(c) for c in fresh[start : start + 50]]
            stub.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=part), timeout=600)
            if not start:  # one debounced save after the first writes, as a service makes
                _wait_for(lambda: state.stat().st_mtime_ns != saved_at, 60.0)
        stub.DeleteCandidates(pb.DeleteCandidatesRequest(ids=ids[: writes // 2]), timeout=600)
        server.kill()
    restart_log = logs / "serve-scale-restart.log"
    with ServerProcess(settings, restart_log) as server:
        startup = server.startup_seconds
        caught_up = "catching up from there" in server.log_tail(100_000)
        server.stub().DeleteCandidates(
            pb.DeleteCandidatesRequest(ids=ids[writes // 2 :]), timeout=600
        )
    return Crash(writes, writes // 2, startup, caught_up)


def _wait_for(done: Callable[[], bool], seconds: float) -> None:
    end = time.monotonic() + seconds
    while not done():
        if time.monotonic() > end:
            raise TimeoutError(f"not done within {seconds:.0f} s")
        time.sleep(0.1)


def _service_only(
    server: ServerProcess, reqs: Sequence[object], cfg: ScaleConfig, n: int
) -> Summary:
    """Client latency of `cfg.requests` rankings with nothing else running in the bench."""
    stub = server.stub()
    serving_cfg = ServingConfig(requests=cfg.requests)
    _service_block(stub, reqs, range(serving_cfg.warmup), None, serving_cfg, n)
    times = []
    with timed_without_gc():
        for i in range(cfg.requests):
            t0 = time.perf_counter()
            stub.RankCandidates(reqs[i % len(reqs)], timeout=60)
            times.append((time.perf_counter() - t0) * 1000)
    return Summary.of(times)


def _rpc_floor(server: ServerProcess) -> float:
    """Median round trip of a health check: gRPC's own cost on this machine."""
    assert server.channel is not None
    health = health_pb2_grpc.HealthStub(server.channel)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


# ---------------------------------------------------------------------------------------------
# Report


def _p99(values: np.ndarray) -> str:
    return ms(float(np.percentile(values, 99)))


def _breakdown(run: SizeRun, dim: int, bandwidth: float, peak_gflops: float) -> str:
    """The service's stages (median, and p99: where the tail comes from) beside their physical
    floors."""
    assert run.service is not None
    st = run.service.stages
    per_list = run.n / max(run.nlist, 1)
    scan_bytes = (
        (run.nlist * dim * 4 + run.nprobe * per_list * (dim * 2 + 8))
        if run.nlist
        else run.n * dim * 2
    )
    rows, terms, tags = (
        run.shapes.get("rows", 4),
        run.shapes.get("terms", 200),
        run.shapes.get("tags", 10),
    )
    gather = 500 * (rows * dim * 4 + terms * 12 + tags * 8 + 9 * 8)
    flops = 2 * 500 * rows * dim
    floors = {
        "retrieve": (
            (scan_bytes + gather) / bandwidth * 1e3,
            f"{scan_bytes / 1e6:.1f} MB of index scanned"
            + (f" ({run.nprobe} of {run.nlist} lists + centroids)" if run.nlist else "")
            + f", then {gather / 1e6:.1f} MB of the 500 candidates' columns gathered",
        ),
        "features": (
            gather / bandwidth * 1e3 + flops / peak_gflops * 1e3,
            f"one pass over the {gather / 1e6:.1f} MB gathered; {flops / 1e6:.1f} MFLOP of cosines",
        ),
        "score": (float("nan"), "500 rows × the model's trees: no bandwidth floor worth stating"),
    }
    rows_out = []
    for stage in ("retrieve", "features", "score"):
        floor, what = floors[stage]
        rows_out.append([stage, ms(_median(st[stage])), _p99(st[stage]), ms(floor), what])
        if stage == "retrieve":
            rows_out += _retrieve_parts(run, scan_bytes, gather, bandwidth)
    inside = _median(st["total"])
    other = inside - sum(_median(st[s]) for s in ("retrieve", "features", "score"))
    rows_out.append(
        ["other work in the server (locks, decision log, set-up)", ms(other), "–", "–", ""]
    )
    rows_out.append(["inside the server", ms(inside), _p99(st["total"]), "", ""])
    end = _median(run.service.client_ms)
    floor_rpc = run.rpc_floor_ms
    rows_out.append(
        [
            "gRPC + protobuf + client",
            ms(end - inside),
            "–",
            ms(floor_rpc),
            "an empty health check's round trip",
        ]
    )
    rows_out.append(["end to end (client)", ms(end), _p99(run.service.client_ms), "", ""])
    return table(["stage (ms)", "median", "p99", "floor", "floor from"], rows_out)


def _retrieve_parts(
    run: SizeRun, scan_bytes: float, gather: float, bandwidth: float
) -> list[list[str]]:
    """Retrieval split in two, as the server timed each ranking: the vector search, and the rest
    (the filter, and reading the 500 candidates' blobs back from the catalog's column files, with
    the read mode the service's default chose)."""
    assert run.service is not None
    st = run.service.stages
    search = st.get("search", np.zeros(0))
    if len(search) != len(st["retrieve"]):
        return []
    rest = st["retrieve"] - search
    mode = next(iter(run.reads), "pread")
    return [
        [
            "· index search",
            ms(_median(search)),
            _p99(search),
            ms(scan_bytes / bandwidth * 1e3),
            f"{scan_bytes / 1e6:.1f} MB of index scanned",
        ],
        [
            f"· the rest: filter, blobs read back ({mode})",
            ms(_median(rest)),
            _p99(rest),
            ms(gather / bandwidth * 1e3),
            f"{gather / 1e6:.1f} MB gathered",
        ],
    ]


def _latency_row(n: int, baseline: str, s: Summary, b: Summary) -> list[str]:
    """One latency row: the service's p50/p99, the baseline's, and the speed-ups."""
    return [
        f"{n:,}",
        baseline,
        ms(s.p50),
        ms(s.p99),
        ms(b.p50),
        ms(b.p99),
        ratio(b.p50, s.p50),
        ratio(b.p99, s.p99),
    ]


def report(runs: list[SizeRun], fixed: Memory, fixed_startup: float, base: BaseSet) -> str:
    dim = len(base.candidates[0].doc_vector)
    bandwidth = _bandwidth_gbs() * 1e9
    peak = measured_peak()
    peak_gflops = peak.gflops_per_core * 1e9 if peak.available else 50e9
    out = [
        f"## {TITLE}",
        "",
        f"The issue-14 targets, on synthetic sets built as the serving section's ({SMALL:,} and "
        f"`{SCALE_ENV}` = {runs[-1].n:,} candidates; `{SCALE_ENV}=0` skips this section). The "
        "service is a real `ranker serve` (IVF index from "
        f"{Settings().index_ivf_min_candidates:,} candidates, `RANKER_INDEX_NPROBE` = "
        f"{Settings().index_nprobe}, fp16 lists; columnar catalog with its column files on disk), "
        "called over gRPC, top 10 of 500 by stored posting id, no filter, no explain; the "
        "straightforward stack runs in the bench process (flat float32 FAISS with default "
        "OpenMP threads, native LightGBM) in alternating blocks of 10 rankings. Above "
        f"{LEAN_ABOVE:,} candidates the baseline cannot hold its prepared objects (~15 GB at "
        "10^6), so it reads the retrieved candidates from the set's catalog columns, the "
        "service's own gather: its features stage then costs what the service's does, which "
        "favours it. Medians within one run on a shared machine; ratios are what count.",
        "",
        f"Fixed cost: a server with the same encoder and model and no candidate holds "
        f"{mib(fixed.rss)} resident ({mib(fixed.anon)} anonymous, {mib(fixed.file)} file-backed: "
        f"mapped libraries and the model files) and is SERVING after {fixed_startup:.0f} s.",
        "",
    ]
    mem_rows = []
    for r in runs:
        assert r.loaded is not None and r.served is not None
        per = (r.served.rss - fixed.rss) / r.n
        disk = sum(file_bytes(p) for p in (r.data.index_dir / CATALOG_DIR).glob("*")) + file_bytes(
            r.data.index_dir / "candidates.faiss"
        )
        mem_rows.append(
            [
                f"{r.n:,}",
                f"{r.startup_s:.0f} s",
                f"{r.warm_s:.0f} s; {100 * r.cached:.1f}% cached after the runs",
                mib(r.loaded.rss),
                mib(r.served.rss),
                f"{mib(r.served.anon)} / {mib(r.served.file)}",
                mib(r.served.rss - fixed.rss),
                f"{per:,.0f} B",
                mib(disk),
            ]
        )
    out += [
        "Memory and startup (RSS from /proc: anonymous = heap, file = mapped files; the column "
        "files' pages a ranking read count as file-backed, reclaimable by the kernel; `page "
        "cache warm`: from the start until the service had read its catalog's column files "
        "into the kernel's page cache, `RANKER_CATALOG_PRELOAD`, health `catalog-cache`; the "
        "rankings below are measured from then on; the share of the files' pages still cached "
        "once they ran, which `RANKER_CATALOG_KEEP_WARM_SECONDS` keeps against the idle-page "
        "reclaim named in the header, when the machine runs one):",
        "",
        table(
            [
                "candidates",
                "startup to SERVING",
                "page cache warm",
                "RSS loaded",
                "RSS after the runs",
                "anon / file",
                "above the fixed cost",
                "per candidate",
                "index + catalog on disk",
            ],
            mem_rows,
        ),
        "",
    ]
    for r in runs:
        if r.crash is not None:
            c = r.crash
            how = "caught up from the change feed" if c.caught_up else "**rebuilt from the store**"
            out += [
                f"Restart after a crash at {r.n:,} candidates: {c.added} new candidates written "
                f"and {c.erased} of them erased through gRPC after the service's last save, the "
                "server killed (SIGKILL) at once, before its next (debounced) save; started again, it was "
                f"SERVING after {c.startup_s:.0f} s ({how}; {r.startup_s:.0f} s from a current "
                "save).",
                "",
            ]
    lat_rows = []
    for r in runs:
        assert r.service is not None and r.baseline is not None
        s, b = Summary.of(r.service.client_ms), Summary.of(r.baseline.client_ms)
        lat_rows.append(_latency_row(r.n, "straightforward", s, b))
        if r.tuned is not None:
            lat_rows.append(
                _latency_row(r.n, "tuned (1 OpenMP thread)", s, Summary.of(r.tuned.client_ms))
            )
    out += [
        "Latency by stored posting id, concurrency 1 (ms):",
        "",
        table(
            [
                "candidates",
                "baseline",
                "service p50",
                "p99",
                "baseline p50",
                "p99",
                "speed-up p50",
                "speed-up p99",
            ],
            lat_rows,
        ),
        "",
        _block_positions(runs),
        "",
    ]
    read_rows = [
        [
            f"{r.n:,}",
            f"{mode} (the default, `auto`)" if k == 0 else mode,
            ms(lat.p50),
            ms(lat.p99),
            mib(mem.rss),
            f"{mib(mem.anon)} / {mib(mem.file)}",
        ]
        for r in runs
        for k, (mode, (lat, mem)) in enumerate(r.reads.items())
    ]
    if read_rows:
        out += [
            "The two ways of reading the retrieved candidates from the catalog's column files "
            "(`RANKER_CATALOG_READ`), each ranking alone with nothing else running in the "
            f"bench, {next(iter(runs[-1].reads.values()))[0].n if runs[-1].reads else 0} "
            "rankings each: the default on the server above (`auto`: mmap while the blobs file "
            f"is at most {Settings().catalog_mmap_max_mib:,} MiB, else pread), the other mode on "
            "one started after it on the same folder (ms; RSS after the rankings):",
            "",
            table(["candidates", "reads", "p50", "p99", "RSS", "anon / file"], read_rows),
            "",
        ]
    thr_rows = [
        [f"{r.n:,}", c, f"{o:.1f}", f"{t:.1f}", rate_ratio(o, t)]
        for r in runs
        for c, (o, t) in r.throughput.items()
    ]
    out += [
        "Throughput (rankings/s; service: grpc.aio with that many calls in flight; baseline: "
        "that many threads):",
        "",
        table(["candidates", "concurrency", "service", "baseline", "ratio"], thr_rows),
        "",
    ]
    for r in runs:
        if not r.filtered:
            continue
        rec_rows = [
            [
                f"{f.share:.0%}",
                f"{f.eligible:,} ({f.eligible / r.n:.1%})",
                _describe(f.filters),
                _recall_text(f),
                "–" if f.share >= 1.0 else ms(f.filter_ms),
                ms(f.search_ms),
                ms(f.exact_ms),
                "–" if f.rank_ms is None else f"{ms(f.rank_ms.p50)} / {ms(f.rank_ms.p99)}",
            ]
            for f in r.filtered
        ]
        out += [
            f"Recall of the 500 retrieved against exact float32 search at {r.n:,} candidates, "
            f"{len(base.postings[:40])} postings per row (the saved index searched in-process "
            "as the service searches it; the filter nearest each share among location and "
            "minimum-years filters; `filter ms`: the catalog's compiled pass that lists the "
            "passing ids, `kernels.passing_fids`, in-process):",
            "",
            table(
                [
                    "target share",
                    "passing",
                    "filter",
                    "recall@500 [95% CI]",
                    "filter ms",
                    "index search ms",
                    "exact float32 ms",
                    "ranking p50 / p99 ms (gRPC)",
                ],
                rec_rows,
            ),
            "",
        ]
    bw = bandwidth / 1e9
    for r in runs:
        out += [
            f"Where a ranking's time goes at {r.n:,} candidates (the interleaved rankings; "
            "the p99 of each stage the server times, to show where the tail comes from), beside "
            f"each stage's physical floor (read bandwidth {bw:.1f} GB/s measured on one core, "
            f"peak {peak_gflops / 1e9:.0f} GFLOP/s per core):",
            "",
            _breakdown(r, dim, bandwidth, peak_gflops),
            "",
        ]
    out += ["### Targets", "", _targets(runs, fixed)]
    return "\n".join(out) + "\n"


def _recall_text(f: Filtered) -> str:
    """Recall with its bootstrap interval over postings."""
    low, high = f.recall_ci
    return f"{f.recall:.4f} [{low:.4f}, {high:.4f}]"


def _describe(f: RankFilters) -> str:
    if f.empty:
        return "none"
    parts = []
    if f.locations:
        parts.append("location " + ", ".join(f.locations))
    if f.min_years:
        parts.append(f"≥ {f.min_years:g} years")
    return " and ".join(parts)


def _targets(runs: list[SizeRun], fixed: Memory) -> str:
    big, small = runs[-1], next((r for r in runs if r.n == SMALL and r is not runs[-1]), None)
    assert big.service is not None and big.baseline is not None and big.served is not None
    s, b = Summary.of(big.service.client_ms), Summary.of(big.baseline.client_ms)
    checks = [
        (
            f"{big.n:,} candidates in ≤ 2 GiB server RSS",
            f"{mib(big.served.rss)} ({mib(big.served.anon)} anonymous); fixed cost {mib(fixed.rss)}",
            big.served.rss <= TARGET_RSS,
        ),
        (
            f"startup to SERVING ≤ {TARGET_STARTUP_S:g} s at {big.n:,}",
            f"{big.startup_s:.0f} s",
            big.startup_s <= TARGET_STARTUP_S,
        ),
        _p99_check(big, s, TARGET_P99_LARGE),
        (
            f"≥ {TARGET_SPEEDUP:g}× the straightforward stack at {big.n:,} (p50 and p99)",
            f"{b.p50 / s.p50:.1f}× / {b.p99 / s.p99:.1f}×",
            b.p50 / s.p50 >= TARGET_SPEEDUP and b.p99 / s.p99 >= TARGET_SPEEDUP,
        ),
    ]
    if small is not None and small.service is not None:
        checks.append(_p99_check(small, Summary.of(small.service.client_ms), TARGET_P99_SMALL))
    for f in big.filtered:
        checks.append(
            (
                f"recall@500 ≥ {TARGET_RECALL} with {f.share:.0%} passing",
                f"{_recall_text(f)} ({f.postings} postings)",
                f.recall >= TARGET_RECALL,
            )
        )
    return table(
        ["target", "measured", "met"], [[n, g, "yes" if ok else "**no**"] for n, g, ok in checks]
    )


def _block_positions(runs: Sequence[SizeRun]) -> str:
    """The interleaved rankings split by their place in a block: the first of each follows the
    baseline's blocks (whose flat scans take both cores and the caches), the others follow one
    of the service's own rankings."""
    block = ServingConfig().block
    parts = []
    for r in runs:
        assert r.service is not None
        t = r.service.client_ms
        first, rest = Summary.of(t[::block]), Summary.of(np.delete(t, np.s_[::block]))
        parts.append(
            f"at {r.n:,}, the first ranking of each block p50 {ms(first.p50)} / p99 "
            f"{ms(first.p99)} ms ({first.n} rankings), the other {block - 1} p50 "
            f"{ms(rest.p50)} / p99 {ms(rest.p99)} ms ({rest.n})"
        )
    return (
        f"The service's interleaved rankings by their place in a block of {block}: "
        + "; ".join(parts)
        + ". The first follows the baseline's blocks, which leave the caches cold."
    )


def _p99_check(r: SizeRun, interleaved: Summary, target: float) -> tuple[str, str, bool]:
    """The p99 target, judged on the rankings interleaved with the baseline (the latency table)
    and shown beside the same service's p99 alone (its default reads, nothing else running in
    the bench)."""
    shown = f"{ms(interleaved.p99)} ms interleaved with the baseline"
    if r.reads:
        mode, (alone, _) = next(iter(r.reads.items()))
        shown += f"; {ms(alone.p99)} ms alone ({mode})"
    return (f"p99 ≤ {target:g} ms at {r.n:,}", shown, interleaved.p99 <= target)


def run(cfg: ScaleConfig = ScaleConfig()) -> str:  # noqa: B008
    n = scale()
    if n <= 0 and not cfg.sizes:
        return f"## {TITLE}\n\nSkipped: `{SCALE_ENV}=0`.\n"
    base = base_set()
    root = bench_root()
    fixed, fixed_startup = _empty_server(base, root)
    sizes = cfg.sizes or tuple(sorted({SMALL, n}))
    runs = [measure(base, size, cfg, root, crash=size == max(sizes)) for size in sizes]
    return report(runs, fixed, fixed_startup, base)
