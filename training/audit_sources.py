"""The bias audit's inputs read from the store and the registry: protected table, decisions, promotions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from ranker.domain import Outcome
from ranker.errors import InvalidInput
from ranker.registry import POINTER_FILE
from ranker.rows import Decision
from ranker.sql import as_utc
from ranker.store_api import Store
from training.audit import DIMENSIONS, Ranking


def load_protected(
    store: Store, attributes: Sequence[str] = DIMENSIONS
) -> dict[str, dict[str, str]]:
    """{candidate_id: {attribute: value}} from the protected table (audits only)."""
    out: dict[str, dict[str, str]] = {}
    for name in attributes:
        for cid, value in store.protected_attributes(name).items():
            out.setdefault(cid, {})[name] = value
    return out


def promotion_dates(registry_root: Path) -> tuple[str | None, dict[str, str]]:
    """(first promotion of any version, {version: its first promotion}) as ISO times.

    From the registry pointer's event history; (None, {}) when nothing was ever promoted or
    the pointer predates event records.
    """
    path = Path(registry_root) / POINTER_FILE
    if not path.is_file():
        return None, {}
    try:
        events = json.loads(path.read_text(encoding="utf-8")).get("events", [])
    except (json.JSONDecodeError, AttributeError) as e:
        raise InvalidInput(
            f"{path} is not a registry pointer ({e}); fix it or promote a version again: "
            "`ranker models promote VERSION`"
        ) from e
    per_version: dict[str, str] = {}
    for event in events:
        if event.get("action") == "promote" and event.get("version") and event.get("at"):
            per_version.setdefault(str(event["version"]), str(event["at"]))
    first = min(per_version.values(), key=datetime.fromisoformat) if per_version else None
    return first, per_version


def rankings_from_decisions(
    decisions: Sequence[Decision], pool: Sequence[str] | None = None
) -> list[Ranking]:
    """Frame (c): logged decisions as rankings.

    A decision that kept every scored candidate's score (`Decision.scored`, the retrieved set)
    becomes a complete ranking: the returned candidates in served order, then the other scored
    candidates by score, so the scoring rate is available. One logged with the returned
    candidates only (an older log) is marked incomplete, and the scoring rate is then reported
    unavailable. When `pool` is given (the candidates each request chose from: retrieval
    searches the whole store), the candidates not scored count in the selection rate's
    denominator as not selected: the whole pipeline, retrieval included.
    """
    rest = tuple(pool) if pool is not None else ()
    out: list[Ranking] = []
    for d in decisions:
        served = tuple(d.candidate_ids)
        served_scores = tuple(float(s) for s in d.scores)
        if d.scored is None:
            out.append(
                Ranking(
                    cluster=d.posting_id or d.request_id,
                    candidate_ids=served,
                    scores=served_scores,
                    scores_complete=False,
                    unranked=rest,
                )
            )
            continue
        shown = set(served)
        others = sorted(
            (
                (float(s), c)
                for c, s in zip(d.scored.candidate_ids, d.scored.scores, strict=True)
                if c not in shown
            ),
            key=lambda t: -t[0],
        )
        scored_ids = shown | {c for _, c in others}
        out.append(
            Ranking(
                cluster=d.posting_id or d.request_id,
                candidate_ids=served + tuple(c for _, c in others),
                scores=served_scores + tuple(s for s, _ in others),
                scores_complete=True,
                unranked=tuple(c for c in rest if c not in scored_ids),
            )
        )
    return out


def outcomes_in_period(
    outcomes: Sequence[Outcome], since: datetime | None, until: datetime | None
) -> list[Outcome]:
    """The outcomes of the postings whose first event falls in [since, until)."""
    first: dict[str, datetime] = {}
    for o in outcomes:
        t = as_utc(o.at)
        if o.posting_id not in first or t < first[o.posting_id]:
            first[o.posting_id] = t
    keep = {
        p
        for p, t in first.items()
        if (since is None or t >= as_utc(since)) and (until is None or t < as_utc(until))
    }
    return [o for o in outcomes if o.posting_id in keep]
