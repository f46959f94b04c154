"""Scoring: ONNX Runtime (`OnnxScorer`) against LightGBM's native predict on 500 candidates."""

from __future__ import annotations

import time
from collections.abc import Callable

import lightgbm as lgb
import numpy as np

from bench._baseline import model_dir
from bench._data import BaseSet, base_set
from bench._report import Summary, ms, ratio, table
from embeddings.runtime import intra_op_threads
from ranker.config import Settings
from ranker.features import FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import prepare_candidate, prepare_posting
from ranker.registry import BOOSTER_FILE, LEXICON_FILE, MODEL_FILE
from ranker.scorer import OnnxScorer

TITLE = "Scoring"


def feature_rows(base: BaseSet, n: int) -> np.ndarray:
    """Real feature rows: the first posting against `n` seed candidates (repeated if fewer)."""
    folder = model_dir(base)
    builder = FeatureBuilder(Lexicon.from_json((folder / LEXICON_FILE).read_text()))
    posting = prepare_posting(base.postings[0].posting, base.postings[0].vector)
    rows = [base.candidates[i % len(base.candidates)] for i in range(n)]
    prepared = [prepare_candidate(r.candidate, r.doc_vector, r.chunk_vectors) for r in rows]
    return builder.build(posting, prepared)


def timings(fn: Callable[[], object], repeats: int, warmup: int = 20) -> np.ndarray:
    """Milliseconds of each of `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1000
    return out


def run(n: int = 500, repeats: int = 2000, base: BaseSet | None = None) -> str:
    """Median (and tail) time to score `n` feature rows with each runtime."""
    base = base if base is not None else base_set()
    folder = model_dir(base)
    settings = Settings()
    x = feature_rows(base, n)
    scorer = OnnxScorer(folder / MODEL_FILE, settings.ort_session)
    booster = lgb.Booster(model_file=str(folder / BOOSTER_FILE))
    threads = intra_op_threads(settings.ort_session)
    onnx = Summary.of(timings(lambda: scorer.score(x), repeats))
    # LightGBM's default (all cores through OpenMP) is what the straightforward stack runs.
    native = Summary.of(timings(lambda: booster.predict(x), repeats))
    native_1 = Summary.of(timings(lambda: booster.predict(x, num_threads=1), repeats))
    diff = float(np.max(np.abs(scorer.score(x) - booster.predict(x))))
    trees = booster.num_trees()
    rows: list[tuple[str, Summary, str]] = [
        (f"ONNX Runtime (`OnnxScorer`, {threads} intra-op threads)", onnx, "1.00×"),
        ("LightGBM `Booster.predict`, default threads", native, ratio(native.p50, onnx.p50)),
        ("LightGBM `Booster.predict`, `num_threads=1`", native_1, ratio(native_1.p50, onnx.p50)),
    ]
    lines = [
        f"## {TITLE}",
        "",
        f"{n} feature rows of real candidates ({x.shape[1]} features), the served model "
        f"({trees} trees), {repeats} timed calls each after 20 warm-up calls, in one process. "
        f"Largest score difference ONNX vs LightGBM on these rows: {diff:.1e}. "
        "Speed-up = LightGBM time / ONNX time at the median.",
        "",
        table(
            ["runtime", "p50 ms", "p95 ms", "p99 ms", "ONNX speed-up (p50)"],
            [[name, ms(s.p50), ms(s.p95), ms(s.p99), r] for name, s, r in rows],
        ),
    ]
    return "\n".join(lines) + "\n"
