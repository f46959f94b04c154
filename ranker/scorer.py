"""The ranking model: feature rows in, one score per row out (ONNX Runtime, plus the blend).

`OnnxScorer` runs the exported LightGBM model. `BlendedScorer` is what ranks: the model's score
plus a weight times one feature column, the posting-relative retrieval similarity
(`dense_cosine_z`), with the weight chosen on the validation postings at training time and
recorded in the model card (`training.blend`). The blend keeps a posting unlike anything in the
training data (no skills, unseen vocabulary) close to retrieval order, where the model alone would
rank by text-similarity trade-offs learnt from another corpus.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from embeddings.config import OrtSessionSettings
from embeddings.runtime import make_session
from ranker.errors import InvalidInput, ModelRejected

PARITY_TOLERANCE = 1e-4
"""Largest |ONNX - LightGBM| score difference accepted, at export and whenever a version is
checked; the one tolerance of the project (onnxmltools' converted trees agree to ~1e-6)."""


class OnnxScorer:
    """Scores feature matrices with an exported LightGBM model; thread-safe (ORT sessions are)."""

    def __init__(self, path: Path, session: OrtSessionSettings | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelRejected(f"{self.path} does not exist; train a model first: `ranker train`")
        # One intra-op thread whatever `session` says: a tree ensemble over a few hundred rows
        # takes ~1 ms, and a second thread spinning on a busy 2-core machine made it slower
        # (3 ms vs 1.2 ms for 500 rows); serving gets its parallelism from concurrent requests.
        options = replace(session or OrtSessionSettings(), intra_op_threads=1)
        try:
            self._session = make_session(self.path, options)
        except Exception as e:  # ORT raises its own untyped errors for a corrupt file
            raise ModelRejected(
                f"{self.path} is not a loadable ONNX model ({e}); retrain: `ranker train`"
            ) from e
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise ModelRejected(f"{self.path} must take one 2-d float input, found {inputs}")
        self._input = inputs[0].name
        width = inputs[0].shape[1]
        self.n_features: int | None = width if isinstance(width, int) else None
        self._output = self._session.get_outputs()[0].name

    def score(self, x: np.ndarray) -> np.ndarray:
        """(n,) float32 scores of the (n, n_features) matrix `x`; higher ranks first."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or (self.n_features is not None and x.shape[1] != self.n_features):
            raise InvalidInput(
                f"the model takes (n, {self.n_features}) features, got shape {x.shape}; "
                "build them with the model version's FeatureBuilder"
            )
        if len(x) == 0:
            return np.zeros(0, dtype=np.float32)
        out = self._session.run([self._output], {self._input: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(-1)


BLEND_FEATURE = "dense_cosine_z"
"""The feature column the served score adds, times the version's blend weight."""


class BlendedScorer:
    """The served score: `model`'s plus `weight` times feature column `column`; thread-safe."""

    def __init__(self, model: OnnxScorer, column: int, weight: float) -> None:
        self.model = model
        self.column = column
        self.weight = float(weight)

    @property
    def n_features(self) -> int | None:
        return self.model.n_features

    def score(self, x: np.ndarray) -> np.ndarray:
        """(n,) float32: the model's scores of `x`, plus the blend term."""
        scores = self.model.score(x)
        if self.weight and len(scores):
            term = np.float32(self.weight) * np.asarray(x, dtype=np.float32)[:, self.column]
            scores = (scores + term).astype(np.float32)
        return scores
