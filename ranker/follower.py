"""A serving replica following the shared store: every service's writes, read from the change
feed in commit order and applied to this replica's memory; its freshness, lag and health."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from ranker.config import Settings
from ranker.errors import StorageUnavailable
from ranker.metrics import ServiceMetrics
from ranker.rows import CandidateRow, Change, PostingRow
from ranker.store_api import ChangeWaiter, Store

log = logging.getLogger(__name__)

BATCH = 1000
"""Feed entries read per query while catching up."""


class FollowedMemory(Protocol):
    """What a follower changes: the pipeline's own memory-update paths (`RankingPipeline`)."""

    @property
    def write_mutex(self) -> threading.Lock: ...

    def apply_stored_candidates(self, rows: Sequence[tuple[int, CandidateRow]]) -> None: ...

    def forget_candidates(self, faiss_ids: Sequence[int]) -> None: ...

    def apply_stored_postings(self, rows: Sequence[PostingRow]) -> None: ...

    def stamp_generation(self, generation: str) -> None: ...


class ChangeFollower:
    """Keeps one replica's memory in step with the shared store; thread-safe.

    A thread of its own waits for the feed's notification (LISTEN/NOTIFY), or `poll_seconds`
    at most, then applies every entry after the last one applied (`catch_up`). Applying reads
    the current rows of what changed (candidates by FAISS id, postings by id), so an entry
    applied twice, or after a later write, leaves memory as the store is: never older. The
    replica's own writes are applied by the pipeline as it makes them and skipped here
    (`note_own`). Everything runs under the pipeline's write mutex, so memory changes in one
    order. `ensure_fresh` is the erasure guarantee: called before each read it compares the
    store's newest erasure with what this replica has applied and catches up first if behind.
    """

    def __init__(
        self,
        store: Store,
        memory: FollowedMemory,
        settings: Settings,
        start_seq: int,
        waiter: ChangeWaiter | None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.poll_seconds = settings.replica_poll_seconds
        self.max_lag_seconds = settings.replica_max_lag_seconds
        self.metrics = metrics
        self._waiter = waiter
        self._applied = start_seq  # every entry up to here is in memory
        self._head = start_seq  # the newest entry known to be committed
        self._own: set[int] = set()  # entries above `_applied` this replica wrote (applied)
        self._unstamped = False  # candidates changed since the index's generation was set
        # Memory was loaded after `start_seq` was read, so it held everything up to then.
        self._synced_at = time.monotonic()
        self._down: str | None = None  # why the database cannot be reached, while it cannot
        self._gap: str | None = None  # why memory missed feed entries (pruned): final
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ranker-follower", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_seconds + 15)
        if self._waiter is not None:
            self._waiter.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._waiter is not None:
                    announced = self._waiter.wait(self.poll_seconds)
                    if announced is not None:
                        self._head = max(self._head, announced)
                else:
                    self._stop.wait(self.poll_seconds)
                if self._stop.is_set():
                    return
                self.catch_up()
            except StorageUnavailable as e:
                self._lost(e)
                self._stop.wait(self.poll_seconds)
            except Exception:  # a bug must not stop following for good: say it, try again
                log.exception("replica: could not apply the store's changes; retrying")
                self._stop.wait(self.poll_seconds)
            self._gauges()

    def _lost(self, e: BaseException) -> None:
        if self._down is None:
            log.warning("replica: lost the database (%s); NOT_SERVING until it is back", e)
        self._down = str(e)
        self._gauges()

    # -- applying the feed ----------------------------------------------------------------
    def note_own(self, touches_candidates: bool) -> None:
        """After a write of this replica succeeded (under the write mutex, memory updated):
        its feed entries need not be applied again."""
        span = self.store.take_own_changes()
        if span is None:
            return
        first, last = span
        self._unstamped |= touches_candidates
        self._head = max(self._head, last)
        if first == self._applied + 1:
            # Nothing committed between what was applied and this write (the feed is in commit
            # order): memory held every committed entry when it committed.
            self._applied = last
            self._synced_at = time.monotonic()
            self._absorb_own()
        else:
            self._own.update(range(first, last + 1))

    def _absorb_own(self) -> None:
        while self._applied + 1 in self._own:
            self._applied += 1
            self._own.discard(self._applied)

    def catch_up(self) -> int:
        """Apply every committed entry not applied yet; the seq applied up to."""
        with self.memory.write_mutex:
            self._catch_up_locked()
        self._down = None
        return self._applied

    def _catch_up_locked(self) -> None:
        while True:
            checked_at = time.monotonic()
            generation = self.store.generation()  # read first: memory ends at least as fresh
            changes = self.store.changes_since(self._applied, BATCH)
            pruned = self.store.changes_pruned_through()
            if pruned > self._applied and self._gap is None:
                # Entries it never applied are gone (past RANKER_CHANGES_RETENTION_HOURS): one
                # may have been an erasure, so memory can no longer be trusted. For good: only a
                # restart (memory rebuilt from the store) makes it whole again.
                self._gap = (
                    f"the change feed was pruned through entry {pruned} while this replica had "
                    f"applied only up to {self._applied}; restart it to rebuild its memory from "
                    "the store"
                )
                log.error("replica: NOT_SERVING: %s", self._gap)
            if self._gap is not None:
                return
            if changes:
                self._apply(changes)
            if len(changes) < BATCH:
                # Every entry committed before `checked_at` is in memory now.
                self._synced_at = checked_at
                self._head = max(self._head, self._applied)
                self._own = {s for s in self._own if s > self._applied}
                if self._unstamped:
                    self.memory.stamp_generation(generation)
                    self._unstamped = False
                return

    def _apply(self, changes: list[Change]) -> None:
        upserted: dict[int, None] = {}
        erased: list[int] = []
        postings: dict[str, None] = {}
        now = time.time()
        for c in changes:
            if c.seq in self._own:
                self._own.discard(c.seq)
                continue
            if c.kind == "candidate":
                upserted[int(c.key)] = None
            elif c.kind == "erasure":
                erased.append(int(c.key))
            elif c.kind == "posting":
                postings[c.key] = None
            # outcomes change nothing a replica holds in memory
            if self.metrics is not None:
                self.metrics.replica_lag.observe(max(now - c.at.timestamp(), 0.0))
                self.metrics.replica_applied.labels(kind=c.kind).inc()
        # Erasures first: an upsert re-reads the row, so applying it after is never older.
        if erased:
            self.memory.forget_candidates(erased)
        if upserted:
            rows = self.store.get_candidates_by_faiss_ids(list(upserted))
            found = {fid for fid, _ in rows}
            gone = [fid for fid in upserted if fid not in found]  # erased since: not served
            if gone:
                self.memory.forget_candidates(gone)
            if rows:
                self.memory.apply_stored_candidates(rows)
        if postings:
            self.memory.apply_stored_postings(self.store.get_postings(list(postings)))
        self._unstamped |= bool(erased or upserted)
        self._applied = changes[-1].seq
        self._absorb_own()

    # -- freshness ------------------------------------------------------------------------
    @property
    def applied_seq(self) -> int:
        return self._applied

    def staleness(self) -> float:
        """Seconds since this replica last knew it held every committed change."""
        return max(time.monotonic() - self._synced_at, 0.0)

    def healthy(self) -> bool:
        """Serving: the database is reachable and the replica is within its lag bound."""
        fresh = self.staleness() <= self.max_lag_seconds
        return self._gap is None and self._down is None and fresh

    def ensure_fresh(self) -> None:
        """Before a read: refuse when stale or cut off, and apply any committed erasure first.

        Raises StorageUnavailable (UNAVAILABLE) rather than answer from stale memory. One
        indexed query per call (the newest erasure's seq); a catch-up only when behind it.
        """
        self._refuse_if_gap()
        if self._down is not None:
            raise StorageUnavailable(
                f"this replica cannot reach the database ({self._down}), so it cannot know "
                "about erasures made through other services; it refuses to rank until the "
                "database is back. Retry on another replica"
            )
        stale = self.staleness()
        if stale > self.max_lag_seconds:
            raise StorageUnavailable(
                f"this replica has not confirmed it holds every committed write for {stale:.1f} "
                f"s (RANKER_REPLICA_MAX_LAG_SECONDS is {self.max_lag_seconds:g}); it refuses "
                "to rank rather than serve stale data, and serves again once it has caught "
                "up. Retry on another replica"
            )
        try:
            erased = self.store.last_change_seq("erasure")
        except StorageUnavailable as e:
            self._lost(e)
            raise
        if erased > self._applied:
            with self.memory.write_mutex:
                if erased > self._applied:
                    self._catch_up_locked()
            self._refuse_if_gap()

    def _refuse_if_gap(self) -> None:
        if self._gap is not None:
            raise StorageUnavailable(f"this replica cannot serve: {self._gap}")

    def _gauges(self) -> None:
        if self.metrics is None:
            return
        self.metrics.replica_behind.set(max(self._head - self._applied, 0))
        self.metrics.replica_staleness.set(self.staleness())
        self.metrics.replica_database_up.set(int(self._down is None))
