"""A restart whose saved catalog and index missed the last writes (the service died before its
debounced save, or `ranker ingest` wrote since): memory is loaded as saved and the change feed's
entries after it are applied, not everything rebuilt; with those entries pruned, it is rebuilt."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from ranker.api import RankQuery
from ranker.catalog import CandidateCatalog
from ranker.config import Settings
from ranker.encoding import TextEncoder
from ranker.ingest import ingest_files
from ranker.pipeline import RankingPipeline
from ranker.warmup import CATALOG_DIR
from tests.fixtures.server import serving_settings
from training.demo import DemoData, write_demo


def _writes_the_save_missed(
    settings: Settings, encoder: TextEncoder, demo: DemoData
) -> tuple[list[str], str, str, str]:
    """Save after 30 candidates, then add ten, edit one and erase one, and stop as a crash
    would (no save). The top ten for a posting after the writes, the edited and erased ids."""
    cands = demo.candidates
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        p.upsert_candidates(cands[:30])
        p.upsert_postings(demo.postings[:2])
        assert p.save_index(force=True)
        p.upsert_candidates(cands[30:40])
        edited = replace(cands[0], cv_text=cands[0].cv_text + " Also fluent in Portuguese.")
        p.upsert_candidates([edited])
        p.delete_candidates([cands[1].id])
        top = p.rank(RankQuery(posting_id=demo.postings[0].id, top_k=10))
        if p._follower is not None:
            p._follower.close()  # nor may it catch up and mark memory for saving meanwhile
        p._index_dirty_at = None  # the pending save never runs: the process died here
    finally:
        p.close()
    return [r.candidate_id for r in top.results], cands[0].id, cands[1].id, demo.postings[0].id


def _assert_memory_is_the_store(
    p: RankingPipeline, top: list[str], edited: str, erased: str, posting: str
) -> None:
    assert len(p._catalog) == len(p.index) == p.store.count_candidates() == 39
    assert erased not in p._catalog
    got = p._catalog.get(edited)
    assert got is not None and got.candidate.cv_text.endswith("Also fluent in Portuguese.")
    fids = np.asarray(sorted(p.store.faiss_ids([edited]).values()), dtype=np.int64)
    assert p._catalog.doc_vectors(fids)[0].tolist() == fids.tolist()
    again = p.rank(RankQuery(posting_id=posting, top_k=10))
    assert [r.candidate_id for r in again.results] == top


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_a_restart_applies_the_feed_entries_its_saved_memory_missed(
    encoder: TextEncoder,
    registry_path: Path,
    tmp_path: Path,
    serving_demo: DemoData,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    engine: str,
) -> None:
    # On PostgreSQL the saved entry is what the replica's follower had applied.
    url = request.getfixturevalue("postgres_url") if engine == "postgres" else ""
    settings = serving_settings(tmp_path / "data", registry_path, database_url=url)
    top, edited, erased, posting = _writes_the_save_missed(settings, encoder, serving_demo)
    caplog.set_level(logging.INFO)
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        assert "catching up from there" in caplog.text
        assert "rebuilt the catalog" not in caplog.text
        assert "rebuilt the index" not in caplog.text
        _assert_memory_is_the_store(p, top, edited, erased, posting)
        # Saved again, it is current: the next start loads it as it is.
        assert p.save_index(force=True)
        directory = settings.resolved_index_dir / CATALOG_DIR
        saved = CandidateCatalog.load(directory, p.store.generation())
        assert saved is not None and saved.saved is not None
        assert saved.saved[1] == p.store.last_change_seq()
        assert erased not in saved
        saved.close()
    finally:
        p.close()


def test_with_the_entries_it_missed_pruned_from_the_feed_memory_is_rebuilt(
    encoder: TextEncoder,
    registry_path: Path,
    tmp_path: Path,
    serving_demo: DemoData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = serving_settings(tmp_path / "data", registry_path)
    top, edited, erased, posting = _writes_the_save_missed(settings, encoder, serving_demo)
    p = RankingPipeline.open(settings, encoder=encoder)
    p.store.prune_changes(datetime.now(UTC) + timedelta(hours=1))  # all but the newest entry
    p._index_dirty_at = None
    p.close()
    caplog.set_level(logging.INFO)
    # The saved state is the same stale one as before (the open above caught up but never
    # saved); now the entries after it are gone, so it cannot catch up and is rebuilt.
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        assert "catching up from there" not in caplog.text
        assert "rebuilt the catalog" in caplog.text
        _assert_memory_is_the_store(p, top, edited, erased, posting)
    finally:
        p.close()


def test_a_start_compacts_column_files_mostly_dead(
    encoder: TextEncoder,
    registry_path: Path,
    tmp_path: Path,
    serving_demo: DemoData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = serving_settings(tmp_path / "data", registry_path, catalog_compact_share=0.1)
    cands = serving_demo.candidates
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        p.upsert_candidates(cands[:30])
        p.upsert_postings(serving_demo.postings[:1])
        p.upsert_candidates([replace(c, cv_text=c.cv_text + " Edited.") for c in cands[:8]])
        p.delete_candidates([c.id for c in cands[8:12]])  # 12 of 42 blobs written are dead
        top = p.rank(RankQuery(posting_id=serving_demo.postings[0].id, top_k=10))
        assert p._catalog.dead_share() > 0.1
    finally:
        p.close()  # saved, dead bytes and all
    caplog.set_level(logging.INFO)
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        assert "compacted the catalog's column files" in caplog.text
        assert p._catalog.dead_share() == pytest.approx(0.0, abs=1e-12)
        assert len(p._catalog) == len(p.index) == 26
        got = p._catalog.get(cands[0].id)
        assert got is not None and got.candidate.cv_text.endswith(" Edited.")
        again = p.rank(RankQuery(posting_id=serving_demo.postings[0].id, top_k=10))
        assert [r.candidate_id for r in again.results] == [r.candidate_id for r in top.results]
    finally:
        p.close()


def test_candidates_ranker_ingest_wrote_since_the_save_are_caught_up_too(
    encoder: TextEncoder,
    registry_path: Path,
    tmp_path: Path,
    serving_demo: DemoData,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = serving_settings(tmp_path / "data", registry_path)
    cands = serving_demo.candidates
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        p.upsert_candidates(cands[:30])
    finally:
        p.close()  # saved and current
    more = DemoData(candidates=cands[30:35], postings=[], outcomes=[], protected={})
    write_demo(more, tmp_path / "more")
    # The offline path writes the store and rebuilds the index, not the catalog.
    ingest_files(settings, encoder, candidates=tmp_path / "more" / "candidates.jsonl")
    caplog.set_level(logging.INFO)
    p = RankingPipeline.open(settings, encoder=encoder)
    try:
        assert "catching up from there" in caplog.text
        assert "rebuilt the catalog" not in caplog.text
        assert len(p._catalog) == len(p.index) == p.store.count_candidates() == 35
        assert all(c.id in p._catalog for c in cands[30:35])
    finally:
        p.close()
