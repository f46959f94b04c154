"""The ranking pipeline: ranks, upserts, erases and records outcomes; it knows nothing of gRPC.

Reads take a shared lock and touch only memory: per-candidate prepared features and filter
columns (`CandidateCatalog`), the FAISS index, the posting cache and the model in service
(`ModelSlot`). Writes go to the store first (the source of truth), then to memory under the
exclusive lock, and are acknowledged only when both are done, so an acknowledged candidate is
durable and searchable. One writer at a time (`_write_mutex`) keeps the store and memory in the
same order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np

from ranker.api import (
    NO_DEADLINE,
    BatchResult,
    CompareQuery,
    Deadline,
    ModelInfo,
    PostingPage,
    RankQuery,
    RankResult,
    Rejected,
    check_batch_size,
    check_posting_size,
)
from ranker.comparison import compare_pair
from ranker.config import MAX_RETRIEVE_N, Settings
from ranker.decisions import DecisionLog
from ranker.domain import Candidate, Outcome, Posting
from ranker.encoding import TextEncoder, encode_candidates, encode_postings, stop_when
from ranker.erasure import erasure_results, erasure_targets, log_erasure
from ranker.errors import ErasedId, InvalidInput, NotFound, RankerError, shown_id
from ranker.explain import Explanation
from ranker.exports import scrub_exports
from ranker.fair_serving import FairReranker
from ranker.follower import ChangeFollower
from ranker.index import ReadWriteLock
from ranker.metrics import ServiceMetrics
from ranker.model_slot import ModelSlot
from ranker.outcomes import screen_outcomes
from ranker.posting_cache import PostingCache
from ranker.prepared import PreparedCandidate, PreparedPosting, prepare_candidate, prepare_posting
from ranker.ranking import (
    RankRequest,
    Retrieved,
    Scored,
    Stopwatch,
    build_features,
    decision_of,
    explain_rows,
    result_of,
    score_and_order,
)
from ranker.rows import CandidateRow, ErasureReceipt, PostingRow
from ranker.shadow import ShadowScorer
from ranker.store_api import Store, open_change_waiter, open_store
from ranker.tombstones import erased_message
from ranker.upkeep import PipelineUpkeep
from ranker.upserts import UpsertContext, upsert_batch
from ranker.warmup import load_memory

if TYPE_CHECKING:
    from ranker.api import ComparisonResult
    from ranker.registry import ModelRegistry


class RankingPipeline:
    """Everything the service does, transport-free; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        encoder: TextEncoder,
        registry: ModelRegistry | None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.registry = registry
        self.metrics = metrics
        self.model = ModelSlot(registry, metrics, settings.fallback)
        self._lock = ReadWriteLock()
        self._write_mutex = threading.Lock()
        self._postings = PostingCache()
        self._erasures = 0  # erasure batches so far: a ranking re-checks its results if it moved
        self._index_dirty_at: float | None = None
        self._decisions = DecisionLog.from_settings(store, metrics, settings)
        self._exports_lock = threading.Lock()  # two erasures must not rewrite one file at once
        self._shadow = ShadowScorer.from_settings(store, settings)
        fair = settings.fair_rerank != "off"  # the protected table is read only then
        self._fair = FairReranker.from_store(store, settings) if fair else None
        # A shared store: follow every service's writes from the feed entry read before loading.
        start_seq = store.last_change_seq() if settings.uses_postgres else 0
        memory = load_memory(store, settings, self._postings, encoder.dim)
        self._catalog, self.index, behind = memory
        self._follower: ChangeFollower | None = None
        if behind is not None:  # saved at feed entry `behind`: apply the rest before serving
            start_seq = ChangeFollower(store, self, settings, behind, None).catch_up()
        self._retrain()
        if settings.uses_postgres:
            waiter = open_change_waiter(settings)
            self._follower = ChangeFollower(store, self, settings, start_seq, waiter, metrics)
        self._upkeep = PipelineUpkeep(
            settings, self.model, store, self._decisions, self.save_index, metrics, self._catalog
        )
        self._update_gauges()
        if self._follower is not None:
            self._follower.start()

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

        # One search is one query vector: FAISS's OpenMP threads only fight the workers for the
        # cores (48 ms with 2 threads vs 10 ms with 1 at 10^5); the worker pool gives concurrency.
        faiss.omp_set_num_threads(1)
        if encoder is None:
            from embeddings import load_encoder

            text_encoder: TextEncoder = load_encoder(settings=settings.serving_encoder)
        else:
            text_encoder = encoder
        store = open_store(settings, dim=text_encoder.dim)
        registry = ModelRegistry(settings.resolved_registry_dir, settings.ort_session)
        pipeline = cls(settings, store, text_encoder, registry, metrics)
        try:
            pipeline.model.serve_promoted()
        except BaseException:
            pipeline.close()
            raise
        return pipeline

    def close(self) -> None:
        """Stop following, write pending decisions and the index, then close the store."""
        if self._follower is not None:
            self._follower.close()
        self._upkeep.close()
        self._shadow.close()
        self._decisions.close()
        self.index.stop_retraining()
        try:
            self.save_index(force=True)
        finally:
            self._catalog.close()
            self.store.close()

    @property
    def ready(self) -> bool:
        """True when something ranks: a model, or the fallback ranker (`Settings.fallback`)."""
        return self.model.served is not None

    @property
    def model_version(self) -> str | None:
        return self.model.version

    def model_info(self) -> ModelInfo:
        """The model in service; NotReady when there is none yet."""
        with self._lock.read():
            total = len(self._catalog)
        return self.model.info(total, shadow=(self._shadow.scored, self._shadow.dropped))

    def upkeep(self) -> None:
        """Background work between requests (`PipelineUpkeep.run`); never raises."""
        self._upkeep.run()

    def health(self) -> dict[str, bool]:
        """Serving status per health service name (`PipelineUpkeep.health`); `replication`:
        in reach of the shared store and within its lag bound (`ChangeFollower.healthy`)."""
        status = self._upkeep.health()
        fresh = self._follower is None or self._follower.healthy()
        return status | {"": status[""] and fresh, "replication": fresh}

    def _fresh(self) -> None:
        """Before answering from memory: no erasure committed anywhere is missing from it."""
        if self._follower is not None:
            self._follower.ensure_fresh()

    # -- ranking --------------------------------------------------------------------------
    def rank(self, q: RankQuery, deadline: Deadline = NO_DEADLINE) -> RankResult:
        """The top-k candidates of a posting, scored by one model version from start to end.

        The catalog's read lock is held only to search and to take references to the retrieved
        candidates (immutable), then briefly to log the decision; features, scoring and TreeSHAP
        run without it, so a writer never waits behind them (nor does shadow scoring wait).
        """
        with self._shadow.ranking():
            return self._rank(q, deadline)

    def _rank(self, q: RankQuery, deadline: Deadline) -> RankResult:
        watch = Stopwatch()
        self._fresh()
        req = self._resolve(q, deadline)
        watch.lap("encode", ran=req.inline)
        deadline.check("retrieval")
        hits = self._retrieve(req)
        watch.lap("retrieve")
        watch.part("search", hits.search_ms)
        deadline.check("feature building")
        x, reference = build_features(req, hits)
        watch.lap("features")
        scored = score_and_order(req, hits, x, reference)
        if self._fair is not None:
            scored = self._fair.apply(hits.ids, scored, req.top_k)
        watch.lap("score")
        explained: dict[int, Explanation] = {}
        if q.explain and len(scored.ranked):
            deadline.check("explaining")
            explained = explain_rows(req, hits, x, scored.ranked[: req.top_k])
        watch.lap("explain", ran=q.explain)
        order = self._log(req, hits, scored, explained)
        if self.metrics is not None:
            for stage, ms in watch.ran.items():
                self.metrics.stage_latency.labels(stage=stage).observe(ms / 1000)
        return result_of(req, hits, scored, order, explained, watch.timings())

    def compare(self, q: CompareQuery, deadline: Deadline = NO_DEADLINE) -> ComparisonResult:
        """Why one candidate ranks above another for a posting (`ranker.comparison`)."""
        self._fresh()
        req = self._resolve(q.query, deadline)
        with self._lock.read():
            pair = (self._catalog.get(q.candidate_a), self._catalog.get(q.candidate_b))
        return compare_pair(req, self._retrieve(req), q, pair)

    def _resolve(self, q: RankQuery, deadline: Deadline) -> RankRequest:
        """Check the sizes, take the model in service and find or encode the posting."""
        s = self.settings
        top_k = s.default_top_k if q.top_k is None else q.top_k
        if not 1 <= top_k <= s.max_top_k:
            raise InvalidInput(f"top_k must be between 1 and {s.max_top_k}, got {top_k}")
        retrieve_n = s.retrieve_n if q.retrieve_n is None else q.retrieve_n
        # An explicit retrieve_n below top_k is refused (the proto's range); a server default
        # below it is the server's business and is raised to top_k.
        if not (1 if q.retrieve_n is None else top_k) <= retrieve_n <= MAX_RETRIEVE_N:
            raise InvalidInput(
                f"retrieve_n must be between top_k ({top_k}) and {MAX_RETRIEVE_N}, got "
                f"{retrieve_n}; leave it unset for the server's default"
            )
        served = self.model.require()
        posting, inline = self._query_posting(q, deadline)
        return RankRequest(q, top_k, max(retrieve_n, top_k), served, posting, inline)

    def _query_posting(self, q: RankQuery, deadline: Deadline) -> tuple[PreparedPosting, bool]:
        """The prepared posting of a query; True when it was inline (encoded now)."""
        if (q.posting_id is None) == (q.posting is None):
            raise InvalidInput("send either a posting_id or an inline posting, not both or neither")
        if q.posting_id is not None:
            prepared = self._postings.get(q.posting_id)
            if prepared is None:
                raise NotFound(
                    f"posting {shown_id(q.posting_id)} is not stored; send it with UpsertPostings "
                    "first, or send the posting inline"
                )
            return prepared, False
        assert q.posting is not None
        check_posting_size(q.posting, self.settings.max_text_chars)
        deadline.check("encoding the posting")
        row = encode_postings(self.encoder, [q.posting], stop_when(deadline, self.metrics))[0]
        if isinstance(row, InvalidInput):
            raise row
        return prepare_posting(row.posting, row.vector), True

    def _retrieve(self, req: RankRequest) -> Retrieved:
        """The nearest candidates passing the filters, and the live pool's BM25 statistics of
        the posting's terms (references and copies taken under the read lock)."""
        with self._lock.read():
            allowed = self._catalog.allowed(req.query.filters)
            eligible = len(self._catalog) if allowed is None else len(allowed)
            fids, sims, took = self.index.timed_search(req.posting.vector, req.retrieve_n, allowed)
            cands, keep = self._catalog.lookup(fids)
            erasures_seen = self._erasures
            lexicon = self._catalog.lexicon.view(req.posting.term_hashes.tolist())
        return Retrieved(cands, fids[keep], sims[keep], eligible, erasures_seen, lexicon, took)

    def _log(
        self,
        req: RankRequest,
        hits: Retrieved,
        scored: Scored,
        explained: dict[int, Explanation],
    ) -> np.ndarray:
        """Settle the rows to serve (none erased meanwhile) and log the decision; the rows.

        Fills `explained` for rows that moved into the top-k in place of erased ones.
        """
        top_k, ids = req.top_k, hits.ids
        with self._lock.read():
            order = scored.ranked[:top_k]
            alive: np.ndarray | None = None  # rows whose scores are logged: all by default
            if self._erasures != hits.erasures_seen:
                # An erasure ran while this request scored without the lock: drop what it erased
                # (never served, nor its score logged) and fill up from the next best.
                alive = np.asarray(
                    [
                        i
                        for i in scored.ranked.tolist()
                        if self._catalog.faiss_id(ids[i]) == int(hits.fids[i])
                    ],
                    dtype=np.intp,
                )
                order = alive[:top_k]
                missing = [i for i in order.tolist() if i not in explained]
                if req.query.explain and missing:
                    explained |= explain_rows(req, hits, scored.x, np.asarray(missing))
            # Submitted under the read lock: an erasure (which takes the write lock, then
            # flushes this log) then finds every decision naming its candidate already queued.
            pending = self._decisions.submit(decision_of(req, hits, scored, order, alive))
            self._shadow.offer_ranking(req, hits, scored, self.model.challenger, self._erasures)
        # Outside the lock: with Settings.decision_log_sync the ranking is answered only once
        # its decision is stored, and fails (UNAVAILABLE) when it cannot be.
        self._decisions.settle(pending)
        return order

    # -- writes ---------------------------------------------------------------------------
    def _mark_index_dirty(self) -> None:
        self._index_dirty_at = time.monotonic()

    def _retrain(self) -> None:
        """Retrain the index's lists in the background when the pool outgrew them."""

        def doc_vectors(fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            with self._lock.read():
                return self._catalog.doc_vectors(fids)

        self.index.retrain_in_background(doc_vectors, self._mark_index_dirty)

    def upsert_candidates(
        self, items: Sequence[Candidate | Rejected], deadline: Deadline = NO_DEADLINE
    ) -> BatchResult:
        """Store candidates (replace by id) and make them searchable before returning."""
        result = upsert_batch(
            items,
            "candidates",
            lambda cs: encode_candidates(self.encoder, cs, stop_when(deadline, self.metrics)),
            lambda row: prepare_candidate(row.candidate, row.doc_vector, row.chunk_vectors),
            lambda rows: self._commit_candidates(rows, deadline),
            deadline,
            self._upsert_context(),
            screen=self._erased_errors,
        )
        self._update_gauges()
        return result

    def upsert_postings(
        self, items: Sequence[Posting | Rejected], deadline: Deadline = NO_DEADLINE
    ) -> BatchResult:
        """Store postings (replace by id) with their vectors, computed once here."""
        return upsert_batch(
            items,
            "postings",
            lambda ps: encode_postings(self.encoder, ps, stop_when(deadline, self.metrics)),
            lambda row: prepare_posting(row.posting, row.vector),
            lambda rows: self._commit_postings(rows, deadline),
            deadline,
            self._upsert_context(),
        )

    def _upsert_context(self) -> UpsertContext:
        return UpsertContext(self.settings, self._write_mutex, lambda: len(self._catalog))

    def _commit_candidates(
        self, rows: list[tuple[CandidateRow, PreparedCandidate]], deadline: Deadline
    ) -> list[bool]:
        fids = self.store.upsert_candidates(
            [row for row, _ in rows], before_commit=lambda: deadline.check("committing")
        )
        created = self._put_candidates([(fid, pc) for (_, pc), fid in zip(rows, fids, strict=True)])
        self._after_write(candidates=True)
        return created

    def _put_candidates(self, items: list[tuple[int, PreparedCandidate]]) -> list[bool]:
        """Make candidates searchable (FAISS id, prepared); True for each that was new."""
        vectors = np.stack([pc.doc_vector for _, pc in items])
        with self._lock.write():
            self.index.add(np.asarray([fid for fid, _ in items], dtype=np.int64), vectors)
            created = self._catalog.put_many(items)
        self._mark_index_dirty()
        self._retrain()
        return created

    def _after_write(self, candidates: bool) -> None:
        """After a write reached memory (under the write mutex): a follower skips its feed entries
        and stamps the index's generation once caught up; alone, the store's generation is it."""
        if self._follower is not None:
            self._follower.note_own(candidates)
        elif candidates:
            self.stamp_generation(self.store.generation())

    def _commit_postings(
        self, rows: list[tuple[PostingRow, PreparedPosting]], deadline: Deadline
    ) -> list[bool]:
        self.store.upsert_postings(
            [row for row, _ in rows], before_commit=lambda: deadline.check("committing")
        )
        with self._lock.write():
            created = self._postings.put_many([pp for _, pp in rows])
        self._after_write(candidates=False)
        return created

    def record_outcomes(
        self, items: Sequence[Outcome | Rejected], deadline: Deadline = NO_DEADLINE
    ) -> BatchResult:
        """Store stage events whose posting and candidate are known; others are NOT_FOUND
        (outcomes of an erased candidate FAILED_PRECONDITION), per item."""
        check_batch_size(len(items), "outcomes", self.settings.max_batch_items)
        deadline.check("recording the outcomes")
        recorded = 0
        # Under the write mutex so an erasure cannot slip between the check and the insert.
        with self._write_mutex:
            erased = self.store.erased_among(
                [o.candidate_id for o in items if not isinstance(o, Rejected)]
            )
            results, good = screen_outcomes(items, self._postings, self._catalog, erased)
            if good:
                recorded = self.store.record_outcomes(
                    good, before_commit=lambda: deadline.check("committing")
                )
                self._after_write(candidates=False)
            total = len(self._catalog)
        return BatchResult(items=tuple(results), total_candidates=total, recorded=recorded)

    def delete_candidates(
        self, ids: Sequence[str], deadline: Deadline = NO_DEADLINE, actor: str = "anonymous"
    ) -> BatchResult:
        """Erase candidates everywhere; unknown or already erased ids are NOT_FOUND per item.

        Memory first (no ranking can return them from then on), then the decision log is
        drained so decisions already made are stored (none left in its spool file), then one
        store transaction erases the candidate, its outcomes and its logged feature rows,
        records the receipt, the tombstone and `actor`, and clears the engine's residue (SQLite's
        WAL checkpoint, PostgreSQL's VACUUM), verified; last, the export files in the data
        folder are rewritten without the candidate.
        """
        check_batch_size(len(ids), "ids", self.settings.max_batch_items)
        results, wanted = erasure_targets(ids)
        deadline.check("erasing")
        receipt: ErasureReceipt | None = None
        with self._write_mutex:
            removed: list[str] = []
            if wanted:
                with self._lock.write():
                    fids = []
                    for cid, fid in zip(wanted, self._catalog.remove_many(wanted), strict=True):
                        if fid is not None:
                            removed.append(cid)
                            fids.append(fid)
                    self.index.remove(np.asarray(fids, dtype=np.int64))
                    if fids:
                        self._erasures += 1
                self._shadow.flush()
                try:
                    self._decisions.drain()
                    receipt = self.store.delete_candidates(wanted, actor=actor)
                except BaseException:
                    # Nothing was erased: make the candidates searchable again, as stored.
                    self._restore(removed)
                    raise
                if self._fair is not None:
                    self._fair.forget(receipt.erased)
                self._after_write(candidates=True)
                self._mark_index_dirty()
            total = len(self._catalog)
        self._update_gauges()
        if receipt is not None and receipt.erased:
            log_erasure(receipt, actor)
            with self._exports_lock:
                scrub_exports(self.settings.resolved_demo_dir, receipt.erased, self.metrics)
        if receipt is not None and not receipt.erased:
            receipt = None
        return BatchResult(
            items=erasure_results(ids, results, receipt), total_candidates=total, receipt=receipt
        )

    def _restore(self, ids: list[str]) -> None:
        self._catalog.discard_saved()  # their old bytes are zeroed, and no feed entry says so
        fids = self.store.faiss_ids(ids)
        self.apply_stored_candidates(
            [(fids[r.candidate.id], r) for r in self.store.get_candidates(ids)]
        )

    # -- memory updates from the store (a failed erasure; `ranker.follower`) -------------
    @property
    def write_mutex(self) -> threading.Lock:
        """Held by every write to memory: the pipeline's own, and the follower's."""
        return self._write_mutex

    def apply_stored_candidates(self, rows: Sequence[tuple[int, CandidateRow]]) -> None:
        """Make stored candidates (FAISS id, row) searchable as they are stored."""
        made = [(f, prepare_candidate(r.candidate, r.doc_vector, r.chunk_vectors)) for f, r in rows]
        if made:
            self._put_candidates(made)

    def forget_candidates(self, faiss_ids: Sequence[int]) -> None:
        """Drop candidates erased through another service (by FAISS id); a ranking scoring
        them meanwhile drops them before answering, as after an erasure here."""
        fids = np.asarray(faiss_ids, dtype=np.int64)
        with self._lock.write():
            ids = self._catalog.ids_of(fids)
            self._catalog.remove_many(ids)
            self.index.remove(fids)
            self._erasures += 1
        if self._fair is not None:
            self._fair.forget(ids)
        self._mark_index_dirty()

    def apply_stored_postings(self, rows: Sequence[PostingRow]) -> None:
        prepared = [prepare_posting(row.posting, row.vector) for row in rows]
        with self._lock.write():
            self._postings.put_many(prepared)

    def stamp_generation(self, generation: str) -> None:
        """The store generation the index now reflects (what a saved index is checked by)."""
        with self._lock.write():
            self.index.generation = generation
        self._mark_index_dirty()

    # -- reads ----------------------------------------------------------------------------
    def get_candidate(self, candidate_id: str) -> Candidate:
        """A stored candidate's fields; NotFound when unknown or erased."""
        self._fresh()
        # Under the lock: the slot behind an id may be freed and reused by a concurrent write.
        with self._lock.read():
            pc = self._catalog.get(candidate_id)
        if pc is None:
            raise NotFound(
                f"candidate {shown_id(candidate_id)} is not stored (unknown or erased); upsert "
                "it first"
            )
        return pc.candidate

    def list_postings(self, page_size: int = 0, page_token: str = "") -> PostingPage:
        """One page of stored postings sorted by id; `page_token` is the previous page's."""
        with self._lock.read():
            return self._postings.page(page_size, page_token)

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
                self._catalog.save(self.index.generation, self._memory_seq())
            except Exception:
                self._index_dirty_at = dirty_at
                if self.metrics is not None:
                    self.metrics.index_saves.labels(result="failed").inc()
                raise
        if self.metrics is not None:
            self.metrics.index_saves.labels(result="saved").inc()
        return True

    def _memory_seq(self) -> int:
        """The feed entry memory reflects, under the write mutex (a replica: what it applied)."""
        f = self._follower
        return f.applied_seq if f is not None else self.store.last_change_seq()

    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.index_size.set(len(self.index))

    # -- robustness (issue 12): cancellation, erased ids, durability, health -------------
    def _erased_errors(self, ids: list[str]) -> dict[str, RankerError]:
        """ErasedId for each id among `ids` erased and not re-consented."""
        return {cid: ErasedId(erased_message(cid)) for cid in self.store.erased_among(ids)}
