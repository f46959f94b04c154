"""The decision log writer: every ranking served, stored off the request path."""

from __future__ import annotations

import logging
import queue
import threading

from ranker.metrics import ServiceMetrics
from ranker.rows import Decision
from ranker.store import SqliteStore

log = logging.getLogger(__name__)


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
