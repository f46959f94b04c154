"""Reweighing (Kamiran & Calders 2012): training-row weights that make category and label independent.

Each row of category c and label y gets w = P(c) P(y) / P(c, y), estimated by counts:
n_c n_y / (N n_cy). In the weighted data every category has the same label distribution as the
whole, so a model no longer learns "category c is rarely relevant" from the labels, while the
labels themselves stay as recorded. The weights average to 1 over the weighted rows.

How LightGBM's lambdarank uses them (checked in LightGBM 4.x `src/objective/rank_objective.hpp`,
`RankingObjective::GetGradients`): the pairwise lambdas of each query are computed first, then
each row's gradient and hessian are multiplied by that row's weight. Row weights are therefore
honoured, per document (not per pair, not per query: the per-query weight LightGBM derives from
them is used only by the NDCG metric). A relevant row of an under-selected category is pushed up
harder, and an irrelevant one pushed down more softly; pass the weights as
`lgb.Dataset(..., weight=weights)` of the training set only (validation stays unweighted, so
early stopping still measures plain NDCG).

Rows of unknown category keep weight 1 and take no part in the counts: guessing their category
would be worse than leaving them as recorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from ranker.errors import InvalidInput

UNKNOWN = "unknown"


def reweigh(categories: Sequence[str], labels: Sequence[Hashable]) -> np.ndarray:
    """(n,) float64 weights n_c n_y / (N n_cy) per row; rows of category `UNKNOWN` get 1.

    `labels` may be graded (0..4) or binary; each distinct label is its own cell. With graded
    labels and small categories a cell can be tiny and its weight large: binarise the labels
    first (e.g. `label >= RELEVANT_LABEL`) when that happens.
    """
    if len(categories) != len(labels):
        raise InvalidInput(
            f"{len(categories)} categories but {len(labels)} labels; send one of each per row"
        )
    known = [i for i, c in enumerate(categories) if c != UNKNOWN]
    weights = np.ones(len(categories), dtype=np.float64)
    if not known:
        return weights
    n = len(known)
    n_c = Counter(categories[i] for i in known)
    n_y = Counter(labels[i] for i in known)
    n_cy = Counter((categories[i], labels[i]) for i in known)
    for i in known:
        c, y = categories[i], labels[i]
        weights[i] = n_c[c] * n_y[y] / (n * n_cy[(c, y)])
    return weights
