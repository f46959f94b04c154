"""The scorers: ONNX matches LightGBM, shapes are checked, broken files refused, the blend adds."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from ranker.errors import InvalidInput, ModelRejected
from ranker.explain import TreeExplainer
from ranker.features import FEATURE_NAMES
from ranker.registry import BOOSTER_FILE, MODEL_FILE, ModelRegistry
from ranker.scorer import BLEND_FEATURE, BlendedScorer, OnnxScorer


def test_scores_equal_lightgbm_on_random_rows(trained_registry: ModelRegistry) -> None:
    folder = trained_registry.version_dir("v0001")
    scorer = OnnxScorer(folder / MODEL_FILE)
    booster = lgb.Booster(model_file=str(folder / BOOSTER_FILE))
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(500, len(FEATURE_NAMES))).astype(np.float32)
    got = scorer.score(x)
    assert got.shape == (500,) and got.dtype == np.float32
    assert np.max(np.abs(got - booster.predict(x))) <= 1e-4
    assert scorer.n_features == len(FEATURE_NAMES)


def test_shapes_are_checked(trained_registry: ModelRegistry) -> None:
    scorer = OnnxScorer(trained_registry.version_dir("v0001") / MODEL_FILE)
    assert scorer.score(np.zeros((0, len(FEATURE_NAMES)))).shape == (0,)
    with pytest.raises(InvalidInput, match="features, got shape"):
        scorer.score(np.zeros((3, len(FEATURE_NAMES) - 1)))
    with pytest.raises(InvalidInput):
        scorer.score(np.zeros(len(FEATURE_NAMES)))


def test_missing_or_corrupt_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelRejected, match="does not exist"):
        OnnxScorer(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelRejected, match="not a loadable ONNX model"):
        OnnxScorer(bad)


def test_the_served_score_is_the_model_plus_the_blend_and_explanations_add_up(
    trained_registry: ModelRegistry,
) -> None:
    folder = trained_registry.version_dir("v0001")
    model = OnnxScorer(folder / MODEL_FILE)
    column = FEATURE_NAMES.index(BLEND_FEATURE)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, len(FEATURE_NAMES))).astype(np.float32)
    np.testing.assert_array_equal(BlendedScorer(model, column, 0.0).score(x), model.score(x))
    blended = BlendedScorer(model, column, 0.5).score(x)
    np.testing.assert_allclose(blended, model.score(x) + 0.5 * x[:, column], atol=1e-6)
    # TreeSHAP with the blend: the contributions (plus the model's expected value) still sum to
    # the served score, the blend term counted in its feature's contribution.
    booster = lgb.Booster(model_file=str(folder / BOOSTER_FILE))
    expected = booster.predict(x[:1], pred_contrib=True)[0, -1]
    explainer = TreeExplainer(folder / BOOSTER_FILE, FEATURE_NAMES, blend=(column, 0.5))
    np.testing.assert_allclose(
        explainer.contributions(x).sum(axis=1) + expected, blended, atol=1e-4
    )
    # The registry serves the card's blend.
    bundle = trained_registry.load("v0001")
    assert bundle.scorer.column == column
    assert bundle.scorer.weight == bundle.card["blend"]["weight"]
