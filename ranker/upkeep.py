"""The pipeline's background work between requests, and the health it implies.

Follows the registry's promoted model, saves the index once writes pause (with backoff after
failures), replays the decision log's backlog, finishes a WAL checkpoint an erasure could not,
and prunes the change feed past its retention; never raises.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from ranker.backoff import RetryBackoff
from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.decisions import DecisionLog
from ranker.metrics import ServiceMetrics
from ranker.model_slot import ModelSlot
from ranker.preload import PageCacheWarmer
from ranker.store_api import Store

log = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 600.0
"""How often the change feed is pruned (a cheap DELETE; retention is hours)."""


class PipelineUpkeep:
    """Run by the server on its own thread, often (`run`); `health` says what to report."""

    def __init__(
        self,
        settings: Settings,
        model: ModelSlot,
        store: Store,
        decisions: DecisionLog,
        save_index: Callable[[], bool],
        metrics: ServiceMetrics | None,
        catalog: CandidateCatalog | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.store = store
        self.decisions = decisions
        self.save_index = save_index
        self.metrics = metrics
        self._next_model_poll = 0.0
        self._next_prune = 0.0
        self._index_saves = RetryBackoff(f"save the index to {settings.resolved_index_dir}")
        self.warmer = PageCacheWarmer.for_catalog(
            (lambda: []) if catalog is None else catalog.column_paths,
            settings.catalog_preload,
            metrics,
            settings.catalog_keep_warm_seconds,
        )

    def close(self) -> None:
        """Stop the work of its own threads (the page cache's warming)."""
        self.warmer.close()

    def run(self) -> None:
        now = time.monotonic()
        if now >= self._next_model_poll:
            self._next_model_poll = now + self.settings.model_poll_seconds
            try:
                self.model.refresh()
            except Exception:
                log.exception("could not check the registry for a new model; retrying")
        self._index_saves.run(now, self.save_index)
        try:
            if self.decisions.failing is not None or self.decisions.backlog:
                self.decisions.retry()
            if self.store.residue_pending:
                self.store.clear_residue()
        except Exception:
            log.exception("could not retry the decision log or the WAL checkpoint; retrying")
        if self.metrics is not None:
            self.metrics.erasure_checkpoint_pending.set(int(self.store.residue_pending))
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_SECONDS
            self._prune_changes()

    def _prune_changes(self) -> None:
        """Keep the change feed to its retention: replicas need only what they have not applied,
        and one that fell further behind is refused (`ChangeFollower`), not fed a gap."""
        hours = self.settings.changes_retention_hours
        try:
            gone = self.store.prune_changes(datetime.now(UTC) - timedelta(hours=hours))
        except Exception:
            log.exception("could not prune the change feed; retrying later")
            return
        if gone:
            log.info("pruned %d change-feed entries older than %g h", gone, hours)

    def health(self) -> dict[str, bool]:
        """Serving status per health service name: "" (and the service) turn NOT_SERVING
        without a model, or while the decision log fails under the strict policy;
        `decision-log` and `erasure-checkpoint` report those two on their own; `catalog-cache`
        turns SERVING once the catalog's files were read into the page cache (`ranker.preload`),
        at once when none are to be."""
        log_ok = self.decisions.failing is None
        strict = self.settings.decision_log_policy == "strict"
        return {
            "": self.model.served is not None and (log_ok or not strict),
            "decision-log": log_ok,
            "erasure-checkpoint": not self.store.residue_pending,
            "catalog-cache": self.warmer.done,
        }
