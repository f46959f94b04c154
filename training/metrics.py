"""Ranking metrics per posting, exact in expectation over tied scores, with bootstrap intervals.

Ties: a ranker that gives several candidates the same score has not ordered them, so every metric
here is the *expectation over all orders of the tied candidates* (each order equally likely),
computed exactly rather than by sampling. That is one rule for every ranker (model, baselines,
retrieval order): a ranker gains nothing from a lucky tie-break and loses nothing from an unlucky
one. For scores without ties the values equal the usual definitions (checked against ir-measures
in the tests).

Graded labels (0..4): gain = 2^label - 1 for NDCG; "relevant" = label >= a threshold for recall
and reciprocal rank. A posting whose labels are all 0 has no defined NDCG; one with no relevant
candidate has no defined recall or reciprocal rank. Such postings are counted by `PostingMetrics`
(`n_undefined`), never dropped silently.

Two settings: `posting_metrics` ranks a fixed list (a posting's applicants); `served_metrics`
ranks what retrieval returned, where labelled candidates retrieval missed still count: in recall's
denominator, in the ideal DCG, and as no relevant candidate found for reciprocal rank (0, the
trec_eval convention). Unlabelled candidates are passed with label 0 (not relevant).

Uncertainty: postings are the unit of sampling, so intervals are a percentile bootstrap over
postings (`bootstrap`), and comparisons of two rankers are *paired*: the bootstrap of the
per-posting differences on the same postings (`paired_difference`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
"""Bootstrap resamples of the postings for every interval."""
BOOTSTRAP_SEED = 20261130
"""Fixed, so a report is reproducible to the digit."""
BOOTSTRAP_LEVEL = 0.95
"""Coverage of every interval."""
NO_DIFFERENCE = "no significant difference"
"""Verdict of a paired difference whose interval includes 0."""


def _tie_groups(scores: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by equal score, groups in descending score order."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    cuts = np.flatnonzero(np.diff(s) != 0) + 1
    return np.split(order, cuts)


def _discounts(n: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, n + 2))


def expected_dcg(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """E[DCG@k] over tie orders: each tied candidate spreads its gain evenly over the group's slots."""
    gains = 2.0 ** labels.astype(np.float64) - 1.0
    disc = _discounts(len(labels))
    disc[k:] = 0.0
    total, start = 0.0, 0
    for g in _tie_groups(scores):
        total += float(gains[g].mean()) * float(disc[start : start + len(g)].sum())
        start += len(g)
    return total


def ideal_dcg(labels: np.ndarray, k: int) -> float:
    gains = np.sort(2.0 ** labels.astype(np.float64) - 1.0)[::-1][:k]
    return float(np.sum(gains * _discounts(len(gains))))


def ndcg(
    labels: np.ndarray, scores: np.ndarray, k: int, ideal_labels: np.ndarray | None = None
) -> float | None:
    """E[NDCG@k]; None when every label is 0 (no ordering is better than another).

    `ideal_labels` (default `labels`) are the labels the ideal ranking may use: in the served
    setting, also those of labelled candidates retrieval missed.
    """
    best = ideal_dcg(labels if ideal_labels is None else np.asarray(ideal_labels), k)
    return None if best <= 0 else expected_dcg(labels, scores, k) / best


def expected_in_top(mask: np.ndarray, scores: np.ndarray, k: int) -> float:
    """E[number of `mask` candidates among the top k] over tie orders."""
    hits, start = 0.0, 0
    for g in _tie_groups(scores):
        inside = max(0, min(k, start + len(g)) - start)
        hits += float(mask[g].sum()) * inside / len(g)
        start += len(g)
    return hits


def recall(
    relevant: np.ndarray, scores: np.ndarray, k: int, n_relevant: int | None = None
) -> float | None:
    """E[share of the relevant candidates in the top k]; None without a relevant candidate.

    `n_relevant` (default: those in `relevant`) is the denominator; in the served setting it
    includes the relevant candidates retrieval missed.
    """
    n_rel = int(relevant.sum()) if n_relevant is None else n_relevant
    if n_rel == 0:
        return None
    return expected_in_top(relevant, scores, k) / n_rel


def reciprocal_rank(relevant: np.ndarray, scores: np.ndarray) -> float | None:
    """E[1 / rank of the first relevant candidate]; None without a relevant candidate.

    In the first tie group holding r of its g candidates relevant, starting at rank s, the first
    relevant one sits at rank s + j - 1 with probability C(g - j, r - 1) / C(g, r).
    """
    start = 1
    for g in _tie_groups(scores):
        r, size = int(relevant[g].sum()), len(g)
        if r:
            total = math.comb(size, r)
            return sum(
                math.comb(size - j, r - 1) / total / (start + j - 1) for j in range(1, size - r + 2)
            )
        start += size
    return None


def posting_metrics(
    labels: np.ndarray, scores: np.ndarray, relevant_label: int, ks: Sequence[int] = (5, 10)
) -> dict[str, float | None]:
    """Every metric of one posting's ranking; None where the metric is undefined for it."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    rel = labels >= relevant_label
    out: dict[str, float | None] = {f"ndcg@{k}": ndcg(labels, scores, k) for k in ks}
    out["mrr"] = reciprocal_rank(rel, scores)
    for k in (1, 10, 20):
        out[f"recall@{k}"] = recall(rel, scores, k)
    return out


SERVED_RECALL_AT = (10, 20, 100)
"""Cut-offs of recall in the served setting; `recall@retrieved` covers the whole retrieved set."""


def served_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    missed: np.ndarray,
    applicant: np.ndarray,
    relevant_label: int,
) -> dict[str, float | None]:
    """Metrics of one posting's served ranking: the retrieved candidates reranked by `scores`.

    `labels` are the retrieved candidates' labels (0 for the unlabelled), `applicant` marks the
    retrieved candidates who applied, `missed` holds the labels of applicants retrieval did not
    return. Recall is over every relevant applicant, retrieved or not; reciprocal rank is 0 when
    none was retrieved; the ideal DCG may use the missed applicants too. `non_applicants@10` is
    the expected share of the top min(10, retrieved) slots that go to non-applicants.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    missed = np.asarray(missed, dtype=np.int64)
    rel = labels >= relevant_label
    n_rel = int(rel.sum()) + int((missed >= relevant_label).sum())
    out: dict[str, float | None] = {}
    for k in SERVED_RECALL_AT:
        out[f"recall@{k}"] = recall(rel, scores, k, n_rel)
    out["recall@retrieved"] = int(rel.sum()) / n_rel if n_rel else None
    out["ndcg@10"] = ndcg(labels, scores, 10, np.concatenate([labels, missed]))
    if n_rel == 0:
        out["mrr"] = None
    else:
        found = reciprocal_rank(rel, scores)
        out["mrr"] = 0.0 if found is None else found
    top = min(10, len(labels))
    out["non_applicants@10"] = (
        expected_in_top(~np.asarray(applicant, dtype=bool), scores, top) / top if top else None
    )
    return out


@dataclass(frozen=True)
class Estimate:
    """A mean over postings with its percentile-bootstrap 95% interval."""

    mean: float
    low: float
    high: float
    n: int
    """Postings the mean is over."""

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        """For a difference: True when the interval lies wholly above or below zero."""
        return self.low > 0 or self.high < 0

    @property
    def verdict(self) -> str:
        """For a difference: "higher" or "lower" when the interval excludes 0, else no difference."""
        if self.n == 0:
            return "no postings"
        if not self.excludes_zero:
            return NO_DIFFERENCE
        return "higher" if self.low > 0 else "lower"

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": float(self.n)}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(
    values: Sequence[float] | np.ndarray,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = BOOTSTRAP_LEVEL,
) -> Estimate:
    """Mean of per-posting values with a percentile-bootstrap interval (resampling postings)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(samples, len(v)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(v.mean()), float(lo), float(hi), len(v))


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, **kw: float
) -> Estimate:
    """Mean of a - b over the same postings with its bootstrap interval (a paired comparison)."""
    av, bv = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if av.shape != bv.shape:
        raise ValueError(f"paired values need the same postings: {av.shape} vs {bv.shape}")
    return bootstrap(av - bv, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PostingMetrics:
    """Per-posting metric values of one ranker, keyed by posting id (None = undefined there)."""

    values: Mapping[str, Mapping[str, float | None]]
    """posting id -> metric -> value."""

    @classmethod
    def collect(
        cls, per_posting: Iterable[tuple[str, Mapping[str, float | None]]]
    ) -> PostingMetrics:
        return cls(dict(per_posting))

    @property
    def metric_names(self) -> list[str]:
        names: dict[str, None] = {}
        for m in self.values.values():
            names.update(dict.fromkeys(m))
        return list(names)

    def defined(self, metric: str) -> dict[str, float]:
        """Postings where `metric` is defined, with its value."""
        out: dict[str, float] = {}
        for pid, m in self.values.items():
            v = m.get(metric)
            if v is not None:
                out[pid] = float(v)
        return out

    def n_undefined(self, metric: str) -> int:
        return len(self.values) - len(self.defined(metric))

    def estimate(self, metric: str) -> Estimate:
        vals = self.defined(metric)
        return bootstrap([vals[k] for k in sorted(vals)])

    def summary(self) -> dict[str, dict[str, float]]:
        """metric -> mean, CI and the number of postings it is defined on (and undefined on)."""
        out: dict[str, dict[str, float]] = {}
        for name in self.metric_names:
            d = self.estimate(name).as_dict()
            d["undefined"] = float(self.n_undefined(name))
            out[name] = d
        return out

    def versus(self, other: PostingMetrics, metric: str) -> Estimate:
        """Paired difference self - other on the postings where both define `metric`."""
        a, b = self.defined(metric), other.defined(metric)
        common = sorted(set(a) & set(b))
        return paired_difference([a[k] for k in common], [b[k] for k in common])
