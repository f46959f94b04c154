"""Filling memory at start: the catalog, the posting cache and the index, from the store."""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np

from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.index import FaissIndex, IvfOptions, index_from_store
from ranker.posting_cache import PostingCache
from ranker.prepared import PreparedCandidate, prepare_candidate, prepare_posting
from ranker.store_api import Store

log = logging.getLogger(__name__)

CATALOG_DIR = "catalog"
"""Folder of the catalog's column files and saved state, inside the index folder."""


def catalog_from_store(store: Store, settings: Settings) -> tuple[CandidateCatalog, bool]:
    """The store's catalog: the saved one when it reflects the store, else rebuilt from the
    store (every candidate prepared again) and saved. True when rebuilt."""
    directory = settings.resolved_index_dir / CATALOG_DIR
    generation = store.generation()
    mapped = settings.catalog_read == "mmap"
    catalog = CandidateCatalog.load(directory, generation, mapped)
    if catalog is not None and len(catalog) == store.count_candidates():
        return catalog, False
    if catalog is not None:
        catalog.close()
    # Derived data only: the store is the truth, so a stale folder is simply started over.
    shutil.rmtree(directory, ignore_errors=True)
    catalog = CandidateCatalog(directory=directory, mapped=mapped)
    batch: list[tuple[int, PreparedCandidate]] = []
    for fid, row in store.iter_candidates_with_ids():
        batch.append((fid, prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors)))
        if len(batch) == 10_000:
            catalog.put_many(batch)
            batch = []
    catalog.put_many(batch)
    catalog.save(generation)
    return catalog, True


def load_memory(
    store: Store, settings: Settings, postings: PostingCache, dim: int
) -> tuple[CandidateCatalog, FaissIndex]:
    """The catalog and index of the store (loaded when saved and current, else rebuilt), and
    the posting cache filled."""
    started = time.perf_counter()
    catalog, rebuilt = catalog_from_store(store, settings)
    if rebuilt:
        log.info("rebuilt the catalog from the store: %d candidates", len(catalog))

    def doc_vectors() -> tuple[np.ndarray, np.ndarray]:
        _, fids = catalog.ids_and_fids()
        found, vectors = catalog.doc_vectors(np.sort(fids))
        return found, vectors if len(found) else np.zeros((0, dim), np.float32)

    index, rebuilt = index_from_store(
        store,
        settings.resolved_index_dir,
        doc_vectors,
        storage=settings.index_storage,
        ivf=IvfOptions.from_settings(settings),
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
    return catalog, index
