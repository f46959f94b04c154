"""Ingestion: files to store and index, per-item encoder failures, and the index's freshness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ranker import ingest as ingest_module
from ranker.config import Settings
from ranker.domain import Candidate
from ranker.encoding import TextEncoder, encode_candidates
from ranker.errors import InvalidInput
from ranker.index import INDEX_FILE, FaissIndex, IvfOptions, ensure_index, index_from_store
from ranker.ingest import ingest_files, is_ingested
from ranker.store import SqliteStore
from training.demo import DemoData, write_demo


@pytest.fixture
def demo_files(serving_demo: DemoData, tmp_path: Path) -> Path:
    small = DemoData(
        candidates=serving_demo.candidates[:25],
        postings=serving_demo.postings[:3],
        outcomes=[o for o in serving_demo.outcomes if o.candidate_id <= "C0025"],
        protected={k: v for k, v in serving_demo.protected.items() if k <= "C0025"},
    )
    write_demo(small, tmp_path / "demo")
    return tmp_path / "demo"


def _files(folder: Path) -> dict[str, Any]:
    # Any: spread into ingest_files' keyword arguments.
    return {
        kind: folder / f"{kind}.jsonl"
        for kind in ("candidates", "postings", "outcomes", "protected")
    }


def test_ingest_files_fills_store_and_index(
    encoder: TextEncoder, demo_files: Path, tmp_path: Path
) -> None:
    # Paths given explicitly so RANKER_* variables in the environment cannot redirect the test.
    settings = Settings(data_dir=tmp_path / "data", db_path=None, index_dir=None)
    files = _files(demo_files)
    assert not is_ingested(settings, files)
    report = ingest_files(settings, encoder, **files)
    assert (report.candidates, report.postings, report.index_size) == (25, 3, 25)
    assert report.outcomes > 0 and report.protected > 0 and not report.rejected
    assert is_ingested(settings, files)
    assert ensure_index(settings) == (25, False)  # the saved index is current

    store = SqliteStore(settings.resolved_db_path)
    try:
        assert store.count_candidates() == 25 and store.count_postings() == 3
        assert store.count_outcomes() == report.outcomes
        (row,) = store.get_candidates(["C0001"])
        assert row.doc_vector.shape == (encoder.dim,)
        np.testing.assert_allclose(np.linalg.norm(row.doc_vector), 1.0, rtol=1e-5)
        assert row.chunk_vectors.ndim == 2 and row.chunk_vectors.shape[1] == encoder.dim
        # A write after the save makes the saved index stale: it is rebuilt, with the change.
        store.delete_candidates(["C0002"])
        index, rebuilt = index_from_store(store, settings.resolved_index_dir)
        assert rebuilt and len(index) == 24
        assert store.faiss_ids(["C0001"])["C0001"] in set(index.ids().tolist())
    finally:
        store.close()

    (settings.resolved_index_dir / INDEX_FILE).unlink()
    assert ensure_index(settings) == (24, True)
    # Ingesting the same files again is idempotent by id, and the erased candidate stays erased.
    again = ingest_files(settings, encoder, candidates=demo_files / "candidates.jsonl")
    assert again.index_size == 24
    assert again.erased == ("C0002",)


def test_ingest_past_the_ivf_threshold_saves_lists_the_service_loads_as_they_are(
    encoder: TextEncoder, serving_demo: DemoData, tmp_path: Path
) -> None:
    write_demo(serving_demo, tmp_path / "demo")
    n = len(serving_demo.candidates)
    settings = Settings(
        data_dir=tmp_path / "data", db_path=None, index_dir=None, index_ivf_min_candidates=n
    )
    report = ingest_files(settings, encoder, candidates=tmp_path / "demo" / "candidates.jsonl")
    assert report.index_size == n
    saved = FaissIndex.load(settings.resolved_index_dir, IvfOptions.from_settings(settings))
    assert saved.is_ivf and saved.trained_on == n
    assert ensure_index(settings) == (n, False)  # current as saved: no rebuild at start
    # Below the fewest lists an IVF can have (one training point each), the index stays exact.
    assert not IvfOptions(min_candidates=10).wants_ivf(63)


class _PickyEncoder:
    """The real encoder, except that it refuses any text containing REFUSE."""

    def __init__(self, inner: TextEncoder) -> None:
        self.inner = inner
        self.dim = inner.dim

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.inner.encode(texts)

    def encode_documents(self, texts: list[str]):  # type: ignore[no-untyped-def]
        if any("REFUSE" in t for t in texts):
            raise ValueError("cannot encode this text")
        return self.inner.encode_documents(texts)


def test_an_encoder_failure_is_pinned_on_its_item(encoder: TextEncoder) -> None:
    cands = [
        Candidate(id="a", cv_text="Python developer."),
        Candidate(id="b", cv_text="REFUSE me"),
        Candidate(id="c", cv_text="Registered nurse."),
    ]
    rows = encode_candidates(_PickyEncoder(encoder), cands)
    assert isinstance(rows[1], InvalidInput)
    good = [r for r in rows if not isinstance(r, InvalidInput)]
    assert [r.candidate.id for r in good] == ["a", "c"]
    direct = encoder.encode_documents(["Python developer.", "Registered nurse."])
    for row, doc in zip(good, direct, strict=True):
        np.testing.assert_allclose(row.doc_vector, doc.vector, atol=1e-5)


class _CountingEncoder:
    """The real encoder; counts the documents it encodes and can fail on a chosen call."""

    def __init__(self, inner: TextEncoder, fail_on_call: int | None = None) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.documents = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.inner.encode(texts)

    def encode_documents(self, texts: list[str]):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("the machine lost power")  # not a ValueError: not the item's fault
        self.documents += len(texts)
        return self.inner.encode_documents(texts)


def test_an_interrupted_ingest_is_not_done_and_a_rerun_finishes_it(
    encoder: TextEncoder, demo_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_module, "INGEST_BATCH", 10)
    settings = Settings(data_dir=tmp_path / "data", db_path=None, index_dir=None)
    files = _files(demo_files)
    with pytest.raises(RuntimeError, match="lost power"):
        ingest_files(settings, _CountingEncoder(encoder, fail_on_call=2), **files)
    store = SqliteStore(settings.resolved_db_path)
    try:
        assert store.count_candidates() == 10  # the first transaction is in, the rest is not
    finally:
        store.close()
    assert not is_ingested(settings, files)  # holding candidates is not the same as done

    counting = _CountingEncoder(encoder)
    report = ingest_files(settings, counting, **files)
    assert (report.unchanged, report.candidates, report.index_size) == (10, 15, 25)
    assert counting.documents == 15  # resumed: what was stored is not encoded again
    assert is_ingested(settings, files)


def test_changed_files_are_not_taken_as_ingested(
    encoder: TextEncoder, demo_files: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", db_path=None, index_dir=None)
    files = _files(demo_files)
    ingest_files(settings, encoder, **files)
    assert is_ingested(settings, files)
    with (demo_files / "postings.jsonl").open("a", encoding="utf-8") as f:
        f.write(
            json.dumps({"id": "P-new", "title": "Welder", "description": "MIG welding."}) + "\n"
        )
    assert not is_ingested(settings, files)
    # A fresh database in the same place is not ingested either, whatever the state file says.
    again = _files(demo_files)
    ingest_files(settings, encoder, **again)
    assert is_ingested(settings, again)
    for path in settings.resolved_db_path.parent.glob("ranker.db*"):
        if not path.name.endswith(".ingest.json"):
            path.unlink()
    assert not is_ingested(settings, again)


def test_text_of_only_invisible_characters_is_skipped_with_a_reason(
    encoder: TextEncoder, tmp_path: Path
) -> None:
    path = tmp_path / "candidates.jsonl"
    rows = [
        {"id": "ok", "cv_text": "Registered nurse, ICU."},
        {"id": "invisible", "cv_text": "\u200b\u200c"},
        {"id": "control", "cv_text": "\x01\x02"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", db_path=None, index_dir=None)
    report = ingest_files(settings, encoder, candidates=path)
    assert report.candidates == 1 and report.index_size == 1
    assert len(report.rejected) == 2
    assert "'invisible'" in report.rejected[0] and "encoder could not read" in report.rejected[0]
    assert is_ingested(settings, {"candidates": path})  # the bad rows are data, not a crash
