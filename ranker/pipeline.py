"""The ranking pipeline: ranks, upserts, erases and records outcomes; it knows nothing of gRPC.

Reads take a shared lock and touch only memory: per-candidate prepared features and filter
columns (`CandidateCatalog`), the FAISS index, the posting cache and the model bundle in
service. Writes go to the store first (the source of truth), then to memory under the exclusive
lock, and are acknowledged only when both are done, so an acknowledged candidate is durable and
searchable. One writer at a time (`_write_mutex`) keeps the store and memory in the same order.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import faiss
import numpy as np

from ranker.config import Settings
from ranker.domain import Candidate, Outcome, Posting
from ranker.encoding import TextEncoder, encode_candidates, encode_postings
from ranker.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelRejected,
    NotFound,
    NotReady,
    RankerError,
)
from ranker.explain import Explanation, TreeExplainer
from ranker.index import FaissIndex, ReadWriteLock, index_from_store
from ranker.metrics import ServiceMetrics
from ranker.prepared import PreparedCandidate, PreparedPosting, prepare_candidate, prepare_posting
from ranker.rows import CandidateRow, Decision, ErasureReceipt, PostingRow
from ranker.store import SqliteStore
from ranker.text import phrase_key

if TYPE_CHECKING:
    from ranker.registry import ModelBundle, ModelRegistry

log = logging.getLogger(__name__)

_Item = TypeVar("_Item", Candidate, Posting)

MAX_RETRIEVE_N = 10_000
"""Most candidates one request may retrieve before reranking."""

DEFAULT_PAGE_SIZE = 100
"""Postings per ListPostings page when the request does not say."""
MAX_PAGE_SIZE = 1000
"""Most postings per ListPostings page; larger requests get this many."""

MAX_OUTCOME_SKEW = timedelta(days=1)
"""How far in the future an outcome's time may lie (clock skew between the ATS and us)."""


def check_settings(settings: Settings) -> None:
    """Refuse settings that contradict each other, naming the variables to fix."""
    if settings.default_top_k > settings.max_top_k:
        raise InvalidInput(
            f"RANKER_DEFAULT_TOP_K ({settings.default_top_k}) is larger than RANKER_MAX_TOP_K "
            f"({settings.max_top_k}); lower the first or raise the second"
        )
    if settings.max_top_k > MAX_RETRIEVE_N:
        raise InvalidInput(
            f"RANKER_MAX_TOP_K ({settings.max_top_k}) is larger than the {MAX_RETRIEVE_N} "
            "candidates a request may retrieve; lower it"
        )


# ---------------------------------------------------------------------------------------------
# Requests and results


@dataclass(frozen=True)
class Deadline:
    """The caller's time budget as a `time.monotonic()` instant; None = no deadline."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def check(self, before: str) -> None:
        """Raise DeadlineExceeded when the budget is spent, naming the step not started."""
        if self.at is not None and time.monotonic() >= self.at:
            raise DeadlineExceeded(
                f"the deadline passed before {before}; retry with a longer deadline"
            )


NO_DEADLINE = Deadline()


@dataclass(frozen=True)
class RankFilters:
    """Hard filters; a candidate failing one is never retrieved (they run inside the search)."""

    locations: tuple[str, ...] = ()
    include_remote: bool = False
    include_relocating: bool = False
    remote_only: bool = False
    min_years: float | None = None
    must_have_skills: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("locations", "must_have_skills"):
            values = tuple(getattr(self, name))
            if any(not isinstance(v, str) or not v.strip() for v in values):
                raise InvalidInput(f"filters.{name} must hold non-empty strings")
            # The features' comparison key, so filters agree with the reasons and features
            # ("Zurich" matches "Zürich", "machine-learning" matches "Machine Learning").
            normalised = (phrase_key(v) for v in values)
            object.__setattr__(self, name, tuple(dict.fromkeys(normalised)))
        y = self.min_years
        if y is not None and (
            isinstance(y, bool) or not isinstance(y, int | float) or not math.isfinite(y)
        ):
            raise InvalidInput(f"filters.min_years must be a number, got {y!r}")
        if y is not None and not 0 <= y <= 80:
            raise InvalidInput(f"filters.min_years must be in 0..80, got {y!r}")

    @property
    def location_clause(self) -> bool:
        """True when the OR of locations / remote / relocating applies (any of them is set).

        `include_remote` or `include_relocating` without locations keeps only the candidates
        open to remote work or relocation: the clause is the union of what is asked for.
        """
        return bool(self.locations) or self.include_remote or self.include_relocating

    @property
    def empty(self) -> bool:
        return not (self.location_clause or self.remote_only or self.must_have_skills) and (
            self.min_years is None or self.min_years <= 0
        )


@dataclass(frozen=True)
class RankQuery:
    """One ranking request: a stored posting id or an inline posting, and how to rank."""

    posting_id: str | None = None
    posting: Posting | None = None
    top_k: int | None = None
    retrieve_n: int | None = None
    filters: RankFilters = field(default_factory=RankFilters)
    explain: bool = False


@dataclass(frozen=True)
class RankedCandidate:
    """One result of a ranking."""

    candidate_id: str
    rank: int
    score: float
    similarity: float
    explanation: Explanation | None = None


@dataclass(frozen=True)
class RankResult:
    """A ranking as served: every result scored by `model_version`."""

    request_id: str
    model_version: str
    posting_id: str
    results: tuple[RankedCandidate, ...]
    eligible: int
    retrieved: int
    timings_ms: Mapping[str, float]
    """Per stage: encode, retrieve, features, score, explain, total."""


@dataclass(frozen=True)
class Rejected:
    """An item the transport could not turn into a domain record, and why."""

    id: str
    error: RankerError


@dataclass(frozen=True)
class ItemResult:
    """What happened to one item of a batch call; `error` None means it succeeded."""

    index: int
    id: str
    error: RankerError | None = None
    created: bool = False


@dataclass(frozen=True)
class BatchResult:
    """Per-item results of a batch call, in request order."""

    items: tuple[ItemResult, ...]
    total_candidates: int = 0
    receipt: ErasureReceipt | None = None
    recorded: int = 0
    """RecordOutcomes: events newly stored (repeats of a stored event are OK but not new)."""

    @property
    def succeeded(self) -> int:
        return sum(1 for i in self.items if i.error is None)


@dataclass(frozen=True)
class PostingPage:
    """One page of stored postings, sorted by id."""

    postings: tuple[Posting, ...]
    next_page_token: str
    """Empty on the last page."""


@dataclass(frozen=True)
class ModelInfo:
    """The model version in service."""

    version: str
    feature_names: tuple[str, ...]
    card: Mapping[str, object]
    loaded_at: datetime
    total_candidates: int


# ---------------------------------------------------------------------------------------------
# In-memory state


def _slots(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


class CandidateCatalog:
    """Prepared features and filter columns of every searchable candidate, in slot arrays.

    Filters are numpy operations over whole columns (no per-request Python loop over the
    candidates); the result is the array of allowed FAISS ids handed to the search. Erased
    slots are reused. Skills are an inverted index (skill -> int32 array of the slots holding
    it), so memory follows the (candidate, skill) pairs held now, not every skill ever seen;
    a skill's entry, like a location's code, goes when its last holder does. Not thread-safe:
    the pipeline's lock guards it.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._cap = max(1, capacity)
        self._n = 0  # slots ever used (high-water mark); columns are valid up to here
        self._fid = np.full(self._cap, -1, dtype=np.int64)
        self._alive = np.zeros(self._cap, dtype=bool)
        self._years = np.zeros(self._cap, dtype=np.float32)
        self._remote = np.zeros(self._cap, dtype=bool)
        self._relocate = np.zeros(self._cap, dtype=bool)
        self._loc = np.full(self._cap, -1, dtype=np.int32)
        # Arrays are replaced, never changed in place, so a reference taken under the lock stays
        # valid; writes are applied once per batch so a burst costs one pass per skill touched.
        self._skills: dict[str, np.ndarray] = {}
        self._loc_codes: dict[str, int] = {}
        self._loc_refs: list[int] = []  # holders per location code
        self._loc_free: list[int] = []  # codes whose last holder went, reused first
        self._prepared: list[PreparedCandidate | None] = []
        self._slot_by_id: dict[str, int] = {}
        self._slot_by_fid: dict[int, int] = {}
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._slot_by_id)

    def __contains__(self, candidate_id: object) -> bool:
        return candidate_id in self._slot_by_id

    @property
    def distinct_skills(self) -> int:
        """Skills held by at least one candidate now."""
        return len(self._skills)

    @property
    def distinct_locations(self) -> int:
        """Locations of at least one candidate now."""
        return len(self._loc_codes)

    def get(self, candidate_id: str) -> PreparedCandidate | None:
        slot = self._slot_by_id.get(candidate_id)
        return None if slot is None else self._prepared[slot]

    def faiss_id(self, candidate_id: str) -> int | None:
        slot = self._slot_by_id.get(candidate_id)
        return None if slot is None else int(self._fid[slot])

    def _grow(self) -> None:
        new = self._cap * 2

        def grown(a: np.ndarray, fill: object) -> np.ndarray:
            out = np.full(new, fill, dtype=a.dtype)
            out[: self._cap] = a
            return out

        self._fid = grown(self._fid, -1)
        self._alive = grown(self._alive, False)
        self._years = grown(self._years, 0)
        self._remote = grown(self._remote, False)
        self._relocate = grown(self._relocate, False)
        self._loc = grown(self._loc, -1)
        self._cap = new

    # -- location codes, reference-counted ------------------------------------------------
    def _loc_acquire(self, location: str) -> int:
        loc = phrase_key(location)
        if not loc:
            return -1
        code = self._loc_codes.get(loc)
        if code is None:
            if self._loc_free:
                code = self._loc_free.pop()
            else:
                code = len(self._loc_refs)
                self._loc_refs.append(0)
            self._loc_codes[loc] = code
        self._loc_refs[code] += 1
        return code

    def _loc_release(self, code: int, location: str) -> None:
        if code < 0:
            return
        self._loc_refs[code] -= 1
        if self._loc_refs[code] == 0:
            del self._loc_codes[phrase_key(location)]
            self._loc_free.append(code)

    # -- changes --------------------------------------------------------------------------
    def put_many(self, items: Sequence[tuple[int, PreparedCandidate]]) -> list[bool]:
        """Add or replace candidates (FAISS id, prepared); True for each that was new."""
        # Net change per (skill, slot): +1 gained, -1 lost. Netting lets an erased slot be
        # reused within the batch, and the batch then costs one pass per skill touched.
        delta: dict[str, dict[int, int]] = {}
        created = [self._put(fid, pc, delta) for fid, pc in items]
        self._apply(delta)
        return created

    def remove_many(self, candidate_ids: Sequence[str]) -> list[int | None]:
        """Forget candidates; each one's FAISS id, or None when it was not here."""
        delta: dict[str, dict[int, int]] = {}
        fids = [self._remove(cid, delta) for cid in candidate_ids]
        self._apply(delta)
        return fids

    def put(self, fid: int, pc: PreparedCandidate) -> bool:
        """Add or replace one candidate; True when it was new."""
        return self.put_many([(fid, pc)])[0]

    def remove(self, candidate_id: str) -> int | None:
        """Forget one candidate; its FAISS id, or None when it was not here."""
        return self.remove_many([candidate_id])[0]

    @staticmethod
    def _note(delta: dict[str, dict[int, int]], skills: Sequence[str], slot: int, d: int) -> None:
        # Keyed like the features compare skills (`phrase_key`), so a filter and the reasons agree.
        for s in {phrase_key(x) for x in skills}:
            per = delta.setdefault(s, {})
            per[slot] = per.get(slot, 0) + d

    def _put(self, fid: int, pc: PreparedCandidate, delta: dict[str, dict[int, int]]) -> bool:
        slot = self._slot_by_id.get(pc.id)
        created = slot is None
        if slot is None:
            if self._free:
                slot = self._free.pop()
            else:
                if self._n == self._cap:
                    self._grow()
                slot = self._n
                self._n += 1
                self._prepared.append(None)
        else:
            old = self._prepared[slot]
            if old is not None:
                self._note(delta, old.candidate.skills, slot, -1)
                self._loc_release(int(self._loc[slot]), old.candidate.location)
            self._slot_by_fid.pop(int(self._fid[slot]), None)
        c = pc.candidate
        self._fid[slot] = fid
        self._alive[slot] = True
        self._years[slot] = c.years_experience
        self._remote[slot] = c.remote_ok
        self._relocate[slot] = c.willing_to_relocate
        self._loc[slot] = self._loc_acquire(c.location)
        self._note(delta, c.skills, slot, +1)
        self._prepared[slot] = pc
        self._slot_by_id[pc.id] = slot
        self._slot_by_fid[fid] = slot
        return created

    def _remove(self, candidate_id: str, delta: dict[str, dict[int, int]]) -> int | None:
        slot = self._slot_by_id.pop(candidate_id, None)
        if slot is None:
            return None
        pc = self._prepared[slot]
        if pc is not None:
            self._note(delta, pc.candidate.skills, slot, -1)
            self._loc_release(int(self._loc[slot]), pc.candidate.location)
        fid = int(self._fid[slot])
        self._slot_by_fid.pop(fid, None)
        self._alive[slot] = False
        self._fid[slot] = -1
        self._loc[slot] = -1
        self._prepared[slot] = None
        self._free.append(slot)
        return fid

    def _apply(self, delta: dict[str, dict[int, int]]) -> None:
        for skill, per_slot in delta.items():
            gained = [slot for slot, d in per_slot.items() if d > 0]
            lost = [slot for slot, d in per_slot.items() if d < 0]
            if not gained and not lost:
                continue
            held = self._skills.get(skill)
            if held is None:
                held = np.zeros(0, dtype=np.int32)
            if lost:
                held = held[~np.isin(held, _slots(lost))]
            if gained:
                held = np.concatenate([held, _slots(gained)])
            if len(held):
                self._skills[skill] = held
            else:
                self._skills.pop(skill, None)

    # -- queries --------------------------------------------------------------------------
    def allowed(self, f: RankFilters) -> np.ndarray | None:
        """FAISS ids passing the filters; None when there is no filter (search everything)."""
        if f.empty:
            return None
        n = self._n
        mask = self._alive[:n].copy()
        if f.location_clause:
            where = np.zeros(n, dtype=bool)
            codes = [self._loc_codes[loc] for loc in f.locations if loc in self._loc_codes]
            if codes:
                where |= np.isin(self._loc[:n], np.asarray(codes, dtype=np.int32))
            if f.include_remote:
                where |= self._remote[:n]
            if f.include_relocating:
                where |= self._relocate[:n]
            mask &= where
        if f.remote_only:
            mask &= self._remote[:n]
        if f.min_years is not None and f.min_years > 0:
            mask &= self._years[:n] >= f.min_years
        # Rarest skill first: an empty intersection is found with the least work.
        held = [self._skills.get(s) for s in f.must_have_skills]
        for slots in sorted(held, key=lambda a: -1 if a is None else len(a)):
            if slots is None:
                return np.zeros(0, dtype=np.int64)
            has = np.zeros(n, dtype=bool)
            has[slots] = True
            mask &= has
        return self._fid[:n][mask]

    def lookup(self, fids: np.ndarray) -> tuple[list[PreparedCandidate], np.ndarray]:
        """The candidates of `fids` and a mask of which fids were found (order kept)."""
        found: list[PreparedCandidate] = []
        keep = np.zeros(len(fids), dtype=bool)
        for i, fid in enumerate(fids.tolist()):
            slot = self._slot_by_fid.get(fid)
            pc = None if slot is None else self._prepared[slot]
            if pc is not None:
                found.append(pc)
                keep[i] = True
        return found, keep


class DecisionLog:
    """Writes ranking decisions to the store on a background thread, in submission order.

    Off the request path so a ranking never waits for an fsync. `flush` lets an erasure wait
    until every decision already made is stored, so the store's erasure then removes its rows.
    """

    def __init__(self, store: SqliteStore, metrics: ServiceMetrics | None, maxsize: int) -> None:
        self._store = store
        self._metrics = metrics
        # Bounded: under sustained overload rankings wait rather than memory growing unchecked.
        self._queue: queue.Queue[Decision | None] = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def submit(self, decision: Decision) -> None:
        self._queue.put(decision)

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Drain what is already queued so a burst of rankings costs one fsync, not one each.
            while len(batch) < 256:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is None for item in batch)
            decisions = [item for item in batch if item is not None]
            try:
                if decisions:
                    self._store.log_decisions(decisions)
            except Exception:
                # The rankings were already served; losing their log entries must be loud, not fatal.
                log.exception("could not write %d decisions to the decision log", len(decisions))
                if self._metrics is not None:
                    self._metrics.errors.labels(rpc="DecisionLog", code="INTERNAL").inc()
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return


@dataclass(frozen=True)
class _Served:
    """A model bundle in service with what the pipeline derives from it."""

    bundle: ModelBundle
    explainer: TreeExplainer
    loaded_at: datetime


def _posting_hash(p: Posting) -> str:
    """Identifies a posting's content (not its id), so inline postings are traceable in the log."""
    d = asdict(p)
    d.pop("id")
    d.pop("created_at")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()


def _encode_page_token(last_id: str) -> str:
    # The last id of the page: pages stay consistent while postings are added (ids sort).
    return base64.urlsafe_b64encode(last_id.encode("utf-8")).decode("ascii")


def _decode_page_token(token: str) -> str:
    try:
        last_id = base64.b64decode(token, altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        last_id = ""
    if not last_id:
        raise InvalidInput(
            "page_token is not one this service issued; send the next_page_token of the "
            "previous page, or none for the first page"
        )
    return last_id


def _flatten_numbers(d: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_numbers(v, key + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


# ---------------------------------------------------------------------------------------------
# The pipeline


class RankingPipeline:
    """Everything the service does, transport-free; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: SqliteStore,
        encoder: TextEncoder,
        registry: ModelRegistry | None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        check_settings(settings)
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.registry = registry
        self.metrics = metrics
        self._lock = ReadWriteLock()
        self._write_mutex = threading.Lock()
        self._catalog = CandidateCatalog()
        self._postings: dict[str, PreparedPosting] = {}
        self._posting_ids: list[str] = []  # sorted, for ListPostings pages
        self._erasures = 0  # erasure batches so far: a ranking re-checks its results if it moved
        self._served: _Served | None = None
        self._refused_version: str | None = None
        self._index_dirty_at: float | None = None
        self._decisions = DecisionLog(store, metrics, maxsize=10_000)
        self.index = self._load_memory()
        self._update_gauges()

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        encoder: TextEncoder | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> RankingPipeline:
        """Open the store, load or rebuild the index, and load the promoted model if any.

        Raises ModelRejected when the promoted model fails its checks: the service refuses to
        start on a model whose features differ from the feature builder's.
        """
        from ranker.registry import ModelRegistry

        # One request's search is one query vector: FAISS's OpenMP threads then only fight the
        # worker threads for the cores (measured: 48 ms with 2 threads vs 10 ms with 1 at 10^5
        # candidates). Concurrency comes from the worker pool instead.
        faiss.omp_set_num_threads(1)
        if encoder is None:
            from embeddings import load_encoder

            text_encoder: TextEncoder = load_encoder(settings=settings)
        else:
            text_encoder = encoder
        store = SqliteStore(settings.resolved_db_path, dim=text_encoder.dim)
        registry = ModelRegistry(settings.resolved_registry_dir, settings.ort_session)
        pipeline = cls(settings, store, text_encoder, registry, metrics)
        try:
            version = registry.current_version()
            if version is not None:
                pipeline._serve(version)
            else:
                log.warning(
                    "no model version is promoted in %s; ranking is unavailable until one is "
                    "(`ranker train`, or promote a version)",
                    settings.resolved_registry_dir,
                )
        except BaseException:
            pipeline.close()
            raise
        return pipeline

    def _load_memory(self) -> FaissIndex:
        """Fill the catalog and posting cache from the store; load the index or rebuild it."""
        started = time.perf_counter()
        fids: list[int] = []
        vectors: list[np.ndarray] = []
        batch: list[tuple[int, PreparedCandidate]] = []
        for fid, row in self.store.iter_candidates_with_ids():
            pc = prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors)
            batch.append((fid, pc))
            fids.append(fid)
            vectors.append(pc.doc_vector)
            if len(batch) == 10_000:
                self._catalog.put_many(batch)
                batch = []
        self._catalog.put_many(batch)
        index, rebuilt = index_from_store(
            self.store,
            self.settings.resolved_index_dir,
            (
                np.asarray(fids, dtype=np.int64),
                np.stack(vectors) if vectors else np.zeros((0, self.encoder.dim), np.float32),
            ),
            storage=self.settings.index_storage,
        )
        if rebuilt:
            log.info("rebuilt the index from the store: %d candidates", len(index))
        for prow in self.store.list_postings():
            self._postings[prow.posting.id] = prepare_posting(prow.posting, prow.vector)
        self._posting_ids = sorted(self._postings)
        log.info(
            "loaded %d candidates and %d postings in %.1fs",
            len(self._catalog),
            len(self._postings),
            time.perf_counter() - started,
        )
        return index

    def close(self) -> None:
        """Write pending decisions and the index, then close the store."""
        self._decisions.close()
        try:
            self.save_index(force=True)
        finally:
            self.store.close()

    @property
    def ready(self) -> bool:
        """True when a model is in service (the index is loaded by construction)."""
        return self._served is not None

    @property
    def model_version(self) -> str | None:
        served = self._served
        return None if served is None else served.bundle.version

    # -- model updates --------------------------------------------------------------------
    def _serve(self, version: str) -> None:
        """Load, check and swap in `version`; raises ModelRejected and keeps the old one."""
        assert self.registry is not None
        try:
            bundle = self.registry.load(version)
            bundle.check()
        except ModelRejected:
            raise
        except Exception as e:
            raise ModelRejected(
                f"model version {version!r} could not be loaded ({e}); promote another version"
            ) from e
        served = _Served(
            bundle=bundle,
            explainer=TreeExplainer(bundle.booster_path, bundle.feature_names),
            loaded_at=datetime.now(UTC),
        )
        # One reference assignment: a request that already took the old bundle finishes on it.
        self._served = served
        log.info("model version %s is in service", version)
        if self.metrics is not None:
            self.metrics.set_model(version, served.loaded_at.timestamp())
            self.metrics.model_reloads.labels(result="loaded").inc()

    def refresh_model(self) -> bool:
        """Serve the registry's promoted version if it changed; True when a new one was swapped in.

        A version that fails its checks is refused once (logged, counted) and the current one
        keeps serving; it is tried again only after the pointer moves elsewhere and back.
        """
        if self.registry is None:
            return False
        try:
            version = self.registry.current_version()
        except Exception:
            log.exception("could not read the registry pointer; keeping the model in service")
            return False
        if version is None or version == self.model_version:
            self._refused_version = None
            return False
        if version == self._refused_version:
            return False
        try:
            self._serve(version)
        except ModelRejected as e:
            self._refused_version = version
            log.error("refused model version %s, keeping %s: %s", version, self.model_version, e)
            if self.metrics is not None:
                self.metrics.model_reloads.labels(result="refused").inc()
            return False
        self._refused_version = None
        return True

    def model_info(self) -> ModelInfo:
        served = self._require_model()
        with self._lock.read():
            total = len(self._catalog)
        return ModelInfo(
            version=served.bundle.version,
            feature_names=tuple(served.bundle.feature_names),
            card=served.bundle.card,
            loaded_at=served.loaded_at,
            total_candidates=total,
        )

    @staticmethod
    def card_metrics(card: Mapping[str, object]) -> dict[str, float]:
        """The numeric entries of a model card, flattened with dots."""
        return _flatten_numbers(card)

    def _require_model(self) -> _Served:
        served = self._served
        if served is None:
            raise NotReady(
                "no model is in service yet; train and promote one (`ranker train`) and retry"
            )
        return served

    # -- ranking --------------------------------------------------------------------------
    def _query_posting(self, q: RankQuery, deadline: Deadline) -> tuple[PreparedPosting, bool]:
        """The prepared posting of a query; True when it was inline (encoded now)."""
        if (q.posting_id is None) == (q.posting is None):
            raise InvalidInput("send either a posting_id or an inline posting, not both or neither")
        if q.posting_id is not None:
            prepared = self._postings.get(q.posting_id)
            if prepared is None:
                raise NotFound(
                    f"posting {q.posting_id!r} is not stored; send it with UpsertPostings first, "
                    "or send the posting inline"
                )
            return prepared, False
        assert q.posting is not None
        self._check_posting_size(q.posting)
        deadline.check("encoding the posting")
        row = encode_postings(self.encoder, [q.posting])[0]
        if isinstance(row, InvalidInput):
            raise row
        return prepare_posting(row.posting, row.vector), True

    def rank(self, q: RankQuery, deadline: Deadline = NO_DEADLINE) -> RankResult:
        """The top-k candidates of a posting, scored by one model version from start to end.

        The catalog's read lock is held only to search and to take references to the
        retrieved candidates (immutable), then again briefly to log the decision; features,
        scoring and TreeSHAP run without it, so a writer never waits behind them.
        """
        t0 = time.perf_counter()
        s = self.settings
        top_k = s.default_top_k if q.top_k is None else q.top_k
        if not 1 <= top_k <= s.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {s.max_top_k}, got {top_k}")
        retrieve_n = s.retrieve_n if q.retrieve_n is None else q.retrieve_n
        if not 1 <= retrieve_n <= MAX_RETRIEVE_N:
            raise InvalidInput(
                f"retrieve_n must be between 1 and {MAX_RETRIEVE_N}, got {retrieve_n}"
            )
        retrieve_n = max(retrieve_n, top_k)
        served = self._require_model()

        prepared, inline = self._query_posting(q, deadline)
        posting = prepared.posting
        t_enc = time.perf_counter()
        deadline.check("retrieval")
        bundle = served.bundle
        with self._lock.read():
            allowed = self._catalog.allowed(q.filters)
            eligible = len(self._catalog) if allowed is None else len(allowed)
            fids, sims = self.index.search(prepared.vector, retrieve_n, allowed)
            cands, keep = self._catalog.lookup(fids)
            erasures_seen = self._erasures
        fids, sims = fids[keep], sims[keep]
        t_ret = time.perf_counter()
        deadline.check("feature building")
        x = bundle.builder.build(prepared, cands)
        t_feat = time.perf_counter()
        scores = bundle.scorer.score(x) if len(cands) else np.zeros(0, dtype=np.float32)
        # Best score first; ties go to the closer vector, then the older candidate.
        ranked = np.lexsort((fids, -sims, -scores))
        order = ranked[:top_k]
        t_score = time.perf_counter()
        explained: dict[int, Explanation] = {}
        if q.explain and len(order):
            deadline.check("explaining")
            explained = self._explain(served, posting, cands, x, order)
        t_expl = time.perf_counter()
        request_id = uuid.uuid4().hex
        posting_hash = _posting_hash(posting)
        with self._lock.read():
            if self._erasures != erasures_seen:
                # An erasure ran while this request scored without the lock: drop what it
                # erased (an erased id is never served) and fill up from the next best.
                order = np.asarray(
                    [
                        i
                        for i in ranked.tolist()
                        if self._catalog.faiss_id(cands[i].id) == int(fids[i])
                    ][:top_k],
                    dtype=np.intp,
                )
                missing = [i for i in order.tolist() if i not in explained]
                if q.explain and missing:
                    explained |= self._explain(served, posting, cands, x, np.asarray(missing))
            top = [cands[i] for i in order]
            # Submitted under the read lock: an erasure (which takes the write lock, then
            # flushes this log) then finds every decision naming its candidate already queued.
            self._decisions.submit(
                Decision(
                    request_id=request_id,
                    at=datetime.now(UTC),
                    model_version=bundle.version,
                    posting_id=None if inline else posting.id,
                    posting_hash=posting_hash,
                    top_k=top_k,
                    feature_names=tuple(bundle.feature_names),
                    candidate_ids=tuple(pc.id for pc in top),
                    scores=scores[order].astype(np.float32),
                    features=x[order],
                    params={
                        "retrieve_n": retrieve_n,
                        "filters": asdict(q.filters),
                        "explain": q.explain,
                        "eligible": eligible,
                        "retrieved": len(cands),
                    },
                )
            )
        results = tuple(
            RankedCandidate(
                candidate_id=pc.id,
                rank=r,
                score=float(scores[i]),
                similarity=float(sims[i]),
                explanation=explained.get(i),
            )
            for r, (i, pc) in enumerate(zip(order.tolist(), top, strict=True), 1)
        )
        t_end = time.perf_counter()
        timings = {
            "encode": (t_enc - t0) * 1000 if inline else 0.0,
            "retrieve": (t_ret - t_enc) * 1000,
            "features": (t_feat - t_ret) * 1000,
            "score": (t_score - t_feat) * 1000,
            "explain": (t_expl - t_score) * 1000 if q.explain else 0.0,
            "total": (t_end - t0) * 1000,
        }
        if self.metrics is not None:
            skipped = {"total"} | ({"encode"} if not inline else set())
            skipped |= {"explain"} if not q.explain else set()
            for stage, ms in timings.items():
                if stage not in skipped:
                    self.metrics.stage_latency.labels(stage=stage).observe(ms / 1000)
        return RankResult(
            request_id=request_id,
            model_version=bundle.version,
            posting_id=f"inline-{posting_hash[:16]}" if inline else posting.id,
            results=results,
            eligible=eligible,
            retrieved=len(cands),
            timings_ms=timings,
        )

    @staticmethod
    def _explain(
        served: _Served,
        posting: Posting,
        cands: Sequence[PreparedCandidate],
        x: np.ndarray,
        rows: np.ndarray,
    ) -> dict[int, Explanation]:
        """Explanations of the candidates at `rows` of `cands` / `x`, keyed by row."""
        rows_list = [int(i) for i in rows]
        found = served.explainer.explain(posting, [cands[i] for i in rows_list], x[rows])
        return dict(zip(rows_list, found, strict=True))

    # -- writes ---------------------------------------------------------------------------
    def _check_batch(self, n: int, what: str) -> None:
        limit = self.settings.max_batch_items
        if n == 0:
            raise InvalidInput(f"the request holds no {what}; send 1 to {limit}")
        if n > limit:
            raise InvalidInput(
                f"the request holds {n} {what}, more than the limit of {limit}; split it into "
                "smaller batches"
            )

    def _check_posting_size(self, p: Posting) -> None:
        limit = self.settings.max_text_chars
        if len(p.title) + len(p.description) > limit:
            raise InvalidInput(
                f"posting {p.id!r} text is longer than {limit} characters; shorten the description"
            )

    def _split(
        self, items: Sequence[_Item | Rejected], what: str
    ) -> tuple[list[ItemResult | None], list[tuple[int, _Item]]]:
        """Per-item checks shared by the upserts: parse errors, text size, repeated ids."""
        self._check_batch(len(items), what)
        results: list[ItemResult | None] = [None] * len(items)
        good: list[tuple[int, _Item]] = []
        first_at: dict[str, int] = {}
        limit = self.settings.max_text_chars
        for i, item in enumerate(items):
            if isinstance(item, Rejected):
                results[i] = ItemResult(i, item.id, item.error)
                continue
            if item.id in first_at:
                results[i] = ItemResult(
                    i,
                    item.id,
                    InvalidInput(
                        f"id {item.id!r} appears more than once in this batch (first at item "
                        f"{first_at[item.id]}); send each id once"
                    ),
                )
                continue
            first_at[item.id] = i
            size = (
                len(item.cv_text)
                if isinstance(item, Candidate)
                else len(item.title) + len(item.description)
            )
            if size > limit:
                results[i] = ItemResult(
                    i,
                    item.id,
                    InvalidInput(
                        f"{what[:-1]} {item.id!r} text has {size} characters, more than the "
                        f"limit of {limit}; shorten it"
                    ),
                )
                continue
            good.append((i, item))
        return results, good

    def _mark_index_dirty(self) -> None:
        self._index_dirty_at = time.monotonic()

    def upsert_candidates(
        self, items: Sequence[Candidate | Rejected], deadline: Deadline = NO_DEADLINE
    ) -> BatchResult:
        """Store candidates (replace by id) and make them searchable before returning."""
        results, good = self._split(items, "candidates")
        encoded = encode_candidates(self.encoder, [c for _, c in good]) if good else []
        rows: list[tuple[int, CandidateRow, PreparedCandidate]] = []
        for (i, c), row in zip(good, encoded, strict=True):
            if isinstance(row, InvalidInput):
                results[i] = ItemResult(i, c.id, row)
                continue
            rows.append((i, row, prepare_candidate(c, row.doc_vector, row.chunk_vectors)))
        # Past this point the write happens; a caller that has given up gets nothing stored.
        deadline.check("storing the candidates")
        with self._write_mutex:
            if rows:
                fids = self.store.upsert_candidates([r for _, r, _ in rows])
                generation = self.store.generation()
                vectors = np.stack([pc.doc_vector for _, _, pc in rows])
                with self._lock.write():
                    self.index.add(np.asarray(fids, dtype=np.int64), vectors)
                    self.index.generation = generation
                    created = self._catalog.put_many(
                        [(fid, pc) for (_, _, pc), fid in zip(rows, fids, strict=True)]
                    )
                for (i, _, pc), new in zip(rows, created, strict=True):
                    results[i] = ItemResult(i, pc.id, created=new)
                self._mark_index_dirty()
            total = len(self._catalog)
        self._update_gauges()
        return BatchResult(items=tuple(r for r in results if r is not None), total_candidates=total)

    def upsert_postings(
        self, items: Sequence[Posting | Rejected], deadline: Deadline = NO_DEADLINE
    ) -> BatchResult:
        """Store postings (replace by id) with their vectors, computed once here."""
        results, good = self._split(items, "postings")
        encoded = encode_postings(self.encoder, [p for _, p in good]) if good else []
        rows: list[tuple[int, PostingRow, PreparedPosting]] = []
        for (i, p), row in zip(good, encoded, strict=True):
            if isinstance(row, InvalidInput):
                results[i] = ItemResult(i, p.id, row)
                continue
            rows.append((i, row, prepare_posting(p, row.vector)))
        deadline.check("storing the postings")
        with self._write_mutex:
            if rows:
                self.store.upsert_postings([r for _, r, _ in rows])
                with self._lock.write():
                    for i, _, pp in rows:
                        created = pp.id not in self._postings
                        results[i] = ItemResult(i, pp.id, created=created)
                        self._postings[pp.id] = pp
                        if created:
                            bisect.insort(self._posting_ids, pp.id)
            total = len(self._catalog)
        self._update_gauges()
        return BatchResult(items=tuple(r for r in results if r is not None), total_candidates=total)

    def record_outcomes(
        self, items: Sequence[Outcome | Rejected], deadline: Deadline = NO_DEADLINE
    ) -> BatchResult:
        """Store stage events whose posting and candidate are known; others are NOT_FOUND."""
        self._check_batch(len(items), "outcomes")
        deadline.check("recording the outcomes")
        results: list[ItemResult] = []
        good: list[Outcome] = []
        recorded = 0
        latest = datetime.now(UTC) + MAX_OUTCOME_SKEW
        # Under the write mutex so an erasure cannot slip between the check and the insert.
        with self._write_mutex:
            for i, item in enumerate(items):
                if isinstance(item, Rejected):
                    results.append(ItemResult(i, item.id, item.error))
                    continue
                key = f"{item.posting_id}/{item.candidate_id}"
                err: RankerError | None
                if item.at > latest:
                    err = InvalidInput(
                        f"outcome time {item.at.isoformat()} is more than a day in the future; "
                        "send when the stage was reached (UTC), or leave it unset for now"
                    )
                elif item.posting_id not in self._postings:
                    err = NotFound(f"posting {item.posting_id!r} is not stored; upsert it first")
                elif item.candidate_id not in self._catalog:
                    err = NotFound(
                        f"candidate {item.candidate_id!r} is not stored (unknown or erased); "
                        "upsert it first"
                    )
                else:
                    err = None
                    good.append(item)
                results.append(ItemResult(i, key, err))
            if good:
                recorded = self.store.record_outcomes(good)
            total = len(self._catalog)
        return BatchResult(items=tuple(results), total_candidates=total, recorded=recorded)

    def delete_candidates(
        self, ids: Sequence[str], deadline: Deadline = NO_DEADLINE
    ) -> BatchResult:
        """Erase candidates everywhere; unknown or already erased ids are NOT_FOUND per item.

        Memory first (no ranking can return them from then on), then the decision log is
        flushed so decisions already made are stored, then one store transaction erases the
        candidate, its outcomes and its logged feature rows, and records the receipt.
        """
        self._check_batch(len(ids), "ids")
        results: list[ItemResult | None] = [None] * len(ids)
        wanted: list[str] = []
        for i, cid in enumerate(ids):
            if not isinstance(cid, str) or not cid.strip():
                results[i] = ItemResult(i, str(cid), InvalidInput("ids must be non-empty strings"))
            elif cid not in wanted:
                wanted.append(cid)
        deadline.check("erasing")
        receipt: ErasureReceipt | None = None
        with self._write_mutex:
            removed: dict[str, PreparedCandidate] = {}
            if wanted:
                with self._lock.write():
                    held = {cid: self._catalog.get(cid) for cid in wanted}
                    fids = []
                    for cid, fid in zip(wanted, self._catalog.remove_many(wanted), strict=True):
                        pc = held[cid]
                        if pc is not None and fid is not None:
                            removed[cid] = pc
                            fids.append(fid)
                    self.index.remove(np.asarray(fids, dtype=np.int64))
                    if fids:
                        self._erasures += 1
                self._decisions.flush()
                try:
                    receipt = self.store.delete_candidates(wanted)
                except BaseException:
                    # Nothing was erased: make the candidates searchable again, as stored.
                    self._restore(list(removed))
                    raise
                with self._lock.write():
                    self.index.generation = self.store.generation()
                self._mark_index_dirty()
            erased = set(receipt.erased) if receipt is not None else set()
            for i, cid in enumerate(ids):
                if results[i] is not None:
                    continue
                if cid in erased:
                    results[i] = ItemResult(i, cid)
                else:
                    results[i] = ItemResult(
                        i,
                        cid,
                        NotFound(
                            f"candidate {cid!r} is not stored (unknown or already erased); "
                            "nothing to erase"
                        ),
                    )
            total = len(self._catalog)
        self._update_gauges()
        if receipt is not None and not receipt.erased:
            receipt = None
        return BatchResult(
            items=tuple(r for r in results if r is not None),
            total_candidates=total,
            receipt=receipt,
        )

    def _restore(self, ids: list[str]) -> None:
        prepared = [
            (fid, prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors))
            for fid, row in self._fids_and_rows(ids)
        ]
        if not prepared:
            return
        with self._lock.write():
            self._catalog.put_many(prepared)
            self.index.add(
                np.asarray([fid for fid, _ in prepared], dtype=np.int64),
                np.stack([pc.doc_vector for _, pc in prepared]),
            )

    def _fids_and_rows(self, ids: list[str]) -> list[tuple[int, CandidateRow]]:
        fids = self.store.faiss_ids(ids)
        return [(fids[r.candidate.id], r) for r in self.store.get_candidates(ids)]

    # -- reads ----------------------------------------------------------------------------
    def get_candidate(self, candidate_id: str) -> Candidate:
        """A stored candidate's fields; NotFound when unknown or erased."""
        # Under the lock: the slot behind an id may be freed and reused by a concurrent write.
        with self._lock.read():
            pc = self._catalog.get(candidate_id)
        if pc is None:
            raise NotFound(
                f"candidate {candidate_id!r} is not stored (unknown or erased); upsert it first"
            )
        return pc.candidate

    def list_postings(self, page_size: int = 0, page_token: str = "") -> PostingPage:
        """One page of stored postings sorted by id; `page_token` is the previous page's."""
        if page_size < 0:
            raise InvalidInput(f"page_size must be 0..{MAX_PAGE_SIZE}, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_page_token(page_token) if page_token else None
        with self._lock.read():
            ids = self._posting_ids
            start = 0 if after is None else bisect.bisect_right(ids, after)
            page = tuple(self._postings[k].posting for k in ids[start : start + size])
            more = start + size < len(ids)
        token = _encode_page_token(page[-1].id) if more and page else ""
        return PostingPage(postings=page, next_page_token=token)

    @property
    def candidate_count(self) -> int:
        with self._lock.read():
            return len(self._catalog)

    # -- persistence ----------------------------------------------------------------------
    def save_index(self, force: bool = False) -> bool:
        """Save the index if candidates changed and writes have paused; True when saved.

        Debounced (Settings.index_save_delay_seconds) so a burst of upserts costs one save.
        Holds the write mutex so the saved generation matches the saved vectors exactly.
        """
        dirty_at = self._index_dirty_at
        if dirty_at is None:
            return False
        if not force and time.monotonic() - dirty_at < self.settings.index_save_delay_seconds:
            return False
        with self._write_mutex:
            self._index_dirty_at = None
            try:
                self.index.save(self.settings.resolved_index_dir)
            except Exception:
                self._index_dirty_at = dirty_at
                if self.metrics is not None:
                    self.metrics.index_saves.labels(result="failed").inc()
                raise
        if self.metrics is not None:
            self.metrics.index_saves.labels(result="saved").inc()
        return True

    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.index_size.set(len(self.index))
            self.metrics.postings.set(len(self._postings))
