"""`ranker ingest --dask`: candidates encoded on 2 Dask worker processes, stored as one process would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client

from ranker.config import Settings
from ranker.dask_ingest import DaskBatches, _worker_encoder
from ranker.encoding import TextEncoder
from ranker.errors import InvalidInput
from ranker.ingest import ingest_files, is_ingested
from ranker.store import SqliteStore
from tests.fixtures.encoder import encoder_test_settings
from training.demo import DemoData, write_demo

BATCH = 8
"""Candidates per batch: 25 candidates make 4 Dask tasks over the 2 workers."""


@pytest.fixture
def demo_files(serving_demo: DemoData, tmp_path: Path) -> dict[str, Any]:
    small = DemoData(
        candidates=serving_demo.candidates[:25],
        postings=serving_demo.postings[:3],
        outcomes=[o for o in serving_demo.outcomes if o.candidate_id <= "C0025"],
        protected={k: v for k, v in serving_demo.protected.items() if k <= "C0025"},
    )
    write_demo(small, tmp_path / "demo")
    kinds = ("candidates", "postings", "outcomes", "protected")
    return {kind: tmp_path / "demo" / f"{kind}.jsonl" for kind in kinds}


def _settings(root: Path) -> Settings:
    return Settings(data_dir=root, db_path=None, index_dir=None)


def _contents(settings: Settings) -> dict[str, Any]:
    store = SqliteStore(settings.resolved_db_path)
    try:
        return {
            "candidates": {r.candidate.id: r for _, r in store.iter_candidates_with_ids()},
            "postings": {r.posting.id: r for r in store.list_postings()},
            "outcomes": sorted(map(repr, store.list_outcomes())),
            "protected": store.protected_attributes("sex"),
        }
    finally:
        store.close()


def test_dask_ingest_stores_what_a_single_process_stores(
    dask_cluster_client: Client,
    encoder: TextEncoder,
    encoder_dir: Path,
    demo_files: dict[str, Any],
    tmp_path: Path,
) -> None:
    here, there = _settings(tmp_path / "here"), _settings(tmp_path / "dask")
    local = ingest_files(here, encoder, batch_size=BATCH, **demo_files)
    dask_cluster_client.run(_worker_encoder.cache_clear)
    workers = DaskBatches(dask_cluster_client, encoder_dir, encoder_test_settings())
    done: list[int] = []
    remote = ingest_files(
        there, workers, batch_size=BATCH, progress=lambda n, _: done.append(n), **demo_files
    )
    assert remote == local and remote.candidates == 25 and remote.index_size == 25
    assert done == [8, 16, 24, 25]  # stored batch by batch, in file order
    assert is_ingested(there, demo_files)
    # Each worker process loaded the encoder once at most, for 4 candidate batches + 1 of postings.
    calls = dask_cluster_client.run(lambda: _worker_encoder.cache_info()).values()
    assert all(c.misses <= 1 for c in calls) and sum(c.hits + c.misses for c in calls) == 5

    a, b = _contents(here), _contents(there)
    assert a["outcomes"] == b["outcomes"] and a["protected"] == b["protected"]
    assert a["outcomes"] and a["protected"]
    assert a["candidates"].keys() == b["candidates"].keys() and len(a["candidates"]) == 25
    for cid, row in a["candidates"].items():
        other = b["candidates"][cid]
        assert other.candidate == row.candidate
        # Same model and texts; only the batches the texts were padded with may differ.
        np.testing.assert_allclose(other.doc_vector, row.doc_vector, atol=1e-5)
        assert other.chunk_vectors.shape == row.chunk_vectors.shape
        np.testing.assert_allclose(other.chunk_vectors, row.chunk_vectors, atol=1e-5)
    assert a["postings"].keys() == b["postings"].keys() and len(a["postings"]) == 3
    for pid, row in a["postings"].items():
        assert b["postings"][pid].posting == row.posting
        np.testing.assert_allclose(b["postings"][pid].vector, row.vector, atol=1e-5)

    # The same resume as in one process: nothing stored as in the file is encoded again.
    again = ingest_files(there, workers, batch_size=BATCH, **demo_files)
    assert again.unchanged == 25 and again.candidates == 0


def test_a_worker_with_another_encoder_export_is_refused(
    dask_cluster_client: Client, encoder_dir: Path, demo_files: dict[str, Any], tmp_path: Path
) -> None:
    workers = DaskBatches(dask_cluster_client, encoder_dir, encoder_test_settings())
    folder, settings_json, _ = workers._args
    workers._args = (folder, settings_json, (("model.onnx", "0" * 64),))
    with pytest.raises(InvalidInput, match="another export than the driver's"):
        ingest_files(_settings(tmp_path / "x"), workers, batch_size=BATCH, **demo_files)
