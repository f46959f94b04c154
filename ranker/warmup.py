"""Filling memory at start: the catalog, the posting cache and the index, from the store."""

from __future__ import annotations

import logging
import time

import numpy as np

from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.index import FaissIndex, index_from_store
from ranker.posting_cache import PostingCache
from ranker.prepared import PreparedCandidate, prepare_candidate, prepare_posting
from ranker.store_api import Store

log = logging.getLogger(__name__)


def load_memory(
    store: Store,
    settings: Settings,
    catalog: CandidateCatalog,
    postings: PostingCache,
    dim: int,
) -> FaissIndex:
    """Fill the catalog and posting cache from the store; load the index or rebuild it."""
    started = time.perf_counter()
    fids: list[int] = []
    vectors: list[np.ndarray] = []
    batch: list[tuple[int, PreparedCandidate]] = []
    for fid, row in store.iter_candidates_with_ids():
        pc = prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors)
        batch.append((fid, pc))
        fids.append(fid)
        vectors.append(pc.doc_vector)
        if len(batch) == 10_000:
            catalog.put_many(batch)
            batch = []
    catalog.put_many(batch)
    index, rebuilt = index_from_store(
        store,
        settings.resolved_index_dir,
        (
            np.asarray(fids, dtype=np.int64),
            np.stack(vectors) if vectors else np.zeros((0, dim), np.float32),
        ),
        storage=settings.index_storage,
    )
    if rebuilt:
        log.info("rebuilt the index from the store: %d candidates", len(index))
    postings.put_many(
        [prepare_posting(prow.posting, prow.vector) for prow in store.list_postings()]
    )
    log.info(
        "loaded %d candidates and %d postings in %.1fs",
        len(catalog),
        len(postings),
        time.perf_counter() - started,
    )
    return index
