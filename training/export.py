"""LightGBM booster to ONNX (onnxmltools, opset <= 15), and the parity check that guards it.

onnxmltools converts a lambdarank booster through its regressor path (upstream calls ranking
unsupported), so every export is checked: the ONNX scores of real feature rows must equal
LightGBM's own predictions within `ranker.scorer.PARITY_TOLERANCE` (the one tolerance the registry
checks again at every load), or the model is refused.
"""

from __future__ import annotations

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


def to_onnx(booster: lgb.Booster) -> bytes:
    """The booster as a serialised ONNX model with one (n, n_features) float input."""
    n_features = booster.num_feature()
    model = onnxmltools.convert_lightgbm(
        booster,
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
