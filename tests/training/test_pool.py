"""Training rows are served rows: an applicant's training features equal what the pipeline builds
for that candidate when it retrieves them (same reference set, same BM25 statistics); the blend
weight is chosen by its rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranker.api import RankQuery
from ranker.encoding import TextEncoder
from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.pipeline import RankingPipeline
from ranker.scorer import BLEND_FEATURE
from tests.fixtures.server import serving_settings
from tests.fixtures.training import EncodedDemo
from training.blend import BLEND_GRID, choose_blend
from training.dataset import build_set, prepare_all
from training.demo import DemoData
from training.labels import labels_from_outcomes
from training.pool import Pool

RETRIEVE_N = 25


def test_an_applicant_row_in_training_equals_the_row_served_for_them(
    encoder: TextEncoder, registry_path: Path, tmp_path: Path, serving_demo: DemoData
) -> None:
    settings = serving_settings(tmp_path / "data", registry_path)
    pipeline = RankingPipeline.open(settings, encoder=encoder)
    try:
        step = settings.max_batch_items
        for start in range(0, len(serving_demo.candidates), step):
            pipeline.upsert_candidates(serving_demo.candidates[start : start + step])
        # An erased candidate leaves the live pool; training then reads the store without them.
        pipeline.delete_candidates([serving_demo.candidates[0].id])
        pipeline.upsert_postings(serving_demo.postings)
        posting = serving_demo.postings[1]
        served = pipeline.rank(
            RankQuery(posting_id=posting.id, top_k=RETRIEVE_N, retrieve_n=RETRIEVE_N)
        )
        pipeline._decisions.flush()
        decision = pipeline.store.get_decision(served.request_id)
        stored_candidates = list(pipeline.store.iter_candidates())
        stored_postings = pipeline.store.list_postings()
    finally:
        pipeline.close()
    served_row = dict(zip(decision.candidate_ids, decision.features, strict=True))
    assert len(served_row) == RETRIEVE_N

    # Training: the store's rows, the pool's lexicon, the pool's reference set for the posting.
    pc, pp = prepare_all(stored_candidates, stored_postings)
    lexicon = Lexicon.fit(pc.values())
    pool = Pool.build(pc.values(), settings.index_storage, lexicon)
    # Applicants: some retrieved (anywhere in the served order), labels of every grade.
    applicants = [decision.candidate_ids[i] for i in (0, 3, 11, RETRIEVE_N - 1)]
    labels = {(posting.id, cid): grade for grade, cid in enumerate(applicants)}
    rows = build_set(
        FeatureBuilder(lexicon), [pp[posting.id]], pc, labels, pool, retrieve_n=RETRIEVE_N
    )
    assert sorted(rows.candidate_ids) == sorted(applicants)
    for cid, row in zip(rows.candidate_ids, rows.x, strict=True):
        np.testing.assert_array_equal(row, served_row[cid])
    # The reference set matters: the applicants alone as their own set give other rows.
    alone = FeatureBuilder(lexicon).build(pp[posting.id], [pc[c] for c in rows.candidate_ids])
    assert not np.array_equal(alone, rows.x)


class _Column:
    def __init__(self, column: int) -> None:
        self.column = column

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x[:, self.column], dtype=np.float32)


def test_blend_weight_follows_the_one_standard_error_rule(demo_data: EncodedDemo) -> None:
    pc, pp = prepare_all(demo_data.candidate_rows, demo_data.posting_rows)
    lexicon = Lexicon.fit(pc.values())
    pool = Pool.build(pc.values(), "flat", lexicon)
    builder = FeatureBuilder(lexicon)
    labels = labels_from_outcomes(demo_data.data.outcomes)
    postings = list(pp.values())
    # A "model" that is the blend feature itself: every weight ranks alike, so the rule takes the
    # largest (the one closest to retrieval order).
    same = choose_blend(
        _Column(FEATURE_NAMES.index(BLEND_FEATURE)), builder, postings, labels, pool, 30
    )
    assert same.weight == max(BLEND_GRID) and same.postings > 0
    assert len(set(same.validation_ndcg.values())) == 1
    # The chosen weight is within one standard error of the best mean, and no larger weight is.
    years = choose_blend(
        _Column(FEATURE_NAMES.index("years_experience")), builder, postings, labels, pool, 30
    )
    best = max(years.validation_ndcg.values())
    assert years.validation_ndcg[years.weight] <= best
    assert set(years.as_dict()) >= {"feature", "weight", "rule", "validation_ndcg@10"}
