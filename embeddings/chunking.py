"""Splitting token sequences longer than the model window, and combining the chunk vectors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def chunk_spans(n_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open token spans covering `n_tokens` in windows of `window` sharing `overlap` tokens.

    A text that fits the window is one span, so it is encoded exactly as the plain path does.
    Spans start every `window - overlap` tokens; the last one ends at `n_tokens` and may be short.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 token, got {window}")
    if not 0 <= overlap < window:
        raise ValueError(
            f"chunk overlap must be in 0..{window - 1} tokens for a {window}-token window, "
            f"got {overlap}; lower RANKER_CHUNK_OVERLAP"
        )
    if n_tokens <= window:
        return [(0, n_tokens)]
    stride = window - overlap
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + window, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            return spans
        start += stride


def new_token_counts(spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Tokens each span adds that no earlier span covered: they sum to the text's token count."""
    counts = np.empty(len(spans), dtype=np.float64)
    covered = 0
    for i, (start, end) in enumerate(spans):
        counts[i] = end - max(start, covered)
        covered = max(covered, end)
    return counts


def combine(chunk_vectors: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """One unit document vector from the unit vectors of its chunks.

    Each chunk vector is the mean of its tokens' embeddings (normalised), so weighting chunks by
    the tokens they add — overlap counted once — makes the document vector approximate a mean
    over all of the document's tokens, which is what the model's own pooling does inside one
    window. A plain mean would let a 10-token tail chunk weigh as much as a full window; keeping
    only the first chunk would ignore most of a long CV. The sum is re-normalised because the
    ranker compares vectors by inner product and expects unit length.
    """
    if len(chunk_vectors) != len(spans) or len(spans) == 0:
        raise ValueError(f"got {len(chunk_vectors)} chunk vectors for {len(spans)} spans")
    if len(spans) == 1:
        # Returned as is (not re-normalised) so in-window texts match the plain path bit for bit.
        return np.asarray(chunk_vectors[0], dtype=np.float32)
    weights = new_token_counts(spans)
    if weights.sum() <= 0:  # only possible for degenerate empty spans; fall back to equal weights
        weights = np.ones(len(spans))
    summed = (weights[:, None] * chunk_vectors.astype(np.float64)).sum(axis=0)
    norm = np.linalg.norm(summed)
    if norm == 0.0:
        # Chunks pointing in exactly opposite directions: no meaningful average; use the first.
        return np.asarray(chunk_vectors[0], dtype=np.float32)
    return (summed / norm).astype(np.float32)
