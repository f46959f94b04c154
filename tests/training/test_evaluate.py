"""Evaluation: both views on a tiny hand-built pool with known answers; held-out versions."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from ranker.domain import Candidate, Posting
from ranker.fallback import HAND_RULE, hand_rule
from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import PreparedCandidate, prepare_candidate, prepare_posting
from ranker.registry import ModelRegistry
from tests.fixtures.training import EncodedDemo
from training.card import render_markdown
from training.evaluate import (
    APPLICANT_VIEW,
    BASELINES,
    POOL_VIEW,
    Evaluation,
    compare_versions,
    evaluate_postings,
    held_out_start,
)
from training.labels import as_utc
from training.metrics import NO_DIFFERENCE
from training.train import TrainResult


class ColumnScorer:
    """A transparent ranker for known answers: scores each row by one feature column."""

    def __init__(self, name: str) -> None:
        self.column = FEATURE_NAMES.index(name)

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x[:, self.column], dtype=np.float32)


class YearsModel:
    """A 'model' that ranks by years of experience, built and scored like a served version."""

    feature_names = FEATURE_NAMES

    def __init__(self, lexicon: Lexicon) -> None:
        self.builder = FeatureBuilder(lexicon)
        self.scorer = ColumnScorer("years_experience")


def _candidate(cid: str, cosine: float, years: float) -> PreparedCandidate:
    """A candidate whose CV vector has cosine `cosine` with the postings' vector e1."""
    v = np.array([cosine, math.sqrt(1 - cosine**2), 0.0], dtype=np.float32)
    chunk = np.array([[0.0, 0.0, 1.0]], dtype=np.float32)
    return prepare_candidate(
        Candidate(id=cid, cv_text=f"engineer {cid}", years_experience=years), v, chunk
    )


# Cosine with the posting, years: retrieval (top 3 by cosine) returns a, b, c; the model (by
# years) ranks b, c, a. Applicants of p1: b (interviewed, 2), d (hired, 4: retrieval misses
# her), e (applied, 0: missed too).
POOL = {"a": (0.9, 1.0), "b": (0.8, 10.0), "c": (0.7, 5.0), "e": (0.3, 0.0), "d": (0.2, 3.0)}
LABELS = {
    ("p1", "b"): 2,
    ("p1", "d"): 4,
    ("p1", "e"): 0,
    ("p2", "a"): 1,  # graded labels, none relevant
    ("p2", "c"): 0,
    ("p3", "a"): 0,  # every label 0
    ("p3", "b"): 0,
    ("p4", "b"): 3,  # one applicant: pool view only
}
LOG3 = math.log2(3)


@pytest.fixture(scope="module")
def tiny() -> Evaluation:
    cands = {cid: _candidate(cid, cos, years) for cid, (cos, years) in POOL.items()}
    e1 = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    # No required skills, no location, no minimum: the hand rule reduces to retrieval order.
    postings = [
        prepare_posting(Posting(id=pid, title="Engineer", description="engineer"), e1)
        for pid in ("p1", "p2", "p3", "p4")
    ]
    model = YearsModel(Lexicon.fit(cands.values(), min_df=1))
    return evaluate_postings(
        {"model": model}, postings, cands, LABELS, retrieve_n=3, index_storage="fp16"
    )


def test_pool_view_known_answer(tiny: Evaluation) -> None:
    pool = tiny.views[POOL_VIEW]
    model, retrieval = pool.rankers["model"].values, pool.rankers["retrieval"].values
    # p1: 2 relevant applicants, b retrieved (model rank 1, retrieval rank 2), d missed.
    for k in (10, 20, 100):
        assert model["p1"][f"recall@{k}"] == pytest.approx(0.5)
    assert model["p1"]["recall@retrieved"] == pytest.approx(0.5)
    assert model["p1"]["mrr"] == 1.0 and retrieval["p1"]["mrr"] == 0.5
    ideal = 15 + 3 / LOG3  # hired d and interviewed b, though retrieval missed d
    assert model["p1"]["ndcg@10"] == pytest.approx(3 / ideal)
    assert retrieval["p1"]["ndcg@10"] == pytest.approx((3 / LOG3) / ideal)
    # Of the 3 slots served, a and c did not apply.
    assert model["p1"]["non_applicants@10"] == pytest.approx(2 / 3)
    assert pool.rankers["hand_rule"].values["p1"] == retrieval["p1"]
    # Sample sizes: 4 postings, 2 without a relevant applicant (counted), 1 with labels all 0.
    facts = tiny.as_dict()["views"][POOL_VIEW]
    assert facts["postings"] == 4 and facts["pool_candidates"] == 5
    assert facts["postings_without_relevant"] == 2 and facts["postings_all_labels_zero"] == 1
    assert facts["relevant_applicants"] == 3 and facts["relevant_retrieved"] == 2
    assert facts["metrics"]["model"]["mrr"]["n"] == 2
    assert facts["metrics"]["model"]["mrr"]["undefined"] == 2
    assert facts["metrics"]["model"]["ndcg@10"]["n"] == 3
    assert "not relevant" in facts["unlabelled"]
    # Paired: the model finds the relevant applicant first on both postings that have one.
    diff = facts["differences"]["model - retrieval"]["mrr"]
    assert diff["mean"] == pytest.approx(0.5) and diff["n"] == 2 and diff["verdict"] == "higher"
    assert facts["differences"]["model - hand_rule"]["non_applicants@10"]["verdict"] == (
        NO_DIFFERENCE
    )


def test_applicant_view_known_answer(tiny: Evaluation) -> None:
    view = tiny.views[APPLICANT_VIEW]
    model, retrieval = view.rankers["model"].values, view.rankers["retrieval"].values
    assert set(model) == {"p1", "p2", "p3"}  # p4 has one applicant
    # p1 by years: b (2), d (4), e (0); by cosine: b, e, d.
    ideal = 15 + 3 / LOG3
    assert model["p1"]["ndcg@10"] == pytest.approx((3 + 15 / LOG3) / ideal)
    assert retrieval["p1"]["ndcg@10"] == pytest.approx((3 + 15 / 2) / ideal)
    assert model["p1"]["recall@1"] == 0.5 and model["p1"]["mrr"] == 1.0
    assert model["p2"]["mrr"] is None and model["p3"]["ndcg@10"] is None
    facts = tiny.as_dict()["views"][APPLICANT_VIEW]
    assert facts["postings"] == 3 and facts["postings_skipped_one_applicant"] == 1
    assert facts["postings_without_relevant"] == 2 and facts["postings_all_labels_zero"] == 1
    assert facts["candidates_ranked"] == 7
    assert set(facts["metrics"]) == {"model", *BASELINES}


def test_hand_rule_weights_are_the_documented_ones() -> None:
    names = list(FEATURE_NAMES)
    x = np.zeros((2, len(names)), dtype=np.float32)
    x[0, names.index("required_coverage")] = 1.0
    x[1, names.index("location_fit")] = 1.0
    x[:, names.index("dense_cosine")] = 0.4
    x[1, names.index("under_min_years")] = 1.0
    got = hand_rule(x, names)
    assert got.tolist() == pytest.approx([3.0 + 1.0 + 0.2, 1.0 + 0.2])
    assert HAND_RULE == {
        "required_coverage": 3.0,
        "location_fit": 1.0,
        "meets_min_years": 1.0,
        "dense_cosine": 0.5,
    }


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
    ids = cmp.evaluation.posting_ids
    assert len(ids) >= 1 and all(created[pid] >= later for pid in ids)
    for view in (APPLICANT_VIEW, POOL_VIEW):
        rankers = cmp.evaluation.views[view].rankers
        assert {"v0001", f"{newer} (in service)", *BASELINES} == set(rankers)
    # The same model bytes: every paired difference with itself is exactly 0.
    same = cmp.evaluation.as_dict()["views"][POOL_VIEW]["differences"]
    assert same[f"v0001 - {newer} (in service)"]["recall@10"]["mean"] == 0.0
    assert same[f"v0001 - {newer} (in service)"]["recall@10"]["verdict"] == NO_DIFFERENCE
    # The version alone is held out from its own test start, which includes more postings.
    alone = compare_versions(
        bundles[:1], rows.candidate_rows, rows.posting_rows, rows.data.outcomes
    )
    assert len(alone.evaluation.posting_ids) > len(ids)
    record = cmp.record(["v0001", newer], "0" * 64)
    assert record["held_out_from"] == later.isoformat() and record["compared_with"] == [newer]
    assert record["retrieve_n"] == 500 and record["index_storage"] in ("fp16", "flat")
    json.dumps(record, allow_nan=False)  # plain JSON: no NaN for empty intervals
