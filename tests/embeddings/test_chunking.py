"""Chunk spans and how chunk vectors combine into one document vector."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.chunking import chunk_spans, combine, new_token_counts


@pytest.mark.parametrize("n", [0, 1, 253, 254])
def test_text_within_window_is_one_span(n: int) -> None:
    assert chunk_spans(n, 254, 32) == [(0, n)]


@pytest.mark.parametrize(
    ("n", "window", "overlap"), [(255, 254, 32), (1000, 254, 32), (777, 100, 0), (50, 10, 9)]
)
def test_spans_cover_everything_with_the_given_overlap(n: int, window: int, overlap: int) -> None:
    spans = chunk_spans(n, window, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(0 < end - start <= window for start, end in spans)
    for (_, prev_end), (start, _) in zip(spans, spans[1:], strict=False):
        assert prev_end - start == overlap
    assert new_token_counts(spans).sum() == n


def test_invalid_overlap_is_rejected() -> None:
    with pytest.raises(ValueError, match="RANKER_CHUNK_OVERLAP"):
        chunk_spans(500, 254, 254)
    with pytest.raises(ValueError):
        chunk_spans(500, 0, 0)


def test_single_chunk_is_returned_unchanged() -> None:
    v = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)
    v /= np.linalg.norm(v)
    np.testing.assert_array_equal(combine(v, [(0, 5)]), v[0])


def test_combination_weights_chunks_by_the_tokens_they_add() -> None:
    a, b = np.eye(2, dtype=np.float32)
    # A full window then a 10-token tail (2 of which overlap): weights 100 and 8.
    spans = [(0, 100), (98, 108)]
    doc = combine(np.stack([a, b]), spans)
    assert np.linalg.norm(doc) == pytest.approx(1.0, abs=1e-6)
    assert doc.dtype == np.float32
    np.testing.assert_allclose(doc, np.array([100, 8]) / np.hypot(100, 8), atol=1e-6)


def test_opposite_chunks_fall_back_to_the_first() -> None:
    a = np.array([1.0, 0.0], dtype=np.float32)
    doc = combine(np.stack([a, -a]), [(0, 10), (10, 20)])
    np.testing.assert_array_equal(doc, a)
