"""Training a LightGBM lambdarank ranker and registering it: the whole offline pipeline.

rows -> prepared candidates/postings -> lexicon -> time split + labels + features -> LightGBM
(early stopping on validation NDCG@10) -> ONNX export with parity check -> evaluation of the ONNX
model on the held-out postings in both views (`training.evaluate`: applicants, and the served
pool), against the baselines and the version in service -> registry version with model card ->
promotion (when asked, or when nothing is in service yet).

Determinism: a fixed seed, `deterministic=True`, `force_row_wise=True` (LightGBM's automatic
row/column choice times both, which can differ between runs) and a fixed `num_threads` make the
same data give the same `model.txt` bytes; nothing in model.txt depends on the clock.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from ranker.config import Settings
from ranker.domain import Outcome
from ranker.drift import record_training_distribution
from ranker.errors import InvalidInput, ModelRejected, RankerError
from ranker.features import FEATURE_NAMES, FeatureBuilder
from ranker.lexicon import Lexicon
from ranker.prepared import PreparedCandidate, PreparedPosting
from ranker.registry import ModelBundle, ModelRegistry
from ranker.scorer import BLEND_FEATURE, PARITY_TOLERANCE, BlendedScorer, OnnxScorer
from training.audit_model import card_bias_audit
from training.blend import BlendChoice, choose_blend
from training.card import build_card, render_markdown
from training.dataset import (
    SPLITS,
    CandidateLike,
    CandidateVersionLike,
    Datasets,
    PostingLike,
    RankingSet,
    TimeSplit,
    candidates_as_of,
    data_sha256,
    make_datasets,
    prepare_all,
    split_postings,
    training_candidates,
)
from training.evaluate import (
    HELD_OUT_RULE,
    Evaluation,
    RankingModel,
    evaluate_postings,
    evaluate_set,
    held_out_postings,
    held_out_start,
)
from training.export import check_parity, to_onnx
from training.gates import GatePolicy, check_gates, in_service_of
from training.labels import STAGE_LABEL, labels_from_outcomes
from training.mitigation import MitigationConfig, training_weights
from training.pool import Pool

log = logging.getLogger(__name__)

CHECK_ROWS = 64
"""Feature rows stored with a version so serving can test-predict it before swapping it in."""


LINEAR_GAIN: tuple[float, ...] = tuple(float(g) for g in range(max(STAGE_LABEL.values()) + 1))
"""Gain of each label in training and early stopping: 0, 1, 2, 3, 4 (LightGBM's default is 2^l - 1)."""


@dataclass(frozen=True)
class TrainConfig:
    """LightGBM settings; the defaults suit a few thousand labelled rows.

    Tuned on two demo sets (2,000 x 100 and 400 x 40) over eight time-split windows: against
    the former defaults (learning rate 0.05, exponential gain) mean validation NDCG@10 rose from
    0.714 to 0.743 and test NDCG@10 from 0.651 to 0.687, and early stopping keeps a median of 35
    trees instead of 7 (3 on the small set, which tied many top scores). The differences are
    near the noise of 15-posting validation sets; linear gain was the one change that helped in
    every configuration tried (num_leaves 7/15, min_data_in_leaf 20/50, bagging, L2 1/10).
    """

    seed: int = 7
    # One thread: the sets are small, and OpenMP threads spinning on a busy 2-core machine made
    # training 100-300x slower (0.3 s against 90+ s measured); one thread is also the surest
    # way to the same bytes on any machine.
    num_threads: int = 1
    # A smaller step than 0.05: the validation curve is noisy, and big first steps made early
    # stopping settle on a 2-3 tree peak.
    learning_rate: float = 0.03
    # Linear rather than exponential gain: a hire (label 4) otherwise weighs 5x an interview
    # and the few hires dominate the gradients. Early stopping's NDCG@10 uses the same gains;
    # the reported metrics (training.evaluate) keep the standard 2^l - 1.
    label_gain: tuple[float, ...] = LINEAR_GAIN
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.9
    lambda_l2: float = 1.0
    max_rounds: int = 1000
    early_stopping_rounds: int = 50

    def params(self) -> dict[str, Any]:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [10],
            "learning_rate": self.learning_rate,
            "label_gain": list(self.label_gain),
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }


@dataclass(frozen=True)
class TrainedModel:
    """A freshly trained model as serving would run it: its builder and its ONNX scorer."""

    builder: FeatureBuilder
    scorer: BlendedScorer
    feature_names: tuple[str, ...] = FEATURE_NAMES

    @classmethod
    def from_onnx(
        cls,
        builder: FeatureBuilder,
        onnx_model: bytes,
        settings: Settings | None,
        blend_weight: float = 0.0,
    ) -> TrainedModel:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(onnx_model)
            # The session holds the model in memory once created; the file can go.
            onnx = OnnxScorer(path, None if settings is None else settings.ort_session)
        return cls(builder, BlendedScorer(onnx, FEATURE_NAMES.index(BLEND_FEATURE), blend_weight))


def evaluate_trained(
    model: TrainedModel,
    candidates: Mapping[str, PreparedCandidate],
    postings: Mapping[str, PreparedPosting],
    outcomes: Sequence[Outcome],
    split: TimeSplit,
    settings: Settings,
    in_service: ModelBundle | None = None,
    pool: Pool | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """Both views of the new model on its test postings, with the baselines, and (when one is in
    service and servable by this code) paired against the version in service on the postings
    held out from both. Returns the evaluation and the facts the card states about it."""
    models: dict[str, RankingModel] = {"model": model}
    start = split.test_start
    facts: dict[str, Any] = {"in_service": None}
    if in_service is not None:
        facts["in_service"] = {"version": in_service.version, "compared": False}
        try:
            if in_service.feature_names != model.feature_names:
                raise ModelRejected("its features differ from the new model's")
            in_service.check()
            both = max(start, held_out_start([in_service.card]))
            held_out_postings(postings, outcomes, both)  # raises when none is left
            start = both
            models[f"{in_service.version} (in service)"] = in_service
            facts["in_service"]["compared"] = True
        except RankerError as e:
            facts["in_service"]["reason"] = str(e)
            log.warning("not comparing with %s in service: %s", in_service.version, e)
    chosen, labels = held_out_postings(postings, outcomes, start)
    evaluation = evaluate_postings(
        models,
        chosen,
        candidates,
        labels,
        retrieve_n=settings.retrieve_n,
        index_storage=settings.index_storage,
        pool=pool,
    )
    facts |= {"held_out_from": start.isoformat(), "held_out_rule": HELD_OUT_RULE}
    return evaluation, facts


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    booster: lgb.Booster
    booster_text: str
    onnx_model: bytes
    lexicon: Lexicon
    check_rows: np.ndarray
    check_scores: np.ndarray
    datasets: Datasets
    metrics: dict[str, Any]
    card: dict[str, Any]
    version: str | None
    promoted: bool
    gates: dict[str, Any] | None = None
    """The promotion gate results (`training.gates`), as stored in `gates.json`."""


@dataclass(frozen=True)
class FittedBooster:
    """A fitted booster cut to its chosen iteration, and how it was fitted (for the card)."""

    booster: lgb.Booster
    text: str
    """`booster` as model text: what model.txt holds."""
    fitting: dict[str, Any]
    """Engine, rounds trained, the iteration kept and the rule that chose it."""

    @classmethod
    def truncated(cls, booster: lgb.Booster, best: int, fitting: dict[str, Any]) -> FittedBooster:
        text = booster.model_to_string(num_iteration=best)
        # Reload from the text, so ONNX, parity and metrics all use exactly what model.txt holds.
        return cls(lgb.Booster(model_str=text), text, fitting)


Fitter = Callable[[Mapping[str, RankingSet], TrainConfig, np.ndarray | None], FittedBooster]
"""Fits the train set (validation postings for choosing the iteration, optional row weights):
`fit_booster` here, or `training.dask_train.DaskFitter` on a Dask cluster."""


def check_trainable(train: RankingSet) -> None:
    """Refuse a train set without one applicant beyond 'applied': nothing to learn from."""
    if train.n_queries == 0 or not np.any(train.y > 0):
        raise InvalidInput(
            "no training posting has applicants beyond 'applied'; record screening, interview or "
            "hiring outcomes (RecordOutcomes or outcomes.jsonl) before training"
        )


def fit_booster(
    sets: Mapping[str, RankingSet], config: TrainConfig, weights: np.ndarray | None = None
) -> FittedBooster:
    """Train with early stopping on validation NDCG@10; returns the best booster and its text.

    `weights`: one per training row (`training.mitigation`); validation stays unweighted.
    """
    train, valid = sets["train"], sets["valid"]
    check_trainable(train)
    dtrain = lgb.Dataset(
        train.x,
        train.y,
        group=train.group,
        weight=weights,
        feature_name=list(FEATURE_NAMES),
        free_raw_data=False,
    )
    valid_sets = [dtrain]
    names = ["train"]
    evals: dict[str, Any] = {}
    # Counts the rounds trained: the booster lgb.train returns is already cut to the best one.
    callbacks: list[Any] = [lgb.record_evaluation(evals)]
    if valid.n_queries:
        valid_sets.append(
            lgb.Dataset(valid.x, valid.y, group=valid.group, reference=dtrain, free_raw_data=False)
        )
        names.append("valid")
        callbacks.append(
            lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False)
        )
    booster = lgb.train(
        config.params(),
        dtrain,
        num_boost_round=config.max_rounds,
        valid_sets=valid_sets,
        valid_names=names,
        callbacks=callbacks,
    )
    best = booster.best_iteration or booster.current_iteration()
    rule = (
        f"early stopping on validation NDCG@10 (patience {config.early_stopping_rounds} rounds)"
        if valid.n_queries
        else "no validation postings: every round trained"
    )
    fitting = {
        "engine": "lightgbm",
        "rounds_trained": len(evals["train"]["ndcg@10"]),
        "best_iteration": best,
        "rule": rule,
    }
    return FittedBooster.truncated(booster, best, fitting)


def _predict(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    """LightGBM's scores as float64 (n,); empty for no rows (predict refuses those)."""
    if len(x) == 0:
        return np.zeros(0)
    return np.asarray(booster.predict(x), dtype=np.float64).reshape(-1)


def _choose_blend(
    model: TrainedModel,
    postings: Mapping[str, PreparedPosting],
    outcomes: Sequence[Outcome],
    split: TimeSplit,
    pool: Pool,
    retrieve_n: int,
) -> BlendChoice:
    """`training.blend.choose_blend` on the validation postings, with the labels they had then."""
    mine = set(split.valid)
    labels = labels_from_outcomes(
        (o for o in outcomes if o.posting_id in mine), before=split.cutoff("valid")
    )
    choice = choose_blend(
        model.scorer.model,
        model.builder,
        [postings[pid] for pid in split.valid],
        labels,
        pool,
        retrieve_n,
    )
    log.info("blend weight %.2f (validation NDCG@10 %s)", choice.weight, choice.validation_ndcg)
    return choice


def train_model(
    candidates: Sequence[CandidateLike],
    postings: Sequence[PostingLike],
    outcomes: Sequence[Outcome],
    *,
    config: TrainConfig | None = None,
    protected: Mapping[str, Mapping[str, str]] | None = None,
    settings: Settings | None = None,
    in_service: ModelBundle | None = None,
    versions: Sequence[CandidateVersionLike] = (),
    gate_policy: GatePolicy | None = None,
    mitigation: MitigationConfig | None = None,
    fit: Fitter | None = None,
) -> TrainResult:
    """Train, export to ONNX and check parity, evaluate, check the promotion gates; nothing is
    written anywhere.

    `fit`: how the booster is fitted (default `fit_booster`, here; `training.dask_train` on a
    Dask cluster); everything before and after it is the same either way.

    `in_service`: the version in service, to compare with on postings held out from both (None:
    nothing is promoted, so the gates compare with the fallback ranker, `Settings.fallback`).
    `mitigation`: opt-in training-time bias mitigation (`training.mitigation`; default none).
    `versions`: earlier candidate records (`SqliteStore.candidate_versions`); each training row
    is built from the record in force when the candidate applied (`candidates_as_of`).
    """
    config = config or TrainConfig()
    settings = settings if settings is not None else Settings()
    if not candidates or not postings or not outcomes:
        raise InvalidInput(
            f"need candidates, postings and outcomes to train, got {len(candidates)}, "
            f"{len(postings)}, {len(outcomes)}; load data first: `ranker ingest`"
        )
    prepared_c, prepared_p = prepare_all(candidates, postings)
    known = [o for o in outcomes if o.posting_id in prepared_p]
    split = split_postings(prepared_p, known)
    fitted_on = training_candidates(prepared_c, known, split)
    if not fitted_on:
        raise InvalidInput(
            f"no stored candidate applied to the {len(split.train)} training postings (created "
            f"before {split.valid_start:%Y-%m-%d}); ingest their candidates: `ranker ingest`"
        )
    # BM25 statistics of the whole pool, as the service's live lexicon holds them: training rows
    # are then the rows serving would build (and lexicon.json reproduces them).
    lexicon = Lexicon.fit(prepared_c.values())
    builder = FeatureBuilder(lexicon)
    as_of = candidates_as_of(versions, known)
    pool = Pool.build(prepared_c.values(), settings.index_storage, lexicon)
    datasets = make_datasets(
        builder,
        prepared_c,
        prepared_p,
        known,
        split,
        pool=pool,
        retrieve_n=settings.retrieve_n,
        as_of=as_of,
    )
    sets = datasets.sets
    for name in SPLITS:
        log.info("%s: %d postings, %d rows", name, sets[name].n_queries, len(sets[name].y))

    weights, mitigated = training_weights(
        sets["train"], protected, mitigation or MitigationConfig()
    )
    fitted = (fit or fit_booster)(sets, config, weights)
    booster, text = fitted.booster, fitted.text
    test = sets["test"]

    onnx_model = to_onnx(booster)
    parity_rows = np.concatenate([sets["valid"].x, test.x, sets["train"].x[:1000]])
    diff = check_parity(onnx_model, booster, parity_rows, settings.ort_session)
    check_rows = parity_rows[:CHECK_ROWS]

    # The blend with retrieval similarity, its weight chosen on the validation postings.
    blend = _choose_blend(
        TrainedModel.from_onnx(builder, onnx_model, settings),
        prepared_p,
        known,
        split,
        pool,
        settings.retrieve_n,
    )
    # Evaluated as served: the ONNX model and blend, on features its builder makes, both views.
    trained = TrainedModel.from_onnx(builder, onnx_model, settings, blend.weight)
    evaluation, held_out = evaluate_trained(
        trained, prepared_c, prepared_p, known, datasets.split, settings, in_service, pool
    )
    metrics: dict[str, Any] = {
        "test": evaluation.means(),
        "valid": {"model": evaluate_set(sets["valid"], _predict(booster, sets["valid"].x))},
    }

    gain = booster.feature_importance(importance_type="gain")
    card = build_card(
        params=config.params(),
        seed=config.seed,
        best_iteration=booster.current_iteration(),
        metrics=metrics,
        evaluation=evaluation.as_dict() | held_out,
        data={
            "sha256": data_sha256(
                (r.candidate for r in candidates), (r.posting for r in postings), outcomes
            ),
            "counts": {
                "candidates": len(candidates),
                "postings": len(postings),
                "outcomes": len(outcomes),
            },
            "split": datasets.split.as_dict(),
            "queries": {name: sets[name].n_queries for name in SPLITS},
            "rows": {name: len(sets[name].y) for name in SPLITS},
        },
        parity={"max_abs_diff": diff, "rows": len(parity_rows), "tolerance": PARITY_TOLERANCE},
        lexicon={
            "fitted_on": "CVs of every stored candidate (the pool the service retrieves from); "
            "serving uses the live pool's statistics, this is the training-time copy",
            "documents": lexicon.n_docs,
            "terms": len(lexicon.df),
            "min_df": lexicon.min_df,
        },
        importance={
            name: round(float(g), 3)
            for name, g in sorted(zip(FEATURE_NAMES, gain, strict=True), key=lambda t: -t[1])
        },
        mitigation=mitigated,
        bias_audit=card_bias_audit(
            trained, prepared_c, prepared_p, known, datasets.split.test_start, protected, settings
        ),
    )
    card["model"]["fitting"] = fitted.fitting
    card["blend"] = blend.as_dict()
    # -- promotion gates (training.gates): stored in the card and, once registered, gates.json
    in_service_info = held_out.get("in_service") or {}
    gates = check_gates(
        evaluation=evaluation,
        parity_diff=diff,
        model=trained,
        in_service=in_service_of(
            evaluation, in_service, in_service_info.get("reason"), settings.fallback
        ),
        candidates=prepared_c,
        postings=prepared_p,
        protected=protected,
        settings=settings,
        policy=gate_policy,
    ).as_dict()
    card["gates"] = gates
    return TrainResult(
        booster=booster,
        booster_text=text,
        onnx_model=onnx_model,
        lexicon=lexicon,
        check_rows=check_rows,
        check_scores=_predict(booster, check_rows),
        datasets=datasets,
        metrics=metrics,
        card=card,
        version=None,
        promoted=False,
        gates=gates,
    )


def register_result(
    result: TrainResult,
    registry: ModelRegistry,
    promote: bool | None = None,
    *,
    force_reason: str | None = None,
    actor: str | None = None,
) -> TrainResult:
    """Register the trained model and store its gate results (`gates.json`); promote it if
    `promote`, or if None and nothing is in service, and only when its gates passed, unless
    `force_reason` overrides them (recorded with `actor` in the registry history)."""
    version = registry.register(
        onnx_model=result.onnx_model,
        booster_text=result.booster_text,
        lexicon=result.lexicon,
        check_rows=result.check_rows,
        check_scores=result.check_scores,
        card=result.card,
        render_card=render_markdown,
    )
    # The training distribution the service's drift figures compare with (ranker.drift).
    train_rows = result.datasets.sets["train"]
    record_training_distribution(
        registry.version_dir(version),
        FEATURE_NAMES,
        train_rows.x,
        train_rows.group,
        _predict(result.booster, train_rows.x),
    )
    gates = dict(result.gates) if result.gates is not None else None
    if gates is not None:
        gates["version"] = version
        registry.record_gates(version, gates)
    wanted = promote if promote is not None else registry.current_version() is None
    passed = gates is not None and bool(gates.get("passed"))
    do_promote = wanted and (passed or bool(force_reason))
    if do_promote:
        registry.promote(
            version,
            actor=actor,
            reason=force_reason if not passed else (force_reason or "passed the promotion gates"),
            forced=not passed,
            gates="passed" if passed else ("failed" if gates is not None else "not checked"),
        )
    elif wanted:
        failed = [g["gate"] for g in (gates or {}).get("gates", []) if not g.get("passed")]
        log.warning(
            "registered %s, not promoted: it failed the promotion gate(s) %s",
            version,
            ", ".join(failed) or "(no gate results)",
        )
    return replace(
        result, card=registry.card(version), version=version, promoted=do_promote, gates=gates
    )


def train_and_register(
    candidates: Sequence[CandidateLike],
    postings: Sequence[PostingLike],
    outcomes: Sequence[Outcome],
    registry: ModelRegistry,
    *,
    config: TrainConfig | None = None,
    promote: bool | None = None,
    protected: Mapping[str, Mapping[str, str]] | None = None,
    settings: Settings | None = None,
    versions: Sequence[CandidateVersionLike] = (),
    gate_policy: GatePolicy | None = None,
    force_reason: str | None = None,
    actor: str | None = None,
    mitigation: MitigationConfig | None = None,
    fit: Fitter | None = None,
) -> TrainResult:
    """`train_model` (compared with the version in service, if any), then `register_result`
    (promotion only through the gates, or forced with a reason)."""
    in_service: ModelBundle | None = None
    current = registry.current_version()
    if current is not None:
        try:
            in_service = registry.load(current)
        except RankerError as e:
            log.warning("cannot load %s in service to compare with: %s", current, e)
    result = train_model(
        candidates,
        postings,
        outcomes,
        config=config,
        protected=protected,
        settings=settings,
        in_service=in_service,
        versions=versions,
        gate_policy=gate_policy,
        mitigation=mitigation,
        fit=fit,
    )
    return register_result(result, registry, promote, force_reason=force_reason, actor=actor)
