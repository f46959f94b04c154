"""The served score's blend with retrieval similarity, and how its weight is chosen.

Served score = model score + w * `dense_cosine_z` (the candidate's retrieval similarity relative
to the others retrieved for the posting; `ranker.scorer.BlendedScorer`). The model learns which
text similarity to trust, and how much, from one corpus; on a posting unlike anything it was
trained on (no skills, unseen vocabulary) those trade-offs can order candidates worse than the
retrieval similarity alone. The blend term keeps a floor under that: the further the model's
scores are from separating candidates, the more retrieval order decides.

w is chosen at training time on the *validation* postings (never the test postings, never any
other suite), in the pool view the service runs: retrieve `retrieve_n` from the whole pool, score,
NDCG@10 per posting (`training.metrics.served_metrics`). Of the weights in `BLEND_GRID`, the
largest whose mean validation NDCG@10 is within one standard error of the best weight's (paired
per posting) is taken: the one-standard-error rule, preferring the safer ranker (closer to
retrieval order) among those validation cannot tell apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.prepared import PreparedPosting
from ranker.scorer import BLEND_FEATURE
from training.evaluate import Scorer
from training.labels import RELEVANT_LABEL
from training.metrics import served_metrics
from training.pool import Pool

BLEND_GRID: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
"""Blend weights tried on the validation postings."""
BLEND_RULE = (
    "served score = model score + w * dense_cosine_z; w = the largest of the grid whose mean "
    "validation pool-view NDCG@10 is within one standard error (paired, over the validation "
    "postings) of the best weight's"
)


@dataclass(frozen=True)
class BlendChoice:
    """The chosen weight and the validation evidence behind it."""

    weight: float
    validation_ndcg: dict[float, float]
    """Mean validation pool-view NDCG@10 of each weight tried."""
    postings: int
    """Validation postings the means are over."""

    def as_dict(self) -> dict[str, Any]:
        """The card's `blend` entry (the registry reads `feature` and `weight`)."""
        return {
            "feature": BLEND_FEATURE,
            "weight": self.weight,
            "rule": BLEND_RULE,
            "validation_postings": self.postings,
            "validation_ndcg@10": {str(w): round(v, 6) for w, v in self.validation_ndcg.items()},
        }


def choose_blend(
    scorer: Scorer,
    builder: FeatureBuilder,
    postings: Sequence[PreparedPosting],
    labels: Mapping[tuple[str, str], int],
    pool: Pool,
    retrieve_n: int,
    grid: Sequence[float] = BLEND_GRID,
) -> BlendChoice:
    """The blend weight for `scorer` (the model alone) by the rule of this module's docstring.

    `postings` and `labels` are the validation split's; with no posting to judge on, 0.
    """
    column = FEATURE_NAMES.index(BLEND_FEATURE)
    where = pool.position()
    by_posting: dict[str, dict[str, int]] = {}
    for (pid, cid), label in labels.items():
        if cid in where:
            by_posting.setdefault(pid, {})[cid] = label
    rows: list[list[float]] = []
    for p in postings:
        mine = by_posting.get(p.id)
        if not mine:
            continue
        cands, _ = pool.retrieve(p, retrieve_n)
        x = builder.build(p, cands, lexicon=pool.lexicon)
        model = np.asarray(scorer.score(x), dtype=np.float64)
        term = x[:, column].astype(np.float64)
        y = np.array([mine.get(c.id, 0) for c in cands], dtype=np.int64)
        got = {c.id for c in cands}
        missed = np.array([lab for cid, lab in mine.items() if cid not in got], dtype=np.int64)
        applied = np.array([c.id in mine for c in cands], dtype=bool)
        values = [
            served_metrics(y, model + w * term, missed, applied, RELEVANT_LABEL)["ndcg@10"]
            for w in grid
        ]
        if all(v is not None for v in values):
            rows.append([float(v) for v in values if v is not None])
    if not rows:
        return BlendChoice(0.0, {}, 0)
    ndcg = np.asarray(rows)
    means = ndcg.mean(axis=0)
    best = int(np.argmax(means))
    chosen = best
    for i in range(len(grid)):
        diff = ndcg[:, i] - ndcg[:, best]
        se = float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
        if grid[i] > grid[chosen] and diff.mean() >= -se:
            chosen = i
    return BlendChoice(
        weight=float(grid[chosen]),
        validation_ndcg={float(w): float(m) for w, m in zip(grid, means, strict=True)},
        postings=len(rows),
    )
