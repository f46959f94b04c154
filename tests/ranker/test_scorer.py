"""The ONNX scorer: scores match LightGBM's, shapes are checked, broken files are refused."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from ranker.errors import InvalidInput, ModelRejected
from ranker.features import FEATURE_NAMES
from ranker.registry import BOOSTER_FILE, MODEL_FILE, ModelRegistry
from ranker.scorer import OnnxScorer


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
