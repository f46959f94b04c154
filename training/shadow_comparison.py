"""Champion against challenger on the rankings scored in shadow (`ranker.shadow`).

**Agreement**, per logged ranking, on the two orders of the same retrieved candidates:
top-k overlap (|champion top k ∩ challenger top k| / k), and Kendall's tau-b and Spearman's rho
over the union of the two top-k lists, each candidate ranked by its position in each stored
order (a candidate beyond an order's stored depth shares the rank after it, so ties are handled
by tau-b and by Spearman's average ranks).

**Outcomes**, once the ATS records them for those rankings' postings: each version's NDCG@10 of
its logged order against the postings' graded labels (`training.labels`; unlabelled candidates
count as 0, the ideal DCG uses every labelled applicant of the posting, as the pool view does).

Both are averaged per posting first (a posting ranked ten times is one sample), then reported as
means with 95% percentile-bootstrap intervals over postings, and the NDCG comparison as a paired
difference (`training.metrics`). Caveat: the recruiters acted on the champion's order, so
outcomes favour it (its candidates were the ones contacted); a challenger that wins anyway is
convincing, one that loses narrowly is not necessarily worse.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau, spearmanr

from ranker.domain import Outcome
from ranker.rows import ShadowRanking
from training.labels import labels_from_outcomes
from training.metrics import Estimate, PostingMetrics, bootstrap, ndcg

NDCG_AT = 10


def _ranks(order: Sequence[str], among: Sequence[str]) -> np.ndarray:
    """1-based position of each of `among` in `order`; those not in it share len(order) + 1."""
    where = {cid: i + 1 for i, cid in enumerate(order)}
    return np.array([where.get(c, len(order) + 1) for c in among], dtype=np.float64)


def agreement(r: ShadowRanking, k: int) -> dict[str, float]:
    """Top-k overlap, Kendall's tau-b and Spearman's rho of one shadow ranking's two orders."""
    a, b = list(r.champion_ids[:k]), list(r.challenger_ids[:k])
    size = max(1, min(k, len(a), len(b)))
    out = {"overlap": len(set(a) & set(b)) / size}
    union = list(dict.fromkeys(a + b))
    if len(union) < 2:
        return out | {"kendall_tau": 1.0, "spearman": 1.0}
    ra, rb = _ranks(r.champion_ids, union), _ranks(r.challenger_ids, union)
    tau = kendalltau(ra, rb).statistic
    rho = spearmanr(ra, rb).statistic
    out["kendall_tau"] = float(tau) if tau is not None and math.isfinite(tau) else math.nan
    out["spearman"] = float(rho) if rho is not None and math.isfinite(rho) else math.nan
    return out


def order_ndcg(order: Sequence[str], labels: Mapping[str, int], k: int = NDCG_AT) -> float | None:
    """NDCG@k of a logged order against a posting's labels (None when every label is 0)."""
    listed = np.array([labels.get(c, 0) for c in order[:k]], dtype=np.int64)
    scores = -np.arange(len(listed), dtype=np.float64)  # strictly decreasing: no ties
    return ndcg(listed, scores, k, np.array(list(labels.values()), dtype=np.int64))


@dataclass(frozen=True)
class PairComparison:
    """One champion/challenger pair over its shadow rankings."""

    champion: str
    challenger: str
    rankings: int
    postings: int
    k: int
    agreement: dict[str, Estimate]
    """overlap, kendall_tau, spearman: means over postings with intervals."""
    labelled_postings: int
    """Postings with at least one labelled applicant (the NDCG sample)."""
    ndcg: dict[str, Estimate]
    """champion, challenger, and "challenger - champion" (paired)."""


def _cluster(r: ShadowRanking) -> str:
    return r.posting_id or f"inline:{r.request_id}"


def compare_shadow(
    rankings: Sequence[ShadowRanking], outcomes: Sequence[Outcome], k: int = 10
) -> list[PairComparison]:
    """Agreement and outcome metrics per (champion, challenger) pair of the shadow log."""
    by_pair: dict[tuple[str, str], list[ShadowRanking]] = defaultdict(list)
    for r in rankings:
        by_pair[(r.champion_version, r.challenger_version)].append(r)
    labels_by_posting: dict[str, dict[str, int]] = defaultdict(dict)
    for (pid, cid), label in labels_from_outcomes(outcomes).items():
        labels_by_posting[pid][cid] = label
    out: list[PairComparison] = []
    for (champion, challenger), rows in sorted(by_pair.items()):
        per_posting: dict[str, list[dict[str, float]]] = defaultdict(list)
        ndcgs: dict[str, dict[str, list[float]]] = {
            "champion": defaultdict(list),
            "challenger": defaultdict(list),
        }
        for r in rows:
            per_posting[_cluster(r)].append(agreement(r, k))
            labels = labels_by_posting.get(r.posting_id or "")
            if not labels:
                continue
            for role, order in (("champion", r.champion_ids), ("challenger", r.challenger_ids)):
                value = order_ndcg(order, labels)
                if value is not None:
                    ndcgs[role][_cluster(r)].append(value)
        agree: dict[str, Estimate] = {}
        for name in ("overlap", "kendall_tau", "spearman"):
            values = []
            for found in per_posting.values():
                vals = [f[name] for f in found if not math.isnan(f.get(name, math.nan))]
                if vals:
                    values.append(float(np.mean(vals)))
            agree[name] = bootstrap(values)
        metrics = {
            role: PostingMetrics.collect(
                (pid, {"ndcg@10": float(np.mean(v))}) for pid, v in sorted(ndcgs[role].items())
            )
            for role in ndcgs
        }
        out.append(
            PairComparison(
                champion=champion,
                challenger=challenger,
                rankings=len(rows),
                postings=len(per_posting),
                k=k,
                agreement=agree,
                labelled_postings=len(ndcgs["champion"]),
                ndcg={
                    "champion": metrics["champion"].estimate("ndcg@10"),
                    "challenger": metrics["challenger"].estimate("ndcg@10"),
                    "challenger - champion": metrics["challenger"].versus(
                        metrics["champion"], "ndcg@10"
                    ),
                },
            )
        )
    return out
