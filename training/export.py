"""LightGBM booster to ONNX (onnxmltools, opset <= 15), and the parity check that guards it.

onnxmltools converts a lambdarank booster through its regressor path (upstream calls ranking
unsupported), so every export is checked: the ONNX scores of real feature rows must equal
LightGBM's own predictions within `ranker.scorer.PARITY_TOLERANCE` (the one tolerance the registry
checks again at every load), or the model is refused.

ONNX compares float32 features with float32 thresholds, LightGBM with double thresholds. A double
threshold just below a float32 feature value rounds *up* onto that value, and the ONNX tree then
sends the row the other way (one such split cost 6.5e-3 of score on the demo data). Every
threshold is therefore rounded *down* to a float32 before conversion: for every float32 x,
x <= t exactly when x <= the largest float32 not above t, so no decision changes.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnxmltools
from onnxmltools.convert.common.data_types import FloatTensorType

from embeddings.config import OrtSessionSettings
from ranker.errors import ModelRejected
from ranker.scorer import PARITY_TOLERANCE, OnnxScorer

TARGET_OPSET = 15
INPUT_NAME = "features"


_THRESHOLDS = re.compile(r"^threshold=(.*)$", re.MULTILINE)
_TREE_SIZES = re.compile(r"^tree_sizes=.*\n", re.MULTILINE)


def _float32_down(value: str) -> str:
    t = float(value)
    t32 = np.float32(t)
    if float(t32) > t:
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return repr(float(t32))


def float32_thresholds(model_text: str) -> str:
    """LightGBM model text with every split threshold rounded down to a float32 value.

    Decisions on float32 features stay the same (categorical thresholds are small integers,
    already exact); the ONNX converter then writes each threshold without rounding.
    """
    text = _THRESHOLDS.sub(
        lambda m: "threshold=" + " ".join(_float32_down(v) for v in m.group(1).split()),
        model_text,
    )
    # `tree_sizes` gives each tree's byte length, which the new numbers change; without it
    # LightGBM reads the trees one after the other.
    return _TREE_SIZES.sub("", text)


def to_onnx(booster: lgb.Booster) -> bytes:
    """The booster as a serialised ONNX model with one (n, n_features) float input."""
    n_features = booster.num_feature()
    exact = lgb.Booster(model_str=float32_thresholds(booster.model_to_string()))
    model = onnxmltools.convert_lightgbm(
        exact,
        name="ranker",
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
        zipmap=False,
    )
    # The producer fields carry no timestamp, so the same booster gives the same bytes.
    return bytes(model.SerializeToString())


def parity(
    onnx_model: bytes,
    booster: lgb.Booster,
    x: np.ndarray,
    session: OrtSessionSettings | None = None,
) -> float:
    """Max |ONNX - LightGBM| over the rows of `x`, scored the way serving scores (OnnxScorer)."""
    x = np.asarray(x, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(onnx_model)
        got = OnnxScorer(path, session).score(x)
    want = np.asarray(booster.predict(x), dtype=np.float64)
    return float(np.max(np.abs(got.astype(np.float64) - want))) if len(x) else 0.0


def check_parity(
    onnx_model: bytes,
    booster: lgb.Booster,
    x: np.ndarray,
    session: OrtSessionSettings | None = None,
) -> float:
    """`parity`, raising `ModelRejected` when it exceeds `PARITY_TOLERANCE`."""
    diff = parity(onnx_model, booster, x, session)
    if not diff <= PARITY_TOLERANCE:
        raise ModelRejected(
            f"ONNX export differs from LightGBM by {diff:.2e} (allowed {PARITY_TOLERANCE:g}) on "
            f"{len(x)} rows; not registering it. Check the onnxmltools version or train again."
        )
    return diff
