"""The FAISS index of candidate vectors (exact scan or IVF, filters inside FAISS) and when to rebuild it."""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from ranker.atomic import atomic_file
from ranker.config import Settings
from ranker.errors import InvalidInput
from ranker.ivf import MIN_LISTS, empty_ivf, list_ids, lists_to_probe, nlist_for, train_sample
from ranker.kernels import id_bitmap
from ranker.permissions import private_dir
from ranker.store_api import Store, open_store

log = logging.getLogger(__name__)

INDEX_FILE = "candidates.faiss"
Storage = Literal["flat", "fp16"]
"""How vectors are held: `flat` float32 (exact), `fp16` half precision (half the memory and
scan time; measured recall@500 0.9997 against exact on 10^5 random unit vectors)."""
_MAGIC = b"RNKIDX1\n"


class ReadWriteLock:
    """Many concurrent searches, one writer at a time; a waiting writer goes before new readers.

    Hand-written because the standard library has none; FAISS searches on a flat index are
    read-only and may run in parallel, but an add or remove must not overlap any of them.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            # Writer preference: a steady stream of rankings must not starve an upsert.
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _base_index(dim: int, storage: Storage) -> faiss.Index:
    if storage == "flat":
        return faiss.IndexFlatIP(dim)
    if storage == "fp16":
        return faiss.IndexScalarQuantizer(
            dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
    raise InvalidInput(f"unknown index storage {storage!r}; use 'flat' or 'fp16'")


@dataclass(frozen=True)
class IvfOptions:
    """When the index becomes an inverted file, and how it searches and retrains (the
    `index_ivf_min_candidates`, `index_nprobe`, `index_retrain_growth` settings)."""

    min_candidates: int = 50_000
    """0: never an IVF (every search exact)."""
    nprobe: int = 64
    retrain_growth: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> IvfOptions:
        return cls(
            settings.index_ivf_min_candidates, settings.index_nprobe, settings.index_retrain_growth
        )

    def wants_ivf(self, n: int) -> bool:
        # Never below MIN_LISTS: k-means needs a training point per list.
        return bool(self.min_candidates) and n >= max(self.min_candidates, MIN_LISTS)


EXACT = IvfOptions(min_candidates=0)
"""Every search an exact scan (training, tests, small pools)."""

Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Document vectors by id: given ids, (the ids found, their vectors)."""
_CHUNK = 50_000


class FaissIndex:
    """Candidate vectors by the store's int64 `faiss_id`, searched by inner product (= cosine).

    Below `IvfOptions.min_candidates` an `IndexIDMap2` over a brute-force scan: at 10^4
    candidates a scan costs well under a millisecond, needs no training, and has no recall to
    tune. From there an inverted file (`ranker.ivf`): k-means lists, a search scanning the
    `nprobe` lists nearest the query (sub-linear), more of them under a selective filter, all of
    them (exact) when the filter keeps few. Half-precision storage (the default) halves the
    bytes scanned, which is what a single-query scan is bound by. Filters become an
    `IDSelectorBitmap` in the search parameters, so FAISS skips excluded candidates while it
    scans instead of after. Adds and removals apply at once in either layout; the IVF's coarse
    quantiser is retrained in the background (`retrain_in_background`) as the pool grows, and
    swapped in under the write lock with the writes made meanwhile replayed onto it. Scores
    are retrieval similarities; the ranking features recompute cosine from float32 vectors.
    """

    def __init__(
        self,
        dim: int = 384,
        generation: str = "",
        storage: Storage = "fp16",
        ivf: IvfOptions = EXACT,
    ) -> None:
        self.dim = dim
        self.generation = generation
        self.storage: Storage = storage
        self.ivf = ivf
        self._index: faiss.Index = faiss.IndexIDMap2(_base_index(dim, storage))
        self.trained_on = 0
        """Vectors the IVF's lists were trained on (0 while the layout is the exact scan)."""
        self._lock = ReadWriteLock()
        self._journal: list[tuple[np.ndarray, np.ndarray | None]] | None = None
        self._retrainer: threading.Thread | None = None
        self._stop = threading.Event()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def is_ivf(self) -> bool:
        return isinstance(self._index, faiss.IndexIVF)

    @property
    def nlist(self) -> int:
        """IVF lists (0 for the exact layout)."""
        return int(self._index.nlist) if isinstance(self._index, faiss.IndexIVF) else 0

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        v = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise InvalidInput(f"expected vectors of dimension {self.dim}, got shape {v.shape}")
        return v

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace the vectors of `ids`."""
        ids64 = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        v = self._check_vectors(vectors)
        if len(ids64) != v.shape[0]:
            raise InvalidInput(f"{len(ids64)} ids for {v.shape[0]} vectors")
        if len(np.unique(ids64)) != len(ids64):
            raise InvalidInput("duplicate ids in one add")
        with self._lock.write():
            _replace(self._index, ids64, v)
            if self._journal is not None:
                self._journal.append((ids64, v))

    def remove(self, ids: np.ndarray) -> int:
        """Remove `ids`; returns how many were present."""
        ids64 = np.ascontiguousarray(ids, dtype=np.int64).ravel()
        if not len(ids64):
            return 0
        with self._lock.write():
            if self._journal is not None:
                self._journal.append((ids64, None))
            return int(self._index.remove_ids(faiss.IDSelectorBatch(ids64)))

    def ids(self) -> np.ndarray:
        """All ids in the index (a copy)."""
        with self._lock.read():
            return self._ids()

    def _ids(self) -> np.ndarray:
        if isinstance(self._index, faiss.IndexIVF):
            return list_ids(self._index)
        assert isinstance(self._index, faiss.IndexIDMap2)
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` nearest ids and their cosine similarities, best first.

        `allowed` (int64 ids) restricts the search; `None` searches everything. Fewer than `k`
        results come back when fewer candidates exist or pass the filter.
        """
        if k < 1:
            raise InvalidInput(f"k must be at least 1, got {k}")
        q = self._check_vectors(query)
        if q.shape[0] != 1:
            raise InvalidInput("search takes one query vector")
        selector = None
        if allowed is not None:
            allowed64 = np.asarray(allowed, dtype=np.int64).ravel()
            if not len(allowed64):
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            if allowed64.min() < 0:
                raise InvalidInput("ids are non-negative")
            # A bitmap over the id range is O(1) per test and cheap to build: store ids are
            # dense (autoincrement), so the map is max_id/8 bytes (12.5 KB per 10^5 ids).
            bitmap = id_bitmap(allowed64)
            # The bitmap size is given in bytes.
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        with self._lock.read():
            index = self._index
            params: faiss.SearchParameters | None
            n = int(index.ntotal)
            if n == 0:
                return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
            if isinstance(index, faiss.IndexIVF):
                share = 1.0 if allowed is None else len(allowed64) / n
                nprobe = lists_to_probe(index.nlist, self.ivf.nprobe, share)
                params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[call-arg]
            else:
                params = None if selector is None else faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
            scores, ids = index.search(q, min(k, n), params=params)
        keep = ids[0] >= 0
        return ids[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def timed_search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """`search`, and the milliseconds it took (a ranking reports it within retrieval)."""
        start = time.perf_counter()
        ids, scores = self.search(query, k, allowed)
        return ids, scores, (time.perf_counter() - start) * 1000

    # -- the IVF's lists, trained and retrained -------------------------------------------
    def needs_retraining(self) -> bool:
        """True when the pool is big enough for an IVF and has none, or has grown by
        `retrain_growth` since its lists were trained."""
        n = len(self)
        if not self.ivf.wants_ivf(n):
            return False
        return not self.is_ivf or n > self.trained_on * (1 + self.ivf.retrain_growth)

    def retrain_in_background(self, fetch: Fetch, done: Callable[[], None]) -> bool:
        """Start retraining on a thread of its own, unless one runs or none is needed; `done`
        is called once the new lists serve. True when started."""
        if (self._retrainer is not None and self._retrainer.is_alive()) or (
            not self.needs_retraining()
        ):
            return False

        def work() -> None:
            try:
                if self.retrain(fetch):
                    done()
            except Exception:
                log.exception("could not retrain the index's lists; the current ones serve on")

        self._retrainer = threading.Thread(target=work, name="index-retrain", daemon=True)
        self._retrainer.start()
        return True

    def retrain(self, fetch: Fetch) -> bool:
        """Train new IVF lists on the vectors held now and swap them in; False when stopped.

        Searches and writes go on meanwhile: writes are journalled and replayed onto the new
        lists under the write lock, just before the swap.
        """
        with self._lock.write():
            ids = self._ids()
            self._journal = []
        try:
            new = _ivf_of(self.dim, self.storage, len(ids), _fetching(fetch, ids), self._stop)
        except BaseException:
            with self._lock.write():
                self._journal = None
            raise
        with self._lock.write():
            journal, self._journal = self._journal or [], None
            if new is None:
                return False
            for jids, vectors in journal:
                if vectors is None:
                    new.remove_ids(faiss.IDSelectorBatch(jids))
                else:
                    _replace(new, jids, vectors)
            self._index, self.trained_on = new, len(ids)
        log.info("index lists retrained: %d lists over %d candidates", new.nlist, len(ids))
        return True

    def stop_retraining(self) -> None:
        """Abandon a retraining under way (at shutdown) and wait for its thread."""
        self._stop.set()
        if self._retrainer is not None:
            self._retrainer.join()

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        """Write the index and its generation as one file, atomically (temp file + rename).

        Streamed to the file (no copy of the index in memory: it is most of the service's).
        """
        directory = Path(directory)
        private_dir(directory)
        target = directory / INDEX_FILE
        with self._lock.read():
            header = json.dumps(
                {
                    "dim": self.dim,
                    "generation": self.generation,
                    "storage": self.storage,
                    "ntotal": int(self._index.ntotal),
                    "trained_on": self.trained_on,
                }
            ).encode()
            with atomic_file(target) as f:
                f.write(_MAGIC + struct.pack("<Q", len(header)) + header)
                faiss.write_index(self._index, faiss.PyCallbackIOWriter(f.write))  # type: ignore[attr-defined]
        return target

    @classmethod
    def load(cls, directory: Path, ivf: IvfOptions = EXACT) -> FaissIndex:
        """Read an index written by `save`; raises FileNotFoundError or InvalidInput."""
        path = Path(directory) / INDEX_FILE
        with path.open("rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                raise InvalidInput(
                    f"{path} is not an index written by this service; delete it to rebuild"
                )
            (hlen,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(hlen))
            index = cls(
                dim=int(header["dim"]),
                generation=str(header["generation"]),
                storage=header.get("storage", "flat"),
                ivf=ivf,
            )
            # Read straight from the file: no second copy of the index in memory.
            loaded = faiss.read_index(faiss.PyCallbackIOReader(f.read))  # type: ignore[attr-defined]
        if loaded.d != index.dim:
            raise InvalidInput(f"{path} holds {loaded.d}-d vectors, expected {index.dim}")
        if not isinstance(loaded, faiss.IndexIDMap2 | faiss.IndexIVF):
            raise InvalidInput(f"{path} is not an id-mapped index; delete it to rebuild")
        index._index = loaded
        index.trained_on = int(header.get("trained_on", 0))
        return index


def _replace(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    if index.ntotal:
        index.remove_ids(faiss.IDSelectorBatch(ids))
    index.add_with_ids(vectors, ids)


def _fetching(
    fetch: Fetch, ids: np.ndarray
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Vectors by position in `ids` (what `_ivf_of` asks for), through `fetch`."""
    return lambda positions: fetch(ids[positions])


def _ivf_of(
    dim: int,
    storage: str,
    n: int,
    at: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    stop: threading.Event | None = None,
) -> faiss.IndexIVF | None:
    """An IVF over `n` vectors read by position with `at` (a k-means sample, then chunks);
    None when `stop` was set meanwhile."""
    nlist = nlist_for(n)
    index = empty_ivf(dim, nlist, storage)
    _, sample = at(train_sample(n, nlist))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for start in range(0, n, _CHUNK):
        if stop is not None and stop.is_set():
            return None
        ids, vectors = at(np.arange(start, min(n, start + _CHUNK)))
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return index


# -- load or rebuild: the store is the truth, a saved index is a cache of it -----------------


def build_index(
    faiss_ids: np.ndarray,
    vectors: np.ndarray,
    generation: str,
    dim: int = 384,
    storage: Storage = "fp16",
    ivf: IvfOptions = EXACT,
) -> FaissIndex:
    """A fresh index over the given candidates, tagged with the store generation it reflects
    (an IVF when `ivf` wants one for this many)."""
    index = FaissIndex(dim=dim, generation=generation, storage=storage, ivf=ivf)
    ids = np.asarray(faiss_ids, dtype=np.int64)
    if ivf.wants_ivf(len(ids)):
        built = _ivf_of(dim, storage, len(ids), lambda pos: (ids[pos], vectors[pos]))
        assert built is not None  # no stop event: never abandoned
        index._index, index.trained_on = built, len(ids)
    elif len(ids):
        index.add(ids, np.asarray(vectors, dtype=np.float32))
    return index


def load_index_if_current(
    index_dir: Path,
    generation: str | Collection[str],
    storage: Storage = "fp16",
    ivf: IvfOptions = EXACT,
) -> FaissIndex | None:
    """The saved index when it reflects `generation` of the store (one of them, when several
    are given); None when missing or stale."""
    if not (index_dir / INDEX_FILE).exists():
        return None
    try:
        index = FaissIndex.load(index_dir, ivf)
    except (OSError, InvalidInput, RuntimeError) as e:
        log.warning(
            "saved index in %s is unreadable (%s); rebuilding it from the store", index_dir, e
        )
        return None
    if index.generation not in ({generation} if isinstance(generation, str) else generation):
        log.info("saved index is out of date (store changed since); rebuilding it from the store")
        return None
    if index.storage != storage:
        log.info(
            "saved index holds %s vectors, %s configured; rebuilding it", index.storage, storage
        )
        return None
    return index


def index_from_store(
    store: Store,
    index_dir: Path,
    vectors: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    storage: Storage = "fp16",
    ivf: IvfOptions = EXACT,
) -> tuple[FaissIndex, bool]:
    """The store's index: the saved one when current, else rebuilt and saved. True if rebuilt.

    The one place that decides between the saved index and a rebuild. `vectors` gives (FAISS
    ids, document vectors) from memory the caller holds already, sparing a pass over the store.
    """
    generation = store.generation()
    index = load_index_if_current(index_dir, generation, storage, ivf)
    if index is not None and len(index) == store.count_candidates():
        return index, False
    found = vectors() if vectors is not None else None
    if found is None:
        ids: list[int] = []
        rows: list[np.ndarray] = []
        for fid, row in store.iter_candidates_with_ids():
            ids.append(fid)
            rows.append(row.doc_vector)
        found = (
            np.asarray(ids, dtype=np.int64),
            np.stack(rows) if rows else np.zeros((0, store.dim), np.float32),
        )
    index = build_index(found[0], found[1], generation, store.dim, storage, ivf)
    index.save(index_dir)
    return index, True


def ensure_index(settings: Settings) -> tuple[int, bool]:
    """Bring the saved index in line with the store; (index size, whether it was rebuilt)."""
    store = open_store(settings)
    try:
        index, rebuilt = index_from_store(
            store,
            settings.resolved_index_dir,
            storage=settings.index_storage,
            ivf=IvfOptions.from_settings(settings),
        )
        return len(index), rebuilt
    finally:
        store.close()
