"""Shadow comparison statistics: agreement and outcome NDCG of logged orders, known answers."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from ranker.domain import Outcome, Stage
from ranker.rows import ShadowRanking
from training.shadow_comparison import agreement, compare_shadow, order_ndcg


def _r(rid: str, champion: tuple[str, ...], challenger: tuple[str, ...]) -> ShadowRanking:
    return ShadowRanking(
        request_id=rid,
        at=datetime(2025, 1, 1, tzinfo=UTC),
        posting_id="p1",
        champion_version="v0001",
        challenger_version="v0002",
        top_k=3,
        retrieved=4,
        champion_ids=champion,
        challenger_ids=challenger,
    )


def test_agreement_of_two_orders() -> None:
    same = agreement(_r("r1", ("a", "b", "c", "d"), ("a", "b", "c", "d")), k=3)
    assert same == {"overlap": 1.0, "kendall_tau": pytest.approx(1.0), "spearman": 1.0}
    reversed_ = agreement(_r("r2", ("a", "b", "c"), ("c", "b", "a")), k=3)
    assert reversed_["overlap"] == 1.0
    assert reversed_["kendall_tau"] == pytest.approx(-1.0)
    assert reversed_["spearman"] == pytest.approx(-1.0)
    swapped = agreement(_r("r3", ("a", "b", "c", "d"), ("b", "a", "d", "c")), k=2)
    assert swapped["overlap"] == 1.0 and swapped["kendall_tau"] == pytest.approx(-1.0)


def test_order_ndcg_and_the_paired_difference() -> None:
    labels = {"a": 0, "b": 3}
    best = order_ndcg(["b", "a"], labels)
    assert best == 1.0
    assert order_ndcg(["a", "b"], labels) == pytest.approx(1 / math.log2(3))
    assert order_ndcg(["a"], {"a": 0}) is None
    at = datetime(2025, 1, 2, tzinfo=UTC)
    outcomes = [
        Outcome(posting_id="p1", candidate_id="b", stage=Stage.INTERVIEWED, at=at),
        Outcome(posting_id="p1", candidate_id="a", stage=Stage.APPLIED, at=at),
    ]
    (pair,) = compare_shadow([_r("r1", ("a", "b"), ("b", "a"))], outcomes, k=2)
    assert pair.ndcg["challenger"].mean == 1.0
    assert pair.ndcg["challenger - champion"].mean == pytest.approx(1 - 1 / math.log2(3))
    assert pair.labelled_postings == 1 and pair.agreement["overlap"].mean == 1.0
