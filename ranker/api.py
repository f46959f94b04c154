"""The pipeline's requests and results: plain values that know nothing of gRPC."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from ranker.domain import Candidate, Posting, years_in_range
from ranker.errors import Cancelled, DeadlineExceeded, InvalidInput, RankerError
from ranker.text import phrase_key

if TYPE_CHECKING:
    from ranker.explain import Explanation
    from ranker.reasons import Separation
    from ranker.rows import ErasureReceipt

_Item = TypeVar("_Item", Candidate, Posting)


@dataclass(frozen=True)
class Deadline:
    """The caller's time budget as a `time.monotonic()` instant (None = no deadline), and the
    flag the transport sets when the caller gives up (cancels, disconnects)."""

    at: float | None = None
    cancelled: threading.Event | None = None

    @classmethod
    def after(cls, seconds: float | None, cancelled: threading.Event | None = None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds, cancelled)

    def check(self, before: str) -> None:
        """Raise DeadlineExceeded (or Cancelled) when the budget is spent or the caller has
        gone, naming the step not started."""
        if self.cancelled is not None and self.cancelled.is_set():
            raise Cancelled(f"the caller gave up before {before}; nothing more was done")
        if self.at is not None and time.monotonic() >= self.at:
            raise DeadlineExceeded(
                f"the deadline passed before {before}; retry with a longer deadline"
            )


NO_DEADLINE = Deadline()


@dataclass(frozen=True)
class RankFilters:
    """Hard filters; a candidate failing one is never retrieved (they run inside the search)."""

    locations: tuple[str, ...] = ()
    include_remote: bool = False
    include_relocating: bool = False
    remote_only: bool = False
    min_years: float | None = None
    must_have_skills: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("locations", "must_have_skills"):
            values = tuple(getattr(self, name))
            if any(not isinstance(v, str) or not v.strip() for v in values):
                raise InvalidInput(f"filters.{name} must hold non-empty strings")
            # The features' comparison key, so filters agree with the reasons and features
            # ("Zurich" matches "Zürich", "machine-learning" matches "Machine Learning").
            normalised = (phrase_key(v) for v in values)
            object.__setattr__(self, name, tuple(dict.fromkeys(normalised)))
        if self.min_years is not None:
            object.__setattr__(
                self, "min_years", years_in_range(self.min_years, "", "filters.min_years")
            )

    @property
    def location_clause(self) -> bool:
        """True when the OR of locations / remote / relocating applies (any of them is set).

        `include_remote` or `include_relocating` without locations keeps only the candidates
        open to remote work or relocation: the clause is the union of what is asked for.
        """
        return bool(self.locations) or self.include_remote or self.include_relocating

    @property
    def empty(self) -> bool:
        return not (self.location_clause or self.remote_only or self.must_have_skills) and (
            self.min_years is None or self.min_years <= 0
        )


@dataclass(frozen=True)
class RankQuery:
    """One ranking request: a stored posting id or an inline posting, and how to rank."""

    posting_id: str | None = None
    posting: Posting | None = None
    top_k: int | None = None
    retrieve_n: int | None = None
    filters: RankFilters = field(default_factory=RankFilters)
    explain: bool = False
    unnamed_posting: bool = False
    """The inline posting came without an id: the result names it "inline-<hash of its text>"."""


@dataclass(frozen=True)
class RankedCandidate:
    """One result of a ranking."""

    candidate_id: str
    rank: int
    score: float
    similarity: float
    explanation: Explanation | None = None


@dataclass(frozen=True)
class RankResult:
    """A ranking as served: every result scored by `model_version`."""

    request_id: str
    model_version: str
    posting_id: str
    results: tuple[RankedCandidate, ...]
    eligible: int
    retrieved: int
    timings_ms: Mapping[str, float]
    """Per stage: encode, retrieve, features, score, explain, total."""


@dataclass(frozen=True)
class CompareQuery:
    """Why is one candidate above another for a posting: `query` names the posting (by id or
    inline); its filters and sizes are not used, the posting's own candidates are the pool."""

    candidate_a: str
    candidate_b: str
    query: RankQuery

    def __post_init__(self) -> None:
        for name in ("candidate_a", "candidate_b"):
            if not getattr(self, name).strip():
                raise InvalidInput(f"{name} is empty; send a stored candidate's id")
        if self.candidate_a == self.candidate_b:
            raise InvalidInput("candidate_a and candidate_b are the same; send two candidates")


@dataclass(frozen=True)
class ComparedCandidate:
    """One side of a comparison: its score, its rank among the posting's retrieved candidates
    (None when retrieval did not reach it), and its explanation."""

    candidate_id: str
    score: float
    rank: int | None
    explanation: Explanation


@dataclass(frozen=True)
class ComparisonResult:
    """Two candidates scored by one model version for one posting, and what separates them."""

    request_id: str
    model_version: str
    posting_id: str
    a: ComparedCandidate
    b: ComparedCandidate
    summary: str
    separating: tuple[Separation, ...]
    retrieved: int


@dataclass(frozen=True)
class Rejected:
    """An item the transport could not turn into a domain record, and why."""

    id: str
    error: RankerError


@dataclass(frozen=True)
class ItemResult:
    """What happened to one item of a batch call; `error` None means it succeeded."""

    index: int
    id: str
    error: RankerError | None = None
    created: bool = False


@dataclass(frozen=True)
class BatchResult:
    """Per-item results of a batch call, in request order."""

    items: tuple[ItemResult, ...]
    total_candidates: int = 0
    receipt: ErasureReceipt | None = None
    recorded: int = 0
    """RecordOutcomes: events newly stored (repeats of a stored event are OK but not new)."""

    @property
    def succeeded(self) -> int:
        return sum(1 for i in self.items if i.error is None)


@dataclass(frozen=True)
class PostingPage:
    """One page of stored postings, sorted by id."""

    postings: tuple[Posting, ...]
    next_page_token: str
    """Empty on the last page."""


@dataclass(frozen=True)
class ModelInfo:
    """The model version in service."""

    version: str
    feature_names: tuple[str, ...]
    card: Mapping[str, object]
    loaded_at: datetime
    total_candidates: int
    fallback: bool = False
    """True when no trained version is promoted and the fallback ranker ranks."""
    refused_version: str | None = None
    """The version the registry points to that the service refused to load (still serving
    `version`), with `refused_error` saying why."""
    refused_error: str | None = None
    challenger_version: str | None = None
    """The registry's challenger, scored in shadow."""
    refused_challenger: str | None = None
    refused_challenger_error: str | None = None
    shadow_scored: int = 0
    """Rankings the challenger scored in shadow since the service started."""
    shadow_dropped: int = 0
    """Rankings not scored in shadow because its queue was full."""


# ---------------------------------------------------------------------------------------------
# Request checks shared by the batch calls


def check_batch_size(n: int, what: str, limit: int) -> None:
    """Refuse a batch of no items or of more than `limit` (Settings.max_batch_items)."""
    if n == 0:
        raise InvalidInput(f"the request holds no {what}; send 1 to {limit}")
    if n > limit:
        raise InvalidInput(
            f"the request holds {n} {what}, more than the limit of {limit}; split it into "
            "smaller batches"
        )


def check_posting_size(p: Posting, limit: int) -> None:
    """Refuse a posting whose text is over `limit` characters (Settings.max_text_chars)."""
    if len(p.title) + len(p.description) > limit:
        raise InvalidInput(
            f"posting {p.id!r} text is longer than {limit} characters; shorten the description"
        )


def split_batch(
    items: Sequence[_Item | Rejected], what: str, *, max_items: int, max_text_chars: int
) -> tuple[list[ItemResult | None], list[tuple[int, _Item]]]:
    """Per-item checks shared by the upserts: parse errors, text size, repeated ids.

    The results hold an error for each item refused here and None for the others, which
    are returned with their index to go on.
    """
    check_batch_size(len(items), what, max_items)
    results: list[ItemResult | None] = [None] * len(items)
    good: list[tuple[int, _Item]] = []
    first_at: dict[str, int] = {}
    limit = max_text_chars
    for i, item in enumerate(items):
        if isinstance(item, Rejected):
            results[i] = ItemResult(i, item.id, item.error)
            continue
        if item.id in first_at:
            results[i] = ItemResult(
                i,
                item.id,
                InvalidInput(
                    f"id {item.id!r} appears more than once in this batch (first at item "
                    f"{first_at[item.id]}); send each id once"
                ),
            )
            continue
        first_at[item.id] = i
        size = (
            len(item.cv_text)
            if isinstance(item, Candidate)
            else len(item.title) + len(item.description)
        )
        if size > limit:
            results[i] = ItemResult(
                i,
                item.id,
                InvalidInput(
                    f"{what[:-1]} {item.id!r} text has {size} characters, more than the "
                    f"limit of {limit}; shorten it"
                ),
            )
            continue
        good.append((i, item))
    return results, good
