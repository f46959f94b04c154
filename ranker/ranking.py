"""One ranking request's own work: its records, score order, explanations, logged decision.

Nothing here touches shared state: the pipeline retrieves under its lock, then hands the
retrieved candidates to these functions, which run without it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property

import numpy as np

from ranker.api import RankedCandidate, RankQuery, RankResult
from ranker.domain import Posting
from ranker.explain import Explanation
from ranker.features import ReferenceStats
from ranker.lexicon import LexiconView
from ranker.model_slot import ServedModel
from ranker.prepared import PreparedCandidate, PreparedPosting, ids_of
from ranker.rows import Decision, ScoredCandidates


@dataclass(frozen=True)
class RankRequest:
    """One ranking request once its sizes, model and posting are settled."""

    query: RankQuery
    top_k: int
    retrieve_n: int
    served: ServedModel
    posting: PreparedPosting
    inline: bool
    """True when the posting came inline (encoded for this request, not stored)."""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @cached_property
    def posting_hash(self) -> str:
        return posting_hash(self.posting.posting)


@dataclass(frozen=True)
class Retrieved:
    """The candidates a search returned, in search order, with what the search saw."""

    cands: Sequence[PreparedCandidate]
    """Made objects one at a time, on demand (`ranker.retrieved.RetrievedCandidates`): read
    `ids` for the ids."""
    fids: np.ndarray
    sims: np.ndarray
    eligible: int
    """Candidates passing the filters."""
    erasures_seen: int
    """The pipeline's erasure count at the search: a later one may have erased a result."""
    lexicon: LexiconView
    """The live pool's BM25 statistics of the posting's terms at the search."""
    search_ms: float = 0.0
    """Of the retrieval, the vector search's own time (the rest: the filter's pass and the
    retrieved candidates read back from the catalog)."""

    @cached_property
    def ids(self) -> list[str]:
        return ids_of(self.cands)


@dataclass(frozen=True)
class Scored:
    """Features and scores of the retrieved candidates; `ranked` orders their rows, best first."""

    x: np.ndarray
    scores: np.ndarray
    ranked: np.ndarray
    reference: ReferenceStats
    """The retrieved set's statistics the relative feature columns were computed against."""
    rerank: dict[str, object] | None = None
    """What an opt-in fair re-ranking did to `ranked` (`ranker.fair_serving`), logged with the
    decision; None when none ran."""


class Stopwatch:
    """Milliseconds per ranking stage, each measured from the end of the previous one."""

    def __init__(self) -> None:
        self._start = self._last = time.perf_counter()
        self._ms: dict[str, float] = {}
        self.ran: dict[str, float] = {}
        """The stages that did work, for the latency metrics."""

    def lap(self, stage: str, *, ran: bool = True) -> None:
        """End `stage`; one that did not run (`ran` False) is reported as 0 ms."""
        now = time.perf_counter()
        self._ms[stage] = (now - self._last) * 1000 if ran else 0.0
        if ran:
            self.ran[stage] = self._ms[stage]
        self._last = now

    def part(self, stage: str, ms: float) -> None:
        """Report a part of a stage lapped already (not added to the total)."""
        self._ms[stage] = ms

    def timings(self) -> dict[str, float]:
        """Every stage lapped and the total so far."""
        return self._ms | {"total": (time.perf_counter() - self._start) * 1000}


def posting_hash(p: Posting) -> str:
    """Identifies a posting's content (not its id), so inline postings are traceable in the log."""
    d = asdict(p)
    d.pop("id")
    d.pop("created_at")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()


def build_features(req: RankRequest, hits: Retrieved) -> tuple[np.ndarray, ReferenceStats]:
    """The retrieved candidates' features: they are the posting's reference set, and BM25 reads
    the live pool's statistics."""
    return req.served.bundle.builder.build_with_reference(
        req.posting, hits.cands, lexicon=hits.lexicon
    )


def score_and_order(
    req: RankRequest, hits: Retrieved, x: np.ndarray, reference: ReferenceStats
) -> Scored:
    """Scores of the retrieved candidates' features `x`, and their rows best first."""
    scorer = req.served.bundle.scorer
    scores = scorer.score(x) if len(hits.cands) else np.zeros(0, dtype=np.float32)
    # Best score first; ties go to the closer vector, then the older candidate.
    return Scored(x, scores, np.lexsort((hits.fids, -hits.sims, -scores)), reference)


def explain_rows(
    req: RankRequest, hits: Retrieved, x: np.ndarray, rows: np.ndarray
) -> dict[int, Explanation]:
    """Explanations of the retrieved candidates at `rows`, keyed by row."""
    rows_list = [int(i) for i in rows]
    # Every retrieved row is the reference: percentiles are among this posting's candidates.
    found = req.served.explainer.explain(
        req.posting.posting, [hits.cands[i] for i in rows_list], x[rows], reference=x
    )
    return dict(zip(rows_list, found, strict=True))


def decision_of(
    req: RankRequest,
    hits: Retrieved,
    scored: Scored,
    order: np.ndarray,
    scored_rows: np.ndarray | None = None,
) -> Decision:
    """The decision log's record of serving the rows `order`: ids, scores, exact features, and
    the score of every scored row (`scored_rows`, default all: the audit's scoring rate)."""
    bundle = req.served.bundle
    rows = np.arange(len(hits.cands)) if scored_rows is None else scored_rows
    params: dict[str, object] = {
        "retrieve_n": req.retrieve_n,
        "filters": asdict(req.query.filters),
        "explain": req.query.explain,
        "eligible": hits.eligible,
        "retrieved": len(hits.cands),
        # What the logged rows were computed against, so each can be rebuilt and checked.
        "reference": scored.reference.as_dict(),
        "lexicon": {"n_docs": hits.lexicon.n_docs, "avgdl": hits.lexicon.avgdl},
    }
    if scored.rerank is not None:
        params["fair_rerank"] = scored.rerank
    return Decision(
        request_id=req.request_id,
        at=datetime.now(UTC),
        model_version=bundle.version,
        posting_id=None if req.inline else req.posting.id,
        posting_hash=req.posting_hash,
        top_k=req.top_k,
        feature_names=tuple(bundle.feature_names),
        candidate_ids=tuple(hits.ids[i] for i in order.tolist()),
        scores=scored.scores[order].astype(np.float32),
        features=scored.x[order],
        params=params,
        scored=ScoredCandidates(
            faiss_ids=np.asarray(hits.fids[rows], dtype=np.int64),
            candidate_ids=tuple(hits.ids[i] for i in rows.tolist()),
            scores=np.asarray(scored.scores[rows], dtype=np.float32),
        ),
    )


def result_of(
    req: RankRequest,
    hits: Retrieved,
    scored: Scored,
    order: np.ndarray,
    explained: dict[int, Explanation],
    timings: dict[str, float],
) -> RankResult:
    """The ranking as served: the rows `order`, ranked from 1."""
    results = tuple(
        RankedCandidate(
            candidate_id=hits.ids[i],
            rank=r,
            score=float(scored.scores[i]),
            similarity=float(hits.sims[i]),
            explanation=explained.get(i),
        )
        for r, i in enumerate(order.tolist(), 1)
    )
    return RankResult(
        request_id=req.request_id,
        model_version=req.served.bundle.version,
        posting_id=result_posting_id(req),
        results=results,
        eligible=hits.eligible,
        retrieved=len(hits.cands),
        timings_ms=timings,
    )


def result_posting_id(req: RankRequest) -> str:
    """The posting's id as given; "inline-<hash>" only for an inline posting sent without one."""
    return f"inline-{req.posting_hash[:16]}" if req.query.unnamed_posting else req.posting.id
