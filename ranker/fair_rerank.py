"""Opt-in fairness-aware re-ranking of the top k: DetConstSort (Geyik, Ambler, Kenthapadi, KDD 2019).

"Fairness-Aware Ranking in Search & Recommendation Systems with Application to LinkedIn Talent
Search", Algorithm 3. Given each item's score and category and a target proportion p_c per
category, it returns a top k in which every prefix of length j holds at least floor(j * p_c)
items of category c (as far as the category has items), keeping within those minimums as close
to the score order as the constraints allow: each item is placed when its category's minimum
count rises, then moved up past lower-scored items as long as the item it passes stays within
the position its own minimum demands.

Legal caveat: re-ranking by protected category is itself a decision about protected
characteristics. In the US, the Civil Rights Act of 1991 §106 (42 U.S.C. §2000e-2(l)) makes it
unlawful to adjust the scores of, use different cutoffs for, or otherwise alter the results of
employment-related tests on the basis of race, color, religion, sex, or national origin, and
other jurisdictions restrict positive action too. Whether to enable this is a deployment
decision for the employer and its counsel, not a default: it is off unless explicitly enabled,
reads categories only from the protected table when enabled, and each use is logged per request.
The function below is pure; it neither reads categories nor decides whether it may be used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ranker.errors import InvalidInput


def prefix_minimums(targets: Mapping[str, float], j: int) -> dict[str, int]:
    """The minimum count of each category in a prefix of length j: floor(j * p_c)."""
    # The epsilon keeps 0.3 * 10 from flooring to 2 through floating-point error.
    return {c: int(math.floor(j * p + 1e-9)) for c, p in targets.items()}


def det_const_sort(
    scores: Sequence[float],
    categories: Sequence[str],
    targets: Mapping[str, float],
    k: int,
) -> list[int]:
    """Indices of the re-ranked top k (best first) under DetConstSort.

    `scores[i]` and `categories[i]` describe item i; `targets` maps categories to proportions
    (non-negative, summing to at most 1). A category absent from `targets` has proportion 0: its
    items fill only the places the minimums leave, after the constrained categories run out.
    Ties in score keep the input order. Returns min(k, len(scores)) indices.
    """
    n = len(scores)
    if len(categories) != n:
        raise InvalidInput(f"{n} scores but {len(categories)} categories; send one per item")
    if k < 0:
        raise InvalidInput(f"k must be non-negative, got {k}")
    if any(p < 0 or not math.isfinite(p) for p in targets.values()):
        raise InvalidInput("target proportions must be finite and non-negative")
    if sum(targets.values()) > 1 + 1e-9:
        raise InvalidInput(
            f"target proportions sum to {sum(targets.values()):.4f}; they must sum to at most 1"
        )
    if any(not math.isfinite(s) for s in scores):
        raise InvalidInput("scores must be finite numbers")
    k = min(k, n)
    # Each category's items, best first (stable: equal scores keep the input order).
    queues: dict[str, list[int]] = {}
    for i in sorted(range(n), key=lambda i: -scores[i]):
        queues.setdefault(categories[i], []).append(i)
    taken = dict.fromkeys(queues, 0)
    active = {c: p for c, p in targets.items() if p > 0 and c in queues}

    ranked: list[int] = []
    max_pos: list[int] = []  # 1-based position each placed item must stay at or above
    mins = dict.fromkeys(active, 0)
    j = 0
    # As in the paper, one item past k is placed: it may still move up into the top k.
    while len(ranked) <= k and any(taken[c] < len(queues[c]) for c in active):
        j += 1
        want = prefix_minimums(active, j)
        raised = [c for c in active if want[c] > mins[c] and taken[c] < len(queues[c])]
        for c in sorted(raised, key=lambda c: -scores[queues[c][taken[c]]]):
            item = queues[c][taken[c]]
            taken[c] += 1
            ranked.append(item)
            max_pos.append(j)
            # Move the new item up past lower-scored ones while the one it displaces may go
            # one place down (its 1-based position becomes at + 1) without breaking its bound.
            at = len(ranked) - 1
            while at > 0 and max_pos[at - 1] >= at + 1 and scores[ranked[at - 1]] < scores[item]:
                ranked[at - 1], ranked[at] = ranked[at], ranked[at - 1]
                max_pos[at - 1], max_pos[at] = max_pos[at], max_pos[at - 1]
                at -= 1
        mins = want
    if len(ranked) < k:
        # The constrained categories ran out: fill with the best of what is left, by score.
        placed = set(ranked)
        rest = sorted((i for i in range(n) if i not in placed), key=lambda i: -scores[i])
        ranked += rest[: k - len(ranked)]
    return ranked[:k]
