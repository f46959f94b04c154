"""The serving re-ranker: off by default and then blind to the protected table; on, it meets the
prefix minimums and every use is logged with the decision; served scores are all logged."""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ranker.api import RankQuery
from ranker.config import Settings
from ranker.encoding import TextEncoder
from ranker.fair_rerank import prefix_minimums
from ranker.fair_serving import FairReranker
from ranker.pipeline import RankingPipeline
from ranker.registry import ModelRegistry
from ranker.store import SqliteStore
from tests.fixtures.server import serving_settings
from tests.fixtures.training import EncodedDemo

TARGETS = {"female": 0.5, "male": 0.5}


def _stocked_store(path: Path, demo: EncodedDemo) -> None:
    """The demo set as `ranker ingest` leaves it: records, vectors, protected attributes."""
    store = SqliteStore(path)
    try:
        store.upsert_candidates(demo.candidate_rows)
        store.upsert_postings(demo.posting_rows)
        store.upsert_protected(
            [(c, k, v) for c, attrs in demo.data.protected.items() for k, v in attrs.items()]
        )
    finally:
        store.close()


class _Opened:
    """A pipeline over a store whose reads of the protected table are recorded (SQLite's own
    authorizer sees every table a statement reads, whichever code runs it)."""

    def __init__(self, settings: Settings, encoder: TextEncoder) -> None:
        self.protected_reads = 0
        store = SqliteStore(settings.resolved_db_path)
        store._conn.set_authorizer(self._authorize)  # the connection every query goes through
        registry = ModelRegistry(settings.resolved_registry_dir)
        self.pipeline = RankingPipeline(settings, store, encoder, registry)
        self.pipeline.model.serve_promoted()

    def _authorize(self, action: int, arg1: object, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and arg1 == "protected_attributes":
            self.protected_reads += 1
        return sqlite3.SQLITE_OK


@pytest.fixture
def open_pipeline(
    demo_data: EncodedDemo, encoder: TextEncoder, registry_path: Path, tmp_path: Path
) -> Iterator[object]:
    _stocked_store(tmp_path / "data" / "ranker.db", demo_data)
    opened: list[_Opened] = []

    def make(**overrides: object) -> _Opened:
        o = _Opened(serving_settings(tmp_path / "data", registry_path, **overrides), encoder)
        opened.append(o)
        return o

    yield make
    for o in opened:
        o.pipeline.close()


def test_off_by_default_the_protected_table_is_never_read(
    open_pipeline, demo_data: EncodedDemo
) -> None:
    o = open_pipeline()
    assert o.pipeline.settings.fair_rerank == "off"
    posting = demo_data.data.postings[0].id
    r = o.pipeline.rank(RankQuery(posting_id=posting, top_k=10, explain=True))
    assert o.protected_reads == 0
    # Erasure deletes the candidate's protected rows (its DELETE reads their key): removal,
    # not use. Ranking afterwards still reads nothing of the table.
    o.pipeline.delete_candidates([r.results[-1].candidate_id])
    after_erasure = o.protected_reads
    o.pipeline.rank(RankQuery(posting_id=posting, top_k=10))
    logged = o.pipeline.store.get_decision(r.request_id)
    assert "fair_rerank" not in logged.params
    assert o.protected_reads == after_erasure


def test_on_the_top_k_meets_every_prefix_minimum_and_the_decision_records_it(
    open_pipeline, demo_data: EncodedDemo
) -> None:
    sex = {c: a.get("sex", "unknown") for c, a in demo_data.data.protected.items()}
    plain = open_pipeline()
    fair = open_pipeline(fair_rerank="detconstsort", fair_rerank_targets=TARGETS)
    assert plain.protected_reads == 0 and fair.protected_reads > 0
    moved = 0
    for posting in demo_data.data.postings:
        before = plain.pipeline.rank(RankQuery(posting_id=posting.id, top_k=10))
        after = fair.pipeline.rank(RankQuery(posting_id=posting.id, top_k=10))
        fair.pipeline._decisions.flush()
        decision = fair.pipeline.store.get_decision(after.request_id)
        assert decision.scored is not None
        cats = [sex.get(c.candidate_id, "unknown") for c in after.results]
        available = Counter(sex.get(c, "unknown") for c in decision.scored.candidate_ids)
        for j in range(1, len(cats) + 1):
            for cat, need in prefix_minimums(TARGETS, j).items():
                assert Counter(cats[:j])[cat] >= min(need, available[cat]), (posting.id, j, cat)
        logged = decision.params["fair_rerank"]
        assert isinstance(logged, dict)
        assert logged["method"] == "detconstsort" and logged["attribute"] == "sex"
        assert logged["targets"] == TARGETS and logged["targets_from"] == "configured"
        changed = sum(
            a.candidate_id != b.candidate_id
            for a, b in zip(after.results, before.results, strict=True)
        )
        assert logged["moved"] == changed
        moved += changed
    assert moved > 0  # the constraint binds somewhere, or this test would prove nothing


def test_every_retrieved_candidate_s_score_is_logged_and_an_erased_one_leaves(
    open_pipeline, demo_data: EncodedDemo
) -> None:
    o = open_pipeline()
    p = o.pipeline
    r = p.rank(RankQuery(posting_id=demo_data.data.postings[1].id, top_k=5))
    p._decisions.flush()
    scored = p.store.get_decision(r.request_id).scored
    assert scored is not None and len(scored.candidate_ids) == r.retrieved
    served = {c.candidate_id: c.score for c in r.results}
    kept = dict(zip(scored.candidate_ids, scored.scores.tolist(), strict=True))
    assert {c: kept[c] for c in served} == pytest.approx(served)
    # The returned top 5 are the 5 best of all scored (no re-ranker): the log is the whole set.
    assert sorted(kept.values(), reverse=True)[:5] == pytest.approx(
        sorted(served.values(), reverse=True)
    )
    victim = next(c for c in kept if c not in served)
    p.delete_candidates([victim])
    again = p.store.get_decision(r.request_id).scored
    assert again is not None and victim not in again.candidate_ids
    assert len(again.candidate_ids) == len(scored.candidate_ids) - 1


def test_retrieved_shares_are_the_default_targets() -> None:
    fair = FairReranker("sex", {"a": "female", "b": "male", "c": "male"}, {})
    targets, source = fair.targets_for(fair.categories(["a", "b", "c", "d"]))
    assert source == "retrieved set"
    assert targets == {"female": 0.25, "male": 0.5, "unknown": 0.25}
    order, record = fair.rerank_order(
        ["b", "c", "a", "d"], np.array([3.0, 2.0, 1.0, 0.0]), np.arange(4), 4
    )
    # Prefix 4 needs one female: she is already in; prefix 2 needs one male, satisfied.
    assert order.tolist() == [0, 1, 2, 3] and record["moved"] == 0
