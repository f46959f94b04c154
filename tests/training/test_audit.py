"""The LL144 bias audit: rates and impact ratios (cross-checked with fairlearn), flags, frames."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, selection_rate

from ranker.domain import Outcome, Stage
from ranker.rows import Decision
from training.audit import (
    UNKNOWN,
    AuditConfig,
    AuditMeta,
    AuditResult,
    Ranking,
    _detectable_ratio,
    audit_outcomes,
    audit_rankings,
    category_of,
)
from training.audit_sources import promotion_dates, rankings_from_decisions

META = AuditMeta(frame="model", data_source="synthetic held-out postings")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def synthetic(
    bias: float, seed: int = 1, postings: int = 60, per: int = 40
) -> tuple[list[Ranking], dict[str, dict[str, str]]]:
    """Rankings by score = noise - bias for women; 5% unknown, one race category under 2%."""
    rng = np.random.default_rng(seed)
    protected: dict[str, dict[str, str]] = {}
    rankings = []
    n = 0
    for p in range(postings):
        ids, scores = [], []
        for _ in range(per):
            cid = f"c{n}"
            n += 1
            sex = "female" if rng.random() < 0.5 else "male"
            race = str(rng.choice(["asian", "black", "white", "other"], p=[0.3, 0.3, 0.385, 0.015]))
            protected[cid] = {} if rng.random() < 0.05 else {"sex": sex, "race_ethnicity": race}
            ids.append(cid)
            scores.append(float(rng.normal()) - (bias if sex == "female" else 0.0))
        order = np.argsort(-np.asarray(scores), kind="stable")
        rankings.append(
            Ranking(f"p{p}", tuple(ids[i] for i in order), tuple(scores[i] for i in order))
        )
    return rankings, protected


def _audit(bias: float, **config: object) -> tuple[AuditResult, list[Ranking], dict]:
    rankings, protected = synthetic(bias)
    cfg = AuditConfig(n_boot=300, **config)  # type: ignore[arg-type]
    return audit_rankings(rankings, protected, meta=META, config=cfg), rankings, protected


@pytest.fixture(scope="module")
def unbiased() -> tuple[AuditResult, list[Ranking], dict]:
    return _audit(0.0)


@pytest.fixture(scope="module")
def biased() -> tuple[AuditResult, list[Ranking], dict]:
    return _audit(0.7)


def _frame(rankings: list[Ranking], protected: dict, k: int) -> pd.DataFrame:
    rows = []
    for r in rankings:
        assert r.scores is not None
        for rank, (cid, score) in enumerate(zip(r.candidate_ids, r.scores, strict=True)):
            sex = category_of(protected, cid, "sex")
            race = category_of(protected, cid, "race_ethnicity")
            rows.append(
                {
                    "sex": sex,
                    "race_ethnicity": race,
                    "sex × race_ethnicity": UNKNOWN
                    if UNKNOWN in (sex, race)
                    else f"{sex} × {race}",
                    "selected": int(rank < k),
                    "score": score,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("dimension", ["sex", "race_ethnicity", "sex × race_ethnicity"])
def test_rates_and_impact_ratios_match_fairlearn(unbiased, dimension: str) -> None:
    result, rankings, protected = unbiased
    df = _frame(rankings, protected, k=10)
    df["above"] = (df["score"] > df["score"].median()).astype(int)
    known = df[df[dimension] != UNKNOWN]
    dim = next(d for d in result.dimensions if d.name == dimension)
    included = [c.name for c in dim.categories if c.excluded is None]
    for key, column in (("selection", "selected"), ("scoring", "above")):
        mf = MetricFrame(
            metrics=selection_rate,
            y_true=known[column],
            y_pred=known[column],
            sensitive_features=known[dimension],
        )
        rates = mf.by_group
        reference = rates[included].max()
        for cat in dim.categories:
            r = cat.rates[key]
            assert r.rate == pytest.approx(rates[cat.name], abs=1e-12)
            if cat.excluded is None:
                assert r.impact_ratio == pytest.approx(rates[cat.name] / reference, abs=1e-12)
            else:
                assert r.impact_ratio is None
        assert dim.reference[key] == rates[included].idxmax()


def test_injected_disparity_is_flagged_significant(biased) -> None:
    result, _, _ = biased
    female = result.category("sex", "female")
    for key in ("selection", "scoring"):
        r = female.rates[key]
        assert r.flag == "significant"
        assert r.impact_ratio is not None and r.impact_ratio_ci is not None
        assert r.impact_ratio_ci[0] <= r.impact_ratio <= r.impact_ratio_ci[1] < 0.8
    assert result.category("sex", "male").rates["selection"].flag == ""
    significant = {(f.dimension, f.category) for f in result.significant_flags()}
    assert ("sex", "female") in significant
    assert all("female" in cat for _, cat in significant)  # every flag is a female category


def test_unbiased_sample_has_no_significant_flag(unbiased) -> None:
    result, _, _ = unbiased
    assert result.significant_flags() == []
    # Not every sample ratio is at 1: the CI, not the point estimate, decides.
    sex = {c.name: c.rates["selection"] for c in result.dimensions[0].categories}
    assert all(r.impact_ratio is not None and r.impact_ratio > 0.8 for r in sex.values())


def test_small_category_is_excluded_with_its_reason_and_never_the_reference(unbiased) -> None:
    result, _, _ = unbiased
    other = result.category("race_ethnicity", "other")
    assert other.share < 0.02
    assert other.excluded is not None and "2%" in other.excluded
    assert other.rates["selection"].rate is not None  # still shown
    assert other.rates["selection"].impact_ratio is None
    race = next(d for d in result.dimensions if d.name == "race_ethnicity")
    assert race.reference["selection"] != "other"
    assert "Excluded from impact ratios" in result.to_markdown()
    # Disabling the rule gives it a ratio.
    rankings, protected = synthetic(0.0)
    kept = audit_rankings(
        rankings, protected, meta=META, config=AuditConfig(n_boot=50, min_share=0.0)
    )
    assert kept.category("race_ethnicity", "other").rates["selection"].impact_ratio is not None


def test_unknown_category_is_counted_and_kept_out_of_the_ratios() -> None:
    protected = {
        "a": {"sex": "female", "race_ethnicity": "black"},
        "b": {"sex": "male", "race_ethnicity": "white"},
        "c": {"sex": "Prefer not to say", "race_ethnicity": "white"},
        "d": {"sex": "male"},
    }
    rankings = [Ranking("p1", ("a", "b", "c", "d"), (4.0, 3.0, 2.0, 1.0))] * 3
    result = audit_rankings(
        [Ranking(f"p{i}", r.candidate_ids, r.scores) for i, r in enumerate(rankings)],
        protected,
        meta=META,
        config=AuditConfig(k=2, n_boot=20),
    )
    dims = {d.name: d for d in result.dimensions}
    assert (dims["sex"].unknown_rows, dims["sex"].unknown_candidates) == (3, 1)
    assert (dims["race_ethnicity"].unknown_rows, dims["race_ethnicity"].unknown_candidates) == (
        3,
        1,
    )
    # The intersection is unknown when either attribute is.
    assert dims["sex × race_ethnicity"].unknown_rows == 6
    assert [c.name for c in dims["sex × race_ethnicity"].categories] == [
        "female × black",
        "male × white",
    ]
    assert [c.name for c in dims["sex"].categories] == ["female", "male"]
    male = result.category("sex", "male").rates["selection"]
    assert (male.successes, male.eligible, male.rate) == (3, 6, 0.5)
    assert result.category("sex", "female").rates["selection"].impact_ratio == 1.0
    assert male.impact_ratio == 0.5


def test_intersections_partition_the_known_rows(unbiased) -> None:
    result, _, _ = unbiased
    dims = {d.name: d for d in result.dimensions}
    inter = dims["sex × race_ethnicity"]
    assert len(inter.categories) == 8
    for sex in ("female", "male"):
        parts = [c for c in inter.categories if c.name.startswith(f"{sex} × ")]
        both_known = sum(c.rows for c in parts)
        assert both_known <= result.category("sex", sex).rows
    assert sum(c.rows for c in inter.categories) + inter.unknown_rows == result.rows


def test_detectable_ratio_matches_the_textbook_sample_size() -> None:
    # Fleiss without continuity correction: p1 = 0.5 vs p2 = 0.4 at alpha 0.05, power 0.8
    # needs 387.3 per group, so that sample detects a ratio of 0.8 and nothing closer to 1.
    assert _detectable_ratio(0.5, 387.3, 387.3, 0.05, 0.8) == pytest.approx(0.8, abs=1e-3)
    assert _detectable_ratio(0.5, 4 * 387.3, 4 * 387.3, 0.05, 0.8) == pytest.approx(0.9, abs=0.01)
    assert _detectable_ratio(0.01, 5, 5, 0.05, 0.8) is None  # nothing detectable


def test_detectable_ratio_accounts_for_clustering(unbiased) -> None:
    result, _, _ = unbiased
    sex = result.dimensions[0]
    ref = result.category("sex", sex.reference["selection"] or "").rates["selection"]
    other = next(c for c in sex.categories if c.name != sex.reference["selection"])
    r = other.rates["selection"]
    assert ref.detectable_ratio is None  # the reference is not compared with itself
    assert ref.rate is not None and r.detectable_ratio is not None
    # Clustered rows carry less information than independent ones: never a finer resolution.
    naive = _detectable_ratio(ref.rate, ref.eligible, r.eligible, 0.05, 0.8)
    assert naive is not None and 0.6 < r.detectable_ratio <= naive < 1


def test_bootstrap_is_seeded() -> None:
    a, _, _ = _audit(0.3, seed=5)
    b, _, _ = _audit(0.3, seed=5)
    c, _, _ = _audit(0.3, seed=6)
    assert a.to_json() == b.to_json()
    assert a.to_json() != c.to_json()


def test_json_and_markdown_report(biased) -> None:
    result, _, _ = biased
    data = json.loads(result.to_json())
    assert data["meta"]["frame"] == "model"
    assert data["sample"]["rankings"] == 60
    assert any(f["category"] == "female" and f["significant"] for f in data["flags"])
    sex = next(d for d in data["dimensions"] if d["name"] == "sex")
    assert sex["unknown"]["rows"] > 0
    text = result.to_markdown()
    for needle in (
        "## Flags",
        "## sex",
        "## sex × race_ethnicity",
        "selection rate (top 10)",
        "scoring rate",
        "significant",
        "Detectable ratio",
    ):
        assert needle in text


# -- frame (a) ------------------------------------------------------------------------------


def _events(posting: str, cid: str, stages: list[Stage], rejected: bool = False) -> list[Outcome]:
    out = [Outcome(posting, cid, s, T0 + timedelta(days=i)) for i, s in enumerate(stages)]
    if rejected:
        out.append(Outcome(posting, cid, Stage.REJECTED, T0 + timedelta(days=len(stages))))
    return out


def test_historical_pass_through_rates_on_a_known_set() -> None:
    a, s, i, o, h = (Stage.APPLIED, Stage.SCREENED, Stage.INTERVIEWED, Stage.OFFERED, Stage.HIRED)
    outcomes = [
        # Women: 4 applied, 2 screened, 1 interviewed, none offered.
        *_events("P1", "f1", [a, s, i]),
        *_events("P1", "f2", [a, s], rejected=True),
        *_events("P2", "f3", [a], rejected=True),
        *_events("P2", "f4", [a]),
        # Men: 4 applied, 4 screened, 2 interviewed, 1 offered and hired.
        *_events("P1", "m1", [a, s, i, o, h]),
        *_events("P1", "m2", [a, s, i], rejected=True),
        *_events("P2", "m3", [a, s]),
        # Only a screening event recorded: reaching it implies having applied.
        *_events("P2", "m4", [s]),
    ]
    protected = {f"f{j}": {"sex": "female"} for j in range(1, 5)}
    protected |= {f"m{j}": {"sex": "male"} for j in range(1, 5)}
    result = audit_outcomes(outcomes, protected, config=AuditConfig(n_boot=50))
    assert result.meta.frame == "historical" and result.meta.period == ("2025-01-01", "2025-01-05")
    assert (result.rows, result.rankings) == (8, 2)
    f, m = result.category("sex", "female").rates, result.category("sex", "male").rates
    assert (f["screened"].successes, f["screened"].eligible) == (2, 4)
    assert (m["screened"].successes, m["screened"].eligible) == (4, 4)
    assert f["screened"].impact_ratio == 0.5 and m["screened"].impact_ratio == 1.0
    assert f["interviewed"].rate == 0.5 and m["interviewed"].rate == 0.5
    assert f["interviewed"].impact_ratio == 1.0
    assert f["offered"].rate == 0.0 and m["offered"].rate == 0.5
    assert f["offered"].impact_ratio == 0.0
    assert f["hired"].rate is None and f["hired"].eligible == 0  # nobody reached "offered"
    assert m["hired"].rate == 1.0
    assert [x.key for x in result.metrics] == ["screened", "interviewed", "offered", "hired"]
    assert "applied → screened" in result.to_markdown()
    # No race/ethnicity recorded: every row is unknown, nothing is compared.
    race = next(d for d in result.dimensions if d.name == "race_ethnicity")
    assert race.categories == () and race.unknown_rows == 8


# -- frame (c) ------------------------------------------------------------------------------


def test_served_decisions_use_the_pool_and_report_scoring_unavailable() -> None:
    protected = {f"c{j}": {"sex": "female" if j % 2 else "male"} for j in range(10)}
    decisions = [
        Decision(
            request_id=f"r{n}",
            at=T0,
            model_version="v0001",
            posting_id=f"P{n}",
            posting_hash="h",
            top_k=2,
            feature_names=("f",),
            candidate_ids=("c0", "c2"),  # two men returned each time
            scores=np.array([2.0, 1.0], dtype=np.float32),
            features=np.zeros((2, 1), dtype=np.float32),
            params={},
        )
        for n in range(5)
    ]
    rankings = rankings_from_decisions(decisions, pool=[f"c{j}" for j in range(10)])
    result = audit_rankings(rankings, protected, meta=META, config=AuditConfig(k=2, n_boot=20))
    assert [m.key for m in result.metrics] == ["selection"]
    assert any("Scoring rate unavailable" in n for n in result.notes)
    assert result.rows == 50  # 10 pool candidates in each of 5 rankings
    male = result.category("sex", "male").rates["selection"]
    female = result.category("sex", "female").rates["selection"]
    assert (male.successes, male.eligible, male.rate) == (10, 25, 0.4)
    assert female.rate == 0.0 and female.impact_ratio == 0.0


def test_complete_scores_give_the_scoring_rate() -> None:
    protected = {"a": {"sex": "female"}, "b": {"sex": "male"}}
    rankings = [Ranking(f"p{i}", ("b", "a"), (1.0, 0.0)) for i in range(4)]
    result = audit_rankings(rankings, protected, meta=META, config=AuditConfig(k=1, n_boot=20))
    assert [m.key for m in result.metrics] == ["selection", "scoring"]
    assert result.category("sex", "male").rates["scoring"].rate == 1.0  # above median 0.5
    assert result.category("sex", "female").rates["scoring"].rate == 0.0


def test_promotion_dates_from_the_registry_pointer(tmp_path) -> None:
    assert promotion_dates(tmp_path) == (None, {})
    (tmp_path / "current.json").write_text(
        json.dumps(
            {
                "current": "v0002",
                "history": ["v0001", "v0002"],
                "events": [
                    {"at": "2025-02-01T00:00:00+00:00", "action": "promote", "version": "v0001"},
                    {"at": "2025-03-01T00:00:00+00:00", "action": "promote", "version": "v0002"},
                    {"at": "2025-03-02T00:00:00+00:00", "action": "rollback", "version": "v0001"},
                    {"at": "2025-04-01T00:00:00+00:00", "action": "promote", "version": "v0002"},
                ],
            }
        )
    )
    first, per_version = promotion_dates(tmp_path)
    assert first == "2025-02-01T00:00:00+00:00"
    assert per_version == {
        "v0001": "2025-02-01T00:00:00+00:00",
        "v0002": "2025-03-01T00:00:00+00:00",
    }
