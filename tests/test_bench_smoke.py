"""Smoke tests of the bench helpers on tiny sizes: they run and measure what they claim, fast."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import ingest, memory, scoring
from bench._baseline import StraightforwardStack
from bench._data import (
    NOISE_COSINE,
    BaseSet,
    build_candidate_set,
    index_file,
    load_prepared,
    synthesize,
)
from ranker.config import Settings
from ranker.index import FaissIndex
from ranker.registry import ModelRegistry
from ranker.store import SqliteStore
from tests.fixtures.training import EncodedDemo

N = 200


@pytest.fixture(scope="module")
def base(
    demo_data: EncodedDemo,
    trained_registry: ModelRegistry,
    encoder_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> BaseSet:
    """The session's small encoded demo set and trained model, as the bench's seed set."""
    registry = tmp_path_factory.mktemp("bench-registry") / "registry"
    shutil.copytree(trained_registry.root, registry, ignore=shutil.ignore_patterns(".lock"))
    return BaseSet(
        candidates=demo_data.candidate_rows,
        postings=demo_data.posting_rows,
        registry_dir=registry,
        encoder_dir=encoder_dir,
        source="the test session's demo set",
    )


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


def test_synthesize_copies_real_candidates_with_noise(base: BaseSet) -> None:
    rows = [r for batch in synthesize(base.candidates, N, seed=1, batch=64) for r in batch]
    assert len(rows) == N
    assert len({r.candidate.id for r in rows}) == N
    assert not {r.candidate.id for r in rows} & {r.candidate.id for r in base.candidates}
    by_text = {r.candidate.cv_text: r for r in base.candidates}
    cosines = []
    for r in rows:
        source = by_text[r.candidate.cv_text]  # the CV text is the real one it was copied from
        assert np.isclose(np.linalg.norm(r.doc_vector), 1.0, atol=1e-5)
        assert np.allclose(np.linalg.norm(r.chunk_vectors, axis=1), 1.0, atol=1e-5)
        assert r.chunk_vectors.shape == np.atleast_2d(source.chunk_vectors).shape
        assert set(r.candidate.skills) <= set(source.candidate.skills)
        cosines.append(float(r.doc_vector @ source.doc_vector))
    # Noisy but recognisably the same CV, and not a verbatim copy.
    assert abs(np.mean(cosines) - NOISE_COSINE) < 0.03
    assert max(cosines) < 0.999


def test_synthesize_is_deterministic(base: BaseSet) -> None:
    a = next(synthesize(base.candidates, 20, seed=5))
    b = next(synthesize(base.candidates, 20, seed=5))
    assert [r.candidate for r in a] == [r.candidate for r in b]
    assert all(np.array_equal(x.doc_vector, y.doc_vector) for x, y in zip(a, b, strict=True))


def test_candidate_set_is_stored_indexed_and_reused(base: BaseSet, bench_dir: Path) -> None:
    data = build_candidate_set(base, N, bench_dir)
    store = SqliteStore(data.db_path)
    try:
        assert store.count_candidates() == N
        assert store.count_postings() == len(base.postings)
        generation = store.generation()
    finally:
        store.close()
    index = FaissIndex.load(data.index_dir)
    assert len(index) == N
    assert index.generation == generation  # the server will load it instead of rebuilding
    # Saved in the storage the service is configured for, so the server loads it as is.
    assert index.storage == Settings().index_storage
    assert index_file(data).stat().st_size > N * 384 * (2 if index.storage == "fp16" else 4)
    again = build_candidate_set(base, N, bench_dir)
    assert again.build_seconds == 0.0 and again.data_dir == data.data_dir
    fids, prepared = load_prepared(data)
    assert len(fids) == len(prepared) == N


def test_baseline_ranks_the_set(base: BaseSet, bench_dir: Path) -> None:
    data = build_candidate_set(base, N, bench_dir)
    stack = StraightforwardStack(base, data)
    posting = base.postings[0].posting.id
    run = stack.rank(posting, top_k=10, retrieve_n=50, explain=True)
    assert len(run.top) == 10 and len(set(run.top)) == 10
    assert all(cid.startswith("S") for cid in run.top)
    stages = [run.encode, run.retrieve, run.features, run.score, run.explain]
    assert all(s >= 0 for s in stages)
    assert sum(stages) <= run.total + 1e-6
    assert stack.rank(posting, 10, 50, one_thread=True).top == run.top


def test_serving_measures_a_real_server(base: BaseSet, bench_dir: Path) -> None:
    from bench.serving import PATHS, ServingConfig, measure_size, report

    cfg = ServingConfig(
        sizes=(N,),
        requests=6,
        inline_requests=2,
        throughput_requests=6,
        inline_throughput_requests=2,
        concurrency=(1, 2),
        retrieve_n=50,
        warmup=1,
        isolation_requests=5,
        huge_upserts=2,
        huge_cv_chars=20_000,
        huge_cvs=2,
        huge_deadline=0.5,
    )
    r = measure_size(base, N, cfg, bench_dir)
    for path in PATHS:
        for explain in (False, True):
            run = r.service[(path, explain)]
            assert len(run.client_ms) == (6 if path == "id" else 2)
            # The server's own total fits inside the client's round trip.
            assert np.all(run.stages["total"] <= run.client_ms)
            assert (run.stages["explain"] > 0).all() == explain
        assert (r.service[(path, False)].stages["encode"] > 0).all() == (path == "inline")
    # Same model, same features, same exact search: the two stacks rank alike.
    assert r.top_overlap() >= 0.8
    assert all(rate > 0 for pair in r.throughput.values() for rate in pair)
    assert r.rss_loaded > 0 and r.index_bytes > 0 and r.store_bytes > 0
    iso = r.isolation
    assert iso is not None and sum(iso.upserts.values()) >= 2
    assert all(len(v) == 5 for v in (*iso.idle.values(), *iso.loaded.values()))
    assert iso.ratio("GetModelInfo") > 0
    text = report(base, [r], cfg)
    assert "### Targets" in text and f"{N:,} candidates" in text
    assert "p99 ratio" in text
    assert f"| {N:,} |" in memory.report(base, [r])


def test_scoring_section_runs(base: BaseSet) -> None:
    text = scoring.run(n=50, repeats=5, base=base)
    assert text.startswith("## Scoring") and "ONNX Runtime" in text


def _numbers(text: str, row_start: str) -> list[float]:
    """The numeric cells of the Markdown table row starting with `row_start`."""
    (line,) = [x for x in text.splitlines() if x.startswith(f"| {row_start}")]
    cells = [c.strip().rstrip("×").replace(",", "") for c in line.strip("|").split("|")[1:]]
    return [float(c) for c in cells if c and c != "–"]


def test_ingest_section_upserts_through_a_real_server(base: BaseSet, bench_dir: Path) -> None:
    text = ingest.run(n=4, batch=2, base=base, root=bench_dir, bulk=60, held=N)
    assert text.startswith("## Ingestion") and "4 new demo candidates" in text
    assert not (bench_dir / "ingest").exists()  # the throwaway store is removed
    assert not (bench_dir / "ingest-scale").exists()  # nor the copies of the at-scale part
    # The bulk path, into an empty folder and a copy of the N-candidate set, stage by stage.
    assert "### At scale: the bulk path" in text and f"a copy of the {N:,}-candidate" in text
    for stage in ("`ranker ingest`: store writes", "catch-up: `CandidateCatalog.put_many`"):
        empty_s, empty_rate, full_s, full_rate, ratio = _numbers(text, stage)
        assert min(empty_s, empty_rate, full_s, full_rate, ratio) > 0
    assert len(_numbers(text, "**first load")) == 5
    assert "bound by" in text
    # fp32 and int8 through the service on the copy, and the same in process.
    assert "### At scale: encoding included, fp32 and int8" in text
    fp32, int8, ratio = _numbers(text, "service: `UpsertCandidates` into")
    assert fp32 > 0 and int8 > 0 and ratio > 0
    assert all(r > 0 for r in _numbers(text, "`ranker ingest`-style: whole"))
    assert "### A first load of 1,000,000 candidates" in text and "--dask" in text


def test_scale_section_measures_memory_recall_and_the_lean_baseline(
    base: BaseSet, bench_dir: Path
) -> None:
    from bench.scale import Memory, ScaleConfig, _empty_server, measure, report

    cfg = ScaleConfig(
        sizes=(N,),
        lean_above=N // 2,  # the lean baseline, reading the set's catalog columns
        requests=4,
        throughput_requests=4,
        concurrency=(1, 2),
        recall_postings=3,
        filtered_requests=2,
        crash_writes=4,
    )
    fixed, _ = _empty_server(base, bench_dir)
    r = measure(base, N, cfg, bench_dir, crash=True)
    assert r.lean and r.service is not None and r.baseline is not None
    assert len(r.service.client_ms) == 4 and r.startup_s > 0
    assert isinstance(r.served, Memory) and r.served.rss >= r.served.anon > 0
    # Exact layout at this size: the retrieved set is the exact one, with or without a filter.
    assert [f.share for f in r.filtered] == [1.0, 0.1, 0.01]
    assert all(f.recall >= 0.99 for f in r.filtered)
    assert all(f.postings == 3 and f.recall_ci[0] <= f.recall <= f.recall_ci[1] for f in r.filtered)
    assert all(a > 0 and b > 0 for a, b in r.throughput.values())
    # Both ways of reading the catalog measured; the crash's restart caught up from the feed.
    assert set(r.reads) == {"pread", "mmap"} and all(s.n == 4 for s, _ in r.reads.values())
    assert next(iter(r.reads)) == "mmap"  # the default (auto) maps a set this small
    assert r.crash is not None and r.crash.caught_up and r.crash.erased == 2
    text = report([r], fixed, 1.0, base)
    assert "### Targets" in text and "recall@500 [95% CI]" in text and "(3 postings)" in text
    assert "the first ranking of each block p50" in text
    assert "| · index search |" in text  # retrieval split in two, as the server timed it
    assert "Restart after a crash" in text and "caught up from the change feed" in text
