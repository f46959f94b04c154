"""Frame (b) of the bias audit: a model version ranking its held-out postings as served (pool view).

Each held-out posting retrieves `retrieve_n` candidates from every stored candidate (FAISS, the
service's storage setting: `training.pool.Pool`), the version's builder and ONNX scorer score
them, and (when the serving re-ranker is on) `ranker.fair_serving` re-ranks the top k, exactly as
`Rank` does.

Who counts (LL144 counts the individuals the tool assessed):

- **selection rate**: the denominator is the whole stored pool. Retrieval is part of the tool:
  it assesses every stored candidate against the posting and passes over all but `retrieve_n`,
  which is a screen-out as much as a low rerank score is; auditing only the retrieved set would
  hide a disparity retrieval introduces. So a candidate not retrieved counts as not selected.
- **scoring rate**: the sample is the retrieved set, the candidates the reranker gave a score;
  the median is over all of their scores (LL144's "median score of the sample"). The rest of
  the pool has no score and takes no part.

Frame (c) (`training.audit_sources.rankings_from_decisions`) counts the same way, so the two
frames are comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np

from ranker.config import Settings
from ranker.domain import Outcome
from ranker.errors import InvalidInput
from ranker.index import Storage
from ranker.prepared import PreparedCandidate, PreparedPosting
from training.audit import DIMENSIONS, AuditConfig, AuditMeta, AuditResult, Ranking, audit_rankings
from training.evaluate import RankingModel, held_out_postings
from training.labels import RELEVANT_LABEL
from training.metrics import Estimate, PostingMetrics, served_metrics
from training.pool import Pool

Reranker = Callable[[Sequence[str], np.ndarray, np.ndarray, int], np.ndarray]
"""(retrieved ids, scores, rows best first, k) -> rows best first: a serving-time re-ranker
(`ranker.fair_serving.FairReranker.rerank_order`'s order)."""

DENOMINATOR_NOTE = (
    "Pool view: each held-out posting retrieves from every stored candidate and reranks, as "
    "served. Selection rates count the whole stored pool (retrieval passing a candidate over is "
    "part of the tool's screening); scoring rates count the retrieved set, the candidates the "
    "reranker scored."
)


@dataclass(frozen=True)
class PoolRanking:
    """One held-out posting ranked as served: the retrieved set, its scores and served order."""

    posting_id: str
    candidate_ids: tuple[str, ...]
    """The retrieved candidates, in retrieval order."""
    scores: np.ndarray
    """The model's score of each retrieved candidate."""
    order: np.ndarray
    """Rows best first as served (after any re-ranking)."""
    labels: np.ndarray
    """Graded label of each retrieved candidate (0 for those who did not apply)."""
    applied: np.ndarray
    missed: np.ndarray
    """Labels of the posting's applicants retrieval did not return."""
    k: int

    def served_scores(self) -> np.ndarray:
        """Scores whose descending order is the served order of the top k.

        Past the top k the model's scores stand, so ties there are treated as everywhere in
        the evaluation (`training.evaluate.TIE_RULE`).
        """
        out = np.asarray(self.scores, dtype=np.float64).copy()
        top = self.order[: self.k]
        if len(top) and not np.array_equal(top, _score_order(out)[: len(top)]):
            # A re-ranker moved something: the top k go above every score, in served order.
            base = float(out.max()) + 1.0
            out[top] = base + np.arange(len(top), 0, -1)
        return out

    def metrics(self) -> dict[str, float | None]:
        return served_metrics(
            self.labels, self.served_scores(), self.missed, self.applied, RELEVANT_LABEL
        )

    def ranking(self, pool_ids: Sequence[str]) -> Ranking:
        """This ranking for the audit: every retrieved candidate scored, the pool's rest unranked."""
        got = set(self.candidate_ids)
        return Ranking(
            cluster=self.posting_id,
            candidate_ids=tuple(self.candidate_ids[i] for i in self.order.tolist()),
            scores=tuple(float(self.scores[i]) for i in self.order.tolist()),
            scores_complete=True,
            unranked=tuple(c for c in pool_ids if c not in got),
        )


def _score_order(scores: np.ndarray, sims: np.ndarray | None = None) -> np.ndarray:
    """Rows best first: score, then similarity, then retrieval position (the service's rule)."""
    n = len(scores)
    sims = np.zeros(n) if sims is None else sims
    return np.lexsort((np.arange(n), -np.asarray(sims), -np.asarray(scores))).astype(np.intp)


def rank_pool(
    model: RankingModel,
    postings: Sequence[PreparedPosting],
    pool: Pool,
    labels: Mapping[tuple[str, str], int],
    *,
    retrieve_n: int,
    k: int,
    rerank: Reranker | None = None,
) -> list[PoolRanking]:
    """Every posting's served ranking: retrieve from `pool`, score with `model`, maybe re-rank."""
    out: list[PoolRanking] = []
    where = pool.position()
    mine: dict[str, dict[str, int]] = {}
    for (pid, cid), label in labels.items():
        if cid in where:
            mine.setdefault(pid, {})[cid] = label
    for p in postings:
        cands, sims = pool.retrieve(p, retrieve_n)
        ids = tuple(c.id for c in cands)
        scores = (
            np.asarray(
                model.scorer.score(model.builder.build(p, cands, lexicon=pool.lexicon)),
                dtype=np.float64,
            )
            if cands
            else np.zeros(0)
        )
        order = _score_order(scores, np.asarray(sims))
        if rerank is not None and len(order):
            order = np.asarray(rerank(ids, scores, order, k), dtype=np.intp)
        applicants = mine.get(p.id, {})
        got = set(ids)
        out.append(
            PoolRanking(
                posting_id=p.id,
                candidate_ids=ids,
                scores=scores,
                order=order,
                labels=np.array([applicants.get(c, 0) for c in ids], dtype=np.int64),
                applied=np.array([c in applicants for c in ids], dtype=bool),
                missed=np.array(
                    [lab for c, lab in applicants.items() if c not in got], dtype=np.int64
                ),
                k=k,
            )
        )
    return out


@dataclass(frozen=True)
class ModelAudit:
    """Frame (b): the audit, and the same rankings' pool-view NDCG@10 (what a mitigation costs)."""

    result: AuditResult
    ndcg10: Estimate
    rankings: tuple[PoolRanking, ...]


def audit_model(
    model: RankingModel,
    postings: Sequence[PreparedPosting],
    candidates: Mapping[str, PreparedCandidate],
    labels: Mapping[tuple[str, str], int],
    protected: Mapping[str, Mapping[str, str]],
    *,
    meta: AuditMeta,
    retrieve_n: int,
    index_storage: Storage,
    config: AuditConfig | None = None,
    rerank: Reranker | None = None,
    pool: Pool | None = None,
    attributes: Sequence[str] = DIMENSIONS,
) -> ModelAudit:
    """Frame (b) of `postings` (held out from the model's training) in the pool view."""
    config = config or AuditConfig()
    pool = pool if pool is not None else Pool.build(candidates.values(), index_storage)
    ranked = rank_pool(
        model, postings, pool, labels, retrieve_n=retrieve_n, k=config.k, rerank=rerank
    )
    pool_ids = [c.id for c in pool.candidates]
    result = audit_rankings(
        [r.ranking(pool_ids) for r in ranked],
        protected,
        meta=meta,
        config=config,
        attributes=attributes,
    )
    notes = [*result.notes, DENOMINATOR_NOTE]
    if rerank is not None:
        notes.append(
            "The serving-time fair re-ranker (DetConstSort) re-ranked each top "
            f"{config.k}, as the service does with it enabled."
        )
    metrics = PostingMetrics.collect((r.posting_id, r.metrics()) for r in ranked)
    return ModelAudit(
        replace(result, notes=tuple(notes)), metrics.estimate("ndcg@10"), tuple(ranked)
    )


def held_out_audit(
    model: RankingModel,
    candidates: Mapping[str, PreparedCandidate],
    postings: Mapping[str, PreparedPosting],
    outcomes: Sequence[Outcome],
    start: datetime,
    protected: Mapping[str, Mapping[str, str]],
    *,
    retrieve_n: int,
    index_storage: Storage,
    config: AuditConfig | None = None,
    rerank: Reranker | None = None,
    meta: AuditMeta | None = None,
    attributes: Sequence[str] = DIMENSIONS,
) -> ModelAudit:
    """Frame (b) on the postings with outcomes created from `start` on (the model's test split)."""
    chosen, labels = held_out_postings(postings, outcomes, start)
    dates = sorted(p.posting.created_at for p in chosen if p.posting.created_at is not None)
    meta = meta or AuditMeta(
        frame="model",
        data_source=f"held-out postings ({len(chosen)}, created from {start:%Y-%m-%d}), pool view",
        period=(dates[0].date().isoformat(), dates[-1].date().isoformat()) if dates else None,
    )
    return audit_model(
        model,
        chosen,
        candidates,
        labels,
        protected,
        meta=meta,
        retrieve_n=retrieve_n,
        index_storage=index_storage,
        config=config,
        rerank=rerank,
        attributes=attributes,
    )


def card_bias_audit(
    model: RankingModel,
    candidates: Mapping[str, PreparedCandidate],
    postings: Mapping[str, PreparedPosting],
    outcomes: Sequence[Outcome],
    start: datetime,
    protected: Mapping[str, Mapping[str, str]] | None,
    settings: Settings,
) -> dict[str, Any]:
    """The model card's `bias_audit`: frame (b) on the model's test split, as JSON.

    The model alone, without the serving re-ranker (`ranker audit --frame model` shows it with
    the re-ranker when that is enabled). `{"skipped": reason}` when it cannot be computed.
    """
    if not protected:
        return {"skipped": "no protected attributes were supplied (protected.jsonl)"}
    try:
        audit = held_out_audit(
            model,
            candidates,
            postings,
            outcomes,
            start,
            protected,
            retrieve_n=settings.retrieve_n,
            index_storage=settings.index_storage,
        )
    except InvalidInput as e:
        return {"skipped": str(e)}
    return audit.result.as_dict() | {"ndcg@10": estimate_json(audit.ndcg10)}


def estimate_json(e: Estimate) -> dict[str, float | int | None]:
    """An estimate as the card's JSON keeps it (NaN as null)."""

    def num(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 4)

    return {"mean": num(e.mean), "ci_low": num(e.low), "ci_high": num(e.high), "n": e.n}
