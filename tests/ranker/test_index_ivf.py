"""The IVF layout: agrees with exact search, plans filtered searches, follows writes, retrains."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ranker.api import RankQuery
from ranker.domain import Posting
from ranker.encoding import TextEncoder
from ranker.index import EXACT, FaissIndex, IvfOptions, build_index
from ranker.ivf import lists_to_probe, nlist_for
from ranker.pipeline import RankingPipeline
from tests.fixtures.server import serving_settings
from training.demo import DemoData

DIM = 24


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Clustered like CVs (a few dozen kinds of profile), so the lists mean something.
    centres = rng.normal(size=(40, DIM))
    v = centres[rng.integers(0, 40, n)] + 0.25 * rng.normal(size=(n, DIM))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return np.arange(100, 100 + n, dtype=np.int64), v


def _queries(k: int = 10, seed: int = 9) -> np.ndarray:
    _, v = _data(k, seed)
    return v


def _exact(ids: np.ndarray, v: np.ndarray, q: np.ndarray, k: int, allowed=None) -> list[int]:
    keep = np.ones(len(ids), bool) if allowed is None else np.isin(ids, allowed)
    s = v[keep] @ q
    return ids[keep][np.argsort(-s, kind="stable")[:k]].tolist()


ALL_LISTS = IvfOptions(min_candidates=1000, nprobe=10_000)


def test_the_layout_follows_the_pool_size() -> None:
    assert nlist_for(100_000) == 1024 and nlist_for(1_000_000) == 4096
    ids, v = _data(1500)
    assert not build_index(ids, v, "g", DIM, "flat", EXACT).is_ivf
    assert not build_index(ids[:999], v[:999], "g", DIM, "flat", ALL_LISTS).is_ivf
    ivf = build_index(ids, v, "g", DIM, "flat", ALL_LISTS)
    assert ivf.is_ivf and ivf.nlist == nlist_for(1500) and ivf.trained_on == 1500
    assert sorted(ivf.ids().tolist()) == ids.tolist()


def test_probing_every_list_is_exact_search() -> None:
    ids, v = _data(3000)
    index = build_index(ids, v, "g", DIM, "flat", ALL_LISTS)
    for q in _queries():
        got, sims = index.search(q, 50)
        assert got.tolist() == _exact(ids, v, q, 50)
        np.testing.assert_allclose(sims, np.sort(v @ q)[::-1][:50], rtol=1e-5)


def test_a_few_lists_keep_the_recall_and_selective_filters_scan_them_all() -> None:
    ids, v = _data(4000)
    opts = IvfOptions(min_candidates=1000, nprobe=32)
    index = build_index(ids, v, "g", DIM, "fp16", opts)
    rng = np.random.default_rng(5)
    recalls = []
    for q in _queries(20):
        got, _ = index.search(q, 100)
        recalls.append(len(set(got.tolist()) & set(_exact(ids, v, q, 100))) / 100)
    assert np.mean(recalls) >= 0.95
    # 1% pass: nprobe / 0.01 lists is more than a quarter of them, so all are scanned (exact).
    assert lists_to_probe(index.nlist, 32, 0.01) == index.nlist
    assert lists_to_probe(4096, 16, 0.1) == 160 and lists_to_probe(4096, 16, 1.0) == 16
    allowed = rng.choice(ids, size=40, replace=False)
    for q in _queries(5):
        got, _ = index.search(q, 20, allowed)
        assert set(got.tolist()) <= set(allowed.tolist())
        assert got.tolist() == _exact(ids, v, q, 20, allowed)


def test_writes_apply_at_once_to_the_lists() -> None:
    ids, v = _data(2000)
    index = build_index(ids, v, "g", DIM, "flat", ALL_LISTS)
    q = _queries(1)[0]
    index.add(np.array([5]), q[None, :])  # new, after training: its nearest list takes it
    assert index.search(q, 1)[0].tolist() == [5]
    index.add(np.array([5]), -q[None, :])  # replaced: one entry, the new vector
    assert 5 not in index.search(q, 10)[0].tolist() and len(index) == 2001
    assert index.remove(np.array([5, int(ids[0])])) == 2 and len(index) == 1999
    assert not {5, int(ids[0])} & set(index.ids().tolist())


def test_retraining_swaps_in_new_lists_and_replays_writes_made_meanwhile() -> None:
    ids, v = _data(3000)
    opts = IvfOptions(min_candidates=1000, nprobe=10_000, retrain_growth=0.5)
    index = build_index(ids[:900], v[:900], "g", DIM, "flat", opts)
    assert not index.is_ivf and not index.needs_retraining()
    index.add(ids[900:], v[900:])  # 3000 now: big enough for lists
    assert index.needs_retraining()
    store = dict(zip(ids.tolist(), v, strict=True))
    q = _queries(1)[0]
    calls = 0

    def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 2:  # a write lands while the lists are being filled
            index.add(np.array([7]), q[None, :])
            index.remove(np.array([int(ids[1])]))
            store[7] = q
            store.pop(int(ids[1]))
        found = np.array([i for i in wanted.tolist() if i in store], dtype=np.int64)
        return found, np.stack([store[i] for i in found.tolist()])

    assert index.retrain(fetch)
    assert index.is_ivf and index.trained_on == 3000 and not index.needs_retraining()
    assert index.search(q, 1)[0].tolist() == [7]
    assert int(ids[1]) not in set(index.ids().tolist()) and len(index) == 3000
    live_ids = np.array(sorted(store), dtype=np.int64)
    live_v = np.stack([store[i] for i in live_ids.tolist()])
    for qq in _queries(3):
        assert index.search(qq, 30)[0].tolist() == _exact(live_ids, live_v, qq, 30)
    more_ids, more_v = _data(1600, seed=3)
    index.add(more_ids + 10_000, more_v)  # grown by over half since training
    assert index.needs_retraining()


def test_an_ivf_saves_and_loads_as_it_was(tmp_path: Path) -> None:
    ids, v = _data(2500)
    index = build_index(ids, v, "gen-1", DIM, "fp16", IvfOptions(1000, 8))
    index.save(tmp_path)
    back = FaissIndex.load(tmp_path, IvfOptions(1000, 8))
    assert back.is_ivf and back.trained_on == 2500 and back.generation == "gen-1"
    for q in _queries(3):
        a, b = index.search(q, 40), back.search(q, 40)
        assert a[0].tolist() == b[0].tolist()


def test_a_pipeline_past_the_threshold_serves_from_lists_erases_from_them_and_restarts(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path, serving_demo: DemoData
) -> None:
    settings = serving_settings(
        tmp_path / "data", registry_path, index_ivf_min_candidates=64, index_nprobe=10_000
    )
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        for start in range(0, len(serving_demo.candidates), 40):
            p.upsert_candidates(serving_demo.candidates[start : start + 40])
        p.upsert_postings(serving_demo.postings)
        deadline = time.monotonic() + 60
        while not p.index.is_ivf and time.monotonic() < deadline:
            time.sleep(0.05)  # retrained in the background after the upsert
        assert p.index.is_ivf
        posting: Posting = serving_demo.postings[0]
        first = p.rank(RankQuery(posting_id=posting.id, top_k=5))
        gone = first.results[0].candidate_id
        p.delete_candidates([gone])
        again = p.rank(RankQuery(posting_id=posting.id, top_k=5))
        assert gone not in [r.candidate_id for r in again.results]
        fid = p.store.faiss_ids([gone])
        assert not fid  # erased from the store, and from the lists:
        assert len(p.index) == len(serving_demo.candidates) - 1
    finally:
        p.close()
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        assert p.index.is_ivf and len(p.index) == len(serving_demo.candidates) - 1
        after = p.rank(RankQuery(posting_id=posting.id, top_k=5))
        assert [r.candidate_id for r in after.results] == [r.candidate_id for r in again.results]
    finally:
        p.close()
