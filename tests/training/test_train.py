"""Training: deterministic model bytes, ONNX parity, registration and promotion rules."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ranker.errors import InvalidInput, ModelRejected
from ranker.registry import BOOSTER_FILE, ModelRegistry
from ranker.scorer import PARITY_TOLERANCE
from tests.fixtures.training import TRAINING_CONFIG, EncodedDemo
from training import export
from training.labels import STAGE_LABEL
from training.train import TrainConfig, TrainResult, register_result, train_model


def test_same_data_and_seed_give_the_same_model_bytes(
    demo_data: EncodedDemo, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    registry, first = trained_model
    again = train_model(
        demo_data.candidate_rows,
        demo_data.posting_rows,
        demo_data.data.outcomes,
        config=TRAINING_CONFIG,
    )
    stored = (registry.version_dir("v0001") / BOOSTER_FILE).read_bytes()
    assert again.booster_text.encode("utf-8") == stored
    assert again.onnx_model == first.onnx_model


def test_onnx_matches_lightgbm_on_the_test_features(
    trained_model: tuple[ModelRegistry, TrainResult],
) -> None:
    _, result = trained_model
    test = result.datasets.sets["test"]
    assert len(test.y) > 0
    assert export.parity(result.onnx_model, result.booster, test.x) <= PARITY_TOLERANCE
    assert result.card["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    assert result.card["parity"]["tolerance"] == PARITY_TOLERANCE


def test_a_failing_parity_check_refuses_the_model(
    demo_data: EncodedDemo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(export, "parity", lambda *a, **k: 3e-3)
    with pytest.raises(ModelRejected, match="differs from LightGBM by 3.00e-03"):
        train_model(
            demo_data.candidate_rows,
            demo_data.posting_rows,
            demo_data.data.outcomes,
            config=TRAINING_CONFIG,
        )


def test_model_ranks_better_than_chance(trained_model: tuple[ModelRegistry, TrainResult]) -> None:
    _, result = trained_model
    valid = result.metrics["valid"]["model"]
    test = result.metrics["test"]["model"]
    # Eight training postings are few; still, the hidden process is learnable.
    assert max(valid["ndcg@10"], test["ndcg@10"]) > 0.5


def test_promotion_rules(tmp_path: Path, trained_model: tuple[ModelRegistry, TrainResult]) -> None:
    _, result = trained_model
    assert result.gates is not None and not result.gates["passed"]  # 2 held-out postings
    registry = ModelRegistry(tmp_path / "reg")
    # Nothing in service: it would be promoted, but the gates refuse it; it is registered.
    first = register_result(result, registry)
    assert not first.promoted and registry.current_version() is None
    stored = registry.gates(str(first.version))
    assert stored is not None and stored["version"] == first.version and not stored["passed"]
    held = next(g for g in stored["gates"] if g["gate"] == "held_out_postings")
    assert not held["passed"] and held["detail"] == "short by 28"
    assert first.card["gates"]["passed"] is False  # the model card holds them too
    # Forced, with a reason: promoted, and the history says who, why, and that it was forced.
    forced = register_result(result, registry, force_reason="pilot on small data", actor="ana")
    assert forced.promoted and registry.current_version() == forced.version
    event = registry.events()[-1]
    assert event["action"] == "promote" and event["version"] == forced.version
    assert event["actor"] == "ana" and event["reason"] == "pilot on small data"
    assert event["forced"] is True and event["gates"] == "failed"
    # Something in service: registered only; asked to promote, still refused by the gates.
    second = register_result(result, registry)
    assert not second.promoted and registry.current_version() == forced.version
    third = register_result(result, registry, promote=True)
    assert not third.promoted and registry.current_version() == forced.version
    # Gates that passed (against what is in service) promote without force.
    passing = replace(result, gates={**(result.gates or {}), "passed": True})
    fourth = register_result(passing, registry, promote=True, actor="bo")
    assert fourth.promoted and registry.current_version() == fourth.version
    assert registry.events()[-1]["forced"] is False
    assert registry.events()[-1]["reason"] == "passed the promotion gates"
    assert fourth.card["version"] == fourth.version


def test_training_needs_outcomes_beyond_applied(demo_data: EncodedDemo) -> None:
    applied = [o for o in demo_data.data.outcomes if o.stage.value == "applied"]
    with pytest.raises(InvalidInput, match="beyond 'applied'"):
        train_model(demo_data.candidate_rows, demo_data.posting_rows, applied)
    with pytest.raises(InvalidInput, match="ranker ingest"):
        train_model([], demo_data.posting_rows, demo_data.data.outcomes)


def test_check_rows_are_scored_like_the_booster(
    trained_model: tuple[ModelRegistry, TrainResult],
) -> None:
    registry, result = trained_model
    bundle = registry.load()
    np.testing.assert_allclose(
        bundle.scorer.model.score(result.check_rows),
        result.booster.predict(result.check_rows),
        atol=1e-4,
    )


def test_label_gain_covers_every_label() -> None:
    # LightGBM refuses labels without a gain; training weighs grades linearly (see TrainConfig).
    gain = TrainConfig().params()["label_gain"]
    assert gain == [float(g) for g in range(max(STAGE_LABEL.values()) + 1)]
