"""The store's row types: what it takes and returns besides the domain records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ranker.domain import Candidate, Posting
from ranker.errors import InvalidInput


@dataclass(frozen=True)
class CandidateRow:
    """A candidate with its document vector and per-chunk vectors."""

    candidate: Candidate
    doc_vector: np.ndarray
    chunk_vectors: np.ndarray


@dataclass(frozen=True)
class CandidateVersion:
    """An earlier version of a candidate: the record and vectors in force over a time span.

    Kept so training builds a (posting, candidate) row from the record as it was when the
    candidate applied, not as it was edited later.
    """

    candidate: Candidate
    doc_vector: np.ndarray
    chunk_vectors: np.ndarray
    valid_from: datetime
    """When the store received this version."""
    valid_until: datetime
    """When a changed record replaced it."""


@dataclass(frozen=True)
class PostingRow:
    """A posting with the vector of its text, computed once when it was stored."""

    posting: Posting
    vector: np.ndarray


@dataclass(frozen=True)
class ScoredCandidates:
    """Every candidate one ranking scored (its retrieved set) and its score, in any order.

    The decision log keeps features only for the returned top k; the bias audit's scoring rate
    needs every score, so these are kept too, compactly (`ranker.decision_scores`).
    """

    faiss_ids: np.ndarray
    """(n,) int64: what the store keys them by (never reused, so erasure finds them)."""
    candidate_ids: tuple[str, ...]
    scores: np.ndarray
    """(n,) float32."""

    def __post_init__(self) -> None:
        if not len(self.faiss_ids) == len(self.candidate_ids) == len(self.scores):
            raise InvalidInput(
                f"{len(self.faiss_ids)} faiss ids, {len(self.candidate_ids)} candidate ids and "
                f"{len(self.scores)} scores; give one of each per scored candidate"
            )


@dataclass(frozen=True)
class Decision:
    """One logged ranking: what was served, by which model, from which exact features."""

    request_id: str
    at: datetime
    model_version: str
    posting_id: str | None
    posting_hash: str
    top_k: int
    feature_names: tuple[str, ...]
    candidate_ids: tuple[str, ...]
    scores: np.ndarray
    features: np.ndarray
    params: dict[str, object]
    scored: ScoredCandidates | None = None
    """Every scored candidate's score; None when not logged (or logged by an older version).
    Read back, it holds the candidates still stored: an erased one is gone from it."""


@dataclass(frozen=True)
class ErasureReceipt:
    """What an erasure removed: when, which ids were found, and how many rows per table."""

    at: datetime
    erased: tuple[str, ...]
    not_found: tuple[str, ...]
    rows: dict[str, int]
    receipt_ids: tuple[int, ...]


@dataclass(frozen=True)
class ShadowRanking:
    """One ranking scored in shadow: the champion's served order and the challenger's order of
    the same retrieved candidates, each cut to its first `Settings.shadow_depth`."""

    request_id: str
    at: datetime
    posting_id: str | None
    """None for an inline posting."""
    champion_version: str
    challenger_version: str
    top_k: int
    """How many the champion returned to the caller."""
    retrieved: int
    champion_ids: tuple[str, ...]
    challenger_ids: tuple[str, ...]


@dataclass(frozen=True)
class Change:
    """One entry of the store's change feed (`Store.changes_since`), written with its write.

    `kind` is `candidate`, `posting`, `outcome` or `erasure`; `op` is `upsert` or `delete`.
    `key` is the posting's id for postings and outcomes, and the candidate's faiss id (decimal)
    for candidates and erasures: never a candidate's own id, so the feed keeps nothing an
    erasure would have to remove. A follower maps the faiss id to the slot it holds in memory
    (`Store.get_candidates_by_faiss_ids` reads an upserted one).
    """

    seq: int
    at: datetime
    kind: str
    key: str
    op: str
