"""Why is A above B: two candidates scored among one posting's retrieved candidates, and the
topics that separate their scores (`TreeExplainer.compare`).

Like `ranker.ranking`, nothing here touches shared state: the pipeline retrieves and looks the
two candidates up under its lock, then hands them here.
"""

from __future__ import annotations

import numpy as np

from ranker.api import ComparedCandidate, CompareQuery, ComparisonResult
from ranker.errors import NotFound
from ranker.explain import Explanation
from ranker.features import as_packed
from ranker.prepared import PackedCandidates, PreparedCandidate
from ranker.ranking import RankRequest, Retrieved, result_posting_id


def compare_pair(
    req: RankRequest,
    hits: Retrieved,
    q: CompareQuery,
    pair: tuple[PreparedCandidate | None, PreparedCandidate | None],
) -> ComparisonResult:
    """Score both candidates with the posting's retrieved candidates (their ranks, when
    retrieved, are those of `RankCandidates` without filters) and explain what separates them.

    A candidate outside the retrieved set is scored all the same (rank None); the features are
    built for the retrieved set and the pair together, so both read the same reference.
    """
    for cid, pc in zip((q.candidate_a, q.candidate_b), pair, strict=True):
        if pc is None:
            raise NotFound(f"candidate {cid!r} is not stored (unknown or erased); upsert it first")
    a, b = pair
    assert a is not None and b is not None
    row_of = {cid: i for i, cid in enumerate(hits.ids)}
    extra = [pc for pc in (a, b) if pc.id not in row_of]
    for pc in extra:
        row_of[pc.id] = len(hits.cands) + extra.index(pc)
    bundle = req.served.bundle
    x = bundle.builder.build(req.posting, as_packed(hits.cands).plus(PackedCandidates.of(extra)))
    scores = bundle.scorer.score(x) if len(x) else np.zeros(0, dtype=np.float32)
    n = len(hits.cands)
    # The ranking's order: best score, then the closer vector, then the older candidate.
    ranked = np.lexsort((hits.fids, -hits.sims, -scores[:n])) if n else np.zeros(0, np.intp)
    rank_of = {int(row): r for r, row in enumerate(ranked.tolist(), 1)}
    rows = (row_of[a.id], row_of[b.id])
    pair_scores = (float(scores[rows[0]]), float(scores[rows[1]]))
    explained = req.served.explainer.compare(
        req.posting.posting,
        (a, b),
        x[list(rows)],
        x[:n] if n >= 2 else x,
        pair_scores,
        (rank_of.get(rows[0]), rank_of.get(rows[1])),
    )

    def side(pc: PreparedCandidate, row: int, e: Explanation) -> ComparedCandidate:
        return ComparedCandidate(pc.id, float(scores[row]), rank_of.get(row), e)

    return ComparisonResult(
        request_id=req.request_id,
        model_version=bundle.version,
        posting_id=result_posting_id(req),
        a=side(a, rows[0], explained.a),
        b=side(b, rows[1], explained.b),
        summary=explained.summary,
        separating=explained.separating,
        retrieved=n,
    )
