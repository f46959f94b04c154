"""The inverted-file (IVF) layout of the index: its size, training, and lists probed per search."""

from __future__ import annotations

import math

import faiss
import numpy as np

TRAIN_POINTS_PER_LIST = 40
"""k-means sample per list: FAISS asks for at least 39 points per centroid."""
MIN_LISTS = 64


def nlist_for(n: int) -> int:
    """Lists for `n` vectors: the power of two nearest 4·√n (1,024 at 10^5, 4,096 at 10^6),
    so a list holds ~√n/4 vectors and probing a few dozen of them scans well under 1%."""
    if n <= 0:
        return MIN_LISTS
    return max(MIN_LISTS, 2 ** round(math.log2(4 * math.sqrt(n))))


def empty_ivf(dim: int, nlist: int, storage: str) -> faiss.IndexIVF:
    """An untrained IVF over inner products with `storage` codes (float32 or fp16)."""
    quantizer = faiss.IndexFlatIP(dim)
    index: faiss.IndexIVF
    if storage == "flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
    index.own_fields = True
    quantizer.this.disown()  # type: ignore[attr-defined]  # the IVF frees its quantizer now
    return index


def train_sample(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """Positions (sorted) of the vectors k-means trains on: 40 per list, at most all `n`."""
    want = min(n, TRAIN_POINTS_PER_LIST * nlist)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=want, replace=False))


def lists_to_probe(nlist: int, nprobe: int, selectivity: float) -> int:
    """Lists a search scans when a share `selectivity` of the vectors passes its filter.

    A list then holds ~selectivity as many eligible vectors, so nprobe / selectivity lists give
    the unfiltered search's recall. Once that is over a quarter of the lists, all are scanned:
    an exact search of the eligible vectors (the filter is tested inside the scan), which costs
    little more and loses nothing.
    """
    want = math.ceil(nprobe / max(selectivity, 1e-9))
    return nlist if want * 4 > nlist else max(1, want)


def list_ids(index: faiss.IndexIVF) -> np.ndarray:
    """Every id held in the lists of `index`."""
    invlists = index.invlists
    assert invlists is not None
    parts = []
    for i in range(index.nlist):
        size = invlists.list_size(i)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(i), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
