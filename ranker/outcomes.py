"""The per-item checks of RecordOutcomes: time, erased candidate, known posting and candidate."""

from __future__ import annotations

from collections.abc import Container, Sequence
from datetime import UTC, datetime, timedelta

from ranker.api import ItemResult, Rejected
from ranker.domain import Outcome
from ranker.errors import ErasedId, InvalidInput, NotFound, RankerError, shown_id
from ranker.tombstones import erased_message

MAX_OUTCOME_SKEW = timedelta(days=1)
"""How far in the future an outcome's time may lie (clock skew between the ATS and us)."""


def screen_outcomes(
    items: Sequence[Outcome | Rejected],
    postings: Container[str],
    candidates: Container[str],
    erased: Container[str],
) -> tuple[list[ItemResult], list[Outcome]]:
    """A result per item (an error for each refused one) and the outcomes to store."""
    results: list[ItemResult] = []
    good: list[Outcome] = []
    latest = datetime.now(UTC) + MAX_OUTCOME_SKEW
    for i, item in enumerate(items):
        if isinstance(item, Rejected):
            results.append(ItemResult(i, item.id, item.error))
            continue
        err: RankerError | None
        if item.at > latest:
            err = InvalidInput(
                f"outcome time {item.at.isoformat()} is more than a day in the future; "
                "send when the stage was reached (UTC), or leave it unset for now"
            )
        elif item.candidate_id in erased:
            err = ErasedId(erased_message(item.candidate_id))
        elif item.posting_id not in postings:
            err = NotFound(f"posting {shown_id(item.posting_id)} is not stored; upsert it first")
        elif item.candidate_id not in candidates:
            err = NotFound(
                f"candidate {shown_id(item.candidate_id)} is not stored (unknown or erased); "
                "upsert it first"
            )
        else:
            err = None
            good.append(item)
        results.append(ItemResult(i, f"{item.posting_id}/{item.candidate_id}", err))
    return results, good
