"""Learning-to-rank datasets from stored rows: a time split by posting, labels, feature matrices.

One query group per posting: its applicants, with graded labels (`training.labels`) and the
features of `ranker.features` (the same code serving runs), built as serving would build them
for the posting: against the reference set serving would retrieve for it from the whole pool, and
with the pool's BM25 statistics (`training.pool.Pool`). Postings are split by `created_at`:
the oldest train, the next validate (early stopping), the newest test. Each split only sees the
stage events that happened before the next split starts, so no posting and no outcome crosses a
split boundary.

Point in time: a (posting, candidate) row is built from the candidate's record as it was when
the candidate applied to that posting (the time of the pair's `applied` event, or of its earliest
event when the ATS sent no `applied`), not as it is now: a CV rewritten after a hire must not
teach the model that the rewritten CV was what got hired. The store keeps every earlier version
of a record (`SqliteStore.candidate_versions`); `candidates_as_of` picks, per pair, the version in
force at that time: the oldest version whose span had not ended by then, else the current
record. An event older than every stored version (a history loaded after the fact) gets the
oldest version, the record as it was first stored.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from ranker.domain import Candidate, Outcome, Posting, Stage, to_plain
from ranker.errors import InvalidInput
from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.prepared import PreparedCandidate, PreparedPosting, prepare_candidate, prepare_posting
from training.labels import as_utc, labels_from_outcomes
from training.pool import Pool

SPLITS = ("train", "valid", "test")


class CandidateLike(Protocol):
    """A candidate with its vectors, e.g. `ranker.rows.CandidateRow`."""

    @property
    def candidate(self) -> Candidate: ...
    @property
    def doc_vector(self) -> np.ndarray: ...
    @property
    def chunk_vectors(self) -> np.ndarray: ...


class PostingLike(Protocol):
    """A posting with its vector, e.g. `ranker.rows.PostingRow`."""

    @property
    def posting(self) -> Posting: ...
    @property
    def vector(self) -> np.ndarray: ...


@dataclass(frozen=True)
class TimeSplit:
    """Which postings train, validate and test, and the dates between them."""

    train: tuple[str, ...]
    valid: tuple[str, ...]
    test: tuple[str, ...]
    valid_start: datetime
    """Creation time of the first validation posting; train sees only events before it."""
    test_start: datetime
    """Creation time of the first test posting; validation sees only events before it."""
    first: datetime
    last: datetime

    def postings(self, name: str) -> tuple[str, ...]:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]

    def cutoff(self, name: str) -> datetime | None:
        """Events at or after this time are invisible to the split (None: all are visible)."""
        return {"train": self.valid_start, "valid": self.test_start, "test": None}[name]

    def as_dict(self) -> dict[str, object]:
        return {
            "first_posting": self.first.isoformat(),
            "valid_start": self.valid_start.isoformat(),
            "test_start": self.test_start.isoformat(),
            "last_posting": self.last.isoformat(),
            "postings": {
                "train": len(self.train),
                "valid": len(self.valid),
                "test": len(self.test),
            },
        }


def posting_times(postings: Iterable[Posting], outcomes: Iterable[Outcome]) -> dict[str, datetime]:
    """When each posting opened: `created_at`, else its first stage event (ATS exports omit it)."""
    first: dict[str, datetime] = {}
    for o in outcomes:
        t = as_utc(o.at)
        if o.posting_id not in first or t < first[o.posting_id]:
            first[o.posting_id] = t
    out: dict[str, datetime] = {}
    for p in postings:
        if p.created_at is not None:
            out[p.id] = as_utc(p.created_at)
        elif p.id in first:
            out[p.id] = first[p.id]
    return out


def time_split(
    times: Mapping[str, datetime],
    fractions: tuple[float, float] = (0.7, 0.15),
    *,
    at: tuple[datetime, datetime] | None = None,
) -> TimeSplit:
    """Postings split by creation time: train before `valid_start`, test from `test_start` on.

    The boundaries are `at` (valid_start, test_start) when given, e.g. re-applied from a model
    card so newer postings join the test part; otherwise chosen so the oldest `fractions[0]` of
    postings train, the next `fractions[1]` validate and the rest test.
    """
    if not times:
        raise InvalidInput("no posting has a creation time or an outcome; nothing to split")
    valid_start, test_start = (
        (as_utc(at[0]), as_utc(at[1])) if at is not None else _boundaries(times, fractions)
    )
    ordered = sorted(times, key=lambda pid: (times[pid], pid))
    return TimeSplit(
        train=tuple(p for p in ordered if times[p] < valid_start),
        valid=tuple(p for p in ordered if valid_start <= times[p] < test_start),
        test=tuple(p for p in ordered if times[p] >= test_start),
        valid_start=valid_start,
        test_start=test_start,
        first=times[ordered[0]],
        last=times[ordered[-1]],
    )


def _boundaries(
    times: Mapping[str, datetime], fractions: tuple[float, float]
) -> tuple[datetime, datetime]:
    """(valid_start, test_start) giving each part about its fraction of postings, none empty."""
    if len(times) < 3:
        raise InvalidInput(
            f"a time split needs at least 3 postings with outcomes, got {len(times)}; "
            "record more outcomes (`ranker ingest` or RecordOutcomes) and train again"
        )
    # Postings created at the same instant stay together, so split between distinct times.
    instants = sorted(set(times.values()))
    if len(instants) < 3:
        raise InvalidInput(
            "postings share creation times so a time split leaves a part empty; "
            "add postings with distinct created_at"
        )
    per_instant = Counter(times.values())
    counts = np.cumsum([per_instant[i] for i in instants])
    n = len(times)
    # Index of the first instant of validation and of test: at least one instant per part.
    v = int(np.searchsorted(counts, round(n * fractions[0]), side="left")) + 1
    v = min(max(v, 1), len(instants) - 2)
    t = int(np.searchsorted(counts, round(n * (fractions[0] + fractions[1])), side="left")) + 1
    t = min(max(t, v + 1), len(instants) - 1)
    return instants[v], instants[t]


def split_postings(
    postings: Mapping[str, PreparedPosting], outcomes: Sequence[Outcome]
) -> TimeSplit:
    """The default time split of the postings that have outcomes."""
    labelled = {o.posting_id for o in outcomes}
    return time_split(
        posting_times((postings[pid].posting for pid in postings if pid in labelled), outcomes)
    )


def training_candidates(
    candidates: Mapping[str, PreparedCandidate], outcomes: Iterable[Outcome], split: TimeSplit
) -> list[PreparedCandidate]:
    """Candidates who applied to a training posting before validation starts (sorted by id):
    training needs some (the BM25 lexicon is the whole pool's, as serving's live one is)."""
    train = set(split.train)
    ids = {
        o.candidate_id
        for o in outcomes
        if o.posting_id in train and as_utc(o.at) < split.valid_start
    }
    return [candidates[cid] for cid in sorted(ids) if cid in candidates]


@dataclass(frozen=True)
class RankingSet:
    """Feature rows of one split, grouped by posting (rows of a group are contiguous)."""

    x: np.ndarray
    """(n, len(FEATURE_NAMES)) float32."""
    y: np.ndarray
    """(n,) int labels."""
    group: np.ndarray
    """Rows per posting, in order."""
    posting_ids: tuple[str, ...]
    candidate_ids: tuple[str, ...]

    @property
    def n_queries(self) -> int:
        return len(self.group)

    def queries(self) -> Iterable[tuple[str, slice]]:
        """(posting id, row slice) per query."""
        start = 0
        for pid, size in zip(self.posting_ids, self.group, strict=True):
            yield pid, slice(start, start + int(size))
            start += int(size)


def build_set(
    builder: FeatureBuilder,
    postings: Sequence[PreparedPosting],
    candidates: Mapping[str, PreparedCandidate],
    labels: Mapping[tuple[str, str], int],
    pool: Pool,
    retrieve_n: int,
    as_of: Mapping[tuple[str, str], PreparedCandidate] | None = None,
) -> RankingSet:
    """Features and labels of the labelled applicants of `postings` (unknown candidates skipped).

    Each row is the one serving would build for the applicant when retrieved: relative to the
    `retrieve_n` candidates `pool` retrieves for the posting, BM25 on the pool's lexicon.
    `as_of`: the candidate of a (posting id, candidate id) pair as it was when they applied
    (`candidates_as_of`), where that differs from `candidates` (the current records).
    """
    as_of = as_of or {}
    by_posting: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (pid, cid), label in labels.items():
        if cid in candidates:
            by_posting[pid].append((cid, label))
    xs: list[np.ndarray] = []
    ys: list[int] = []
    group: list[int] = []
    pids: list[str] = []
    cids: list[str] = []
    for p in postings:
        pairs = sorted(by_posting.get(p.id, []))
        if len(pairs) < 2:
            continue  # one applicant ranks nothing
        reference = pool.reference(builder, p, retrieve_n)
        rows = [as_of.get((p.id, cid), candidates[cid]) for cid, _ in pairs]
        xs.append(builder.build(p, rows, reference, lexicon=pool.lexicon))
        ys += [label for _, label in pairs]
        group.append(len(pairs))
        pids.append(p.id)
        cids += [cid for cid, _ in pairs]
    width = len(FEATURE_NAMES)
    return RankingSet(
        x=np.concatenate(xs) if xs else np.zeros((0, width), dtype=np.float32),
        y=np.asarray(ys, dtype=np.int32),
        group=np.asarray(group, dtype=np.int32),
        posting_ids=tuple(pids),
        candidate_ids=tuple(cids),
    )


@dataclass(frozen=True)
class Datasets:
    """Train, validation and test sets, and the split that made them."""

    split: TimeSplit
    sets: dict[str, RankingSet]


def prepare_all(
    candidates: Iterable[CandidateLike], postings: Iterable[PostingLike]
) -> tuple[dict[str, PreparedCandidate], dict[str, PreparedPosting]]:
    """Prepared candidates and postings by id."""
    pc = {
        r.candidate.id: prepare_candidate(r.candidate, r.doc_vector, r.chunk_vectors)
        for r in candidates
    }
    pp = {r.posting.id: prepare_posting(r.posting, r.vector) for r in postings}
    return pc, pp


class CandidateVersionLike(CandidateLike, Protocol):
    """An earlier version of a candidate, e.g. `ranker.rows.CandidateVersion`."""

    @property
    def valid_until(self) -> datetime: ...


def applied_at(outcomes: Iterable[Outcome]) -> dict[tuple[str, str], datetime]:
    """When each (posting, candidate) pair applied: its first `applied` event, else its first event."""
    applied: dict[tuple[str, str], datetime] = {}
    first: dict[tuple[str, str], datetime] = {}
    for o in outcomes:
        key, t = (o.posting_id, o.candidate_id), as_utc(o.at)
        if key not in first or t < first[key]:
            first[key] = t
        if o.stage is Stage.APPLIED and (key not in applied or t < applied[key]):
            applied[key] = t
    return first | applied


def candidates_as_of(
    versions: Iterable[CandidateVersionLike], outcomes: Iterable[Outcome]
) -> dict[tuple[str, str], PreparedCandidate]:
    """Per (posting id, candidate id) pair, the earlier version in force when they applied.

    Pairs whose candidate was not edited since are absent: their row uses the current record.
    """
    by_candidate: dict[str, list[CandidateVersionLike]] = defaultdict(list)
    for v in versions:
        by_candidate[v.candidate.id].append(v)
    prepared: dict[int, PreparedCandidate] = {}
    out: dict[tuple[str, str], PreparedCandidate] = {}
    for (pid, cid), t in applied_at(outcomes).items():
        spans = sorted(by_candidate.get(cid, ()), key=lambda v: as_utc(v.valid_until))
        chosen = next((v for v in spans if as_utc(v.valid_until) > t), None)
        if chosen is None:
            continue  # the current record was already in force
        if id(chosen) not in prepared:
            prepared[id(chosen)] = prepare_candidate(
                chosen.candidate, chosen.doc_vector, chosen.chunk_vectors
            )
        out[(pid, cid)] = prepared[id(chosen)]
    return out


def make_datasets(
    builder: FeatureBuilder,
    candidates: Mapping[str, PreparedCandidate],
    postings: Mapping[str, PreparedPosting],
    outcomes: Sequence[Outcome],
    split: TimeSplit | None = None,
    *,
    pool: Pool,
    retrieve_n: int,
    as_of: Mapping[tuple[str, str], PreparedCandidate] | None = None,
) -> Datasets:
    """The time split (unless given) and the three ranking sets (rows and `as_of`: `build_set`)."""
    if split is None:
        split = split_postings(postings, outcomes)
    sets: dict[str, RankingSet] = {}
    for name in SPLITS:
        ids = split.postings(name)
        mine = set(ids)
        labels = labels_from_outcomes(
            (o for o in outcomes if o.posting_id in mine), before=split.cutoff(name)
        )
        sets[name] = build_set(
            builder,
            [postings[pid] for pid in ids],
            candidates,
            labels,
            pool,
            retrieve_n,
            as_of=as_of,
        )
    return Datasets(split=split, sets=sets)


def data_sha256(
    candidates: Iterable[Candidate], postings: Iterable[Posting], outcomes: Iterable[Outcome]
) -> str:
    """sha256 of the training records (vectors excluded: the encoder derives them from the text)."""
    h = hashlib.sha256()
    for kind, records in (
        ("candidates", sorted((to_plain(c) for c in candidates), key=lambda r: r["id"])),
        ("postings", sorted((to_plain(p) for p in postings), key=lambda r: r["id"])),
        (
            "outcomes",
            sorted(
                (to_plain(o) for o in outcomes),
                key=lambda r: (r["posting_id"], r["candidate_id"], r["stage"], r["at"]),
            ),
        ),
    ):
        h.update(kind.encode())
        for r in records:
            h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()
