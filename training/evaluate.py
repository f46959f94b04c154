"""Ranking metrics on held-out postings, for the model and for single-feature baselines.

Hand-written rather than taken from scikit-learn: it is not a dependency of the offline side, and
these need one shared per-query ordering (ties broken by row order, i.e. candidate id) for every
metric. `tests/training/test_evaluate.py` checks NDCG against scikit-learn's `ndcg_score`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ranker.features import FEATURE_NAMES
from training.dataset import RankingSet
from training.labels import RELEVANT_LABEL

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
