"""Graded relevance labels from hiring stage events.

| highest stage reached           | label |
|---------------------------------|-------|
| applied (or rejected at once)   | 0     |
| screened                        | 1     |
| interviewed                     | 2     |
| offered                         | 3     |
| hired                           | 4     |

A rejection never lowers a label: a candidate rejected after an interview keeps 2, because the
ranker's job is to surface people worth interviewing, and a later "no" after an interview is still
a better match than a "no" at the door. A pair whose only event is `rejected` gets 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from ranker.domain import Outcome, Stage

STAGE_LABEL: dict[Stage, int] = {
    Stage.APPLIED: 0,
    Stage.REJECTED: 0,
    Stage.SCREENED: 1,
    Stage.INTERVIEWED: 2,
    Stage.OFFERED: 3,
    Stage.HIRED: 4,
}
"""Label of each stage; a pair's label is the highest over its events."""

RELEVANT_LABEL = 2
"""Labels at or above this (interviewed or further) count as relevant for MRR and recall@k."""


def as_utc(t: datetime) -> datetime:
    """`t` as an aware UTC datetime; exports mix aware and naive stamps, naive ones are UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def labels_from_outcomes(
    outcomes: Iterable[Outcome], before: datetime | None = None
) -> dict[tuple[str, str], int]:
    """{(posting_id, candidate_id): label} from the events strictly before `before` (all if None)."""
    cutoff = as_utc(before) if before is not None else None
    labels: dict[tuple[str, str], int] = {}
    for o in outcomes:
        if cutoff is not None and as_utc(o.at) >= cutoff:
            continue
        key = (o.posting_id, o.candidate_id)
        labels[key] = max(labels.get(key, 0), STAGE_LABEL[o.stage])
    return labels
