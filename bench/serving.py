"""Ranking through gRPC: latency, throughput and stage costs, beside the straightforward stack."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import grpc
import numpy as np
import psutil

from bench._baseline import StraightforwardStack, sentence_transformer
from bench._data import (
    BaseSet,
    BenchData,
    base_set,
    bench_root,
    build_candidate_set,
    file_bytes,
    index_file,
)
from bench._report import Summary, mib, ms, rate_ratio, ratio, table, timed_without_gc
from bench._server import ServerProcess
from ranker.config import Settings
from ranker.domain import Posting
from ranker.transport.convert import posting_to_pb
from ranker.v1 import ranker_pb2 as pb
from ranker.v1 import ranker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

TITLE = "Ranking through gRPC"
STAGES = ("encode", "retrieve", "features", "score", "explain")
STAGE_LABELS = {
    "encode": "encode posting",
    "retrieve": "retrieve (filter + FAISS)",
    "features": "features",
    "score": "score + top-k",
    "explain": "reasons (explain)",
}
PATHS = {"id": "by stored posting id", "inline": "by inline posting text"}
TARGET_P99_MS = 20.0
TARGET_SPEEDUP = 3.0
TARGET_ISOLATION_RATIO = 2.0
"""GetModelInfo and RankCandidates-by-id p99 during four huge upserts, against idle (issue 12)."""


@dataclass(frozen=True)
class ServingConfig:
    """Sizes and request counts; the defaults are the full run, tests pass tiny ones."""

    sizes: tuple[int, ...] = (10_000, 100_000)
    requests: int = 300
    """Sequential rankings per (path, explain) for latency, by stored posting id."""
    inline_requests: int = 100
    """The same for inline postings (each is encoded: ~10x slower)."""
    block: int = 10
    """Rankings per turn when service and baseline take turns."""
    throughput_requests: int = 240
    inline_throughput_requests: int = 40
    concurrency: tuple[int, ...] = (1, 4, 16)
    top_k: int = 10
    retrieve_n: int = 500
    warmup: int = 20
    isolation_requests: int = 200
    """GetModelInfo and RankCandidates-by-id calls timed idle, then again during huge upserts."""
    huge_upserts: int = 4
    """Concurrent callers sending huge upserts during the second half (the issue's attack)."""
    huge_cv_chars: int = 100_000
    huge_cvs: int = 3
    """CVs per huge upsert, each of `huge_cv_chars` characters."""
    huge_deadline: float = 5.0
    """The huge upserts' deadline: they give up, the server must stop their encoding."""


@dataclass(frozen=True)
class PathRun:
    """Sequential rankings of one kind: round trips seen by the client, stage times by the server."""

    client_ms: np.ndarray
    stages: dict[str, np.ndarray]
    """Per stage (and "total") the server's own timings, one per request."""
    top: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class SizeResult:
    """Everything measured on one candidate set."""

    n: int
    data: BenchData
    startup_seconds: float = 0.0
    rss_loaded: int = 0
    rss_served: int = 0
    baseline_rss: int = 0
    service: dict[tuple[str, bool], PathRun] = field(default_factory=dict)
    baseline: dict[tuple[str, bool], PathRun] = field(default_factory=dict)
    tuned: PathRun | None = None
    """The baseline by id, no explain, with LightGBM and FAISS on one OpenMP thread."""
    throughput: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    """(path, concurrency) -> (service rankings/s, baseline rankings/s)."""
    isolation: IsolationRun | None = None

    @property
    def index_bytes(self) -> int:
        return file_bytes(index_file(self.data))

    @property
    def store_bytes(self) -> int:
        db = self.data.db_path
        return file_bytes(db, db.with_name(db.name + "-wal"))

    def top_overlap(self) -> float:
        """Share of the service's top-k (by id, no explain) also in the baseline's top-k."""
        ours, theirs = self.service[("id", False)].top, self.baseline[("id", False)].top
        hits = [len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(ours, theirs, strict=False)]
        return float(np.mean(hits)) if hits else float("nan")


@dataclass
class IsolationRun:
    """Reads and rankings by id, idle and while huge upserts arrive (client round trips, ms)."""

    idle: dict[str, np.ndarray] = field(default_factory=dict)
    loaded: dict[str, np.ndarray] = field(default_factory=dict)
    """Per call ("GetModelInfo", "RankCandidates by id") the timings, idle and under attack."""
    upserts: dict[str, int] = field(default_factory=dict)
    """Huge upserts sent during the loaded half, by status code."""

    def ratio(self, call: str) -> float:
        idle, loaded = Summary.of(self.idle[call]).p99, Summary.of(self.loaded[call]).p99
        return loaded / idle if idle > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Requests


def _requests(base: BaseSet, cfg: ServingConfig, path: str, explain: bool) -> list[object]:
    out: list[object] = []
    for row in base.postings:
        req = pb.RankCandidatesRequest(top_k=cfg.top_k, retrieve_n=cfg.retrieve_n, explain=explain)
        if path == "id":
            req.posting_id = row.posting.id
        else:
            msg = posting_to_pb(row.posting)
            msg.id = ""  # an ATS ranking for a posting it has not stored
            req.posting.CopyFrom(msg)
        out.append(req)
    return out


def _count(cfg: ServingConfig, path: str) -> int:
    return cfg.requests if path == "id" else cfg.inline_requests


class _Recorder:
    """Collects the timings of one kind of ranking, block by block."""

    def __init__(self) -> None:
        self.client: list[float] = []
        # "search": the vector search's part of "retrieve" (the service's rankings only).
        self.stages: dict[str, list[float]] = {s: [] for s in (*STAGES, "total", "search")}
        self.top: list[tuple[str, ...]] = []

    def add(self, client_ms: float, stages: dict[str, float], top: tuple[str, ...]) -> None:
        self.client.append(client_ms)
        for k, v in stages.items():
            self.stages[k].append(v)
        self.top.append(top)

    def run(self) -> PathRun:
        return PathRun(
            np.asarray(self.client), {k: np.asarray(v) for k, v in self.stages.items()}, self.top
        )


def _service_block(
    stub: pb_grpc.CandidateRankerStub,
    reqs: Sequence[object],
    idx: range,
    rec: _Recorder | None,
    cfg: ServingConfig,
    n: int,
) -> None:
    for i in idx:
        t0 = time.perf_counter()
        resp = stub.RankCandidates(reqs[i % len(reqs)], timeout=60)
        client = (time.perf_counter() - t0) * 1000
        if resp.retrieved < min(cfg.retrieve_n, n) or len(resp.results) < min(cfg.top_k, n):
            raise RuntimeError(
                f"the service retrieved {resp.retrieved} and returned {len(resp.results)} of "
                f"{n} candidates; the benchmark measures full rankings (top {cfg.top_k} of "
                f"{cfg.retrieve_n}) only"
            )
        if rec is not None:
            t = resp.timings
            stages = {s: float(getattr(t, f"{s}_ms")) for s in STAGES}
            stages["total"] = t.total_ms
            stages["search"] = t.search_ms
            rec.add(client, stages, tuple(r.candidate_id for r in resp.results))


def _baseline_block(
    stack: StraightforwardStack,
    targets: Sequence[str | Posting],
    idx: range,
    rec: _Recorder | None,
    cfg: ServingConfig,
    explain: bool,
    one_thread: bool = False,
) -> None:
    for i in idx:
        d = stack.rank(targets[i % len(targets)], cfg.top_k, cfg.retrieve_n, explain, one_thread)
        if rec is not None:
            rec.add(d.total, {s: getattr(d, s) for s in (*STAGES, "total")}, d.top)


def _compare(
    stub: pb_grpc.CandidateRankerStub,
    stack: StraightforwardStack,
    base: BaseSet,
    cfg: ServingConfig,
    path: str,
    explain: bool,
    n: int,
) -> tuple[PathRun, PathRun, PathRun | None]:
    """Service and baseline rankings in alternating blocks, so a change in the load of this
    shared machine during the run hits both alike; by id without explain also the tuned baseline."""
    reqs = _requests(base, cfg, path, explain)
    targets = _targets_of(base, path)
    tuned = path == "id" and not explain
    ours, theirs, theirs_tuned = _Recorder(), _Recorder(), _Recorder()
    warm = range(cfg.warmup)
    _service_block(stub, reqs, warm, None, cfg, n)
    _baseline_block(stack, targets, warm, None, cfg, explain)
    count = _count(cfg, path)
    with timed_without_gc():
        for start in range(0, count, cfg.block):
            idx = range(start, min(count, start + cfg.block))
            _service_block(stub, reqs, idx, ours, cfg, n)
            _baseline_block(stack, targets, idx, theirs, cfg, explain)
            if tuned:
                _baseline_block(stack, targets, idx, theirs_tuned, cfg, explain, one_thread=True)
    return ours.run(), theirs.run(), theirs_tuned.run() if tuned else None


async def _aio_throughput(address: str, reqs: Sequence[object], total: int, conc: int) -> float:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CandidateRankerStub(channel)
        await stub.RankCandidates(reqs[0], timeout=60)
        todo = iter(range(total))

        async def worker() -> None:
            # One shared iterator: the loop is single-threaded, so each index is taken once.
            for i in todo:
                await stub.RankCandidates(reqs[i % len(reqs)], timeout=120)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return total / (time.perf_counter() - t0)


def _thread_throughput(fn: Callable[[int], object], total: int, conc: int) -> float:
    with ThreadPoolExecutor(conc) as pool:
        fn(0)
        t0 = time.perf_counter()
        list(pool.map(fn, range(total)))
        return total / (time.perf_counter() - t0)


def _ranker(
    stack: StraightforwardStack, targets: Sequence[str | Posting], cfg: ServingConfig
) -> Callable[[int], object]:
    """The baseline ranking of request `i`, as a function for a thread pool."""

    def rank(i: int) -> object:
        return stack.rank(targets[i % len(targets)], cfg.top_k, cfg.retrieve_n)

    return rank


def _targets_of(base: BaseSet, path: str) -> list[str | Posting]:
    return [r.posting.id if path == "id" else r.posting for r in base.postings]


def _huge_cv(chars: int, seed: int) -> str:
    """A CV-like text of `chars` characters (varied words, so it tokenises like real text)."""
    rng = np.random.default_rng(seed)
    words = (
        "led built designed python spark kafka team customers data pipelines retail banking "
        "migrated reduced latency mentored engineers cloud platform reliability budget quarterly "
        "analytics dashboards hiring roadmap stakeholders compliance audit"
    ).split()
    out: list[str] = []
    size = 0
    while size < chars:
        sentence = " ".join(rng.choice(words, size=12)).capitalize() + ". "
        out.append(sentence)
        size += len(sentence)
    return "".join(out)[:chars]


def _timed_calls(
    stub: pb_grpc.CandidateRankerStub, ranking: object, n: int
) -> dict[str, np.ndarray]:
    info: list[float] = []
    rank: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=120)
        info.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        stub.RankCandidates(ranking, timeout=120)
        rank.append((time.perf_counter() - t0) * 1000)
    return {"GetModelInfo": np.asarray(info), "RankCandidates by id": np.asarray(rank)}


def measure_isolation(
    stub: pb_grpc.CandidateRankerStub, base: BaseSet, cfg: ServingConfig
) -> IsolationRun:
    """GetModelInfo and RankCandidates-by-id p99, idle, then while `cfg.huge_upserts` callers
    keep sending upserts of `cfg.huge_cvs` CVs of `cfg.huge_cv_chars` characters with a
    `cfg.huge_deadline` deadline (the issue's stall: 41-120 s reads before isolation)."""
    ranking = pb.RankCandidatesRequest(
        posting_id=base.postings[0].posting.id, top_k=cfg.top_k, retrieve_n=cfg.retrieve_n
    )
    _timed_calls(stub, ranking, max(1, cfg.warmup))
    run = IsolationRun(idle=_timed_calls(stub, ranking, cfg.isolation_requests))
    stop = threading.Event()
    codes: dict[str, int] = {}
    lock = threading.Lock()

    # The CV texts are made before the loaded half: generating 300,000 characters per request
    # inside the timing process would charge the attacker's own work to the service.
    texts = [_huge_cv(cfg.huge_cv_chars, j) for j in range(cfg.huge_cvs)]

    def attacker(k: int) -> None:
        i = 0
        while not stop.is_set():
            request = pb.UpsertCandidatesRequest(
                candidates=[
                    pb.Candidate(id=f"huge-{k}-{i}-{j}", cv_text=text)
                    for j, text in enumerate(texts)
                ]
            )
            try:
                stub.UpsertCandidates(request, timeout=cfg.huge_deadline)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name  # type: ignore[attr-defined]
            with lock:
                codes[code] = codes.get(code, 0) + 1
            i += 1

    threads = [threading.Thread(target=attacker, args=(k,)) for k in range(cfg.huge_upserts)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the upserts are in: encoding (or refused at admission)
    run.loaded = _timed_calls(stub, ranking, cfg.isolation_requests)
    stop.set()
    for t in threads:
        t.join()
    run.upserts = dict(sorted(codes.items()))
    return run


def isolation_table(run: IsolationRun, cfg: ServingConfig) -> str:
    """The isolation measurement as Markdown: p50/p99 idle and loaded, and the p99 ratio."""
    rows = []
    for call in run.idle:
        idle, loaded = Summary.of(run.idle[call]), Summary.of(run.loaded[call])
        r = run.ratio(call)
        rows.append(
            [
                call,
                ms(idle.p50),
                ms(idle.p99),
                ms(loaded.p50),
                ms(loaded.p99),
                f"{r:.2f}×",
                "yes" if r <= TARGET_ISOLATION_RATIO else "**no**",
            ]
        )
    sent = ", ".join(f"{k} {v}" for k, v in run.upserts.items()) or "none"
    return (
        table(
            [
                "call",
                "idle p50",
                "idle p99",
                "under attack p50",
                "p99",
                "p99 ratio",
                f"≤ {TARGET_ISOLATION_RATIO:g}×",
            ],
            rows,
        )
        + f"\n\n{cfg.isolation_requests} calls of each kind per half; {cfg.huge_upserts} callers "
        f"sent upserts of {cfg.huge_cvs} × {cfg.huge_cv_chars:,}-character CVs with a "
        f"{cfg.huge_deadline:g} s deadline, as fast as they were answered: {sent}."
    )


def isolation(n: int = 10_000, cfg: ServingConfig = ServingConfig()) -> str:  # noqa: B008
    """Only the isolation measurement, on `n` candidates (what the lead runs on its own):
    `.venv/bin/python -c "from bench.serving import isolation; print(isolation())"`."""
    base = base_set()
    data = build_candidate_set(base, n, bench_root())
    log_path = bench_root() / "logs" / f"isolation-c{n}.log"
    with ServerProcess(data.settings(base), log_path) as server:
        run = measure_isolation(server.stub(), base, cfg)
    return f"### Isolation at {n:,} candidates\n\n" + isolation_table(run, cfg) + "\n"


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def measure_size(base: BaseSet, n: int, cfg: ServingConfig, root: Path | None = None) -> SizeResult:
    """Build (or reuse) the set; load the baseline here and the service in its own process;
    measure both, alternating between them.

    `root` holds the sets and server logs (default `<data_dir>/bench`).
    """
    root = root if root is not None else bench_root()
    data = build_candidate_set(base, n, root)
    result = SizeResult(n=n, data=data)
    log.info("serving bench: %d candidates, loading the straightforward stack", n)
    sentence_transformer()  # loaded before the memory reading: it is not per-candidate memory
    gc.collect()
    before = _rss()
    stack = StraightforwardStack(base, data)
    result.baseline_rss = _rss() - before
    log.info("serving bench: %d candidates, starting the server", n)
    with ServerProcess(data.settings(base), root / "logs" / f"serve-c{n}.log") as server:
        result.startup_seconds = server.startup_seconds
        result.rss_loaded = server.rss_bytes()
        stub = server.stub()
        for path in PATHS:
            for explain in (False, True):
                ours, theirs, tuned = _compare(stub, stack, base, cfg, path, explain, n)
                result.service[(path, explain)] = ours
                result.baseline[(path, explain)] = theirs
                if tuned is not None:
                    result.tuned = tuned
        log.info("serving bench: %d candidates, throughput", n)
        for path in PATHS:
            total = cfg.throughput_requests if path == "id" else cfg.inline_throughput_requests
            reqs = _requests(base, cfg, path, False)
            targets = _targets_of(base, path)
            for c in cfg.concurrency:
                ours_rps = asyncio.run(_aio_throughput(server.address, reqs, total, c))
                theirs_rps = _thread_throughput(_ranker(stack, targets, cfg), total, c)
                result.throughput[(path, c)] = (ours_rps, theirs_rps)
        result.rss_served = server.rss_bytes()
        log.info("serving bench: %d candidates, reads during huge upserts", n)
        result.isolation = measure_isolation(stub, base, cfg)
    del stack
    gc.collect()
    return result


@cache
def results(cfg: ServingConfig = ServingConfig()) -> tuple[BaseSet, tuple[SizeResult, ...]]:  # noqa: B008
    """Every size measured once per process (the memory section reads the same runs)."""
    base = base_set()
    return base, tuple(measure_size(base, n, cfg) for n in cfg.sizes)


# ---------------------------------------------------------------------------------------------
# Report


def _latency_table(r: SizeResult) -> str:
    rows = []
    for path, label in PATHS.items():
        for explain in (False, True):
            s = Summary.of(r.service[(path, explain)].client_ms)
            b = Summary.of(r.baseline[(path, explain)].client_ms)
            rows.append(
                [
                    label,
                    "yes" if explain else "no",
                    ms(s.p50),
                    ms(s.p95),
                    ms(s.p99),
                    ms(b.p50),
                    ms(b.p95),
                    ms(b.p99),
                    ratio(b.p50, s.p50),
                    ratio(b.p99, s.p99),
                ]
            )
    if r.tuned is not None:
        s = Summary.of(r.service[("id", False)].client_ms)
        b = Summary.of(r.tuned.client_ms)
        rows.append(
            [
                "by stored posting id, baseline tuned: LightGBM and FAISS on 1 thread",
                "no",
                ms(s.p50),
                ms(s.p95),
                ms(s.p99),
                ms(b.p50),
                ms(b.p95),
                ms(b.p99),
                ratio(b.p50, s.p50),
                ratio(b.p99, s.p99),
            ]
        )
    return table(
        [
            "path",
            "explain",
            "service p50",
            "p95",
            "p99",
            "baseline p50",
            "p95",
            "p99",
            "speed-up p50",
            "speed-up p99",
        ],
        rows,
    )


def _throughput_table(r: SizeResult, cfg: ServingConfig) -> str:
    rows = []
    for path, label in PATHS.items():
        for c in cfg.concurrency:
            ours, theirs = r.throughput[(path, c)]
            rows.append([label, c, f"{ours:.1f}", f"{theirs:.1f}", rate_ratio(ours, theirs)])
    return table(
        ["path", "concurrency", "service rankings/s", "baseline rankings/s", "ratio"], rows
    )


def _median(a: np.ndarray) -> float:
    return float(np.median(a)) if len(a) else float("nan")


def _breakdown_table(r: SizeResult) -> str:
    cols = [(path, who) for path in PATHS for who in ("service", "baseline")]
    rows = []
    for stage in STAGES:
        row: list[object] = [STAGE_LABELS[stage]]
        for path, who in cols:
            run = (r.service if who == "service" else r.baseline)[(path, True)]
            row.append(ms(_median(run.stages[stage])))
        rows.append(row)
    transport: list[object] = ["gRPC + protobuf + client"]
    total: list[object] = ["end to end (client)"]
    inside: list[object] = ["inside the server"]
    for path, who in cols:
        run = (r.service if who == "service" else r.baseline)[(path, True)]
        if who == "service":
            inside.append(ms(_median(run.stages["total"])))
            transport.append(ms(_median(run.client_ms - run.stages["total"])))
        else:
            inside.append("–")
            transport.append("–")
        total.append(ms(_median(run.client_ms)))
    rows += [inside, transport, total]
    header = ["stage (median ms, explain on)"] + [
        f"{who} {'by id' if path == 'id' else 'inline'}" for path, who in cols
    ]
    return table(header, rows)


def _where_time_goes(r: SizeResult, path: str) -> str:
    """The stages of a service ranking by median cost, largest first, in words."""
    run = r.service[(path, False)]
    parts = {s: _median(run.stages[s]) for s in STAGES if s != "explain"}
    parts["gRPC + protobuf + client"] = _median(run.client_ms - run.stages["total"])
    parts["other work in the server (locks, decision log, request set-up)"] = _median(
        run.stages["total"]
    ) - sum(_median(run.stages[s]) for s in STAGES)
    end = _median(run.client_ms)
    ordered = sorted(parts.items(), key=lambda kv: -kv[1])
    listed = ", ".join(
        f"{STAGE_LABELS.get(k, k)} {ms(v)} ms ({v / end:.0%})" for k, v in ordered if v > 0.005
    )
    return f"median {ms(end)} ms end to end: {listed}"


def _targets(r: SizeResult, cfg: ServingConfig) -> str:
    s_id = Summary.of(r.service[("id", False)].client_ms)
    b_id = Summary.of(r.baseline[("id", False)].client_ms)
    s_in = Summary.of(r.service[("inline", False)].client_ms)
    enc = Summary.of(r.service[("inline", False)].stages["encode"])
    speedup = b_id.p99 / s_id.p99 if s_id.p99 > 0 else float("nan")
    checks = [
        (
            f"by id, p99 ≤ {TARGET_P99_MS:g} ms",
            f"{ms(s_id.p99)} ms",
            s_id.p99 <= TARGET_P99_MS,
        ),
        (
            f"by id, ≥ {TARGET_SPEEDUP:g}× the straightforward stack (p99 against p99)",
            f"{speedup:.2f}× ({ms(b_id.p99)} → {ms(s_id.p99)} ms)",
            speedup >= TARGET_SPEEDUP,
        ),
        (
            "inline, p99 ≤ encode stage p99 + 20 ms",
            f"{ms(s_in.p99)} ms against {ms(enc.p99)} + 20 = {ms(enc.p99 + 20)} ms",
            s_in.p99 <= enc.p99 + 20,
        ),
    ]
    lines = [
        f"Targets at {r.n:,} candidates, concurrency 1, top {cfg.top_k} of {cfg.retrieve_n}, "
        "no explain:",
        "",
        table(
            ["target", "measured", "met"],
            [[name, got, "yes" if ok else "**no**"] for name, got, ok in checks],
        ),
        "",
    ]
    if r.tuned is not None:
        t = Summary.of(r.tuned.client_ms)
        lines += [
            f"Against the tuned baseline (LightGBM and FAISS on one OpenMP thread, so that no "
            f"idle OpenMP thread spins on a core the next stage needs): {ratio(t.p99, s_id.p99)} at p99, "
            f"{ratio(t.p50, s_id.p50)} at p50.",
            "",
        ]
    missed_id = not (checks[0][2] and checks[1][2])
    if missed_id:
        lines.append(f"- By id, where the time goes: {_where_time_goes(r, 'id')}.")
        for label, run in (("straightforward", r.baseline[("id", False)]), ("tuned", r.tuned)):
            if run is None:
                continue
            lines.append(
                f"- The {label} baseline, same path: "
                + ", ".join(
                    f"{STAGE_LABELS[s]} {ms(_median(run.stages[s]))} ms"
                    for s in STAGES
                    if s not in ("encode", "explain")
                )
                + "."
            )
    if not checks[2][2]:
        lines.append(f"- Inline, where the time goes: {_where_time_goes(r, 'inline')}.")
    if not missed_id and checks[2][2]:
        lines.append("Every target is met.")
    return "\n".join(lines)


def report(base: BaseSet, sized: Sequence[SizeResult], cfg: ServingConfig) -> str:
    """The Markdown section for the measured sizes."""
    out = [
        f"## {TITLE}",
        "",
        f"A real `ranker serve` in its own process on 127.0.0.1, called through a real gRPC stub "
        f"from the bench process: top {cfg.top_k} of {cfg.retrieve_n} retrieved, no filters. "
        f"Latency is the client's round trip at concurrency 1 ({cfg.requests} rankings by id, "
        f"{cfg.inline_requests} inline, per row, after {cfg.warmup} warm-up calls; service and "
        f"baseline take turns every {cfg.block} rankings so that both see the same machine "
        "load). The baseline "
        "is the straightforward stack in-process (`bench/_baseline.py`): sentence-transformers "
        "encode for inline postings (a precomputed vector by id), a flat FAISS `IndexFlatIP`, the "
        "same `FeatureBuilder`, LightGBM's native `predict`, and for explain TreeSHAP "
        "`pred_contrib` plus `fit_summary`. Speed-up = baseline time / service time.",
        "",
        f"The candidate sets are synthetic: {base.source}, copied under new ids with Gaussian "
        "noise on their vectors (cosine ≈ 0.92 to the original) and perturbed years, location, "
        "remote/relocation and skills, written straight into the store and the index without "
        "the encoder (encoding 100,000 CVs here would take hours). CV texts, lengths and chunk "
        "counts are therefore those of real demo CVs.",
    ]
    for r in sized:
        built = (
            f"built in {r.data.build_seconds:.0f}s"
            if r.data.build_seconds
            else "reused from an earlier run"
        )
        out += [
            "",
            f"### {r.n:,} candidates",
            "",
            f"Set {built}; the server was SERVING {r.startup_seconds:.0f}s after it started "
            f"(resident {mib(r.rss_loaded)}). Service and baseline agree on "
            f"{r.top_overlap():.0%} of the top {cfg.top_k} by id.",
            "",
            "Latency (ms, concurrency 1):",
            "",
            _latency_table(r),
            "",
            "Throughput (service: grpc.aio client with that many calls in flight; baseline: "
            "that many threads calling the in-process stack):",
            "",
            _throughput_table(r, cfg),
            "",
            "Stage breakdown of one ranking (medians; the service's stages are the timings it "
            "returns in `RankCandidatesResponse.timings`):",
            "",
            _breakdown_table(r),
        ]
        if r.isolation is not None:
            out += [
                "",
                "Reads and rankings by id while huge upserts arrive (client round trips, ms): "
                "encoding runs on its own threads behind a character budget, so these must stay "
                f"within {TARGET_ISOLATION_RATIO:g}× their idle p99:",
                "",
                isolation_table(r.isolation, cfg),
            ]
    if sized:
        out += ["", "### Targets", "", _targets(sized[-1], cfg)]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Shadow scoring: what a challenger costs the responses (ranker.shadow)

TARGET_SHADOW_P50 = 1.10
"""Shadow scoring may cost the champion's responses at most 10% at p50."""


@dataclass(frozen=True)
class ShadowConfig:
    """Sizes and request counts of the shadow-cost measurement."""

    sizes: tuple[int, ...] = (10_000,)
    requests: int = 400
    """Rankings by stored posting id per condition (with and without a challenger)."""
    block: int = 50
    """Rankings per turn; the challenger alias is set and cleared between turns."""
    warmup: int = 20
    top_k: int = 10
    retrieve_n: int = 500
    pauses_ms: tuple[float, ...] = (0.0, 50.0)
    """Client pause between rankings: 0 = back to back (saturated: shadow work waits for idle
    time and is dropped), 50 = a paced client (the shadow scores in the gaps)."""


@dataclass(frozen=True)
class ShadowCost:
    """Client round trips with and without a challenger, and the shadow counters."""

    n: int
    pause_ms: float
    without: np.ndarray
    with_challenger: np.ndarray
    scored: int
    dropped: int


def _set_challenger(
    stub: pb_grpc.CandidateRankerStub, registry_dir: Path, version: str | None
) -> None:
    """Set (or clear) the challenger alias and wait until the service follows it."""
    from ranker.registry import CHALLENGER, ModelRegistry

    registry = ModelRegistry(registry_dir)
    if version is None:
        if CHALLENGER in registry.aliases():
            registry.clear_alias(CHALLENGER, actor="bench", reason="shadow cost: off")
    else:
        registry.set_alias(CHALLENGER, version, actor="bench", reason="shadow cost: on")
    give_up = time.monotonic() + 60
    while stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).challenger_version != (
        version or ""
    ):
        if time.monotonic() > give_up:
            raise RuntimeError("the bench server did not follow the challenger alias in 60 s")
        time.sleep(0.05)


def measure_shadow(
    base: BaseSet, n: int, cfg: ShadowConfig, root: Path | None = None
) -> list[ShadowCost]:
    """Rank by stored posting id in alternating turns without and with a challenger set (a
    second registered version, so every ranking is also scored in shadow)."""
    import shutil

    from ranker.registry import ModelRegistry

    root = root if root is not None else bench_root()
    data = build_candidate_set(base, n, root)
    registry_dir = root / "registry-shadow"
    if registry_dir.exists():
        shutil.rmtree(registry_dir)
    shutil.copytree(base.registry_dir, registry_dir, ignore=shutil.ignore_patterns(".lock"))
    champion = ModelRegistry(registry_dir).current_version()
    if champion is None:
        raise RuntimeError(f"no promoted model in {base.registry_dir}")
    # The challenger: the champion's files under a new version (the same cost to score).
    challenger = f"v{int(champion[1:]) + 1000:04d}"
    shutil.copytree(registry_dir / champion, registry_dir / challenger)
    settings = Settings(
        data_dir=data.data_dir,
        registry_dir=registry_dir,
        encoder_dir=base.encoder_dir,
        model_poll_seconds=0.1,
    )
    cfg_serving = ServingConfig(top_k=cfg.top_k, retrieve_n=cfg.retrieve_n)
    reqs = _requests(base, cfg_serving, "id", False)
    out: list[ShadowCost] = []
    with ServerProcess(settings, root / "logs" / f"serve-shadow-c{n}.log") as server:
        stub = server.stub()
        _service_block(stub, reqs, range(cfg.warmup), None, cfg_serving, n)
        i = 0
        for pause in cfg.pauses_ms:
            before = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            timings: dict[bool, list[float]] = {False: [], True: []}
            while len(timings[True]) < cfg.requests:
                for on in (False, True):
                    _set_challenger(stub, registry_dir, challenger if on else None)
                    for _ in range(cfg.block):
                        t0 = time.perf_counter()
                        stub.RankCandidates(reqs[i % len(reqs)], timeout=60)
                        timings[on].append((time.perf_counter() - t0) * 1000)
                        i += 1
                        time.sleep(pause / 1000)
            after = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            out.append(
                ShadowCost(
                    n=n,
                    pause_ms=pause,
                    without=np.asarray(timings[False]),
                    with_challenger=np.asarray(timings[True]),
                    scored=int(after.shadow_scored - before.shadow_scored),
                    dropped=int(after.shadow_dropped - before.shadow_dropped),
                )
            )
        _set_challenger(stub, registry_dir, None)
    return out


def shadow_report(costs: Sequence[ShadowCost], cfg: ShadowConfig) -> str:
    """The Markdown subsection on shadow scoring's cost."""
    rows = []
    for c in costs:
        a, b = Summary.of(c.without), Summary.of(c.with_challenger)
        p50 = b.p50 / a.p50 if a.p50 > 0 else float("nan")
        rows.append(
            [
                f"{c.n:,}",
                "back to back" if c.pause_ms == 0 else f"{c.pause_ms:g} ms apart",
                ms(a.p50),
                ms(a.p99),
                ms(b.p50),
                ms(b.p99),
                f"{p50:.3f}",
                f"{b.p99 / a.p99:.3f}" if a.p99 > 0 else "–",
                f"{c.scored} / {c.dropped}",
                "yes" if p50 < TARGET_SHADOW_P50 else "**no**",
            ]
        )
    return "\n".join(
        [
            "### Shadow scoring",
            "",
            f"Rankings by stored posting id (top {cfg.top_k} of {cfg.retrieve_n}, no explain), "
            f"{cfg.requests} per condition in turns of {cfg.block}: without a challenger, then "
            "with the registry's `challenger` alias set to a second version (the same model "
            "files, so scoring costs what a real challenger's does), so every ranking is also "
            "rebuilt and scored by the challenger on the service's shadow thread "
            "(`ranker/shadow.py`: bounded queue, dropped when full; a job starts only after "
            "`RANKER_SHADOW_IDLE_MS` without a ranking in flight). Back to back, the service is "
            "never idle, so the shadow sheds its work (dropped); 50 ms apart, it scores in the "
            "gaps. The shadow counters are those of the rankings with the challenger set.",
            "",
            table(
                [
                    "candidates",
                    "client",
                    "without p50",
                    "p99",
                    "with challenger p50",
                    "p99",
                    "ratio p50",
                    "ratio p99",
                    "shadow scored / dropped",
                    f"p50 ratio < {TARGET_SHADOW_P50:g}",
                ],
                rows,
            ),
        ]
    )


def run_shadow(cfg: ShadowConfig = ShadowConfig(), root: Path | None = None) -> str:  # noqa: B008
    """Measure shadow scoring's cost at every size and return the Markdown subsection."""
    base = base_set()
    return shadow_report([c for n in cfg.sizes for c in measure_shadow(base, n, cfg, root)], cfg)


def run(cfg: ServingConfig = ServingConfig()) -> str:  # noqa: B008
    """Measure every size and return the Markdown section (shadow scoring's cost last)."""
    base, sized = results(cfg)
    return report(base, sized, cfg) + "\n" + run_shadow() + "\n"
