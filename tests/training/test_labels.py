"""Stage events to graded labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ranker.domain import Outcome, Stage
from training.labels import STAGE_LABEL, labels_from_outcomes

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _events(cid: str, *stages: Stage) -> list[Outcome]:
    return [Outcome("p1", cid, s, T0 + timedelta(days=i)) for i, s in enumerate(stages)]


def test_stage_mapping_is_graded() -> None:
    assert STAGE_LABEL == {
        Stage.APPLIED: 0,
        Stage.REJECTED: 0,
        Stage.SCREENED: 1,
        Stage.INTERVIEWED: 2,
        Stage.OFFERED: 3,
        Stage.HIRED: 4,
    }


def test_highest_stage_wins_and_rejection_does_not_lower_it() -> None:
    events = (
        _events("applied", Stage.APPLIED)
        + _events("door", Stage.APPLIED, Stage.REJECTED)
        + _events("only-rejected", Stage.REJECTED)
        + _events("screened", Stage.APPLIED, Stage.SCREENED, Stage.REJECTED)
        + _events("interviewed", Stage.APPLIED, Stage.SCREENED, Stage.INTERVIEWED, Stage.REJECTED)
        + _events(
            "offered",
            Stage.APPLIED,
            Stage.SCREENED,
            Stage.INTERVIEWED,
            Stage.OFFERED,
            Stage.REJECTED,
        )
        + _events(
            "hired", Stage.APPLIED, Stage.SCREENED, Stage.INTERVIEWED, Stage.OFFERED, Stage.HIRED
        )
    )
    labels = labels_from_outcomes(reversed(events))  # order of events does not matter
    assert {cid: v for (_, cid), v in labels.items()} == {
        "applied": 0,
        "door": 0,
        "only-rejected": 0,
        "screened": 1,
        "interviewed": 2,
        "offered": 3,
        "hired": 4,
    }


def test_cutoff_hides_later_events_and_naive_times_are_utc() -> None:
    events = _events("c1", Stage.APPLIED, Stage.SCREENED, Stage.INTERVIEWED)
    assert labels_from_outcomes(events, before=T0 + timedelta(days=2)) == {("p1", "c1"): 1}
    assert labels_from_outcomes(events, before=T0) == {}
    naive = [Outcome("p1", "c2", Stage.SCREENED, datetime(2025, 1, 1, 12))]
    assert labels_from_outcomes(naive, before=T0 + timedelta(hours=12)) == {}
    assert labels_from_outcomes(naive, before=T0 + timedelta(hours=13)) == {("p1", "c2"): 1}
