"""Frames (a), (b) and (c) on the demo generator's scenarios, the card's audit, and reweighing."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ranker.api import RankQuery
from ranker.encoding import TextEncoder
from ranker.errors import InvalidInput
from ranker.features import FeatureBuilder
from ranker.pipeline import RankingPipeline
from ranker.registry import ModelRegistry
from ranker.store import SqliteStore
from tests.fixtures.server import serving_settings
from tests.fixtures.training import TRAINING_CONFIG, EncodedDemo
from training import commands
from training.audit import AuditConfig, audit_outcomes
from training.audit_model import DENOMINATOR_NOTE, held_out_audit
from training.card import render_markdown
from training.dataset import RankingSet, prepare_all
from training.demo import Bias, DemoConfig, generate
from training.mitigation import MitigationConfig, training_weights
from training.train import TrainedModel, TrainResult, train_model

runner = CliRunner()
SCENARIO = DemoConfig(candidates=600, postings=120, applicants=(20, 40), seed=5, short_cvs=True)
"""Outcomes only (no encoding): big enough that the CI decides, a second or two to generate."""
CAREER_BREAK = Bias("sex", "female", "career_break", 0.9)


def _app() -> typer.Typer:
    app = typer.Typer()
    commands.register(app)
    return app


def _store(path: Path, demo: EncodedDemo) -> None:
    """The demo set as `ranker ingest` leaves it."""
    store = SqliteStore(path)
    try:
        store.upsert_candidates(demo.candidate_rows)
        store.upsert_postings(demo.posting_rows)
        store.record_outcomes(demo.data.outcomes)
        store.upsert_protected(
            [(c, k, v) for c, attrs in demo.data.protected.items() for k, v in attrs.items()]
        )
    finally:
        store.close()


# -- frame (a) -------------------------------------------------------------------------------


def test_frame_a_flags_the_injected_bias_and_not_the_unbiased_default() -> None:
    config = AuditConfig(n_boot=300)
    biased = generate(replace(SCENARIO, bias=CAREER_BREAK))
    result = audit_outcomes(biased.outcomes, biased.protected, attributes=("sex",), config=config)
    flagged = {(f.category, f.metric) for f in result.significant_flags()}
    assert ("female", "screened") in flagged
    assert not any(c == "male" for c, _ in flagged)

    unbiased = generate(SCENARIO)
    clean = audit_outcomes(
        unbiased.outcomes, unbiased.protected, attributes=("sex",), config=config
    )
    assert clean.significant_flags() == []
    female = clean.category("sex", "female").rates["screened"]
    assert female.impact_ratio_ci is not None and female.impact_ratio_ci[1] >= 0.8


# -- frame (b) -------------------------------------------------------------------------------


def test_the_card_embeds_the_frame_b_audit_of_its_held_out_postings(
    trained_model: tuple[ModelRegistry, TrainResult], demo_data: EncodedDemo
) -> None:
    card = trained_model[1].card
    audit = card["bias_audit"]
    assert audit["meta"]["frame"] == "model"
    assert [m["key"] for m in audit["metrics"]] == ["selection", "scoring"]
    pool = len(demo_data.candidate_rows)
    test_postings = card["data"]["split"]["postings"]["test"]
    # The whole stored pool counts for every held-out posting (retrieval is part of the tool).
    assert audit["sample"] == {
        "rankings": test_postings,
        "rows": test_postings * pool,
        "candidates": pool,
    }
    assert DENOMINATOR_NOTE in audit["notes"]
    assert {d["name"] for d in audit["dimensions"]} == {
        "sex",
        "race_ethnicity",
        "sex × race_ethnicity",
    }
    assert audit["ndcg@10"]["n"] == test_postings
    assert card["mitigation"] == {"method": "none"}
    text = render_markdown(card)
    assert "Bias audit (LL144 form): held-out postings, pool view" in text
    assert "Training-time bias mitigation: none" in text


def test_frame_b_scores_every_retrieved_candidate_and_counts_the_rest_of_the_pool(
    trained_model: tuple[ModelRegistry, TrainResult], demo_data: EncodedDemo
) -> None:
    result = trained_model[1]
    model = TrainedModel.from_onnx(FeatureBuilder(result.lexicon), result.onnx_model, None)
    cands, posts = prepare_all(demo_data.candidate_rows, demo_data.posting_rows)
    start = datetime.fromisoformat(result.card["data"]["split"]["test_start"])
    audit = held_out_audit(
        model,
        cands,
        posts,
        demo_data.data.outcomes,
        start,
        demo_data.data.protected,
        retrieve_n=50,
        index_storage="flat",
        config=AuditConfig(n_boot=50),
        attributes=("sex",),
    )
    for r in audit.rankings:
        assert len(r.candidate_ids) == 50  # retrieved and scored
        ranking = r.ranking([c.candidate.id for c in demo_data.candidate_rows])
        assert len(ranking.unranked) == len(demo_data.candidate_rows) - 50
        assert ranking.scores is not None and list(ranking.scores) == sorted(
            ranking.scores, reverse=True
        )
    scoring = {c.name: c.rates["scoring"] for c in audit.result.dimensions[0].categories}
    assert sum(r.eligible for r in scoring.values()) + audit.result.dimensions[
        0
    ].unknown_rows == 50 * len(audit.rankings)


@pytest.mark.slow
def test_frame_b_flags_a_model_trained_on_a_biased_process_and_not_one_trained_on_the_default(
    demo_data: EncodedDemo, encoder: TextEncoder
) -> None:
    """Age via graduation year: the model's features see the proxy (years of experience), so
    it learns the bias; the career-break proxy of sex is invisible to them (FAIRNESS.md)."""
    from ranker.prepared import posting_text
    from ranker.rows import PostingRow
    from tests.fixtures.training import TRAINING_DEMO

    base = replace(TRAINING_DEMO, postings=300)
    config = AuditConfig(n_boot=300)
    verdict: dict[str, bool] = {}
    for name, bias in (
        ("biased", Bias("age_band", "45-59", "graduation_year", 0.9)),
        ("default", None),
    ):
        data = generate(replace(base, bias=bias))
        assert data.candidates == demo_data.data.candidates  # so the encoded rows carry over
        vectors = encoder.encode([posting_text(p) for p in data.postings])
        posts = [PostingRow(p, v) for p, v in zip(data.postings, vectors, strict=True)]
        trained = train_model(
            demo_data.candidate_rows,
            posts,
            data.outcomes,
            config=TRAINING_CONFIG,
            protected=data.protected,
        )
        model = TrainedModel.from_onnx(FeatureBuilder(trained.lexicon), trained.onnx_model, None)
        cands, prepared = prepare_all(demo_data.candidate_rows, posts)
        audit = held_out_audit(
            model,
            cands,
            prepared,
            data.outcomes,
            datetime.fromisoformat(trained.card["data"]["split"]["test_start"]),
            data.protected,
            retrieve_n=500,
            index_storage="fp16",
            config=config,
            attributes=("age_band",),
        )
        verdict[name] = any(
            f.category == "45-59" and f.metric == "selection"
            for f in audit.result.significant_flags()
        )
    assert verdict == {"biased": True, "default": False}


# -- frame (c) -------------------------------------------------------------------------------


def test_frame_c_audits_served_rankings_with_the_scoring_rate(
    demo_data: EncodedDemo,
    encoder: TextEncoder,
    registry_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _store(tmp_path / "data" / "ranker.db", demo_data)
    settings = serving_settings(tmp_path / "data", registry_path)
    pipeline = RankingPipeline.open(settings, encoder=encoder)
    try:
        served = [
            pipeline.rank(RankQuery(posting_id=p.id, top_k=10, retrieve_n=60))
            for p in demo_data.data.postings
        ]
    finally:
        pipeline.close()  # writes the pending decisions
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RANKER_REGISTRY_DIR", str(registry_path))
    out = tmp_path / "served.json"
    result = runner.invoke(
        _app(),
        ["audit", "--frame", "served", "--boot", "50", "--json", str(out)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Scoring rate unavailable" not in result.output
    data = json.loads(out.read_text())
    assert [m["key"] for m in data["metrics"]] == ["selection", "scoring"]
    pool = len(demo_data.candidate_rows)
    assert (
        data["sample"]["rankings"] == len(served) and data["sample"]["rows"] == len(served) * pool
    )
    sex = next(d for d in data["dimensions"] if d["name"] == "sex")
    selected = Counter(
        demo_data.data.protected.get(c.candidate_id, {}).get("sex", "unknown")
        for r in served
        for c in r.results
    )
    store = SqliteStore(tmp_path / "data" / "ranker.db")
    try:
        logged = [store.get_decision(r.request_id).scored for r in served]
    finally:
        store.close()
    # Scored = every retrieved candidate of every request, as logged.
    assert all(s is not None and len(s.candidate_ids) == 60 for s in logged)
    scored = Counter(
        demo_data.data.protected.get(c, {}).get("sex", "unknown")
        for s in logged
        if s is not None
        for c in s.candidate_ids
    )
    for cat in sex["categories"]:
        assert cat["rates"]["selection"]["successes"] == selected[cat["name"]]
        assert cat["rates"]["scoring"]["eligible"] == scored[cat["name"]]


def test_frame_model_from_the_command_line(
    demo_data: EncodedDemo, registry_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _store(tmp_path / "data" / "ranker.db", demo_data)
    monkeypatch.setenv("RANKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RANKER_REGISTRY_DIR", str(registry_path))
    out = tmp_path / "model.json"
    result = runner.invoke(
        _app(),
        ["audit", "--frame", "model", "--boot", "50", "--json", str(out)],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads(out.read_text())
    version = ModelRegistry(registry_path).current_version()
    assert data["meta"]["frame"] == "model" and data["meta"]["model_version"] == version
    assert data["meta"]["version_distribution_date"] is not None  # it was promoted
    assert "pool view" in data["meta"]["data_source"]
    assert any("NDCG@10" in n for n in data["notes"])
    missing = runner.invoke(_app(), ["audit", "--frame", "model", "--version", "v9999"])
    assert missing.exit_code == 1


# -- training-time mitigation ----------------------------------------------------------------


def test_reweighing_makes_category_and_label_independent_on_the_training_rows() -> None:
    rng = np.random.default_rng(0)
    n = 400
    cids = tuple(f"c{i}" for i in range(n))
    sex = ["female" if i % 2 else "male" for i in range(n)]
    protected = {c: {"sex": s} for c, s in zip(cids, sex, strict=True)}
    protected["c0"] = {"sex": "non-binary"}  # under 2%: left at weight 1
    del protected["c2"]  # unknown: weight 1
    # Women pass half as often in the labels.
    y = np.array(
        [int(rng.random() < (0.2 if s == "female" else 0.4)) * 2 for s in sex], dtype=np.int64
    )
    train = RankingSet(np.zeros((n, 1), np.float32), y, np.array([n]), ("p",), cids)
    weights, record = training_weights(train, protected, MitigationConfig("reweigh", "sex"))
    assert weights is not None and weights[0] == 1.0 and weights[2] == 1.0
    known = [i for i in range(n) if i not in (0, 2)]
    overall = np.average(y[known] > 0, weights=weights[known])
    for s in ("female", "male"):
        rows = [i for i in known if sex[i] == s]
        assert np.average(y[rows] > 0, weights=weights[rows]) == pytest.approx(overall)
    assert record["left_at_weight_1"]["small_categories"] == ["non-binary"]
    assert record["left_at_weight_1"]["unknown_rows"] == 1
    assert training_weights(train, protected, MitigationConfig())[0] is None


def test_train_with_reweighing_weights_the_model_and_records_it(
    demo_data: EncodedDemo, trained_model: tuple[ModelRegistry, TrainResult]
) -> None:
    result = train_model(
        demo_data.candidate_rows,
        demo_data.posting_rows,
        demo_data.data.outcomes,
        config=TRAINING_CONFIG,
        protected=demo_data.data.protected,
        mitigation=MitigationConfig("reweigh", "sex"),
    )
    assert result.card["mitigation"]["method"] == "reweigh"
    assert result.card["mitigation"]["attribute"] == "sex"
    assert "training split only" in result.card["mitigation"]["applied_to"]
    assert result.booster_text != trained_model[1].booster_text  # the weights changed the fit
    assert "reweigh by `sex`" in render_markdown(result.card | {"version": "v"})
    with pytest.raises(InvalidInput, match="protected attributes"):
        train_model(
            demo_data.candidate_rows,
            demo_data.posting_rows,
            demo_data.data.outcomes,
            config=TRAINING_CONFIG,
            mitigation=MitigationConfig("reweigh", "sex"),
        )
