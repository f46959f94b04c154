"""FaissIndex: exact cosine search, filters inside the search, replace/remove, atomic save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ranker.errors import InvalidInput
from ranker.index import INDEX_FILE, FaissIndex
from ranker.kernels import id_bitmap


def _unit(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["flat", "fp16"])
def populated(request: pytest.FixtureRequest) -> tuple[FaissIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    vecs = _unit(rng, 300)
    ids = np.arange(1, 301, dtype=np.int64) * 3  # sparse, non-zero-based ids
    index = FaissIndex(dim=16, storage=request.param)
    index.add(ids, vecs)
    return index, ids, vecs


def test_search_matches_brute_force(populated: tuple[FaissIndex, np.ndarray, np.ndarray]) -> None:
    index, ids, vecs = populated
    q = vecs[10]
    got_ids, got_scores = index.search(q, 20)
    sims = vecs @ q
    order = np.argsort(-sims)[:20]
    # fp16 storage rounds each component to ~3 decimal digits; flat is exact.
    atol = 1e-5 if index.storage == "flat" else 2e-3
    np.testing.assert_allclose(got_scores, sims[order], atol=atol)
    np.testing.assert_allclose(sims[ids_to_rows(got_ids)], sims[order], atol=atol)
    assert got_ids[0] == ids[10]


def ids_to_rows(got: np.ndarray) -> np.ndarray:
    return (got // 3 - 1).astype(np.int64)


def test_id_bitmap_is_the_packed_bitmap_faiss_reads() -> None:
    rng = np.random.default_rng(4)
    for top in (0, 7, 8, 63, 1000, 100_003):
        ids = np.unique(np.append(rng.integers(0, top + 1, size=50), top)).astype(np.int64)
        bits = np.zeros(top + 1, dtype=bool)
        bits[ids] = True
        assert np.array_equal(id_bitmap(ids), np.packbits(bits, bitorder="little"))


def test_filter_is_applied_inside_the_search(
    populated: tuple[FaissIndex, np.ndarray, np.ndarray],
) -> None:
    index, ids, vecs = populated
    allowed = ids[::7]
    got_ids, _ = index.search(vecs[0], 50, allowed=allowed)
    # All allowed ids come back (43 < 50), and nothing else: a post-filter would return fewer.
    assert set(got_ids.tolist()) == set(allowed.tolist())
    sims = vecs @ vecs[0]
    got_sims = sims[ids_to_rows(got_ids)]
    assert np.all(np.diff(got_sims) <= 2e-3)  # best first (up to fp16 rounding)
    empty_ids, empty_scores = index.search(vecs[0], 5, allowed=np.array([], dtype=np.int64))
    assert len(empty_ids) == 0 and len(empty_scores) == 0


def test_add_replaces_and_remove_deletes(
    populated: tuple[FaissIndex, np.ndarray, np.ndarray],
) -> None:
    index, ids, vecs = populated
    index.add(ids[:1], -vecs[:1])  # replace, not duplicate
    assert len(index) == 300
    got, _ = index.search(vecs[0], 300)
    assert got[-1] == ids[0]
    assert index.remove(ids[:5]) == 5
    assert index.remove(ids[:5]) == 0
    got, _ = index.search(vecs[1], 300)
    assert not set(ids[:5].tolist()) & set(got.tolist())
    assert len(index) == 295


def test_bad_input_is_rejected(populated: tuple[FaissIndex, np.ndarray, np.ndarray]) -> None:
    index, ids, vecs = populated
    with pytest.raises(InvalidInput):
        index.add(np.array([1, 1]), vecs[:2])
    with pytest.raises(InvalidInput):
        index.add(np.array([1]), np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(InvalidInput):
        index.search(vecs[0], 0)
    assert len(index) == 300


def test_fp16_storage_keeps_the_nearest_neighbours() -> None:
    rng = np.random.default_rng(3)
    vecs = _unit(rng, 2000, dim=64)
    ids = np.arange(2000, dtype=np.int64)
    exact, half = FaissIndex(dim=64, storage="flat"), FaissIndex(dim=64, storage="fp16")
    exact.add(ids, vecs)
    half.add(ids, vecs)
    recalls = []
    for q in vecs[:20]:
        a, _ = exact.search(q, 100)
        b, _ = half.search(q, 100)
        recalls.append(len(set(a.tolist()) & set(b.tolist())) / 100)
    assert np.mean(recalls) >= 0.99


def test_save_load_roundtrip_is_atomic(
    tmp_path: Path, populated: tuple[FaissIndex, np.ndarray, np.ndarray]
) -> None:
    index, ids, vecs = populated
    index.generation = "abc:7"
    index.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [INDEX_FILE]  # no temp file left behind
    loaded = FaissIndex.load(tmp_path)
    assert loaded.generation == "abc:7" and len(loaded) == 300
    assert loaded.storage == index.storage
    a, _ = index.search(vecs[3], 10)
    b, _ = loaded.search(vecs[3], 10)
    np.testing.assert_array_equal(a, b)
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")
    with pytest.raises(InvalidInput):
        FaissIndex.load(tmp_path)
