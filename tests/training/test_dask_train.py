"""Training on Dask (`ranker train --dask`): postings kept whole, the iteration chosen as early
stopping would, the same registered artefacts, and held-out rankings like a single process's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
from distributed import Client

from ranker.features import FEATURE_NAMES
from ranker.registry import BOOSTER_FILE, CARD_MD_FILE, ModelRegistry
from ranker.scorer import PARITY_TOLERANCE
from tests.fixtures.dask import DASK_WORKERS
from tests.fixtures.training import (
    FIXTURE_FORCE_REASON,
    TRAINING_CONFIG,
    EncodedDemo,
    _random_rows,
)
from training.dask_train import (
    DaskFitter,
    early_stopping_choice,
    posting_partitions,
    validation_curve,
)
from training.dataset import RankingSet
from training.demo import DemoConfig, generate
from training.evaluate import evaluate_set
from training.train import (
    FittedBooster,
    TrainResult,
    fit_booster,
    train_and_register,
    train_model,
)

HELD_OUT = DemoConfig(candidates=300, postings=60, applicants=(25, 40), seed=11, short_cvs=True)
"""60 postings (a 41/9/9 time split) with random vectors: no encoding, 18 held-out postings."""
FIXED_ROUNDS = 40
SCORE_CORRELATION_FLOOR = 0.95
"""Least Pearson correlation of the two fits' scores on the held-out rows at the same number of
trees (measured 0.99 in three runs; unrelated models score near 0)."""
NDCG_TOLERANCE = 0.07
"""Largest |difference| of held-out NDCG@10 allowed at the same number of trees (measured
0.018-0.035 in three runs: single process 0.627, Dask 0.645-0.662 over the 18 postings)."""


def test_partitions_keep_every_posting_whole_and_balance_rows() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        group = rng.integers(1, 60, size=int(rng.integers(1, 40)))
        parts = int(rng.integers(1, 6))
        runs = posting_partitions(group, parts)
        assert len(runs) == min(parts, len(group))
        assert runs[0][0] == 0 and runs[-1][1] == len(group)
        assert all(a < b for a, b in runs)  # none empty
        assert all(runs[i][1] == runs[i + 1][0] for i in range(len(runs) - 1))  # contiguous
        rows = [int(group[a:b].sum()) for a, b in runs]
        # No run exceeds its fair share by more than about one posting.
        assert max(rows) <= group.sum() / len(runs) + 2 * group.max()
    assert posting_partitions([], 2) == []
    assert posting_partitions([10, 10, 10, 10], 2) == [(0, 2), (2, 4)]


def test_the_iteration_is_chosen_by_lightgbms_own_metric_and_stopping_rule(
    trained_model: tuple[ModelRegistry, TrainResult],
) -> None:
    sets = trained_model[1].datasets.sets
    train, valid = sets["train"], sets["valid"]
    config = TRAINING_CONFIG
    dtrain = lgb.Dataset(train.x, train.y, group=train.group, feature_name=list(FEATURE_NAMES))
    dvalid = lgb.Dataset(valid.x, valid.y, group=valid.group, reference=dtrain)
    recorded: dict[str, dict[str, list[float]]] = {}
    full = lgb.train(
        config.params(),
        dtrain,
        num_boost_round=config.max_rounds,
        valid_sets=[dvalid],
        valid_names=["valid"],
        callbacks=[lgb.record_evaluation(recorded)],
    )
    curve = validation_curve(full, valid, config.label_gain)
    # The curve computed here is LightGBM's validation NDCG@10, round by round.
    np.testing.assert_allclose(curve, recorded["valid"]["ndcg@10"], rtol=0, atol=1e-9)
    # And the choice on it is the iteration early stopping keeps in a single-process fit.
    single = fit_booster(sets, config)
    assert (
        early_stopping_choice(curve, config.early_stopping_rounds)
        == single.fitting["best_iteration"]
    )
    assert early_stopping_choice([0.1, 0.3, 0.2, 0.2, 0.9], patience=2) == 2  # stopped before 0.9
    assert early_stopping_choice([0.1, 0.3, 0.2, 0.9], patience=2) == 4


def test_dask_training_registers_a_version_comparable_with_single_process_training(
    dask_cluster_client: Client,
    demo_data: EncodedDemo,
    trained_model: tuple[ModelRegistry, TrainResult],
    tmp_path: Path,
) -> None:
    single_registry, single = trained_model
    registry = ModelRegistry(tmp_path / "registry")
    result = train_and_register(
        demo_data.candidate_rows,
        demo_data.posting_rows,
        demo_data.data.outcomes,
        registry,
        config=TRAINING_CONFIG,
        protected=demo_data.data.protected,
        force_reason=FIXTURE_FORCE_REASON,
        actor="tests",
        fit=DaskFitter(dask_cluster_client),
    )
    assert result.version == "v0001" and result.promoted
    # The same artefacts as a single-process version, loadable and passing its load checks.
    here = {p.name for p in registry.version_dir("v0001").iterdir()}
    assert here == {p.name for p in single_registry.version_dir("v0001").iterdir()}
    bundle = registry.load("v0001")
    bundle.check()
    card = result.card
    assert card["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    fitting = card["model"]["fitting"]
    assert fitting["engine"] == "lightgbm.dask.DaskLGBMRanker"
    assert fitting["workers"] == DASK_WORKERS
    assert sum(p["postings"] for p in fitting["partitions"]) == card["data"]["queries"]["train"]
    assert sum(p["rows"] for p in fitting["partitions"]) == card["data"]["rows"]["train"]
    assert fitting["rounds_trained"] == TRAINING_CONFIG.max_rounds
    assert 1 <= fitting["best_iteration"] == card["model"]["best_iteration"] < 200
    text = (registry.version_dir("v0001") / BOOSTER_FILE).read_text()
    assert text.count("Tree=") == fitting["best_iteration"]  # cut to the chosen iteration
    assert "Dask workers" in (registry.version_dir("v0001") / CARD_MD_FILE).read_text()
    assert card["data"]["sha256"] == single.card["data"]["sha256"]


def test_dask_and_single_process_fits_rank_held_out_postings_alike(
    dask_cluster_client: Client,
) -> None:
    # The learners compared at the same number of trees: the iteration choice is tested above,
    # and on few validation postings it alone moves held-out NDCG by more than the learner does.
    data = generate(HELD_OUT)
    candidates, postings = _random_rows(data)
    sets = train_model(candidates, postings, data.outcomes, config=TRAINING_CONFIG).datasets.sets
    valid = sets["valid"]
    no_valid = RankingSet(valid.x[:0], valid.y[:0], valid.group[:0], (), ())
    config = replace(TRAINING_CONFIG, max_rounds=FIXED_ROUNDS)
    single = fit_booster({"train": sets["train"], "valid": no_valid}, config)
    dask = DaskFitter(dask_cluster_client)({"train": sets["train"], "valid": no_valid}, config)
    assert single.fitting["best_iteration"] == dask.fitting["best_iteration"] == FIXED_ROUNDS
    assert len(dask.fitting["partitions"]) == DASK_WORKERS

    held_out = [sets["valid"], sets["test"]]
    rows = np.concatenate([s.x for s in held_out])
    r = np.corrcoef(single.booster.predict(rows), dask.booster.predict(rows))[0, 1]

    def ndcg(fitted: FittedBooster) -> float:
        per_set = [evaluate_set(s, fitted.booster.predict(s.x))["ndcg@10"] or 0.0 for s in held_out]
        return float(np.average(per_set, weights=[s.n_queries for s in held_out]))

    ours, theirs = ndcg(dask), ndcg(single)
    figures = f"score correlation {r:.3f}; held-out NDCG@10 Dask {ours:.3f}, single {theirs:.3f}"
    assert r >= SCORE_CORRELATION_FLOOR, figures
    assert abs(ours - theirs) <= NDCG_TOLERANCE, figures
