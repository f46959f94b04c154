"""Shadow scoring: the challenger ranks each request's retrieved candidates off the response path.

When the registry names a `challenger` (`ranker models challenger set VERSION`), every ranking
the champion serves is also offered here: its retrieved candidates, the champion's order and the
challenger model. One background thread builds the challenger's features (with its own lexicon),
scores and orders them exactly as the champion was ordered (`ranking.score_and_order`'s rule), and
stores both orders, cut to `Settings.shadow_depth`, in the store's shadow tables with both
versions. `ranker models compare` reads them.

Never on the response path: `offer` is a non-blocking put into a bounded queue
(`Settings.shadow_queue`); when the queue is full the ranking is dropped and counted. And only in
idle time: building features is mostly Python, and a thread holding the GIL makes a request wait
up to the interpreter's switch interval (5 ms) each time it needs it; measured, shadow work
running beside back-to-back rankings nearly doubled their p50. So the thread starts a job only
once no ranking has been in flight for `Settings.shadow_idle_ms`; under sustained load the queue
fills and further rankings are dropped (counted in `GetModelInfo.shadow_dropped`), and the
backlog is scored in the next quiet moment. `bench/serving.py` measures the cost both ways.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from ranker.config import Settings
from ranker.lexicon import LexiconView
from ranker.model_slot import ServedModel
from ranker.prepared import PreparedCandidate, PreparedPosting, ids_of
from ranker.ranking import RankRequest, Retrieved, Scored
from ranker.rows import ShadowRanking
from ranker.store_api import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    """One served ranking to score with the challenger: references only, no copies."""

    request_id: str
    at: datetime
    posting: PreparedPosting
    posting_id: str | None
    cands: Sequence[PreparedCandidate]
    fids: np.ndarray
    sims: np.ndarray
    champion_version: str
    champion_ranked: np.ndarray
    """Rows of `cands`, best first, as the champion ordered them."""
    top_k: int
    challenger: ServedModel
    lexicon: LexiconView | None = None
    """The live pool statistics the champion's features read; the challenger reads the same."""


def challenger_order(job: ShadowJob) -> np.ndarray:
    """The challenger's order of the job's rows, best first (same tie rule as serving)."""
    bundle = job.challenger.bundle
    if not job.cands:
        return np.zeros(0, dtype=np.intp)
    x = bundle.builder.build(job.posting, job.cands, lexicon=job.lexicon)
    scores = np.asarray(bundle.scorer.score(x), dtype=np.float32)
    return np.lexsort((job.fids, -job.sims, -scores))


class ShadowScorer:
    """A bounded queue and one thread that score offered rankings with the challenger."""

    def __init__(self, store: Store, maxsize: int, depth: int, idle_seconds: float = 0.0) -> None:
        self._store = store
        self.depth = depth
        self.idle_seconds = idle_seconds
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=maxsize)
        self._lock = threading.Lock()
        self.scored = 0
        self.dropped = 0
        self.failed = 0
        self._in_flight = 0
        self._last_done = 0.0
        self._hurry = 0  # flushes or a close waiting: do not wait for idle time

        self._thread = threading.Thread(target=self._run, name="shadow-scoring", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> ShadowScorer:
        return cls(
            store, settings.shadow_queue, settings.shadow_depth, settings.shadow_idle_ms / 1000
        )

    def offer(self, job: ShadowJob) -> bool:
        """Queue `job` without waiting; False (and counted as dropped) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False
        return True

    @contextmanager
    def ranking(self) -> Iterator[None]:
        """Mark a ranking in flight: shadow jobs wait until none has run for `idle_seconds`."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._last_done = time.monotonic()

    def _wait_for_idle(self) -> None:
        while True:
            with self._lock:
                if self._hurry or (
                    self._in_flight == 0 and time.monotonic() - self._last_done >= self.idle_seconds
                ):
                    return
            time.sleep(max(0.002, self.idle_seconds / 4))

    def offer_ranking(
        self,
        req: RankRequest,
        hits: Retrieved,
        scored: Scored,
        challenger: ServedModel | None,
        erasures: int,
    ) -> bool:
        """Offer a served ranking to `challenger` (none, or the champion itself: nothing).

        `erasures` is the pipeline's erasure count now: when an erasure ran since the search,
        the retrieved set may name an erased candidate, so the ranking is not shadowed.
        Called under the pipeline's read lock, so an erasure's `flush` finds the job queued.
        """
        if erasures != hits.erasures_seen:
            return False
        if challenger is None or challenger.bundle.version == req.served.bundle.version:
            return False
        return self.offer(
            shadow_job(
                request_id=req.request_id,
                posting=req.posting,
                inline=req.inline,
                cands=hits.cands,
                fids=hits.fids,
                sims=hits.sims,
                champion_version=req.served.bundle.version,
                champion_ranked=scored.ranked,
                top_k=req.top_k,
                challenger=challenger,
                lexicon=hits.lexicon,
            )
        )

    def flush(self) -> None:
        """Wait until every queued job is stored (an erasure waits so none names its victims)."""
        with self._lock:
            self._hurry += 1
        try:
            self._queue.join()
        finally:
            with self._lock:
                self._hurry -= 1

    def close(self) -> None:
        if self._thread.is_alive():
            with self._lock:
                self._hurry += 1
            self._queue.put(None)
            self._thread.join()

    def _record(self, job: ShadowJob) -> ShadowRanking:
        theirs = challenger_order(job)
        ids = ids_of(job.cands)
        return ShadowRanking(
            request_id=job.request_id,
            at=job.at,
            posting_id=job.posting_id,
            champion_version=job.champion_version,
            challenger_version=job.challenger.bundle.version,
            top_k=job.top_k,
            retrieved=len(job.cands),
            champion_ids=tuple(ids[i] for i in job.champion_ranked[: self.depth].tolist()),
            challenger_ids=tuple(ids[i] for i in theirs[: self.depth].tolist()),
        )

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            self._wait_for_idle()
            # Drain what is queued so a burst costs one transaction, as the decision log does.
            while len(batch) < 64:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(job is None for job in batch)
            records: list[ShadowRanking] = []
            for job in batch:
                if job is None:
                    continue
                try:
                    records.append(self._record(job))
                except Exception:
                    # A challenger that cannot score must never affect serving: count and go on.
                    log.exception("the challenger could not score ranking %s", job.request_id)
                    with self._lock:
                        self.failed += 1
            try:
                if records:
                    self._store.log_shadow(records)
                    with self._lock:
                        self.scored += len(records)
            except Exception:
                log.exception("could not store %d shadow rankings", len(records))
                with self._lock:
                    self.failed += len(records)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                return


def shadow_job(
    *,
    request_id: str,
    posting: PreparedPosting,
    inline: bool,
    cands: Sequence[PreparedCandidate],
    fids: np.ndarray,
    sims: np.ndarray,
    champion_version: str,
    champion_ranked: np.ndarray,
    top_k: int,
    challenger: ServedModel,
    lexicon: LexiconView | None = None,
) -> ShadowJob:
    """A job for `ShadowScorer.offer` (the time is taken now, on the request thread)."""
    return ShadowJob(
        request_id=request_id,
        at=datetime.now(UTC),
        posting=posting,
        posting_id=None if inline else posting.id,
        cands=cands,
        fids=fids,
        sims=sims,
        champion_version=champion_version,
        champion_ranked=champion_ranked,
        top_k=top_k,
        challenger=challenger,
        lexicon=lexicon,
    )
