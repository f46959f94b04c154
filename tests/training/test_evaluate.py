"""Ranking metrics: checked against scikit-learn and hand-worked cases."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from ranker.registry import ModelRegistry
from tests.fixtures.training import EncodedDemo
from training.card import render_markdown
from training.evaluate import compare_versions, held_out_start, query_metrics
from training.labels import as_utc
from training.train import TrainResult

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


def test_comparison_holds_out_postings_from_the_later_version(
    registry_path: Path,
    demo_data: EncodedDemo,
    trained_model: tuple[ModelRegistry, TrainResult],
) -> None:
    registry = ModelRegistry(registry_path)
    result = trained_model[1]
    # A newer version whose test split starts later: it trained on some of v0001's test postings.
    split = result.card["data"]["split"]
    times = sorted(
        as_utc(p.created_at) for p in demo_data.data.postings if p.created_at is not None
    )
    later = max(t for t in times if t > datetime.fromisoformat(split["test_start"]))
    card = json.loads(json.dumps(result.card))
    card["data"]["split"]["test_start"] = later.isoformat()
    newer = registry.register(
        onnx_model=result.onnx_model,
        booster_text=result.booster_text,
        lexicon=result.lexicon,
        check_rows=result.check_rows,
        check_scores=result.check_scores,
        card=card,
        render_card=render_markdown,
    )
    bundles = [registry.load("v0001"), registry.load(newer)]
    assert held_out_start(b.card for b in bundles) == later
    rows = demo_data
    cmp = compare_versions(bundles, rows.candidate_rows, rows.posting_rows, rows.data.outcomes)
    assert cmp.held_out_from == later
    created = {p.id: as_utc(p.created_at) for p in rows.data.postings if p.created_at}
    assert cmp.test.n_queries >= 1
    assert all(created[pid] >= later for pid in cmp.test.posting_ids)
    assert {"v0001", f"{newer} (in service)", "dense_cosine", "bm25"} <= set(cmp.results)
    # The version alone is held out from its own test start, which includes more postings.
    alone = compare_versions(
        bundles[:1], rows.candidate_rows, rows.posting_rows, rows.data.outcomes
    )
    assert alone.test.n_queries > cmp.test.n_queries
    record = cmp.record(["v0001", newer], "0" * 64)
    assert record["held_out_from"] == later.isoformat() and record["compared_with"] == [newer]
