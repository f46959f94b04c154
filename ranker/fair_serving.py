"""The opt-in serving-time fair re-ranker: DetConstSort over each request's retrieved set, logged.

Off by default (`Settings.fair_rerank`). When on, the pipeline builds one `FairReranker` at start:
it reads the configured protected attribute from the store's protected table (its own table,
apart from the catalog the features read) and nothing else; when off, that table is never read.
Each request's top k is then re-ranked by `ranker.fair_rerank.det_const_sort` towards target
shares (configured, or the request's retrieved set's own shares), and the decision log records
what was done: method, attribute, targets, how many places changed. Candidates without a
recorded category are their own category, `unknown`.

Read the legal caveat in `ranker.fair_rerank` (and the README) before enabling it. Measured
limit (FAIRNESS.md): a category whose target share x k is under 1 gets no place from the prefix
minimums within the top k, and DetConstSort places items only when a minimum rises, so with the
retrieved set's shares such a small category ends up with fewer top-k places than by score.

Protected attributes loaded at start stay as loaded until the service restarts (they arrive by
`ranker ingest`, not by the online upserts); erasure forgets an erased candidate's at once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from ranker.config import Settings
from ranker.fair_rerank import det_const_sort
from ranker.ranking import Scored
from ranker.store_api import Store

METHOD = "detconstsort"
UNKNOWN = "unknown"
"""The category of a candidate with no recorded value of the attribute."""


class FairReranker:
    """DetConstSort over the retrieved set towards target shares of one protected attribute."""

    def __init__(
        self, attribute: str, categories: Mapping[str, str], targets: Mapping[str, float]
    ) -> None:
        self.attribute = attribute
        self._categories = dict(categories)
        self._targets = dict(targets)
        self._lock = threading.Lock()

    @classmethod
    def from_store(cls, store: Store, settings: Settings) -> FairReranker:
        """Read the attribute's categories from the protected table (only call when enabled)."""
        attribute = settings.fair_rerank_attribute
        return cls(attribute, store.protected_attributes(attribute), settings.fair_rerank_targets)

    def forget(self, candidate_ids: Iterable[str]) -> None:
        """Drop erased candidates' categories."""
        with self._lock:
            for cid in candidate_ids:
                self._categories.pop(cid, None)

    def categories(self, candidate_ids: Sequence[str]) -> list[str]:
        with self._lock:
            return [self._categories.get(cid) or UNKNOWN for cid in candidate_ids]

    def targets_for(self, cats: Sequence[str]) -> tuple[dict[str, float], str]:
        """The target shares and where they come from (configured, or the retrieved set)."""
        if self._targets:
            return dict(self._targets), "configured"
        counts = Counter(cats)
        return {c: n / len(cats) for c, n in sorted(counts.items())}, "retrieved set"

    def rerank_order(
        self, candidate_ids: Sequence[str], scores: np.ndarray, ranked: np.ndarray, k: int
    ) -> tuple[np.ndarray, dict[str, object]]:
        """`ranked` (rows best first) with its top k re-ranked, and the record to log.

        The rows past the top k keep their order (an erasure meanwhile fills up from them).
        """
        ranked = np.asarray(ranked, dtype=np.intp)
        cats = self.categories(candidate_ids)
        targets, source = self.targets_for(cats)
        # In served order, so DetConstSort's ties keep the service's tie-break.
        picked = det_const_sort(
            [float(scores[i]) for i in ranked],
            [cats[i] for i in ranked],
            targets,
            k,
        )
        top = ranked[picked]
        chosen = set(top.tolist())
        new = np.concatenate([top, [i for i in ranked.tolist() if i not in chosen]]).astype(np.intp)
        before = ranked[: len(top)]
        record: dict[str, object] = {
            "method": METHOD,
            "attribute": self.attribute,
            "targets": {c: round(p, 4) for c, p in targets.items()},
            "targets_from": source,
            "moved": int((new[: len(top)] != before).sum()),
            "entered_top_k": len(chosen - set(before.tolist())),
        }
        return new, record

    def apply(self, candidate_ids: Sequence[str], scored: Scored, k: int) -> Scored:
        """`scored` with its order re-ranked and the record attached for the decision log."""
        if not len(scored.ranked):
            return scored
        ranked, record = self.rerank_order(candidate_ids, scored.scores, scored.ranked, k)
        return replace(scored, ranked=ranked, rerank=record)
