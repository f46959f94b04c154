"""Filling memory at start: the catalog, the posting cache and the index, from the store."""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np

import ranker.kernels as kernels
from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.index import FaissIndex, IvfOptions, index_from_store, load_index_if_current
from ranker.posting_cache import PostingCache
from ranker.prepared import PreparedCandidate, prepare_candidate, prepare_posting
from ranker.store_api import Store

log = logging.getLogger(__name__)

CATALOG_DIR = "catalog"
"""Folder of the catalog's column files and saved state, inside the index folder."""


def catalog_from_store(store: Store, settings: Settings) -> tuple[CandidateCatalog, bool]:
    """The store's catalog: the saved one when it reflects the store, else rebuilt from the
    store (every candidate prepared again) and saved. True when rebuilt."""
    generation = store.generation()
    catalog = _current_catalog(store, settings, generation)
    if catalog is not None:
        return catalog, False
    return _rebuilt_catalog(store, settings, generation), True


def _current_catalog(store: Store, settings: Settings, generation: str) -> CandidateCatalog | None:
    """The saved catalog when it reflects `generation` of the store."""
    directory = settings.resolved_index_dir / CATALOG_DIR
    catalog = CandidateCatalog.load(directory, generation, settings.catalog_map_bytes)
    if catalog is not None and len(catalog) != store.count_candidates():
        catalog.close()
        return None
    return catalog


def _rebuilt_catalog(store: Store, settings: Settings, generation: str) -> CandidateCatalog:
    directory = settings.resolved_index_dir / CATALOG_DIR
    # Derived data only: the store is the truth, so a stale folder is simply started over.
    shutil.rmtree(directory, ignore_errors=True)
    catalog = CandidateCatalog(directory=directory, map_up_to=settings.catalog_map_bytes)
    batch: list[tuple[int, PreparedCandidate]] = []
    for fid, row in store.iter_candidates_with_ids():
        batch.append((fid, prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors)))
        if len(batch) == 10_000:
            catalog.put_many(batch)
            batch = []
    catalog.put_many(batch)
    catalog.save(generation)
    return catalog


def _behind_but_catchable(
    store: Store, settings: Settings, current: str
) -> tuple[CandidateCatalog, FaissIndex, int] | None:
    """The saved catalog and index when both are of one older generation than `current` whose
    change-feed entry is known and every entry after it is still in the feed: (catalog, index,
    that seq), for the caller to apply the entries after it. None when they cannot catch up."""
    directory = settings.resolved_index_dir / CATALOG_DIR
    catalog = CandidateCatalog.load(directory, None, settings.catalog_map_bytes)
    if catalog is None or catalog.saved is None:
        return None
    generation, seq = catalog.saved
    # Not behind, yet not the store either; or not known how far behind; or it missed entries
    # pruned from the feed (an erasure among them, maybe): rebuild.
    if generation == current or seq is None or store.changes_pruned_through() > seq:
        catalog.close()
        return None
    # The index saved with it, or one `ranker ingest` rebuilt since: it is current then, and
    # the feed's entries change nothing in it (an upsert replaces, an erasure removes).
    index = load_index_if_current(
        settings.resolved_index_dir,
        {generation, current},
        settings.index_storage,
        IvfOptions.from_settings(settings),
    )
    if index is None:
        catalog.close()
        return None
    return catalog, index, seq


def load_memory(
    store: Store, settings: Settings, postings: PostingCache, dim: int
) -> tuple[CandidateCatalog, FaissIndex, int | None]:
    """The catalog and index of the store, and the posting cache filled.

    Loaded when saved and current. When saved at an older point of the store (a crash before
    the debounced save, or writes by `ranker ingest` since), they are loaded as saved and the
    change-feed seq they reflect is returned with them: the caller applies the entries after it
    (`ranker.follower`), which at 10^6 candidates takes seconds where a rebuild takes minutes.
    Otherwise (no saved state, an unknown seq, or entries pruned from the feed) both are rebuilt
    from the store; the seq is then None.
    """
    started = time.perf_counter()
    generation = store.generation()
    behind: int | None = None
    catalog = _current_catalog(store, settings, generation)
    if catalog is not None:
        index = _index_of(store, settings, catalog, dim)
    elif (found := _behind_but_catchable(store, settings, generation)) is not None:
        catalog, index, behind = found
        log.info(
            "the saved catalog and index are at change %d of the store; catching up from there",
            behind,
        )
    else:
        catalog = _rebuilt_catalog(store, settings, generation)
        log.info("rebuilt the catalog from the store: %d candidates", len(catalog))
        index = _index_of(store, settings, catalog, dim)
    _compact_if_due(catalog, settings)
    kernels.warm_up()  # compiled on a fresh install, else loaded from numba's cache
    postings.put_many(
        [prepare_posting(prow.posting, prow.vector) for prow in store.list_postings()]
    )
    log.info(
        "loaded %d candidates and %d postings in %.1fs",
        len(catalog),
        len(postings),
        time.perf_counter() - started,
    )
    return catalog, index, behind


def _index_of(store: Store, settings: Settings, catalog: CandidateCatalog, dim: int) -> FaissIndex:
    """The saved index when current, else built from the catalog's document vectors."""

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
    return index


def _compact_if_due(catalog: CandidateCatalog, settings: Settings) -> None:
    """Reclaim the column files' dead bytes once they reach `catalog_compact_share`."""
    dead = catalog.dead_share()
    if dead > 0 and dead >= settings.catalog_compact_share:
        started = time.perf_counter()
        try:
            freed = catalog.compact()
        except OSError as e:  # a full disk, say: the old files are intact and still in use
            log.warning("could not compact the catalog's column files (%s); serving on them", e)
            return
        log.info(
            "compacted the catalog's column files: %.0f%% of them was dead, %d MiB freed in %.1fs",
            100 * dead,
            freed >> 20,
            time.perf_counter() - started,
        )
