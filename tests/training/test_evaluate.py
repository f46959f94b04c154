"""Ranking metrics: checked against scikit-learn and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import query_metrics

# scikit-learn comes with the `export` extra (sentence-transformers needs it); the reference only.
ndcg_score = pytest.importorskip("sklearn.metrics").ndcg_score


def test_ndcg_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(3, 40))
        labels = rng.integers(0, 5, n)
        if labels.max() == 0:
            continue
        scores = rng.normal(size=n)  # continuous: no ties, which sklearn averages
        ours = query_metrics(labels, scores)
        gains = (2.0**labels - 1)[None, :]
        for k in (5, 10):
            assert ours[f"ndcg@{k}"] == pytest.approx(ndcg_score(gains, scores[None, :], k=k))


def test_map_and_recall_by_hand() -> None:
    labels = np.array([0, 2, 0, 4, 1])
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # ranked in the given order
    m = query_metrics(labels, scores)
    # relevant (>=2) at ranks 2 and 4: AP = (1/2 + 2/4) / 2
    assert m["map"] == pytest.approx(0.5)
    assert m["recall@10"] == 1.0
    perfect = query_metrics(labels, labels.astype(float))
    assert perfect["ndcg@5"] == pytest.approx(1.0) and perfect["map"] == pytest.approx(1.0)
    assert query_metrics(np.zeros(4, int), np.arange(4.0))["ndcg@10"] == 0.0
