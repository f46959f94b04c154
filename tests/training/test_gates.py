"""Promotion gates: a weak or biased version is refused with the failing gate and by how much."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from ranker.config import Settings
from ranker.domain import Candidate, Posting
from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import PreparedCandidate, PreparedPosting, prepare_candidate, prepare_posting
from training.evaluate import evaluate_postings
from training.gates import GatePolicy, GateReport, check_gates, in_service_of

N_CANDIDATES = 60
N_POSTINGS = 32


class FnScorer:
    """Scores feature rows with a function of the named columns."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], np.ndarray]) -> None:
        self.fn = fn

    def score(self, x: np.ndarray) -> np.ndarray:
        cols = {name: x[:, i].astype(np.float64) for i, name in enumerate(FEATURE_NAMES)}
        return np.asarray(self.fn(cols), dtype=np.float32)


class FnModel:
    feature_names = FEATURE_NAMES

    def __init__(self, builder: FeatureBuilder, fn: Callable[[dict[str, np.ndarray]], np.ndarray]):
        self.builder = builder
        self.scorer = FnScorer(fn)


def _setup() -> tuple[
    dict[str, PreparedCandidate],
    dict[str, PreparedPosting],
    dict[tuple[str, str], int],
    dict[str, dict[str, str]],
]:
    """Candidates with random cosine and years; the women's CVs mention python (as the postings
    do), the men's java, so BM25 separates the sexes while relevance (years >= 8) does not
    depend on sex and the hand rule (which ignores BM25) does not see it."""
    rng = np.random.default_rng(5)
    cands: dict[str, PreparedCandidate] = {}
    protected: dict[str, dict[str, str]] = {}
    for i in range(N_CANDIDATES):
        cid = f"c{i:02d}"
        cos = float(rng.uniform(0.1, 0.9))
        years = float(rng.integers(0, 16))
        v = np.array([cos, math.sqrt(1 - cos**2), 0.0], dtype=np.float32)
        female = i % 2 == 0
        cands[cid] = prepare_candidate(
            Candidate(
                id=cid,
                cv_text=f"engineer {cid} " + ("python" if female else "java"),
                years_experience=years,
            ),
            v,
            np.array([[0.0, 0.0, 1.0]], dtype=np.float32),
        )
        protected[cid] = {"sex": "female" if female else "male", "race_ethnicity": "unknown"}
    e1 = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    postings = {
        f"p{j:02d}": prepare_posting(
            Posting(id=f"p{j:02d}", title="Engineer", description="engineer python"),
            e1,
        )
        for j in range(N_POSTINGS)
    }
    labels: dict[tuple[str, str], int] = {}
    ids = sorted(cands)
    for pid in postings:
        for cid in rng.choice(ids, size=20, replace=False):
            labels[(pid, str(cid))] = 3 if cands[str(cid)].candidate.years_experience >= 8 else 0
    return cands, postings, labels, protected


@pytest.fixture(scope="module")
def setup() -> tuple[
    dict[str, PreparedCandidate],
    dict[str, PreparedPosting],
    dict[tuple[str, str], int],
    dict[str, dict[str, str]],
]:
    return _setup()


def _gates(setup, fn, policy: GatePolicy | None = None) -> GateReport:  # type: ignore[no-untyped-def]
    cands, postings, labels, protected = setup
    model = FnModel(FeatureBuilder(Lexicon.fit(cands.values(), min_df=1)), fn)
    evaluation = evaluate_postings(
        {"model": model},
        list(postings.values()),
        cands,
        labels,
        retrieve_n=N_CANDIDATES,
        index_storage="flat",
    )
    settings = Settings(fallback="hand_rule")
    return check_gates(
        evaluation=evaluation,
        parity_diff=1e-7,
        model=model,
        in_service=in_service_of(evaluation, None, None, "hand_rule"),
        candidates=cands,
        postings=postings,
        protected=protected,
        settings=settings,
        policy=policy or GatePolicy(min_postings=30),
    )


def _by_gate(report: GateReport) -> dict[str, dict[str, object]]:
    return {g["gate"]: g for g in report.as_dict()["gates"]}


def test_a_version_that_learnt_the_signal_passes_every_gate(setup) -> None:  # type: ignore[no-untyped-def]
    report = _gates(setup, lambda c: c["years_experience"])
    assert report.passed, report.as_dict()
    assert report.in_service == "fallback-hand-rule"
    gates = _by_gate(report)
    assert gates["held_out_postings"]["measured"] == f"{N_POSTINGS} postings"
    assert gates["onnx_parity"]["passed"]


def test_a_weak_version_is_refused_with_the_failing_gates_and_by_how_much(setup) -> None:  # type: ignore[no-untyped-def]
    # Ranks the least experienced first: worse than search order and than the hand rule.
    report = _gates(setup, lambda c: -c["years_experience"])
    assert not report.passed
    gates = _by_gate(report)
    assert not gates["beats_retrieval"]["passed"]
    assert "short of 0" in str(gates["beats_retrieval"]["detail"])
    assert not gates["vs_in_service"]["passed"]
    assert "significantly worse" in str(gates["vs_in_service"]["detail"])
    assert "fallback-hand-rule" in str(gates["vs_in_service"]["required"])
    assert gates["held_out_postings"]["passed"] and gates["impact_ratio_floor"]["passed"]


def test_too_few_postings_fail_their_gate(setup) -> None:  # type: ignore[no-untyped-def]
    report = _gates(setup, lambda c: c["years_experience"], GatePolicy(min_postings=40))
    gates = _by_gate(report)
    assert not gates["held_out_postings"]["passed"]
    assert gates["held_out_postings"]["detail"] == f"short by {40 - N_POSTINGS}"
    assert [g.gate for g in report.failed()] == ["held_out_postings"]


def test_a_version_that_selects_by_a_proxy_of_sex_fails_the_impact_gates(setup) -> None:  # type: ignore[no-untyped-def]
    # BM25 of "python" is positive for the women only: ranking by it first fills every top 10
    # with women, where the hand rule in service picks by search order (sex-blind here).
    report = _gates(setup, lambda c: 100 * c["bm25"] + c["years_experience"])
    gates = _by_gate(report)
    assert not gates["impact_ratio_floor"]["passed"]
    assert "sex=male" in str(gates["impact_ratio_floor"]["detail"])
    assert "significant" in str(gates["impact_ratio_floor"]["detail"])
    assert not gates["impact_ratio_vs_service"]["passed"]
    assert "over the margin" in str(gates["impact_ratio_vs_service"]["detail"])


def test_the_beats_rule_needs_a_significant_gain_over_the_version_in_service(setup) -> None:  # type: ignore[no-untyped-def]
    # The hand rule is in service; a model equal to it cannot "beat" it, but is not worse.
    def same(c: dict[str, np.ndarray]) -> np.ndarray:
        return (
            3 * c["required_coverage"]
            + c["location_fit"]
            + (1 - c["under_min_years"])
            + 0.5 * c["dense_cosine"]
        )

    lenient = _by_gate(_gates(setup, same))
    strict = _by_gate(_gates(setup, same, GatePolicy(min_postings=30, vs_service="beats")))
    assert lenient["vs_in_service"]["passed"]
    assert not strict["vs_in_service"]["passed"]


def test_policy_comes_from_settings() -> None:
    s = Settings(gate_min_postings=5, gate_vs_service="beats", gate_impact_margin=0.1)
    assert GatePolicy.from_settings(s) == GatePolicy(
        min_postings=5, vs_service="beats", impact_floor=0.8, impact_margin=0.1
    )
