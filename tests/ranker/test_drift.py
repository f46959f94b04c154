"""Feature drift: near zero on demo data from the same process, large on a shifted copy."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ranker.commands import client
from ranker.config import Settings
from ranker.drift import (
    BINS_FILE,
    DriftWatch,
    drift,
    fit_bins,
    read_bins,
    reference_rows,
    write_bins,
)
from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.metrics import ServiceMetrics
from ranker.registry import ModelRegistry
from ranker.rows import Decision
from ranker.store import SqliteStore
from ranker.v1 import ranker_pb2 as pb
from tests.fixtures.server import ServerHandle, seed
from tests.fixtures.training import _random_rows
from training.dataset import make_datasets, prepare_all, split_postings
from training.demo import DemoConfig, DemoData, generate
from training.pool import Pool

SHIFTED = ("years_experience", "dense_cosine", "chunk_max_cosine")
"""Features the shifted copy moves: more senior candidates, closer texts."""


@pytest.fixture(scope="module")
def demo_halves() -> tuple[np.ndarray, np.ndarray]:
    """Top-10 rows per posting of a demo export, in two halves by posting (same process)."""
    data = generate(
        DemoConfig(candidates=1500, postings=320, applicants=(25, 40), seed=5, short_cvs=True)
    )
    cands, posts = _random_rows(data)  # vectors do not matter here, only a fixed process
    pc, pp = prepare_all(cands, posts)
    split = split_postings(pp, data.outcomes)
    lexicon = Lexicon.fit(pc.values())
    builder = FeatureBuilder(lexicon)
    pool = Pool.build(pc.values(), "flat", lexicon)
    sets = make_datasets(builder, pc, pp, data.outcomes, split, pool=pool, retrieve_n=50).sets
    x = np.concatenate([sets[s].x for s in ("train", "valid", "test")])
    group = np.concatenate([sets[s].group for s in ("train", "valid", "test")])
    # One fixed ranking rule for both halves, as one model serves both.
    scores = x[:, FEATURE_NAMES.index("required_coverage")] + x[:, FEATURE_NAMES.index("bm25")]
    halves: list[list[np.ndarray]] = [[], []]
    start = 0
    for q, size in enumerate(group):
        rows = slice(start, start + int(size))
        halves[q % 2].append(reference_rows(x[rows], np.array([size]), scores[rows]))
        start += int(size)
    return np.concatenate(halves[0]), np.concatenate(halves[1])


def _shifted(rows: np.ndarray) -> np.ndarray:
    out = rows.copy()
    for name in SHIFTED:
        j = FEATURE_NAMES.index(name)
        out[:, j] += 0.75 * (out[:, j].std() + 1e-6) + (5 if name == "years_experience" else 0)
    return out


def test_psi_is_near_zero_on_demo_data_and_large_on_a_shifted_copy(
    demo_halves: tuple[np.ndarray, np.ndarray],
) -> None:
    reference, served = demo_halves
    assert len(reference) >= 300 and len(served) >= 300
    bins = fit_bins(FEATURE_NAMES, reference)
    same = {d.name: d.psi for d in drift(bins, FEATURE_NAMES, served)}
    assert max(same.values()) < 0.1, sorted(same.items(), key=lambda t: -t[1])
    moved = {d.name: d.psi for d in drift(bins, FEATURE_NAMES, _shifted(served))}
    for name in SHIFTED:
        assert moved[name] > 0.25, (name, moved[name])
    assert max(v for k, v in moved.items() if k not in SHIFTED) < 0.1


def test_training_stores_the_version_distribution(trained_registry: ModelRegistry) -> None:
    version = trained_registry.current_version()
    assert version is not None
    folder = trained_registry.version_dir(version)
    bins = read_bins(folder)
    assert [b.name for b in bins] == list(FEATURE_NAMES)
    for b in bins:
        assert len(b.shares) == len(b.edges) + 1 and abs(sum(b.shares) - 1) < 1e-9
    assert json.loads((folder / BINS_FILE).read_text())["rows"] > 0


def _log(store: SqliteStore, version: str, rows: np.ndarray) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    decisions = [
        Decision(
            request_id=f"{version}-{i}",
            at=start + timedelta(seconds=i),
            model_version=version,
            posting_id="P1",
            posting_hash="h",
            top_k=10,
            feature_names=FEATURE_NAMES,
            candidate_ids=tuple(f"C{i}-{r}" for r in range(len(part))),
            scores=np.zeros(len(part), dtype=np.float32),
            features=part.astype(np.float32),
            params={},
        )
        for i, part in enumerate(np.array_split(rows, max(1, len(rows) // 10)))
    ]
    store.log_decisions(decisions)


def test_service_gauges_and_the_drift_command(
    demo_halves: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    reference, served = demo_halves
    registry = tmp_path / "registry"
    for version in ("v0001", "v0002"):
        (registry / version).mkdir(parents=True)
        write_bins(registry / version, fit_bins(FEATURE_NAMES, reference), len(reference))
    db = tmp_path / "ranker.db"
    store = SqliteStore(db)
    try:
        _log(store, "v0001", served)
        _log(store, "v0002", _shifted(served))
    finally:
        store.close()

    metrics = ServiceMetrics()
    settings = Settings(registry_dir=registry, db_path=db, drift_window=5000)
    watch = DriftWatch(settings, metrics=metrics)
    watch.refresh("v0001")
    gauge = {
        s.labels["feature"]: s.value
        for family in metrics.feature_psi.collect()
        for s in family.samples
    }
    assert set(gauge) == set(FEATURE_NAMES) and max(gauge.values()) < 0.1
    watch.refresh("v0002")
    assert metrics.feature_psi.labels(feature="dense_cosine")._value.get() > 0.25
    assert watch.refresh(None) == []  # a fallback has no training distribution

    env = {
        "RANKER_DB_PATH": str(db),
        "RANKER_REGISTRY_DIR": str(registry),
        "RANKER_DATA_DIR": str(tmp_path),
        "COLUMNS": "200",
    }
    app = client_app()
    result = CliRunner().invoke(app, ["drift", "v0002"], env=env)
    assert result.exit_code == 0, result.output

    def row(name: str) -> str:
        return next(line for line in result.output.splitlines() if f" {name} " in line)

    assert "shift" in row("dense_cosine") and "stable" in row("title_overlap")
    result = CliRunner().invoke(app, ["drift", "v0001"], env=env)
    assert result.exit_code == 0 and "stable" in row("dense_cosine")


def client_app() -> typer.Typer:
    app = typer.Typer()
    client.register(app)
    return app


def test_a_running_service_keeps_the_drift_gauges_current(
    start_server: Callable[..., ServerHandle], registry_path: Path, serving_demo: DemoData
) -> None:
    h = start_server(registry_dir=registry_path, drift_interval_seconds=0.1)
    seed(h, serving_demo.candidates[:40], serving_demo.postings[:2])
    for posting in serving_demo.postings[:2]:
        h.stub.RankCandidates(pb.RankCandidatesRequest(posting_id=posting.id, top_k=5))
    metrics = h.server.metrics
    deadline = time.monotonic() + 30
    while metrics.drift_rows._value.get() < 10:  # both rankings logged and read back
        assert time.monotonic() < deadline, "the drift gauges were never refreshed"
        time.sleep(0.05)
    features = {
        s.labels["feature"] for family in metrics.feature_psi.collect() for s in family.samples
    }
    assert features == set(FEATURE_NAMES)
