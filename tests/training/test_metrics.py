"""training.metrics: parity with ir-measures (trec_eval), the tie rule, undefined postings, CIs."""

from __future__ import annotations

import itertools
import math

import ir_measures  # the `dev` extra: trec_eval through pytrec_eval, the independent reference
import numpy as np
import pytest
from ir_measures import RR, R, nDCG

from training.metrics import (
    NO_DIFFERENCE,
    PostingMetrics,
    bootstrap,
    paired_difference,
    posting_metrics,
    served_metrics,
)

REL = 2
GAINS = {g: 2**g - 1 for g in range(5)}


def _trec(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], measures: list
) -> dict[tuple[str, str], float]:
    """(query, measure) -> value, from trec_eval through ir-measures' pytrec_eval provider."""
    q = [
        ir_measures.Qrel(qid, did, rel) for qid, docs in qrels.items() for did, rel in docs.items()
    ]
    r = [
        ir_measures.ScoredDoc(qid, did, float(s))
        for qid, docs in run.items()
        for did, s in docs.items()
    ]
    provider = ir_measures.pytrec_eval
    assert provider.is_available()
    return {(m.query_id, str(m.measure)): m.value for m in provider.iter_calc(measures, q, r)}


def test_applicant_metrics_match_trec_eval_without_ties() -> None:
    rng = np.random.default_rng(1)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    ours: dict[str, dict[str, float | None]] = {}
    for q in range(60):
        n = int(rng.integers(2, 45))
        labels = rng.integers(0, 5, n)
        scores = rng.normal(size=n)  # continuous: no ties
        qid = f"q{q}"
        qrels[qid] = {f"d{i}": int(labels[i]) for i in range(n)}
        run[qid] = {f"d{i}": float(scores[i]) for i in range(n)}
        ours[qid] = posting_metrics(labels, scores, REL)
    measures = {
        "ndcg@5": nDCG(gains=GAINS) @ 5,
        "ndcg@10": nDCG(gains=GAINS) @ 10,
        "mrr": RR(rel=REL),
        "recall@1": R(rel=REL) @ 1,
        "recall@10": R(rel=REL) @ 10,
        "recall@20": R(rel=REL) @ 20,
    }
    ref = _trec(qrels, run, list(measures.values()))
    checked = 0
    for qid, values in ours.items():
        for name, measure in measures.items():
            if values[name] is None:  # undefined here; trec_eval says 0
                assert ref[(qid, str(measure))] == 0
                continue
            assert values[name] == pytest.approx(ref[(qid, str(measure))], abs=1e-9), (qid, name)
            checked += 1
    assert checked > 250


def test_served_metrics_match_trec_eval_with_missed_and_unlabelled_candidates() -> None:
    # trec_eval's qrels hold every labelled applicant, retrieved or not, so its recall, RR and
    # ideal DCG count the ones retrieval missed; unlabelled retrieved candidates are unjudged
    # (not relevant) for it, as they are label 0 for us.
    rng = np.random.default_rng(2)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    ours: dict[str, dict[str, float | None]] = {}
    for q in range(60):
        n_app = int(rng.integers(1, 30))
        labels = rng.integers(0, 5, n_app)
        retrieved_app = rng.random(n_app) < 0.6
        n_other = int(rng.integers(0, 150))
        qid = f"q{q}"
        qrels[qid] = {f"a{i}": int(labels[i]) for i in range(n_app)}
        ids = [f"a{i}" for i in np.flatnonzero(retrieved_app)] + [f"o{i}" for i in range(n_other)]
        scores = rng.normal(size=len(ids))
        run[qid] = dict(zip(ids, scores.tolist(), strict=True))
        y = np.concatenate([labels[retrieved_app], np.zeros(n_other, dtype=int)])
        applicant = np.arange(len(ids)) < retrieved_app.sum()
        ours[qid] = served_metrics(y, scores, labels[~retrieved_app], applicant, REL)
        if not ids:
            del run[qid]  # nothing retrieved: trec_eval skips the query
    measures = {
        "recall@10": R(rel=REL) @ 10,
        "recall@20": R(rel=REL) @ 20,
        "recall@100": R(rel=REL) @ 100,
        "recall@retrieved": R(rel=REL) @ 1000,
        "ndcg@10": nDCG(gains=GAINS) @ 10,
        "mrr": RR(rel=REL),
    }
    ref = _trec(qrels, run, list(measures.values()))
    checked = 0
    for qid, values in ours.items():
        for name, measure in measures.items():
            key = (qid, str(measure))
            if values[name] is None or key not in ref:
                continue
            assert values[name] == pytest.approx(ref[key], abs=1e-9), (qid, name)
            checked += 1
    assert checked > 250


def _brute(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Average of the untied metrics over every order of the tied candidates."""
    groups = [np.flatnonzero(scores == s) for s in sorted(set(scores.tolist()), reverse=True)]
    sums: dict[str, float] = {}
    count = 0
    for perm in itertools.product(*(itertools.permutations(g) for g in groups)):
        order = np.concatenate([np.asarray(p, dtype=int) for p in perm])
        strict = np.empty(len(scores))
        strict[order] = -np.arange(len(scores), dtype=float)  # distinct, in this order
        for name, v in posting_metrics(labels, strict, REL).items():
            if v is not None:
                sums[name] = sums.get(name, 0.0) + v
        count += 1
    out: dict[str, float | None] = {name: s / count for name, s in sums.items()}
    return out


def test_ties_are_the_exact_average_over_tie_orders() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(2, 7))
        labels = rng.integers(0, 5, n)
        scores = rng.integers(0, 3, n).astype(float)  # many ties
        expected = _brute(labels, scores)
        got = posting_metrics(labels, scores, REL)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-12), name


def test_tie_rule_by_hand() -> None:
    # Three candidates on one score, two of them relevant (label 2): the first relevant one is at
    # rank 1 in 2 of 3 orders and at rank 2 in 1, so E[RR] = 2/3 * 1 + 1/3 * 1/2 = 5/6.
    labels = np.array([2, 2, 0])
    tied = np.zeros(3)
    m = posting_metrics(labels, tied, REL)
    assert m["mrr"] == pytest.approx(5 / 6)
    # recall@1: slot 1 holds a relevant candidate with probability 2/3, of 2 relevant -> 1/3.
    assert m["recall@1"] == pytest.approx(1 / 3)
    # NDCG@5: each slot holds gain 3 with probability 2/3 -> E[DCG] = 2 * (1 + 1/log2 3 + 1/2);
    # ideal = 3 + 3/log2 3.
    expected = 2 * (1 + 1 / math.log2(3) + 0.5) / (3 + 3 / math.log2(3))
    assert m["ndcg@5"] == pytest.approx(expected)
    # A ranker that breaks the tie in the relevant candidates' favour is not credited with it.
    assert posting_metrics(labels, np.array([1.0, 1.0, 0.0]), REL)["mrr"] == 1.0
    # Non-applicants' share of the top slots is an expectation too: 1 of 2 tied in the top 1.
    served = served_metrics(
        np.array([2, 0]), np.zeros(2), np.array([], int), np.array([True, False]), REL
    )
    assert served["non_applicants@10"] == pytest.approx(0.5)
    assert served["mrr"] == pytest.approx(0.75)


def test_postings_without_a_relevant_label_are_counted_not_dropped() -> None:
    per_posting = {
        "with": posting_metrics(np.array([2, 0, 1]), np.array([3.0, 2.0, 1.0]), REL),
        "below": posting_metrics(np.array([1, 0]), np.array([2.0, 1.0]), REL),
        "zeros": posting_metrics(np.array([0, 0]), np.array([2.0, 1.0]), REL),
    }
    pm = PostingMetrics.collect(per_posting.items())
    assert pm.n_undefined("mrr") == 2 and pm.estimate("mrr").n == 1
    assert pm.n_undefined("recall@10") == 2
    assert pm.n_undefined("ndcg@10") == 1 and pm.estimate("ndcg@10").n == 2
    summary = pm.summary()
    assert summary["mrr"]["undefined"] == 2 and summary["mrr"]["n"] == 1
    # In the served setting a relevant applicant retrieval missed makes RR 0, not undefined.
    missed = served_metrics(
        np.array([0, 0]), np.array([2.0, 1.0]), np.array([3]), np.zeros(2, bool), REL
    )
    assert missed["mrr"] == 0.0 and missed["recall@retrieved"] == 0.0


def test_intervals_and_paired_differences() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(0.6, 0.2, 40)
    e = bootstrap(a)
    assert e.low < e.mean < e.high and e.n == 40
    assert bootstrap(a) == e  # fixed seed: reproducible to the digit
    better = paired_difference(a + 0.05 + rng.normal(0, 0.01, 40), a)
    assert better.excludes_zero and better.verdict == "higher"
    same = paired_difference(a + rng.normal(0, 0.05, 40), a)
    assert not same.excludes_zero and same.verdict == NO_DIFFERENCE
    # Pairing is what makes a small consistent gain visible despite large posting-to-posting spread.
    unpaired = bootstrap(a + 0.05).low - bootstrap(a).high
    assert unpaired < 0 < better.low
