"""Ranking metrics on held-out postings, for the model and for single-feature baselines.

Hand-written rather than taken from scikit-learn: it is not a dependency of the offline side, and
these need one shared per-query ordering (ties broken by row order, i.e. candidate id) for every
metric. `tests/training/test_evaluate.py` checks NDCG against scikit-learn's `ndcg_score`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from ranker.domain import Outcome
from ranker.errors import InvalidInput
from ranker.features import FEATURE_NAMES
from ranker.registry import ModelBundle
from training.dataset import (
    CandidateLike,
    PostingLike,
    RankingSet,
    build_set,
    data_sha256,
    posting_times,
    prepare_all,
    time_split,
)
from training.labels import RELEVANT_LABEL, as_utc, labels_from_outcomes

METRICS = ("ndcg@5", "ndcg@10", "map", "recall@10", "recall@20")
BASELINES: dict[str, str] = {
    "dense_cosine": "dense_cosine",
    "bm25": "bm25",
    "required_coverage": "required_coverage",
}
"""Baseline name -> the single feature column it ranks by (higher first)."""


def _dcg(gains: np.ndarray, k: int) -> float:
    g = gains[:k]
    return float(np.sum(g / np.log2(np.arange(2, len(g) + 2))))


def query_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Metrics of one query; `labels` graded 0..4, relevant = label >= RELEVANT_LABEL."""
    order = np.argsort(-scores, kind="stable")
    ranked = labels[order]
    gains = 2.0**ranked - 1.0
    ideal = 2.0 ** np.sort(labels)[::-1] - 1.0
    out: dict[str, float] = {}
    for k in (5, 10):
        best = _dcg(ideal, k)
        out[f"ndcg@{k}"] = _dcg(gains, k) / best if best > 0 else 0.0
    relevant = ranked >= RELEVANT_LABEL
    n_rel = int(relevant.sum())
    if n_rel:
        hits = np.cumsum(relevant)
        out["map"] = float(np.sum((hits / np.arange(1, len(ranked) + 1))[relevant]) / n_rel)
        out["recall@10"] = float(relevant[:10].sum() / n_rel)
        out["recall@20"] = float(relevant[:20].sum() / n_rel)
    else:
        out["map"] = out["recall@10"] = out["recall@20"] = 0.0
    return out


def evaluate_scores(data: RankingSet, scores: np.ndarray) -> dict[str, float]:
    """Mean metrics over the queries that have at least one relevant candidate.

    Queries without one are skipped (every ordering is equally right there); `queries` says how
    many counted.
    """
    totals = dict.fromkeys(METRICS, 0.0)
    n = 0
    for _, rows in data.queries():
        labels = data.y[rows]
        if not np.any(labels >= RELEVANT_LABEL):
            continue
        for name, value in query_metrics(labels, scores[rows]).items():
            totals[name] += value
        n += 1
    result = {name: (total / n if n else 0.0) for name, total in totals.items()}
    result["queries"] = float(n)
    return result


def evaluate_all(
    data: RankingSet, model_scores: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Metrics for each named model's scores and for every baseline, on the same rows."""
    results = {name: evaluate_scores(data, s) for name, s in model_scores.items()}
    for name, column in BASELINES.items():
        results[name] = evaluate_scores(data, data.x[:, FEATURE_NAMES.index(column)])
    return results


def held_out_start(cards: Iterable[Mapping[str, Any]]) -> datetime:
    """The latest `test_start` of the cards: postings from then on trained none of the models.

    A model in service that is newer than the version evaluated was trained (or early-stopped)
    on some of the older version's test postings; comparing them there would be in-sample for it.
    """
    starts = []
    for card in cards:
        try:
            starts.append(as_utc(datetime.fromisoformat(card["data"]["split"]["test_start"])))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidInput(
                f"model card of {card.get('version', '?')} records no split dates ({e}); "
                "retrain it with `ranker train`"
            ) from e
    if not starts:
        raise InvalidInput("no model version to evaluate; train one: `ranker train`")
    return max(starts)


@dataclass(frozen=True)
class Comparison:
    """Versions and baselines scored on the same held-out postings."""

    held_out_from: datetime
    test: RankingSet
    results: dict[str, dict[str, float]]
    """Ranker name (version, baselines) -> metric -> value."""

    def record(self, versions: Sequence[str], data_sha: str) -> dict[str, Any]:
        """What `ranker evaluate` stores beside the evaluated version."""
        return {
            "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "version": versions[0],
            "compared_with": list(versions[1:]),
            "held_out_from": self.held_out_from.isoformat(),
            "held_out_rule": "postings created at or after the latest test_start of the versions "
            "compared, so none of them trained or early-stopped on these postings",
            "postings": self.test.n_queries,
            "rows": len(self.test.y),
            "data_sha256": data_sha,
            "metrics": self.results,
        }


def compare_versions(
    bundles: Sequence[ModelBundle],
    candidates: Sequence[CandidateLike],
    postings: Sequence[PostingLike],
    outcomes: Sequence[Outcome],
) -> Comparison:
    """Score every bundle and the baselines on the postings none of the bundles has seen.

    Each version builds features with its own frozen lexicon; a version whose features differ
    from the first one's is left out (its rows would not be comparable). Baselines rank by the
    first version's feature columns.
    """
    start = held_out_start(b.card for b in bundles)
    prepared_c, prepared_p = prepare_all(candidates, postings)
    known = [o for o in outcomes if o.posting_id in prepared_p]
    labelled = {o.posting_id for o in known}
    times = posting_times((prepared_p[pid].posting for pid in sorted(labelled)), known)
    test_ids = time_split(times, at=(start, start)).test if times else ()
    if not test_ids:
        raise InvalidInput(
            f"no stored posting with outcomes was created on or after {start:%Y-%m-%d %H:%M}, "
            "after every compared version's training data; record outcomes of newer postings "
            "(`ranker ingest`) and evaluate again"
        )
    mine = set(test_ids)
    labels = labels_from_outcomes(o for o in known if o.posting_id in mine)
    chosen = [prepared_p[pid] for pid in test_ids]
    data: RankingSet | None = None
    scores: dict[str, np.ndarray] = {}
    for i, bundle in enumerate(bundles):
        rows = build_set(bundle.builder, chosen, prepared_c, labels)
        data = rows if data is None else data
        if bundle.feature_names == bundles[0].feature_names:
            name = bundle.version if i == 0 else f"{bundle.version} (in service)"
            scores[name] = bundle.scorer.score(rows.x)
    assert data is not None
    return Comparison(held_out_from=start, test=data, results=evaluate_all(data, scores))


def data_digest(
    candidates: Sequence[CandidateLike],
    postings: Sequence[PostingLike],
    outcomes: Sequence[Outcome],
) -> str:
    """`training.dataset.data_sha256` of stored rows (the digest model cards record)."""
    return data_sha256((r.candidate for r in candidates), (r.posting for r in postings), outcomes)
