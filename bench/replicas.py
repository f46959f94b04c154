"""Replicas on one PostgreSQL: ranking through two `ranker serve` replicas on this machine
(client round robin over loopback) against one, and the replication lag under a write load."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from bench import _machine
from bench._data import BaseSet, base_set, bench_root, fresh_candidates, synthesize
from bench._postgres import INSTALL_HINT, PostgresServer, bin_dir
from bench._report import Summary, ms, rate_ratio, table
from bench._server import ServerProcess
from ranker.config import Settings
from ranker.store_pg import PostgresStore
from ranker.transport.channel import SPREAD_SERVICE_CONFIG, channel_target
from ranker.transport.convert import candidate_to_pb
from ranker.v1 import ranker_pb2 as pb
from ranker.v1 import ranker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

TITLE = "Replicas on one PostgreSQL"
SETUPS = ("one replica", "two replicas, round robin")


@dataclass(frozen=True)
class ReplicaConfig:
    """Sizes and counts; the defaults are the full run, tests pass tiny ones."""

    candidates: int = 10_000
    concurrency: tuple[int, ...] = (4, 16)
    requests: int = 300
    """Rankings per (setup, concurrency) and round."""
    rounds: int = 3
    """Rounds; one and two replicas take turns in each, so both see the same machine load."""
    warmup: int = 20
    top_k: int = 10
    writes: int = 40
    """Upserts through replica A per writer for the lag measurement."""
    writers: int = 2
    """Callers upserting through A at once (each waits for its write to show at B)."""
    probe_ms: float = 2.0
    """How often the lag probe asks B for the candidate just written."""
    freshness_calls: int = 300
    """Timed calls of the freshness check every read of a replica makes."""


@dataclass
class Result:
    n: int
    postings: int
    load_seconds: float = 0.0
    startup: dict[str, float] = field(default_factory=dict)
    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    latencies: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    lag_ms: list[float] = field(default_factory=list)
    write_seconds: float = 0.0
    freshness: Summary | None = None
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _fill(url: str, base: BaseSet, n: int, key_file: Path) -> None:
    """The synthetic candidates (`bench._data.synthesize`) and the seed postings, into the
    database, vectors included: nothing is encoded."""
    store = PostgresStore(url, dim=len(base.candidates[0].doc_vector), receipt_key_file=key_file)
    try:
        for rows in synthesize(base.candidates, n, batch=1000):
            store.upsert_candidates(rows)
        store.upsert_postings(base.postings)
    finally:
        store.close()


async def _rankings(
    target: str | Sequence[str], reqs: Sequence[pb.RankCandidatesRequest], total: int, conc: int
) -> tuple[float, list[float]]:
    """(rankings/s, each call's round trip in ms) with `conc` calls in flight."""
    address, spread = channel_target(target)
    options = [("grpc.service_config", SPREAD_SERVICE_CONFIG)] if spread else []
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.CandidateRankerStub(channel)
        for i in range(conc):  # every subchannel connected before the clock starts
            await stub.RankCandidates(reqs[i % len(reqs)], timeout=60, wait_for_ready=True)
        todo = iter(range(total))
        times: list[float] = []

        async def worker() -> None:
            for i in todo:  # one shared iterator: each index is taken once
                t = time.perf_counter()
                await stub.RankCandidates(reqs[i % len(reqs)], timeout=120)
                times.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return total / (time.perf_counter() - t0), times


def _lag(a: ServerProcess, b: ServerProcess, cfg: ReplicaConfig) -> tuple[list[float], float]:
    """Upserts through A from `writers` callers; per write, ms from A's acknowledgement until B
    answers GetCandidate with it. Also the seconds the whole load took."""
    fresh = fresh_candidates(cfg.writes * cfg.writers)
    lags: list[float] = []
    lock = threading.Lock()

    def writer(part: Sequence[object]) -> None:
        with grpc.insecure_channel(a.address) as ca, grpc.insecure_channel(b.address) as cb:
            to_a, to_b = pb_grpc.CandidateRankerStub(ca), pb_grpc.CandidateRankerStub(cb)
            for cand in part:
                msg = candidate_to_pb(cand)  # type: ignore[arg-type]
                r = to_a.UpsertCandidates(pb.UpsertCandidatesRequest(candidates=[msg]), timeout=120)
                acked = time.perf_counter()
                assert r.stored == 1, [i.message for i in r.items]
                while True:
                    try:
                        to_b.GetCandidate(pb.GetCandidateRequest(id=msg.id), timeout=30)
                        break
                    except grpc.RpcError as e:
                        if e.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                            raise
                    time.sleep(cfg.probe_ms / 1000)
                with lock:
                    lags.append((time.perf_counter() - acked) * 1000)

    parts = [fresh[i :: cfg.writers] for i in range(cfg.writers)]
    threads = [threading.Thread(target=writer, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lags, time.perf_counter() - t0


def _freshness(url: str, key_file: Path, calls: int) -> Summary:
    """The check every read of a replica makes first: the newest erasure's seq, one query."""
    store = PostgresStore(url, receipt_key_file=key_file)
    try:
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            store.last_change_seq("erasure")
            times.append((time.perf_counter() - t) * 1000)
    finally:
        store.close()
    return Summary.of(times)


def measure(cfg: ReplicaConfig, base: BaseSet, root: Path, server: PostgresServer) -> Result:
    r = Result(cfg.candidates, len(base.postings), load_before=_machine.load_average())
    url = server.create_database()
    key = root / "receipt-key"
    t0 = time.perf_counter()
    _fill(url, base, cfg.candidates, key)
    r.load_seconds = time.perf_counter() - t0

    def replica(name: str) -> ServerProcess:
        if (root / name).exists():
            shutil.rmtree(root / name)
        settings = Settings(
            data_dir=root / name,
            registry_dir=base.registry_dir,
            encoder_dir=base.encoder_dir,
            database_url=url,
            receipt_key_file=key,
            grace_seconds=2.0,
        )
        return ServerProcess(settings, root / "logs" / f"{name}.log", startup_timeout=900)

    reqs = [
        pb.RankCandidatesRequest(posting_id=p.posting.id, top_k=cfg.top_k) for p in base.postings
    ]
    with replica("a") as a, replica("b") as b:
        r.startup = {"a": a.startup_seconds, "b": b.startup_seconds}
        targets: dict[str, str | list[str]] = {
            SETUPS[0]: a.address,
            SETUPS[1]: [a.address, b.address],
        }
        for target in targets.values():  # warm both paths up
            asyncio.run(_rankings(target, reqs, cfg.warmup, 2))
        for _ in range(cfg.rounds):
            for conc in cfg.concurrency:
                for name, target in targets.items():
                    rate, times = asyncio.run(_rankings(target, reqs, cfg.requests, conc))
                    r.rates.setdefault((name, conc), []).append(rate)
                    r.latencies.setdefault((name, conc), []).extend(times)
        r.lag_ms, r.write_seconds = _lag(a, b, cfg)
    r.freshness = _freshness(url, key, cfg.freshness_calls)
    server.drop_database(url)
    r.load_after = _machine.load_average()
    return r


def report(r: Result, cfg: ReplicaConfig) -> str:
    rows = []
    for conc in cfg.concurrency:
        one = statistics.median(r.rates[(SETUPS[0], conc)])
        for name in SETUPS:
            rate = statistics.median(r.rates[(name, conc)])
            s = Summary.of(r.latencies[(name, conc)])
            rows.append([name, conc, f"{rate:.1f}", rate_ratio(rate, one), ms(s.p50), ms(s.p99)])
    lag = Summary.of(r.lag_ms)
    writes = len(r.lag_ms)
    fresh = r.freshness
    assert fresh is not None
    lines = [
        f"## {TITLE}",
        "",
        f"Two `ranker serve` processes (A and B) on this machine, each with its own data folder, "
        f"on one PostgreSQL database (a throwaway server the bench starts, `bench/_postgres.py`) "
        f"holding {r.n:,} synthetic candidates (as in **Ranking through gRPC**, loaded straight "
        f"into the database in {r.load_seconds:.0f} s) and {r.postings} seed "
        f"postings; each replica built its memory from the database at start (SERVING after "
        f"{r.startup['a']:.0f} s for A, then {r.startup['b']:.0f} s for B). Rankings "
        f"by stored posting id, top {cfg.top_k}, from a grpc.aio client in the bench process with "
        f"that many calls in flight: to A alone, or round robin over A and B "
        f"(`ranker.transport.channel`: `round_robin` with health checking, the channel "
        f"`RANKER_TARGET=127.0.0.1:A,127.0.0.1:B` makes). {cfg.requests} rankings per row and "
        f"round, {cfg.rounds} rounds in which the two set-ups take turns; rankings/s is the "
        f"median of the rounds, latency percentiles pool them.",
        "",
        table(
            ["set-up", "concurrency", "rankings/s", "vs one", "p50 ms", "p99 ms"],
            rows,
        ),
        "",
        f"**Replication lag under a write load.** {cfg.writers} callers upsert one new candidate "
        f"at a time through A (each encoded there: {writes} writes in {r.write_seconds:.0f} s, "
        f"{writes / max(r.write_seconds, 1e-9):.1f}/s); after each acknowledgement the caller asks "
        f"B for that candidate every {cfg.probe_ms:g} ms until B answers with it. Lag = A's "
        f"acknowledgement to B's first answer: p50 {ms(lag.p50)} ms, p99 {ms(lag.p99)} ms, "
        f"max {ms(float(np.max(r.lag_ms)))} ms (B is woken by PostgreSQL's NOTIFY at commit, "
        "reads the feed, the candidate's row and vectors, and prepares it for ranking).",
        "",
        f"**The cost of the erasure guarantee.** Before every read a replica asks the database for "
        f"the newest erasure's seq (one indexed query, `PostgresStore.last_change_seq`): p50 "
        f"{ms(fresh.p50)} ms, p99 {ms(fresh.p99)} ms over {fresh.n} calls from the bench process; "
        f"it catches up first only when an erasure it has not applied has committed.",
        "",
        f"This machine is shared and was loaded while this ran (load average "
        f"{r.load_before[0]:.1f} before, {r.load_after[0]:.1f} after, on "
        f"{os.cpu_count()} logical CPUs): read the ratios and medians, not single figures. Two "
        f"replicas on one machine share its cores, so they cannot double throughput here; what "
        f"they add on one machine is a second process (its own interpreter lock, its own "
        f"connections) and a replica to fail over to. Replicas pay off on separate machines, "
        f"each with its own cores.",
    ]
    return "\n".join(lines) + "\n"


def run(cfg: ReplicaConfig | None = None) -> str:
    cfg = cfg if cfg is not None else ReplicaConfig()
    found = bin_dir()
    if found is None:
        return f"## {TITLE}\n\nNot measured: no PostgreSQL server binaries; {INSTALL_HINT}.\n"
    base = base_set()
    root = bench_root() / "replicas"
    root.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(found)
    try:
        server.start()
    except (OSError, RuntimeError) as e:
        server.stop()
        return f"## {TITLE}\n\nNot measured: the PostgreSQL server could not start ({e}).\n"
    try:
        return report(measure(cfg, base, root, server), cfg)
    finally:
        server.stop()
