"""ONNX export: thresholds that float32 rounding would move keep LightGBM's decisions."""

from __future__ import annotations

import re

import lightgbm as lgb
import numpy as np

from ranker.scorer import PARITY_TOLERANCE
from training.export import float32_thresholds, parity, to_onnx


def _stump_split_just_below(value: np.float32) -> lgb.Booster:
    """One tree, one split, its threshold the double just below a float32 feature value."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (200, 1)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.float64)
    params = {"objective": "regression", "num_leaves": 2, "min_data_in_leaf": 5, "verbose": -1}
    text = lgb.train(params, lgb.Dataset(x, y), num_boost_round=1).model_to_string()
    below = float(np.nextafter(float(value), -np.inf))  # rounds to `value` as a float32
    text = re.sub(r"^threshold=\S+", f"threshold={below!r}", text, count=1, flags=re.M)
    text = re.sub(r"^tree_sizes=.*\n", "", text, flags=re.M)
    return lgb.Booster(model_str=text)


def test_export_keeps_decisions_at_thresholds_float32_rounding_would_move() -> None:
    value = np.float32(0.0868053063750267)  # the value that broke parity on the demo data
    booster = _stump_split_just_below(value)
    rows = np.array([[value], [np.nextafter(value, np.float32(0))], [0.9], [0.1]], np.float32)
    want = booster.predict(rows)
    assert want[0] != want[1]  # LightGBM sends `value` right and its float32 predecessor left
    assert parity(to_onnx(booster), booster, rows) <= PARITY_TOLERANCE
    # Rounding the thresholds down changes no prediction on float32 rows.
    rounded = lgb.Booster(model_str=float32_thresholds(booster.model_to_string()))
    grid = np.linspace(0, 1, 5001, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(rounded.predict(rows), want)
    np.testing.assert_array_equal(rounded.predict(grid), booster.predict(grid))
